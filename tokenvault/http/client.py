"""Small, fast HTTP/1.1 client on trio + h11 for peer-to-peer links.

Rules kept here:
- one HttpConnection is one TCP connection to one peer, one request at a time (a lock
  queues concurrent callers), kept alive and reused; it connects lazily;
- any failure (connect, reset, timeout, bad HTTP, oversize response) closes the socket
  and raises PeerUnreachable; the next request reconnects. Requests are never retried
  here: whether a retry is safe is the caller's decision;
- PeerUnreachable messages name the peer and the failure kind, never bodies or headers;
- with an ssl_context the connection is TLS, its handshake part of connecting (within
  connect_timeout_s); with a server_peer_id too, the server's certificate must name that
  peer (tls.py), else the connection is dropped as unreachable: a peer link never talks to
  a peer it did not mean to reach.
"""

from __future__ import annotations

import select
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import h11
import trio

from tokenvault.tls import peer_id_of_certificate

__all__ = ["HttpConnection", "PeerUnreachable"]

_RECEIVE_BYTES_MAX = 64 * 1024
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
# A stream's receive_some: both kinds used here (SocketStream, SSLStream) return bytes, not the
# bytearray trio.abc.Stream allows. (Built once: subscripting Callable costs microseconds.)
_ReceiveSome = Callable[[int], Awaitable[bytes]]


class PeerUnreachable(Exception):
    """The peer could not be reached or did not answer with a usable HTTP response."""


class HttpConnection:
    """A keep-alive HTTP/1.1 connection to ``host:port``, opened on first use."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float = 2.0,
        response_bytes_max: int = 64 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        server_peer_id: str | None = None,
    ) -> None:
        assert server_peer_id is None or ssl_context is not None, "a peer id needs TLS"
        self._host = host
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._response_bytes_max = response_bytes_max
        self._ssl_context = ssl_context
        self._server_peer_id = server_peer_id
        authority = f"[{host}]" if ":" in host else host
        self._peer = f"{authority}:{port}"
        self._lock = trio.Lock()
        self._stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
        self._conn: h11.Connection | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        timeout_s: float,
    ) -> tuple[int, bytes]:
        """Send one request and return ``(status, body)``; ``timeout_s`` bounds all of it.

        ``headers`` must not contain Host, Content-Length or Transfer-Encoding (set here).
        """
        request_headers = [("host", self._peer), ("content-length", str(len(body)))]
        for name, value in headers:
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by HttpConnection")
            request_headers.append((name, value))
        try:
            event = h11.Request(method=method, target=path, headers=request_headers)
        except h11.LocalProtocolError as exc:
            raise ValueError(f"invalid request: {exc}") from None

        lock = self._lock
        try:
            lock.acquire_nowait()  # the usual case; skips the scheduling round of acquire()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self._closed:
                raise PeerUnreachable(f"{self._peer}: connection closed by caller")
            deadline = trio.current_time() + timeout_s
            try:
                with trio.fail_after(timeout_s):
                    return await self._exchange(event, body, deadline)
            except trio.TooSlowError:
                await self._drop()
                raise PeerUnreachable(f"{self._peer}: timed out after {timeout_s}s") from None
            except PeerUnreachable:
                await self._drop()
                raise
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self._drop()
                raise PeerUnreachable(f"{self._peer}: {type(exc).__name__}") from None
            except h11.ProtocolError as exc:
                await self._drop()
                raise PeerUnreachable(
                    f"{self._peer}: HTTP protocol error ({type(exc).__name__})"
                ) from None
            except BaseException:
                await self._drop()  # cancelled (or worse) mid-exchange: the state is unknown
                raise
        finally:
            lock.release()

    async def aclose(self) -> None:
        """Close the connection; later requests raise PeerUnreachable."""
        self._closed = True
        await self._drop()

    async def _exchange(
        self, event: h11.Request, body: bytes, deadline: float
    ) -> tuple[int, bytes]:
        stream, conn = self._stream, self._conn
        if stream is not None and _is_readable(stream):
            # Idle keep-alive connection with pending input: the peer closed it (or sent
            # junk). Either way it is unusable; reconnect instead of failing the request.
            await self._drop()
            stream = conn = None
        if stream is None or conn is None:
            stream, conn = await self._connect(deadline)

        data = conn.send(event)
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)

        receive_some = cast(_ReceiveSome, stream.receive_some)
        bytes_max = self._response_bytes_max
        while True:
            response = conn.next_event()
            if response is h11.NEED_DATA:
                conn.receive_data(await receive_some(_RECEIVE_BYTES_MAX))
            elif isinstance(response, h11.Response):
                break
            elif not isinstance(response, h11.InformationalResponse):
                raise PeerUnreachable(f"{self._peer}: connection closed before a response")
        for name, value in response.headers:
            if name == b"content-length" and int(value) > bytes_max:
                raise PeerUnreachable(f"{self._peer}: response larger than {bytes_max} bytes")

        parts: list[bytes | bytearray] = []
        size = 0
        while True:
            body_event = conn.next_event()
            if body_event is h11.NEED_DATA:
                conn.receive_data(await receive_some(_RECEIVE_BYTES_MAX))
            elif isinstance(body_event, h11.Data):
                size += len(body_event.data)
                if size > bytes_max:
                    raise PeerUnreachable(f"{self._peer}: response larger than {bytes_max} bytes")
                parts.append(body_event.data)
            elif isinstance(body_event, h11.EndOfMessage):
                break
            else:
                raise PeerUnreachable(f"{self._peer}: connection closed mid-response")

        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self._drop()  # the server asked to close (or HTTP/1.0 framing)
        return response.status_code, b"".join(parts)

    async def _connect(
        self, deadline: float
    ) -> tuple[trio.SocketStream | trio.SSLStream[trio.SocketStream], h11.Connection]:
        connect_deadline = min(deadline, trio.current_time() + self._connect_timeout_s)
        with trio.move_on_at(connect_deadline):
            try:
                socket_stream = await trio.open_tcp_stream(self._host, self._port)
            except OSError as exc:
                reason = type(exc).__name__
                raise PeerUnreachable(f"{self._peer}: connect failed ({reason})") from None
            socket_stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
            conn = h11.Connection(h11.CLIENT)
            if self._ssl_context is None:
                self._stream, self._conn = socket_stream, conn  # from here on, a failure drops it
                return socket_stream, conn
            stream = trio.SSLStream(socket_stream, self._ssl_context, server_hostname=self._host)
            self._stream, self._conn = stream, conn
            await self._handshake(stream)
            return stream, conn
        if trio.current_time() >= deadline:
            raise trio.TooSlowError
        raise PeerUnreachable(f"{self._peer}: connect timed out after {self._connect_timeout_s}s")

    async def _handshake(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            reason = getattr(exc.__cause__, "reason", None) or "closed"
            raise PeerUnreachable(f"{self._peer}: TLS handshake failed ({reason})") from None
        expected = self._server_peer_id
        if expected is not None:
            named = peer_id_of_certificate(stream.getpeercert())
            if named != expected:
                raise PeerUnreachable(
                    f"{self._peer}: its certificate names {named or 'no peer'}, not {expected}"
                )

    async def _drop(self) -> None:
        stream = self._stream
        self._stream = self._conn = None
        if stream is not None:
            await trio.aclose_forcefully(stream)


def _is_readable(stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> bool:
    """True if the socket has input (or EOF/error) pending, without blocking."""
    socket_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    fd = socket_stream.socket.fileno()
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)
