"""HTTP/1.1 server on trio + h11 for the vault API and peer-to-peer links.

Rules kept here:
- h11 (sans-IO) parses every request; responses are always Content-Length framed (no
  length on 204/304) with a content-type, so they are encoded here in one buffer and
  written with one send_all; handler-supplied headers are validated before they go out;
- one task per connection, keep-alive with many requests per connection (pipelined
  requests are answered in order, not concurrently);
- ServerLimits bound body size, header size, read/idle/write time and connection count;
  a violation is answered with an errors.py body when a response can still be sent, then
  the connection closes;
- a handler failure never kills its connection or the server: ApiError -> its error
  response; any other exception -> logged by type name and origin only (never bodies or
  messages, which may hold secrets) and answered 500 ``internal``;
- peers that vanish, reset or stall are dropped quietly; no task outlives its connection;
- with an ssl_context, every connection is TLS (trio.SSLStream) on the same port: the handshake
  must finish within tls_handshake_timeout_s, and one that fails (plain HTTP, an untrusted
  client certificate, a client that gives up) is reported to ``tls_handshake_failed`` and the
  connection closed, with no answer and no traceback. A client that presented a certificate
  the context verified gets its peer id (tls.py) on every Request of the connection; the
  request loop itself is the same for TLS and plain TCP.

Request, Response and Handler live in messages.py (and are re-exported here), so that errors.py
builds its responses without importing this module: the imports go one way, server -> errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import h11
import trio

from tokenvault.http.errors import (
    ApiError,
    InvalidRequest,
    PayloadTooLarge,
    Unavailable,
    error_response,
)
from tokenvault.http.messages import Handler, Request, Response
from tokenvault.tls import peer_id_of_certificate

__all__ = ["Handler", "Request", "Response", "ServerLimits", "serve_http"]

_log = logging.getLogger("tokenvault.http")

_RECEIVE_BYTES_MAX = 64 * 1024
# After an error answer, how long to keep reading (and discarding) what the peer still
# sends, so that closing does not reset the connection before the answer is read.
_LINGER_TIMEOUT_S = 1.0

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
# The status line of every status a handler may answer with (1xx are not allowed).
_STATUS_LINES: dict[int, bytes] = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
    for status in range(200, 600)
}
_TOKEN_RE = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE_RE = re.compile(r"(?:[\x21-\x7e\x80-\xff](?:[ \t]*[\x21-\x7e\x80-\xff])*)?")
_RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding", "content-type"})
_METHODS: dict[bytes, str] = {
    m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    body_bytes_max: int = 1024 * 1024
    # Peer batches carry many client requests at once: their path prefix gets a larger bound.
    peer_path_prefix: bytes = b"/internal/"
    peer_body_bytes_max: int = 32 * 1024 * 1024
    header_bytes_max: int = 16 * 1024  # h11 max_incomplete_event_size
    request_read_timeout_s: float = 10.0  # from first byte of a request to full body
    idle_timeout_s: float = 60.0  # keep-alive idle between requests
    response_write_timeout_s: float = 10.0
    connections_max: int = 1024  # beyond: accept then answer 503 and close
    tls_handshake_timeout_s: float = 10.0  # from accept to a finished TLS handshake


# A stream's receive_some: both streams served here (SocketStream, SSLStream) return bytes, not
# the bytearray trio.abc.Stream allows. (Built once: subscripting Callable costs microseconds.)
_ReceiveSome = Callable[[int], Awaitable[bytes]]

# Called with a short reason ("timeout", "closed", or OpenSSL's, e.g. "HTTP_REQUEST") and the
# client's address whenever a TLS handshake fails.
TlsHandshakeFailed = Callable[[str, str], None]


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    limits: ServerLimits = ServerLimits(),
    *,
    ssl_context: ssl.SSLContext | None = None,
    tls_handshake_failed: TlsHandshakeFailed | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind ``host:port`` (0 = a free port), report the bound port, serve until cancelled;
    HTTPS with ``ssl_context``.

    With port 0 and a host resolving to several addresses, only the first is served (each
    address would otherwise get a different free port).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port == 0 and len(listeners) > 1:
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    bound_port: int = listeners[0].socket.getsockname()[1]
    active = 0
    refusing = 0

    async def on_connection(stream: trio.SocketStream) -> None:
        nonlocal active, refusing
        stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
        served: trio.abc.Stream = stream
        if ssl_context is not None:
            served = trio.SSLStream(stream, ssl_context, server_side=True)
        if active >= limits.connections_max:
            if refusing >= limits.connections_max:
                await trio.aclose_forcefully(stream)  # a flood: not even a 503
                return
            refusing += 1
            try:
                await _guard_connection(stream, _refuse_overloaded(served, limits))
            finally:
                refusing -= 1
            return
        active += 1
        try:
            if isinstance(served, trio.SSLStream):
                work = _serve_tls_connection(served, handler, limits, tls_handshake_failed)
            else:
                work = _serve_connection(served, handler, limits)
            await _guard_connection(stream, work)
        finally:
            active -= 1

    task_status.started(bound_port)
    await trio.serve_listeners(on_connection, listeners)


class _Reject(Exception):
    """Internal: answer ``error`` and close the connection."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.code)
        self.error = error


async def _guard_connection(stream: trio.SocketStream, work: Awaitable[None]) -> None:
    """Run one connection's work; no exception escapes, the socket is always closed."""
    try:
        await work
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the peer went away
    except Exception as exc:
        _log.warning("connection dropped after %s at %s", type(exc).__name__, _origin(exc))
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_tls_connection(
    stream: trio.SSLStream[trio.SocketStream],
    handler: Handler,
    limits: ServerLimits,
    handshake_failed: TlsHandshakeFailed | None,
) -> None:
    """The TLS handshake, then the connection's requests, with the client's peer id if any."""
    failure = "timeout"  # unless the handshake ends before the deadline
    with trio.move_on_after(limits.tls_handshake_timeout_s):
        try:
            await stream.do_handshake()
            failure = ""
        except trio.BrokenResourceError as exc:  # its cause is the ssl.SSLError, if any
            failure = getattr(exc.__cause__, "reason", None) or "closed"
    if failure:
        if handshake_failed is not None:
            handshake_failed(failure, _peer_name(stream))
        return
    peer_id = peer_id_of_certificate(stream.getpeercert())
    if peer_id is not None:
        handler = _with_peer_certificate_id(handler, peer_id)
    await _serve_connection(stream, handler, limits)


def _with_peer_certificate_id(handler: Handler, peer_id: str) -> Handler:
    async def handle(request: Request) -> Response:
        return await handler(dataclasses.replace(request, peer_certificate_id=peer_id))

    return handle


async def _serve_connection(
    stream: trio.abc.Stream, handler: Handler, limits: ServerLimits
) -> None:
    """Serve requests on one connection until it closes, fails, idles or times out.

    h11 parses requests; a fresh h11.Connection per request avoids driving its response
    state machine, and responses (always Content-Length framed) are encoded here. One
    cancel scope bounds every I/O wait of the connection: its deadline moves between the
    idle, read and write timeouts, and is lifted while the handler runs. When it fires the
    connection is dropped.
    """
    client = _peer_name(stream)
    header_bytes_max = limits.header_bytes_max
    idle_timeout_s = limits.idle_timeout_s
    write_timeout_s = limits.response_write_timeout_s
    current_time = trio.current_time
    pending = b""  # bytes received past the previous request (a pipelining client)
    with trio.CancelScope() as io_scope:
        while True:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=header_bytes_max)
            if pending:
                conn.receive_data(pending)
            io_scope.deadline = current_time() + idle_timeout_s
            try:
                received = await _receive_request(stream, conn, limits, client, io_scope)
            except _Reject as reject:
                error: ApiError = reject.error
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == 431:
                    error = _HEADERS_TOO_LARGE
                else:
                    error = InvalidRequest("The request is not valid HTTP/1.1.")
            else:
                if received is None:
                    return  # peer closed between requests
                request, keep_alive = received
                io_scope.deadline = math.inf
                if isinstance(request, Response):
                    response = request  # fully read but unusable (bad target)
                    head = False
                else:
                    head = request.method == "HEAD"
                    try:
                        response = await handler(request)
                    except ApiError as exc:
                        response = error_response(exc)
                    except Exception as exc:
                        _log.error(
                            "handler failed on %s %s from %s: %s at %s",
                            request.method,
                            request.path,
                            client,
                            type(exc).__name__,
                            _origin(exc),
                        )
                        response = _INTERNAL_RESPONSE
                data, keep_alive = _encode_response(response, head, keep_alive)
                io_scope.deadline = current_time() + write_timeout_s
                await stream.send_all(data)
                if not keep_alive:
                    return
                pending, eof = conn.trailing_data
                if eof:
                    return
                continue
            # A request we refuse: answer, then close without reading the rest of it.
            io_scope.deadline = current_time() + write_timeout_s
            await stream.send_all(_encode_response(error_response(error), False, False)[0])
            io_scope.deadline = math.inf
            await _linger(stream)
            return


async def _receive_request(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    limits: ServerLimits,
    client: str,
    io_scope: trio.CancelScope,
) -> tuple[Request | Response, bool] | None:
    """Read one full request: ``(request, keep_alive)``; None if the peer closed first.

    The request is an error Response instead (connection stays usable) when it is well
    framed but unusable. Raises _Reject for a body over the limit, h11.RemoteProtocolError
    for bad HTTP. ``io_scope`` gets the read deadline once the request spans several reads.
    """
    receive_some = cast(_ReceiveSome, stream.receive_some)
    read_timed = False
    event = conn.next_event()
    if event is h11.NEED_DATA:
        conn.receive_data(await receive_some(_RECEIVE_BYTES_MAX))
        event = conn.next_event()
        if event is h11.NEED_DATA:
            io_scope.deadline = trio.current_time() + limits.request_read_timeout_s
            read_timed = True
            while event is h11.NEED_DATA:
                conn.receive_data(await receive_some(_RECEIVE_BYTES_MAX))
                event = conn.next_event()
    if not isinstance(event, h11.Request):
        return None  # ConnectionClosed before a request began

    body_bytes_max = (
        limits.peer_body_bytes_max
        if event.target.startswith(limits.peer_path_prefix)
        else limits.body_bytes_max
    )
    headers: dict[str, str] = {}
    # h11 bounds only a head still incomplete; bound a head that arrived whole here.
    head_bytes = len(event.target)
    for raw_name, raw_value in event.headers:
        head_bytes += len(raw_name) + len(raw_value) + 4
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    if head_bytes > limits.header_bytes_max:
        raise _Reject(_HEADERS_TOO_LARGE)
    content_length = headers.get("content-length")
    if content_length is not None and int(content_length) > body_bytes_max:
        raise _Reject(PayloadTooLarge())
    if conn.they_are_waiting_for_100_continue:
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")

    parts: list[bytes | bytearray] = []
    size = 0
    while True:
        body_event = conn.next_event()
        if body_event is h11.NEED_DATA:
            if not read_timed:
                io_scope.deadline = trio.current_time() + limits.request_read_timeout_s
                read_timed = True
            conn.receive_data(await receive_some(_RECEIVE_BYTES_MAX))
        elif isinstance(body_event, h11.Data):
            size += len(body_event.data)
            if size > body_bytes_max:
                raise _Reject(PayloadTooLarge())
            parts.append(body_event.data)
        else:
            break  # EndOfMessage (h11 raises on a body cut short)

    keep_alive = event.http_version == b"1.1"
    connection = headers.get("connection")
    if connection is not None and "close" in _comma_tokens(connection):
        keep_alive = False

    raw_method = event.method
    method = _METHODS.get(raw_method) or raw_method.decode("ascii")
    target = event.target
    query_at = target.find(b"?")
    if query_at < 0:
        raw_path, query = target, ""
    else:
        raw_path, query = target[:query_at], target[query_at + 1 :].decode("ascii")
    if not raw_path.startswith(b"/"):
        message = "The request target must be an absolute path."
        return error_response(InvalidRequest(message)), keep_alive
    path = raw_path.decode("ascii")
    if "%" in path:
        # A path that does not decode as UTF-8 stays as sent: it then names no route, token or
        # owner, and gets the same not-found as any unknown one (API.md: not-found is uniform).
        with contextlib.suppress(UnicodeDecodeError):
            path = unquote(path, errors="strict")
    request = Request(
        method=method,
        path=path,
        query=query,
        headers=headers,
        body=b"".join(parts),
        client=client,
    )
    return request, keep_alive


def _encode_response(response: Response, head: bool, keep_alive: bool) -> tuple[bytes, bool]:
    """Encode a whole response; returns ``(bytes, keep_alive)``.

    Content-Length framing always (none on 204/304, whose bodies are dropped; HEAD gets
    the length without the body). Handler-supplied header names and values are checked
    so nothing can break the framing; an invalid response becomes a 500.
    """
    status = response.status
    status_line = _STATUS_LINES.get(status)
    content_type = response.content_type
    extra = response.headers
    if (
        status_line is None
        or _FIELD_VALUE_RE.fullmatch(content_type) is None
        or (extra and not _valid_extra_headers(extra))
    ):
        _log.error("handler returned an invalid response (status %r)", status)
        return _encode_response(_INTERNAL_RESPONSE, head, keep_alive)
    if extra:
        for name, value in extra:
            if name.lower() == "connection" and "close" in _comma_tokens(value):
                keep_alive = False
    try:
        parts = [status_line, b"content-type: ", content_type.encode("latin-1")]
        if extra:
            parts += [
                f"\r\n{name}: {value}".encode("latin-1")
                for name, value in extra
                if name.lower() != "connection"
            ]
    except UnicodeEncodeError:
        _log.error("handler returned a header that is not latin-1")
        return _encode_response(_INTERNAL_RESPONSE, head, keep_alive)
    body = response.body
    if status == 204 or status == 304:
        parts.append(b"\r\n")
    else:
        parts.append(b"\r\ncontent-length: %d\r\n" % len(body))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if body and not head and status != 204 and status != 304:
        parts.append(body)
    return b"".join(parts), keep_alive


def _valid_extra_headers(headers: tuple[tuple[str, str], ...]) -> bool:
    for name, value in headers:
        if _TOKEN_RE.fullmatch(name) is None or _FIELD_VALUE_RE.fullmatch(value) is None:
            return False
        if name.lower() in _RESERVED_HEADERS:
            return False
    return True


def _comma_tokens(value: str) -> list[str]:
    return [token.strip().lower() for token in value.split(",")]


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close (TCP; TLS cannot), then discard what the peer still sends for a moment
    before closing.

    Closing a socket with unread input resets the connection, and a reset can destroy an
    answer the peer has not read yet (e.g. a 413 sent while the body is still arriving).
    """
    with trio.move_on_after(_LINGER_TIMEOUT_S):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            while await stream.receive_some(_RECEIVE_BYTES_MAX):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def _refuse_overloaded(stream: trio.abc.Stream, limits: ServerLimits) -> None:
    """Answer 503 to a connection beyond connections_max, then close."""
    with trio.move_on_after(min(limits.request_read_timeout_s, _LINGER_TIMEOUT_S)):
        await stream.receive_some(_RECEIVE_BYTES_MAX)  # most likely the whole request
    with trio.move_on_after(limits.response_write_timeout_s) as scope:
        await stream.send_all(_OVERLOADED_BYTES)
    if not scope.cancelled_caught:
        await _linger(stream)


def _peer_name(stream: trio.abc.Stream) -> str:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return "unknown"
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "unknown"
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def _origin(exc: BaseException) -> str:
    """``file:line`` where ``exc`` was raised: locates a bug without echoing its message."""
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"


_INTERNAL_RESPONSE = error_response(ApiError())
_HEADERS_TOO_LARGE = InvalidRequest("The request headers are too large.")
_OVERLOADED_BYTES = _encode_response(
    error_response(Unavailable("The server is at its connection limit; retry later.")),
    head=False,
    keep_alive=False,
)[0]
