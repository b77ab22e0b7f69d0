"""HTTP/1.1 server on trio for the vault API and peer-to-peer links.

Rules kept here:
- a plain request head already whole in what was received is parsed by head_parser.py (a
  subset of what h11 accepts, with the same meaning) and its Content-Length body read here;
  any other head goes, the same bytes, to a fresh h11.Connection. Both paths build the
  RequestHead with the same code, and every rule below holds on both.
- admission before reading: a request's head is parsed and handed to the Gate (messages.py)
  before any byte of its body is read. A refused request is answered at once; if it has a
  body, the body is never read and the connection closes after a linger bounded in time and
  bytes (LINGER_TIMEOUT_S, LINGER_BYTES_MAX) so that a reset does not destroy the answer.
- an admitted body is read up to the size its Admission grants: a Content-Length above it is
  413 before reading, a chunked body is counted as it arrives and cut at the limit (413).
- a request with both Content-Length and Transfer-Encoding is 400 and closes the connection
  (RFC 9112 section 6.3: the framing is ambiguous, a smuggled request could hide in it).
- memory per connection is bounded: one receive (RECEIVE_BYTES_MAX) and what h11 holds of a
  head (header_bytes_max) or of a pipelined request (the fast path reads a body to its length,
  never past it), plus the granted body, held twice while its parts are joined. A request
  that admission refuses costs no body memory at all.
- connection slots: at most connections_max connections are served. A new connection must
  deliver its first request head within first_request_timeout_s; between requests a
  keep-alive connection may idle idle_timeout_s. When every slot is taken, an idle connection
  (waiting for a request's first byte, for evict_idle_after_s at least) is closed to admit
  the new one: the longest-idle that never sent a request, else the longest-idle kept-alive;
  a new connection waits up to evict_idle_after_s for a slot
  and is then answered 503; of more than waiting_connections_max waiting ones, the
  longest-waiting is closed unanswered.
- accept failures (EMFILE, ENFILE, ENOBUFS, ...) never end or spin the accept loop: each is
  counted, the loop waits accept_retry_delay_s, and when descriptors run out the longest-idle
  evictable connection is closed first. Trouble is logged as JSON lines through the EventLog,
  at most one line per kind per ALARM_LOG_INTERVAL_S, never with a traceback.
- responses are always Content-Length framed (no length on 204/304) with a content-type,
  encoded here in one buffer and written with one send (socket_io.py on plain TCP, else the
  stream's send_all); handler-supplied headers are validated before they go out. Keep-alive
  with many requests per connection; pipelined requests are answered in order, not
  concurrently. One task per connection.
- a handler failure never kills its connection or the server: ApiError -> its error
  response; any other exception -> a `handler_failed` line naming the exception's type and
  code location only (never the path, a header, a body or a message: they may hold secrets)
  and 500 `internal`. Peers that vanish, reset or stall are dropped quietly.

- with an ssl_context, every connection is TLS (trio.SSLStream) on the same port. Its handshake
  runs inside its slot, evictable like an idle connection, and must finish within
  tls_handshake_timeout_s; one that fails (plain HTTP, an untrusted client certificate, a client
  that gives up) is reported to ``tls_handshake_failed`` and the connection closed, with no
  answer and no traceback. A client that presented a certificate the context verified gets its
  peer id (tls.py) in every RequestHead of the connection (``peer_certificate_id``), so that
  admission can see it; the request loop is the same for TLS and plain TCP.

Request, RequestHead, Response, Handler, Gate and Admission live in messages.py (and are
re-exported here), so that errors.py builds its responses without importing this module.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import functools
import math
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
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
from tokenvault.http.head_parser import comma_tokens, parse_request_head
from tokenvault.http.messages import Admission, Gate, Handler, Request, RequestHead, Response
from tokenvault.http.socket_io import raw_socket, receive_when_readable, send_nowait
from tokenvault.log import EventLog, LogThrottle
from tokenvault.quorum.invariants import raised_at
from tokenvault.tls import peer_id_of_certificate

__all__ = [
    "Admission",
    "ConnectionSlots",
    "Gate",
    "Handler",
    "NoSlot",
    "Request",
    "RequestHead",
    "Response",
    "ServerLimits",
    "SlotStatistics",
    "serve_http",
    "serve_listeners",
]

RECEIVE_BYTES_MAX = 64 * 1024  # one read from a connection
# After refusing a request whose body is unread: how long, and how many bytes at most, to
# discard of what the client still sends before closing, so that the close does not reset
# the connection before the answer is read. Never more: a refused body is not drained.
LINGER_TIMEOUT_S = 1.0
LINGER_BYTES_MAX = 256 * 1024
ALARM_LOG_INTERVAL_S = 10.0  # at most one log line per kind of trouble per interval

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
# accept() failures that mean this process (or the system) is out of descriptors.
_DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    body_bytes_max: int = 1024 * 1024  # what a plain Handler (one without a Gate) admits
    header_bytes_max: int = 16 * 1024  # request line and headers (h11 max_incomplete_event_size)
    first_request_timeout_s: float = 5.0  # from accept to the first request's complete head
    request_read_timeout_s: float = 10.0  # from a request's first byte to its full body
    idle_timeout_s: float = 60.0  # keep-alive: from a response to the next request's first byte
    response_write_timeout_s: float = 10.0
    connections_max: int = 1024  # served at once; peer_process.py fits it to the fd limit
    evict_idle_after_s: float = 1.0  # idle this long, a connection may be closed for a new one
    waiting_connections_max: int = 64  # accepted past connections_max, waiting for a slot
    accept_retry_delay_s: float = 0.1  # after a failed accept (EMFILE, ENFILE, ...)
    tls_handshake_timeout_s: float = 10.0  # from a slot to a finished TLS handshake


# Called with a short reason ("timeout", "closed", or OpenSSL's, e.g. "HTTP_REQUEST") and the
# client's address whenever a TLS handshake fails.
TlsHandshakeFailed = Callable[[str, str], None]


async def serve_http(
    gate: Gate | Handler,
    host: str,
    port: int,
    limits: ServerLimits = ServerLimits(),
    *,
    log: EventLog | None = None,
    ssl_context: ssl.SSLContext | None = None,
    tls_handshake_failed: TlsHandshakeFailed | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind ``host:port`` (0 = a free port), report the bound port, serve until cancelled;
    HTTPS with ``ssl_context``.

    ``gate`` admits each request from its head; a plain Handler instead admits every request
    with ``limits.body_bytes_max``. With port 0 and a host resolving to several addresses,
    only the first is served (each address would otherwise get a different free port).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port == 0 and len(listeners) > 1:
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    bound_port: int = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        serve = functools.partial(
            serve_listeners, ssl_context=ssl_context, tls_handshake_failed=tls_handshake_failed
        )
        await nursery.start(serve, gate, listeners, limits, log)
        task_status.started(bound_port)


async def serve_listeners(
    gate: Gate | Handler,
    listeners: Sequence[trio.abc.Listener[trio.abc.HalfCloseableStream]],
    limits: ServerLimits = ServerLimits(),
    log: EventLog | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    tls_handshake_failed: TlsHandshakeFailed | None = None,
    task_status: trio.TaskStatus[ConnectionSlots] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the connections of ``listeners`` until cancelled; closes them on the way out.

    Reports the server's ConnectionSlots, whose statistics show what it holds. The server's
    own trouble goes to ``log`` as JSON lines (a peer passes its EventLog; without one, an
    EventLog on stderr).
    """
    if not isinstance(gate, Gate):
        gate = _AdmitEvery(Admission(body_bytes_max=limits.body_bytes_max, handler=gate))
    server = _Server(
        gate,
        limits,
        log if log is not None else EventLog(""),
        ssl_context=ssl_context,
        tls_handshake_failed=tls_handshake_failed,
    )
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(server.accept_loop, listener, nursery)
        task_status.started(server.slots)


class _AdmitEvery:
    """The Gate of a plain Handler: every request admitted alike."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def admit(self, head: RequestHead) -> Admission:
        return self._admission


# -- connection slots ------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Slot:
    """One served connection. Its scope bounds every I/O wait of the connection; cancelling
    it while the connection is idle closes the connection (eviction)."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    used: bool = False  # a request began on it: it idles as a kept-alive connection now
    evicted: bool = False


@dataclass(eq=False, slots=True, kw_only=True)
class _Waiter:
    scope: trio.CancelScope
    displaced: bool = False


class NoSlot(enum.Enum):
    """Why a waiting newcomer got no slot (the value: its kind in `connection_refused`)."""

    TIMED_OUT = "answered_503"  # none came free in time: answered 503
    DISPLACED = "unanswered"  # newer newcomers took its place: closed unanswered


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotStatistics:
    held: int  # connections being served (busy or idle)
    idle: int  # of those, waiting for a request's first byte
    waiting: int  # accepted past connections_max, waiting for a slot
    evicted_total: int  # idle connections closed to admit a new one
    refused_total: int  # newcomers answered 503 (no slot came free in time)
    dropped_total: int  # newcomers closed unanswered (displaced by newer ones while waiting)


class ConnectionSlots:
    """Who holds the server's connections_max slots, and which holder may be sent away.

    Rules: a slot is taken at accept and given back when its connection ends. A connection
    is idle while it waits for a request's first byte (the first request's or the next one's),
    busy from that byte until its response is written. When every slot is held, an idle
    holder is evicted for a newcomer once it has been idle evict_idle_after_s: the longest-idle
    of those that never sent a request, else the longest-idle kept-alive one (the peer links
    and clients in use lose their connections last); a busy connection never is. A newcomer
    that finds no slot waits for one; of at most waiting_max waiting newcomers the
    longest-waiting gives way to a newer one (sockets opened in a burst and held idle must not
    lock out the client that comes after them). Idle holders are kept in idle order, so
    finding the longest-idle one costs O(1). Every method but wait_take is synchronous and
    takes the time as ``now``.
    """

    def __init__(self, connections_max: int, evict_idle_after_s: float, waiting_max: int) -> None:
        if connections_max < 1:
            raise ValueError("connections_max must be at least 1")
        self._connections_max = connections_max
        self._evict_idle_after_s = evict_idle_after_s
        self._waiting_max = waiting_max
        self._held = 0
        # Idle holders by the time they became idle, oldest first: those that never sent a
        # request, and the kept-alive ones.
        self._unused: collections.OrderedDict[_Slot, float] = collections.OrderedDict()
        self._kept_alive: collections.OrderedDict[_Slot, float] = collections.OrderedDict()
        self._given_back = trio.lowlevel.ParkingLot()
        self._waiters: collections.deque[_Waiter] = collections.deque()  # oldest first
        self.evicted_total = 0  # idle connections closed to admit another
        self._refused_total = 0
        self._dropped_total = 0

    def take_nowait(self, now: float) -> _Slot | None:
        """A slot for a new connection, evicting the longest-idle evictable holder if all are
        held; None if there is none to have."""
        if self._held >= self._connections_max and not self.evict_idle(now):
            return None
        self._held += 1
        return _Slot()

    async def wait_take(self, deadline: float) -> _Slot | NoSlot:
        """For a newcomer take_nowait() found no slot for: a slot as soon as one is free or
        evictable; NoSlot.TIMED_OUT if none is by ``deadline``, NoSlot.DISPLACED as soon as
        waiting_max newer newcomers wait."""
        if len(self._waiters) >= self._waiting_max:
            displaced = self._waiters.popleft()
            displaced.displaced = True
            displaced.scope.cancel()
        waiter = _Waiter(scope=trio.CancelScope(deadline=deadline))
        self._waiters.append(waiter)
        try:
            with waiter.scope:
                while True:
                    slot = self.take_nowait(trio.current_time())
                    if slot is not None:
                        return slot
                    with trio.move_on_at(self._evictable_at()):
                        await self._given_back.park()
        finally:
            if not waiter.displaced:
                self._waiters.remove(waiter)
        if waiter.displaced:
            self._dropped_total += 1
            return NoSlot.DISPLACED
        slot = self.take_nowait(trio.current_time())  # one last look, at the deadline itself
        if slot is not None:
            return slot
        self._refused_total += 1
        return NoSlot.TIMED_OUT

    def idle(self, slot: _Slot, now: float) -> None:
        """The connection now waits for a request's first byte."""
        (self._kept_alive if slot.used else self._unused)[slot] = now

    def busy(self, slot: _Slot, *, request: bool = True) -> bool:
        """A request's first byte arrived (or, with request=False, a TLS handshake ended: the
        connection still sent no request). False if the connection was evicted meanwhile: it
        must end at once, its slot is no longer its own."""
        if slot.evicted:
            return False
        del (self._kept_alive if slot.used else self._unused)[slot]
        slot.used = slot.used or request
        return True

    def give_back(self, slot: _Slot) -> None:
        """The connection ended (its socket is closed)."""
        if not slot.evicted:
            self._held -= 1
            (self._kept_alive if slot.used else self._unused).pop(slot, None)
        self._given_back.unpark()

    def evict_idle(self, now: float) -> bool:
        """Close the longest-idle unused connection, else the longest-idle kept-alive one, if
        it has been idle evict_idle_after_s; True if one was."""
        for idle in (self._unused, self._kept_alive):
            if not idle:
                continue
            slot, since = next(iter(idle.items()))
            if now < since + self._evict_idle_after_s:  # the same sum as _evictable_at()
                continue
            del idle[slot]
            slot.evicted = True
            slot.scope.cancel()
            self._held -= 1
            self.evicted_total += 1
            return True
        return False

    def statistics(self) -> SlotStatistics:
        return SlotStatistics(
            held=self._held,
            idle=len(self._unused) + len(self._kept_alive),
            waiting=len(self._waiters),
            evicted_total=self.evicted_total,
            refused_total=self._refused_total,
            dropped_total=self._dropped_total,
        )

    def _evictable_at(self) -> float:
        """When the first idle holder becomes evictable (inf: none is idle)."""
        since = min(
            (next(iter(idle.values())) for idle in (self._unused, self._kept_alive) if idle),
            default=math.inf,
        )
        return since + self._evict_idle_after_s


class _Alarm:
    """Logs one kind of trouble from its running total, through a LogThrottle (at most once per
    ALARM_LOG_INTERVAL_S): a line carries how many happened since the previous line (``count``),
    the ``total`` and the ``kind`` of the latest, so that a flood of trouble is one line per
    interval."""

    def __init__(self, log: EventLog, event: str) -> None:
        self._log = log
        self._event = event
        self._logged_total = 0
        self._throttle = LogThrottle(ALARM_LOG_INTERVAL_S, clock_s=trio.current_time)

    def update(self, total: int, kind: str) -> None:
        if total > self._logged_total and self._throttle.allow() is not None:
            count = total - self._logged_total
            self._log.emit(self._event, level="warning", kind=kind, count=count, total=total)
            self._logged_total = total


# -- the server ------------------------------------------------------------------------------


class _Link:
    """One served connection's stream, with the socket beneath it when it is plain TCP
    (socket_io.py): then a kept-alive connection's next request is read once the socket is
    readable (a read first would almost always fail: the client is still reading our answer),
    and a response goes out in one direct send when the socket takes it whole, with no write
    deadline to set; else the stream's own methods do, as on TLS and in-memory streams."""

    __slots__ = ("_socket", "client", "peer_id", "scope", "stream")

    def __init__(
        self,
        stream: trio.abc.Stream,
        client: str,
        scope: trio.CancelScope,
        peer_id: str | None = None,
    ) -> None:
        self.stream = stream
        self.client = client
        self.scope = scope  # bounds every I/O wait of the connection
        self.peer_id = peer_id
        self._socket = raw_socket(stream)

    async def receive_next(self, *, first: bool) -> bytes:
        """The first bytes of the next request (b"" at EOF). ``first``: the connection's first
        request, likely to have arrived with the connection: read before waiting."""
        if self._socket is None or first:
            return await _receive(self.stream)
        return await receive_when_readable(self._socket, RECEIVE_BYTES_MAX)

    async def send_all(self, data: bytes, timeout_s: float) -> None:
        """Write ``data`` within ``timeout_s`` (the scope's deadline moves to it)."""
        if self._socket is not None:
            sent = send_nowait(self._socket, data)
            if sent == len(data):
                return
            data = data[sent:]
        self.scope.deadline = trio.current_time() + timeout_s
        await self.stream.send_all(data)


class _Reject(Exception):
    """Internal: answer ``response`` and close the connection (the request's rest unread)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _Server:
    def __init__(
        self,
        gate: Gate,
        limits: ServerLimits,
        log: EventLog,
        *,
        ssl_context: ssl.SSLContext | None,
        tls_handshake_failed: TlsHandshakeFailed | None,
    ) -> None:
        self._gate = gate
        self._limits = limits
        self._log = log
        self._ssl_context = ssl_context
        self._tls_handshake_failed = tls_handshake_failed
        self.slots = ConnectionSlots(
            limits.connections_max, limits.evict_idle_after_s, limits.waiting_connections_max
        )
        self._accept_failures_total = 0
        self._accept_failed = _Alarm(log, "accept_failed")
        self._evicted = _Alarm(log, "connection_evicted")
        self._refused = _Alarm(log, "connection_refused")

    async def accept_loop(
        self,
        listener: trio.abc.Listener[trio.abc.HalfCloseableStream],
        nursery: trio.Nursery,
    ) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    now = trio.current_time()
                    code = errno.errorcode.get(exc.errno or 0, "unknown")
                    self._accept_failures_total += 1
                    self._accept_failed.update(self._accept_failures_total, code)
                    if exc.errno in _DESCRIPTOR_ERRNOS and self.slots.evict_idle(now):
                        self._evicted.update(self.slots.evicted_total, "descriptors")
                    await trio.sleep(self._limits.accept_retry_delay_s)
                    continue
                nursery.start_soon(self._on_connection, stream)

    async def _on_connection(self, stream: trio.abc.HalfCloseableStream) -> None:
        """One accepted connection, from its slot to its close (on every way out)."""
        slots = self.slots
        try:
            slot = slots.take_nowait(trio.current_time())
            if slot is None:
                slot = await self._wait_for_slot(stream)
                if slot is None:
                    return
            self._evicted.update(slots.evicted_total, "slots_full")
            try:
                await self._guard(stream, self._serve_connection(stream, slot))
            finally:
                slots.give_back(slot)  # once its descriptor is closed
        finally:
            await trio.aclose_forcefully(stream)  # a no-op when already closed

    async def _wait_for_slot(self, stream: trio.abc.HalfCloseableStream) -> _Slot | None:
        """Past connections_max: wait a moment for a slot, else 503 (or close unanswered)."""
        slots = self.slots
        slot = await slots.wait_take(trio.current_time() + self._limits.evict_idle_after_s)
        if not isinstance(slot, NoSlot):
            return slot
        statistics = slots.statistics()
        total = statistics.refused_total + statistics.dropped_total
        self._refused.update(total, slot.value)
        if slot is NoSlot.TIMED_OUT:
            served: trio.abc.Stream = stream
            if self._ssl_context is not None:  # the 503 goes over TLS (its handshake first)
                served = trio.SSLStream(stream, self._ssl_context, server_side=True)
            await self._guard(stream, self._refuse_overloaded(served))
        return None  # a displaced newcomer is closed unanswered

    async def _guard(self, stream: trio.abc.HalfCloseableStream, work: Awaitable[None]) -> None:
        """Run one connection's work; no exception escapes, the stream is always closed."""
        try:
            await work
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer went away
        except Exception as exc:
            self._log_failure("connection_failed", exc)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.abc.HalfCloseableStream, slot: _Slot) -> None:
        """Serve requests on one connection until it closes, fails, idles or times out.

        Each request is one _exchange (head_parser.py's fast path, else h11); responses are
        encoded here. The slot's cancel scope bounds every
        I/O wait of the connection: its deadline moves between the first-request, idle, read
        and write deadlines and is lifted while the handler runs; when it fires, or the slot
        is evicted, the connection is dropped.
        """
        if isinstance(stream, trio.SocketStream):
            stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
        client = _peer_name(stream)
        limits, slots = self._limits, self.slots
        current_time = trio.current_time
        with slot.scope as io_scope:
            link = _Link(stream, client, io_scope)
            if self._ssl_context is not None:
                tls = await self._handshake(stream, slot, client)
                if tls is None:
                    return
                link = _Link(tls, client, io_scope, peer_id_of_certificate(tls.getpeercert()))
            # A new connection has first_request_timeout_s for its first byte and first head.
            wait_deadline = head_deadline = current_time() + limits.first_request_timeout_s
            received = b""  # bytes received and not yet parsed (a pipelining client's next)
            while True:
                if received:
                    await trio.lowlevel.checkpoint()  # a pipelining client: yield, as a read would
                else:
                    io_scope.deadline = wait_deadline
                    slots.idle(slot, current_time())
                    received = await link.receive_next(first=head_deadline != math.inf)
                    if not slots.busy(slot) or not received:
                        return  # evicted while idle, or closed between requests
                read_deadline = current_time() + limits.request_read_timeout_s
                rest = await self._exchange(link, received, head_deadline, read_deadline)
                if rest is None:
                    return
                received = rest
                wait_deadline = current_time() + limits.idle_timeout_s
                head_deadline = math.inf

    async def _handshake(
        self,
        stream: trio.abc.HalfCloseableStream,
        slot: _Slot,
        client: str,
    ) -> trio.SSLStream[trio.abc.HalfCloseableStream] | None:
        """The TLS handshake of a new connection; None (reported) when it failed. Meanwhile
        the connection is idle for eviction: a client that never completes one cannot hold a
        slot any longer than one that never sends a request."""
        assert self._ssl_context is not None
        tls = trio.SSLStream(stream, self._ssl_context, server_side=True)
        self.slots.idle(slot, trio.current_time())  # an eviction cancels io_scope: no report
        failure = "timeout"  # unless the handshake ends before its deadline
        try:
            with trio.move_on_after(self._limits.tls_handshake_timeout_s):
                await tls.do_handshake()
                failure = ""
        except trio.BrokenResourceError as exc:  # its cause is the ssl.SSLError, if any
            failure = getattr(exc.__cause__, "reason", None) or "closed"
        if not self.slots.busy(slot, request=False):
            return None  # evicted meanwhile
        if failure:
            if self._tls_handshake_failed is not None:
                self._tls_handshake_failed(failure, client)
            return None
        return tls

    async def _exchange(
        self, link: _Link, received: bytes, head_deadline: float, read_deadline: float
    ) -> bytes | None:
        """One request, from ``received`` (not empty) on: head, admission, body, handler,
        response. Returns what was received past the request (b"" if nothing), or None if
        the connection must close.

        A plain head already whole in ``received`` is parsed by head_parser.py and its body
        read here; any other goes to a fresh h11.Connection (which avoids driving h11's
        response state machine: responses are encoded here).
        """
        stream, client, peer_id, io_scope = link.stream, link.client, link.peer_id, link.scope
        parsed = parse_request_head(received, self._limits.header_bytes_max)
        conn: h11.Connection | None = None
        head_only = False  # a HEAD request: its answer, a refusal included, has no body
        try:
            if parsed is not None:
                head, has_body, keep_alive = _head_of(
                    parsed.method, parsed.target, b"1.1", parsed.headers, client, peer_id
                )
            else:
                conn = h11.Connection(
                    h11.SERVER, max_incomplete_event_size=self._limits.header_bytes_max
                )
                conn.receive_data(received)
                io_scope.deadline = min(head_deadline, read_deadline)
                head_read = await _receive_head(
                    stream, conn, client, peer_id, self._limits.header_bytes_max
                )
                if head_read is None:
                    return None  # closed before a whole head
                head, has_body, keep_alive = head_read
            head_only = head.method == "HEAD"
            verdict = self._admit(head) if head.path else _BAD_TARGET_RESPONSE
            if isinstance(verdict, Response):
                if has_body:
                    raise _Reject(verdict)
                if conn is None:
                    assert parsed is not None
                    rest: bytes | None = received[parsed.end :]
                else:
                    conn.next_event()  # EndOfMessage: the request is complete, nothing is unread
                    rest = _trailing(conn)
                return await self._send(link, verdict, head, keep_alive, rest)
            if conn is None:
                assert parsed is not None
                size = parsed.content_length
                if size > verdict.body_bytes_max:
                    raise _Reject(error_response(PayloadTooLarge()))
                end = parsed.end + size
                body = received[parsed.end : end]
                rest = received[end:]
                if len(body) < size:
                    io_scope.deadline = read_deadline
                    body = await _receive_exactly(stream, body, size)
            else:
                io_scope.deadline = read_deadline
                body = await _receive_body(stream, conn, head, verdict.body_bytes_max)
                rest = _trailing(conn)
        except _Reject as reject:
            refusal = reject.response
        except h11.RemoteProtocolError as exc:
            refusal = error_response(
                _HEADERS_TOO_LARGE if exc.error_status_hint == 431 else _NOT_HTTP
            )
        else:
            io_scope.deadline = math.inf
            response = await self._respond(verdict.handler, Request(head=head, body=body))
            return await self._send(link, response, head, keep_alive, rest)
        # Refused with the request's rest unread: answer, then close without reading it.
        io_scope.deadline = trio.current_time() + self._limits.response_write_timeout_s
        await stream.send_all(self._encode(refusal, head_only, keep_alive=False)[0])
        io_scope.deadline = math.inf
        await _linger(stream)
        return None

    def _admit(self, head: RequestHead) -> Admission | Response:
        try:
            return self._gate.admit(head)
        except ApiError as exc:
            return error_response(exc)
        except Exception as exc:
            self._log_failure("handler_failed", exc)
            return _INTERNAL_RESPONSE

    async def _respond(self, handler: Handler, request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
        except Exception as exc:
            self._log_failure("handler_failed", exc)
            return _INTERNAL_RESPONSE

    async def _send(
        self,
        link: _Link,
        response: Response,
        head: RequestHead,
        keep_alive: bool,
        rest: bytes | None,
    ) -> bytes | None:
        """Write a response; ``rest`` (what was received past the request) if the connection
        stays open for another request, else None (``rest`` None: the client closed)."""
        data, keep_alive = self._encode(response, head.method == "HEAD", keep_alive)
        await link.send_all(data, self._limits.response_write_timeout_s)
        return rest if keep_alive else None

    def _encode(self, response: Response, head_only: bool, keep_alive: bool) -> tuple[bytes, bool]:
        encoded = _encode_response(response, head_only, keep_alive)
        if encoded is None:
            self._log.emit("invalid_response", level="error", status=_status_text(response))
            encoded = _encode_response(_INTERNAL_RESPONSE, head_only, keep_alive)
            assert encoded is not None
        return encoded

    async def _refuse_overloaded(self, stream: trio.abc.Stream) -> None:
        """Answer 503 to a connection that found no slot, then close."""
        with trio.move_on_after(self._limits.response_write_timeout_s) as scope:
            await stream.send_all(_OVERLOADED_BYTES)
        if not scope.cancelled_caught:
            await _linger(stream)

    def _log_failure(self, event: str, exc: Exception) -> None:
        """A JSON line with the exception's type and code location: never its message (it may
        quote a value or a key), never the request."""
        self._log.emit(event, level="error", kind=type(exc).__name__, location=raised_at(exc))


async def _receive(stream: trio.abc.Stream, bytes_max: int = RECEIVE_BYTES_MAX) -> bytes:
    """One read of at most ``bytes_max`` (b"" at EOF), as bytes for h11."""
    data = await stream.receive_some(bytes_max)
    return data if type(data) is bytes else bytes(data)  # a socket's data is bytes already


def _trailing(conn: h11.Connection) -> bytes | None:
    """What h11 received past its request; None if the client closed its side too."""
    data, closed = conn.trailing_data
    return None if closed else bytes(data)


async def _receive_head(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    client: str,
    peer_certificate_id: str | None,
    header_bytes_max: int,
) -> tuple[RequestHead, bool, bool] | None:
    """Read one request head with h11: ``(head, has_body, keep_alive)``; None if the peer
    closed first.

    Raises _Reject for a head that cannot be admitted (too large, ambiguous framing, a bad
    target), h11.RemoteProtocolError for bad HTTP. Reads nothing past the head but what
    arrived with it.
    """
    event = conn.next_event()
    while event is h11.NEED_DATA:
        conn.receive_data(await _receive(stream))
        event = conn.next_event()
    if not isinstance(event, h11.Request):
        return None  # ConnectionClosed before a request began
    return _head_of_event(event, client, peer_certificate_id, header_bytes_max)


def _head_of_event(
    event: h11.Request, client: str, peer_certificate_id: str | None, header_bytes_max: int
) -> tuple[RequestHead, bool, bool]:
    """The h11 path's ``(head, has_body, keep_alive)`` (_Reject: too large, ambiguous)."""
    headers: dict[str, str] = {}
    # h11 bounds only a head still incomplete; bound a head that arrived whole here (as
    # head_parser.py does, which leaves a head over the bound to this path).
    head_bytes = len(event.target)
    for raw_name, raw_value in event.headers:
        head_bytes += len(raw_name) + len(raw_value) + 4
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    if head_bytes > header_bytes_max:
        raise _Reject(error_response(_HEADERS_TOO_LARGE))
    return _head_of(
        event.method, event.target, event.http_version, headers, client, peer_certificate_id
    )


def _head_of(
    raw_method: bytes,
    target: bytes,
    http_version: bytes,
    headers: dict[str, str],
    client: str,
    peer_certificate_id: str | None,
) -> tuple[RequestHead, bool, bool]:
    """A parsed head (from h11 or head_parser.py: names lower-cased, repeats joined) as
    ``(head, has_body, keep_alive)``. Raises _Reject for an ambiguous framing."""
    chunked = "transfer-encoding" in headers
    content_length = headers.get("content-length")
    if chunked and content_length is not None:
        raise _Reject(error_response(_AMBIGUOUS_FRAMING))
    has_body = chunked or (content_length is not None and int(content_length) > 0)

    keep_alive = http_version == b"1.1"
    connection = headers.get("connection")
    if connection is not None and "close" in comma_tokens(connection):
        keep_alive = False

    method = _METHODS.get(raw_method) or raw_method.decode("ascii")
    query_at = target.find(b"?")
    if query_at < 0:
        raw_path, query = target, ""
    else:
        raw_path, query = target[:query_at], target[query_at + 1 :].decode("ascii")
    path = raw_path.decode("ascii")
    if "%" in path:
        # A path that does not decode as UTF-8 stays as sent: it then names no route, token or
        # owner, and gets the same not-found as any unknown one (API.md: not-found is uniform).
        with contextlib.suppress(UnicodeDecodeError):
            path = unquote(path, errors="strict")
    if not path.startswith("/"):
        path = ""  # not an absolute path: refused without admission
    head = RequestHead(
        method=method,
        path=path,
        query=query,
        headers=headers,
        client=client,
        peer_certificate_id=peer_certificate_id,
    )
    return head, has_body, keep_alive


async def _receive_exactly(stream: trio.abc.Stream, first: bytes, size: int) -> bytes:
    """A Content-Length body of ``size`` bytes whose ``first`` bytes arrived with its head;
    reads nothing past it. _Reject (400) if the client closes before its end (as h11 does)."""
    parts = [first]
    missing = size - len(first)
    while missing > 0:
        data = await _receive(stream, min(RECEIVE_BYTES_MAX, missing))
        if not data:
            raise _Reject(error_response(_NOT_HTTP))
        parts.append(data)
        missing -= len(data)
    return b"".join(parts)


async def _receive_body(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    head: RequestHead,
    body_bytes_max: int,
) -> bytes:
    """Read an admitted request's body, at most ``body_bytes_max`` bytes (else _Reject 413)."""
    content_length = head.headers.get("content-length")
    if content_length is not None and int(content_length) > body_bytes_max:
        raise _Reject(error_response(PayloadTooLarge()))
    if conn.they_are_waiting_for_100_continue:
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
    parts: list[bytes | bytearray] = []
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await _receive(stream))
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > body_bytes_max:
                raise _Reject(error_response(PayloadTooLarge()))
            parts.append(event.data)
        else:
            return b"".join(parts)  # EndOfMessage (h11 raises on a body cut short)


def _encode_response(response: Response, head: bool, keep_alive: bool) -> tuple[bytes, bool] | None:
    """Encode a whole response: ``(bytes, keep_alive)``, or None if it is invalid.

    Content-Length framing always (none on 204/304, whose bodies are dropped; HEAD gets
    the length without the body). Handler-supplied header names and values are checked
    so that nothing can break the framing.
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
        return None
    if extra:
        for name, value in extra:
            if name.lower() == "connection" and "close" in comma_tokens(value):
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
        return None
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


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then discard a little of what the peer still sends before closing.

    Closing a socket with unread input resets the connection, and a reset can destroy an
    answer the peer has not read yet (e.g. a 413 sent while the body is still arriving).
    Bounded by LINGER_TIMEOUT_S and LINGER_BYTES_MAX: a client that keeps sending a refused
    body gets the close (and its reset) instead of having its body drained.
    """
    discarded = 0
    with trio.move_on_after(LINGER_TIMEOUT_S):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):  # TCP; TLS cannot half-close
                await stream.send_eof()
            while discarded < LINGER_BYTES_MAX:
                data = await stream.receive_some(
                    min(RECEIVE_BYTES_MAX, LINGER_BYTES_MAX - discarded)
                )
                if not data:
                    break
                discarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


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


def _status_text(response: Response) -> str:
    status: object = response.status
    return str(status) if isinstance(status, int) else type(status).__name__


_INTERNAL_RESPONSE = error_response(ApiError())
_HEADERS_TOO_LARGE = InvalidRequest("The request headers are too large.")
_NOT_HTTP = InvalidRequest("The request is not valid HTTP/1.1.")
_AMBIGUOUS_FRAMING = InvalidRequest(
    "A request must not carry both Content-Length and Transfer-Encoding."
)
_BAD_TARGET_RESPONSE = error_response(
    InvalidRequest("The request target must be an absolute path.")
)


def _encode_closing(response: Response) -> bytes:
    """One of this module's own responses (valid by construction), closing the connection."""
    encoded = _encode_response(response, head=False, keep_alive=False)
    assert encoded is not None
    return encoded[0]


_OVERLOADED_BYTES = _encode_closing(
    error_response(Unavailable("The server is at its connection limit; retry later."))
)
