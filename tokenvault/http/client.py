"""Small, fast HTTP/1.1 client on trio for peer-to-peer links.

Rules kept here:
- a request is checked (token method and names, visible-ASCII target and values: else
  ValueError) and sent with its body in one buffer. A response of the plain kind (HTTP/1.1,
  a final status, a Content-Length: head_parser.parse_response_head, as our server answers)
  is read without h11; any other (informational, chunked, an incomplete head, a response to
  HEAD, ...) is read by h11, the same bytes handed over. Bytes past a response that nothing
  asked for close the connection once the response is returned;
- on plain TCP, the request goes out in one direct send when the socket takes it whole, and
  the answer is read once the socket is readable (socket_io.py);
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

import re
import select
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import h11
import trio

from tokenvault.http.head_parser import comma_tokens, parse_response_head
from tokenvault.http.socket_io import raw_socket, receive_when_readable, send_nowait
from tokenvault.tls import peer_id_of_certificate

__all__ = ["HttpConnection", "PeerUnreachable"]

_RECEIVE_BYTES_MAX = 64 * 1024
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
# A stream's receive_some: both kinds used here (SocketStream, SSLStream) return bytes, not the
# bytearray trio.abc.Stream allows. (Built once: subscripting Callable costs microseconds.)
_ReceiveSome = Callable[[int], Awaitable[bytes]]
_Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]
_RESPONSE_HEAD_BYTES_MAX = 16 * 1024  # h11's default bound of an incomplete head
_TOKEN_RE = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_TARGET_RE = re.compile(r"[\x21-\x7e]+")
_FIELD_VALUE_RE = re.compile(r"(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?")


class _Request:
    """One request, checked and encoded whole (head and body in one buffer, one send)."""

    __slots__ = ("body", "closes", "encoded", "headers", "method", "path")

    def __init__(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> None:
        if _TOKEN_RE.fullmatch(method) is None or _TARGET_RE.fullmatch(path) is None:
            raise ValueError("invalid request: bad method or target")
        self.method = method
        self.path = path
        self.body = body
        self.headers = [*headers[:1], ("content-length", str(len(body))), *headers[1:]]
        self.closes = False  # the request asks the server to close after it
        lines = [f"{method} {path} HTTP/1.1\r\n"]
        for name, value in self.headers:
            if _TOKEN_RE.fullmatch(name) is None or _FIELD_VALUE_RE.fullmatch(value) is None:
                raise ValueError(f"invalid request: bad header {name!r}")
            lines.append(f"{name}: {value}\r\n")
            if name.lower() == "connection" and "close" in comma_tokens(value):
                self.closes = True
        lines.append("\r\n")
        self.encoded = "".join(lines).encode("ascii") + body


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
        self._stream: _Stream | None = None
        self._socket: socket.socket | None = None  # beneath a plain TCP stream (socket_io.py)
        self._poller = select.poll()  # the stream's socket, for input pending while idle
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
        for name, _ in headers:
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by HttpConnection")
        request = _Request(method, path, (("host", self._peer), *headers), body)

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
                    return await self._exchange(request, deadline)
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

    async def _exchange(self, request: _Request, deadline: float) -> tuple[int, bytes]:
        stream = self._stream
        if stream is not None and self._poller.poll(0):
            # Idle keep-alive connection with pending input: the peer closed it (or sent
            # junk). Either way it is unusable; reconnect instead of failing the request.
            await self._drop()
            stream = None
        if stream is None:
            stream = await self._connect(deadline)
        raw = self._socket

        data = request.encoded
        if raw is not None:
            data = data[send_nowait(raw, data) :]
        if data:
            await stream.send_all(data)

        if raw is not None:
            received = await receive_when_readable(raw, _RECEIVE_BYTES_MAX)
        else:
            received = await cast(_ReceiveSome, stream.receive_some)(_RECEIVE_BYTES_MAX)
        parsed = None
        if request.method != "HEAD":
            parsed = parse_response_head(received, _RESPONSE_HEAD_BYTES_MAX)
        if parsed is None:
            status, body, keep_alive = await self._h11_response(stream, request, received)
        else:
            status, keep_alive = parsed.status, parsed.keep_alive
            body = await self._body(stream, received, parsed.end, parsed.content_length)
        if not keep_alive or request.closes:
            await self._drop()  # the server asked to close (or HTTP/1.0 framing), or we did
        return status, body

    async def _body(self, stream: _Stream, received: bytes, start: int, size: int) -> bytes:
        """A Content-Length body of ``size`` bytes from ``start`` in ``received`` on."""
        if size > self._response_bytes_max:
            raise PeerUnreachable(
                f"{self._peer}: response larger than {self._response_bytes_max} bytes"
            )
        end = start + size
        if len(received) > end:
            # Bytes past the response that nothing asked for: answer this request, but never
            # read them as the next one's response.
            await self._drop()
        if len(received) >= end:
            return received[start:end]
        receive_some = cast(_ReceiveSome, stream.receive_some)
        parts = [received[start:]]
        missing = end - len(received)
        while missing > 0:
            data = await receive_some(min(missing, _RECEIVE_BYTES_MAX))
            if not data:
                raise PeerUnreachable(f"{self._peer}: connection closed mid-response")
            parts.append(data)
            missing -= len(data)
        return b"".join(parts)

    async def _h11_response(
        self, stream: _Stream, request: _Request, received: bytes
    ) -> tuple[int, bytes, bool]:
        """Any response parse_response_head leaves (informational first, chunked, 204, an
        incomplete head, a response to HEAD, ...): ``(status, body, keep_alive)`` by h11."""
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=request.method, target=request.path, headers=request.headers))
        conn.send(h11.Data(data=request.body))
        conn.send(h11.EndOfMessage())
        conn.receive_data(received)
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
        trailing, _ = conn.trailing_data
        keep_alive = conn.our_state is h11.DONE and conn.their_state is h11.DONE and not trailing
        return response.status_code, b"".join(parts), keep_alive

    async def _connect(self, deadline: float) -> _Stream:
        connect_deadline = min(deadline, trio.current_time() + self._connect_timeout_s)
        with trio.move_on_at(connect_deadline):
            try:
                socket_stream = await trio.open_tcp_stream(self._host, self._port)
            except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode
                # (a label over 63 characters): a member's address is any printable text
                reason = type(exc).__name__
                raise PeerUnreachable(f"{self._peer}: connect failed ({reason})") from None
            socket_stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
            self._poller = select.poll()
            self._poller.register(socket_stream.socket.fileno(), select.POLLIN)
            if self._ssl_context is None:
                # From here on, a failure drops it.
                self._stream, self._socket = socket_stream, raw_socket(socket_stream)
                return socket_stream
            stream = trio.SSLStream(socket_stream, self._ssl_context, server_hostname=self._host)
            self._stream = stream
            await self._handshake(stream)
            return stream
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
        self._stream = self._socket = None
        if stream is not None:
            await trio.aclose_forcefully(stream)
