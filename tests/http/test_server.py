"""Tests of tokenvault.http.server: admission before reading, keep-alive, limits, errors,
deadlines, connection slots, accept failures, bad peers.

Servers run inside a nursery that is cancelled on exit, even when a test fails: on
127.0.0.1 port 0 (serve_http), or on in-memory connections (serve_listeners on a
FakeListener) for the tests of admission, deadlines and slots, which run on trio's autojump
clock so that their deadlines pass in virtual time. Tests never sleep: they wait on streams
(EOF) or on trio.testing.wait_all_tasks_blocked(), or jump the mock clock; fail_after()
only guards against hangs.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import h11
import httpx
import pytest
import trio
import trio.testing

from tokenvault.http.client import HttpConnection
from tokenvault.http.errors import (
    ApiError,
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
    error_response,
    json_response,
)
from tokenvault.http.server import (
    ALARM_LOG_INTERVAL_S,
    LINGER_BYTES_MAX,
    Admission,
    ConnectionSlots,
    Gate,
    Handler,
    Request,
    RequestHead,
    Response,
    ServerLimits,
    SlotStatistics,
    serve_http,
    serve_listeners,
)
from tokenvault.log import EventLog

GUARD_S = 10.0  # hang guard only; no test waits for it
VIRTUAL_GUARD_S = 10_000.0  # the same on the autojump clock, where deadlines take no time


@asynccontextmanager
async def running_server(
    handler: Gate | Handler, limits: ServerLimits | None = None
) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            serve_http, handler, "127.0.0.1", 0, limits or ServerLimits()
        )
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()


class Recorder:
    """A handler that echoes the request as JSON and remembers every request."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        return json_response(
            200,
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "headers": dict(request.headers),
                "body": request.body.decode("utf-8", "replace"),
            },
        )


async def read_until_eof(stream: trio.abc.ReceiveStream, guard_s: float = GUARD_S) -> bytes:
    chunks = []
    with trio.fail_after(guard_s):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset by the server: also a close
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def read_one_response(stream: trio.SocketStream, method: bytes = b"GET") -> h11.Response:
    """Read one response off a raw stream (h11 client side primed with a dummy request)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    with trio.fail_after(GUARD_S):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                return event
            else:
                raise AssertionError(f"unexpected {event!r}")


async def read_full_response(
    stream: trio.abc.ReceiveStream, method: bytes = b"GET", guard_s: float = GUARD_S
) -> tuple[h11.Response, bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    response: h11.Response | None = None
    body = b""
    with trio.fail_after(guard_s):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, body
            else:
                raise AssertionError(f"unexpected {event!r}")


def header(response: h11.Response, name: bytes) -> bytes | None:
    for key, value in response.headers:
        if key == name:
            return bytes(value)
    return None


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()


async def test_keep_alive_many_requests_on_one_connection() -> None:
    recorder = Recorder()
    async with running_server(recorder) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            for i in range(200):
                status, body = await connection.request(
                    "POST", f"/v1/items/{i}", body=b"x" * i, timeout_s=GUARD_S
                )
                assert status == 200
                echoed = json.loads(body)
                assert echoed["path"] == f"/v1/items/{i}"
                assert echoed["body"] == "x" * i
        finally:
            await connection.aclose()
    assert len(recorder.requests) == 200
    assert len({request.client for request in recorder.requests}) == 1


async def test_request_fields_via_httpx() -> None:
    recorder = Recorder()
    async with running_server(recorder) as port, httpx.AsyncClient() as client:
        response = await client.get(
            f"http://127.0.0.1:{port}/v1/tok%C3%A9ns/a%2Fb?x=1&y=%20",
            headers=[(b"X-Multi", b"one"), (b"X-Multi", b"two"), (b"X-Latin", b"caf\xe9")],
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert int(response.headers["content-length"]) == len(response.content)
        second = await client.get(f"http://127.0.0.1:{port}/again")
        assert second.status_code == 200
    request = recorder.requests[0]
    assert request.method == "GET"
    assert request.path == "/v1/tokéns/a/b"
    assert request.query == "x=1&y=%20"
    assert request.headers["x-multi"] == "one, two"
    assert request.headers["x-latin"] == "caf\xe9"
    assert request.headers["host"] == f"127.0.0.1:{port}"
    assert request.body == b""
    client_host, _, client_port = request.client.rpartition(":")
    assert client_host == "127.0.0.1"
    assert int(client_port) > 0
    assert recorder.requests[1].client == request.client  # httpx kept the connection


async def test_body_over_limit_is_413_and_closes() -> None:
    recorder = Recorder()
    async with running_server(recorder, ServerLimits(body_bytes_max=1024)) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            status, body = await connection.request(
                "POST", "/v1/x", body=b"a" * 1024, timeout_s=GUARD_S
            )
            assert status == 200  # exactly at the limit is fine
            status, body = await connection.request(
                "POST", "/v1/x", body=b"a" * 200_000, timeout_s=GUARD_S
            )
            assert status == 413
            assert body == (
                b'{"error":{"code":"payload_too_large",'
                b'"message":"The request body is larger than the server accepts."}}'
            )
            status, _ = await connection.request("GET", "/v1/after", timeout_s=GUARD_S)
            assert status == 200  # the server still serves (on a new connection)
        finally:
            await connection.aclose()
    assert [r.path for r in recorder.requests] == ["/v1/x", "/v1/after"]
    assert recorder.requests[0].client != recorder.requests[1].client


async def test_chunked_body_over_limit_is_413() -> None:
    recorder = Recorder()
    async with running_server(recorder, ServerLimits(body_bytes_max=100)) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            chunk = b"40\r\n" + b"z" * 64 + b"\r\n"
            await stream.send_all(
                b"POST /v1/x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" + chunk * 3
            )
            status, headers, body = split_response(await read_until_eof(stream))
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert recorder.requests == []


async def test_chunked_body_is_read() -> None:
    recorder = Recorder()
    async with running_server(recorder) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            response, body = await read_full_response(stream)
            assert response.status_code == 200
            assert json.loads(body)["body"] == "hello world"
            # The connection is still usable afterwards.
            await stream.send_all(b"GET /v1/next HTTP/1.1\r\nhost: x\r\n\r\n")
            response, body = await read_full_response(stream)
            assert response.status_code == 200
            assert json.loads(body)["path"] == "/v1/next"


async def test_chunked_body_via_httpx_stream() -> None:
    recorder = Recorder()

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"ab", b"cd", b"ef"):
            yield part

    async with running_server(recorder) as port, httpx.AsyncClient() as client:
        response = await client.post(f"http://127.0.0.1:{port}/v1/s", content=parts())
    assert response.status_code == 200
    assert recorder.requests[0].body == b"abcdef"
    assert recorder.requests[0].headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /x HTTP/1.1 extra\r\n\r\n",
        b"GET /x HTTP/1.1\r\nbad header line\r\n\r\n",
        b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n",
        b"POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS hello-ish
    ],
)
async def test_malformed_request_is_400_and_server_survives(garbage: bytes) -> None:
    recorder = Recorder()
    async with running_server(recorder) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(garbage)
            status, headers, body = split_response(await read_until_eof(stream))
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert body == error_body("invalid_request", "The request is not valid HTTP/1.1.")
        connection = HttpConnection("127.0.0.1", port)
        try:
            status, _ = await connection.request("GET", "/v1/after", timeout_s=GUARD_S)
        finally:
            await connection.aclose()
        assert status == 200
    assert [r.path for r in recorder.requests] == ["/v1/after"]


@pytest.mark.parametrize("complete", [True, False])
async def test_headers_too_large_is_400(complete: bool) -> None:
    head = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"b" * 4096
    if complete:
        head += b"\r\n\r\n"
    async with running_server(Recorder(), ServerLimits(header_bytes_max=1024)) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(head)
            status, _, body = split_response(await read_until_eof(stream))
    assert status == 400
    assert json.loads(body)["error"] == {
        "code": "invalid_request",
        "message": "The request headers are too large.",
    }


async def test_bad_target_is_400_and_connection_kept() -> None:
    recorder = Recorder()
    async with running_server(recorder) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            # A path that does not decode as UTF-8 reaches the handler as sent (it names nothing).
            await stream.send_all(b"GET /bad%ff/%41 HTTP/1.1\r\nhost: x\r\n\r\n")
            response, _ = await read_full_response(stream)
            assert response.status_code == 200
            await stream.send_all(b"GET http://x/abs HTTP/1.1\r\nhost: x\r\n\r\n")
            response, body = await read_full_response(stream)
            assert response.status_code == 400
            assert json.loads(body)["error"]["code"] == "invalid_request"
            await stream.send_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
            response, _ = await read_full_response(stream)
            assert response.status_code == 200
    assert [r.path for r in recorder.requests] == ["/bad%ff/%41", "/ok"]


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InvalidRequest("records must be a list"), 400, "invalid_request"),
        (Unauthenticated(), 401, "unauthenticated"),
        (Forbidden(), 403, "forbidden"),
        (NotFound(), 404, "not_found"),
        (MethodNotAllowed(), 405, "method_not_allowed"),
        (PayloadTooLarge(), 413, "payload_too_large"),
        (Unavailable(), 503, "unavailable"),
        (Unavailable("Quorum lost.", retry_after_s=7), 503, "unavailable"),
        (ApiError(), 500, "internal"),
    ],
)
async def test_handler_api_errors(error: ApiError, status: int, code: str) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/fail":
            raise error
        return Response(status=200, body=b"{}")

    async with running_server(handler) as port, httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/fail")
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        assert response.content == error_body(code, error.message)
        if error.retry_after_s is None:
            assert "retry-after" not in response.headers
        else:
            assert response.headers["retry-after"] == str(error.retry_after_s)
        again = await client.get(f"http://127.0.0.1:{port}/ok")
        assert again.status_code == 200


async def test_handler_crash_is_500_logged_as_json_without_path_or_message() -> None:
    recorder = Recorder()

    async def handler(request: Request) -> Response:
        if request.path.startswith("/crash"):
            raise RuntimeError("secret-value-must-not-be-logged")
        return await recorder(request)

    log_stream = io.StringIO()
    log = EventLog("n1", stream=log_stream)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_http, handler, "127.0.0.1", 0, log=log))
        connection = HttpConnection("127.0.0.1", port)
        try:
            status, body = await connection.request(
                "POST", "/crash/tok_secret_path", body=b"secret-body", timeout_s=GUARD_S
            )
            assert status == 500
            assert json.loads(body)["error"]["code"] == "internal"
            status, _ = await connection.request("GET", "/ok", timeout_s=GUARD_S)
            assert status == 200
        finally:
            await connection.aclose()
        nursery.cancel_scope.cancel()
    assert len({r.client for r in recorder.requests}) == 1
    text = log_stream.getvalue()
    assert "secret" not in text
    [line] = [json.loads(line) for line in text.splitlines()]
    assert line["level"] == "error"
    assert line["event"] == "handler_failed"
    assert line["kind"] == "RuntimeError"
    file_name, _, line_number = line["location"].rpartition(":")
    assert file_name.endswith("tests/http/test_server.py")
    assert int(line_number) > 0
    assert set(line) == {"ts", "level", "peer", "event", "kind", "location"}


async def test_invalid_handler_response_is_500() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/inject":
            return Response(status=200, headers=(("x-evil", "a\r\nset-cookie: b"),))
        if request.path == "/framing":
            return Response(status=200, headers=(("content-length", "0"),))
        if request.path == "/status":
            return Response(status=99)
        return Response(status=200, body=b"{}")

    async with running_server(handler) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            for path in ("/inject", "/framing", "/status"):
                status, body = await connection.request("GET", path, timeout_s=GUARD_S)
                assert status == 500, path
                assert json.loads(body)["error"]["code"] == "internal"
            status, _ = await connection.request("GET", "/ok", timeout_s=GUARD_S)
            assert status == 200
        finally:
            await connection.aclose()


async def test_response_headers_and_connection_close_from_handler() -> None:
    async def handler(request: Request) -> Response:
        return Response(
            status=201,
            body=b"hi",
            content_type="text/plain; charset=utf-8",
            headers=(("x-one", "1"), ("connection", "close")),
        )

    async with running_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            status, headers, body = split_response(await read_until_eof(stream))
    assert status == 201
    assert body == b"hi"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["content-length"] == "2"
    assert headers["x-one"] == "1"
    assert headers["connection"] == "close"


async def test_client_asking_close_gets_close() -> None:
    async with running_server(Recorder()) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            status, headers, body = split_response(await read_until_eof(stream))
        assert status == 200
        assert headers["connection"] == "close"
        assert json.loads(body)["path"] == "/a"
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /b HTTP/1.0\r\n\r\n")  # HTTP/1.0: close by default
            status, headers, body = split_response(await read_until_eof(stream))
        assert status == 200
        assert json.loads(body)["path"] == "/b"


async def test_head_and_204() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/empty":
            return Response(status=204)
        return Response(status=200, body=b"0123456789")

    async with running_server(handler) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"HEAD /x HTTP/1.1\r\nhost: x\r\n\r\n")
            response, body = await read_full_response(stream, b"HEAD")
            assert response.status_code == 200
            assert header(response, b"content-length") == b"10"
            assert body == b""
            await stream.send_all(b"GET /empty HTTP/1.1\r\nhost: x\r\n\r\n")
            response, body = await read_full_response(stream)
            assert response.status_code == 204
            assert header(response, b"content-length") is None
            await stream.send_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
            response, body = await read_full_response(stream)
            assert body == b"0123456789"


async def test_expect_100_continue() -> None:
    recorder = Recorder()
    async with running_server(recorder) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"POST /c HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n"
            )
            with trio.fail_after(GUARD_S):
                interim = await stream.receive_some(65536)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send_all(b"abc")
            response, _ = await read_full_response(stream, b"POST")
            assert response.status_code == 200
    assert recorder.requests[0].body == b"abc"


async def test_client_disconnect_mid_body_does_not_break_server() -> None:
    recorder = Recorder()
    limits = ServerLimits(connections_max=1)
    async with running_server(recorder, limits) as port:
        for _ in range(3):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(
                b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n" + b"y" * 10
            )
            await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
        # connections_max=1: a leaked connection task would make this one a 503.
        connection = HttpConnection("127.0.0.1", port)
        try:
            status, _ = await connection.request("GET", "/after", timeout_s=GUARD_S)
        finally:
            await connection.aclose()
        assert status == 200
    assert [r.path for r in recorder.requests] == ["/after"]


async def test_client_disconnect_before_response_is_harmless() -> None:
    handler = HoldingHandler(body=b"x" * 100_000)
    async with running_server(handler, ServerLimits(connections_max=1)) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await handler.entered.wait()
        await stream.aclose()  # gone before the response is written
        handler.release.set()
        await trio.testing.wait_all_tasks_blocked()
        connection = HttpConnection("127.0.0.1", port)
        try:
            status, body = await connection.request("GET", "/fast", timeout_s=GUARD_S)
        finally:
            await connection.aclose()
        assert status == 200
        assert len(body) == 100_000


async def test_server_stops_on_cancel_and_releases_port() -> None:
    async with running_server(Recorder()) as port:
        connection = HttpConnection("127.0.0.1", port)
        status, _ = await connection.request("GET", "/x", timeout_s=GUARD_S)
        assert status == 200
    # The server is cancelled with a keep-alive connection still open: it is gone.
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    await connection.aclose()


# -- in-memory connections under the autojump clock -------------------------------------------
#
# serve_listeners() on a FakeListener: connections are in-memory stream pairs (or an
# EndlessSender that counts what the server reads), accept() failures are scripted, and time is
# trio's autojump clock: a test that waits for a deadline takes no real time.


class FakeListener(trio.abc.Listener[trio.abc.HalfCloseableStream]):
    """Hands the server in-memory connections, and accept() failures, in the order given."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[
            trio.abc.HalfCloseableStream | OSError
        ](math.inf)
        self.accept_calls = 0

    def connect(self) -> trio.abc.HalfCloseableStream:
        """A new connection; returns the client's end."""
        client, server = trio.testing.memory_stream_pair()
        self._send.send_nowait(server)
        return client

    def hand(self, server_end: trio.abc.HalfCloseableStream) -> None:
        self._send.send_nowait(server_end)

    def fail(self, error: OSError) -> None:
        self._send.send_nowait(error)

    async def accept(self) -> trio.abc.HalfCloseableStream:
        item = await self._receive.receive()
        self.accept_calls += 1
        if isinstance(item, OSError):
            raise item
        return item

    async def aclose(self) -> None:
        self._receive.close()
        await trio.lowlevel.checkpoint()


ENDLESS_BODY_BYTES_MAX = 64 * 1024 * 1024  # an EndlessSender breaks off past this


class EndlessSender(trio.abc.HalfCloseableStream):
    """The server's end of a connection whose client sends ``head`` (in a read of its own),
    then ``body_part`` again and again for as long as the server reads. Records how many body
    bytes the server read in all, and how many it had read when it began to answer."""

    def __init__(self, head: bytes, body_part: bytes = b"x" * 65536) -> None:
        self._head = head
        self._body_part = body_part
        self._unread = b""  # of the current body part
        self.body_bytes_read = 0
        self.body_bytes_read_when_answered: int | None = None
        self.answer = bytearray()
        self.half_closed = False
        self.closed = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.closed.is_set():
            raise trio.ClosedResourceError
        if self._head:
            head, self._head = self._head, b""
            return head
        if self.body_bytes_read >= ENDLESS_BODY_BYTES_MAX:
            raise trio.BrokenResourceError("the server reads on and on")  # fail, never hang
        if not self._unread:
            self._unread = self._body_part
        size = len(self._unread) if max_bytes is None else max_bytes
        data, self._unread = self._unread[:size], self._unread[size:]
        self.body_bytes_read += len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed.is_set() or self.half_closed:
            raise trio.ClosedResourceError
        if self.body_bytes_read_when_answered is None:
            self.body_bytes_read_when_answered = self.body_bytes_read
        self.answer += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self.half_closed = True

    async def aclose(self) -> None:
        self.closed.set()
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def memory_server(
    gate: Gate | Handler, limits: ServerLimits | None = None, log: EventLog | None = None
) -> AsyncIterator[tuple[FakeListener, ConnectionSlots]]:
    listener = FakeListener()
    if log is None:
        log = EventLog("n1", stream=io.StringIO())
    async with trio.open_nursery() as nursery:
        slots: ConnectionSlots = await nursery.start(
            serve_listeners, gate, [listener], limits or ServerLimits(), log
        )
        try:
            yield listener, slots
        finally:
            nursery.cancel_scope.cancel()


async def serve_until_closed(
    gate: Gate | Handler, sender: EndlessSender
) -> tuple[int, dict[str, str], bytes]:
    """Serve ``sender``'s connection until the server closes it: its answer, split. The
    connection's slot must be given back by then."""
    async with memory_server(gate) as (listener, slots):
        listener.hand(sender)
        with trio.fail_after(VIRTUAL_GUARD_S):
            await sender.closed.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert slots.statistics().held == 0
    return split_response(bytes(sender.answer))


class HoldingHandler:
    """Answers 200 with ``body``; holds a request on /slow until ``release`` is set."""

    def __init__(self, body: bytes = b"{}") -> None:
        self.entered = trio.Event()
        self.release = trio.Event()
        self._body = body

    async def __call__(self, request: Request) -> Response:
        if request.path == "/slow":
            self.entered.set()
            await self.release.wait()
        return Response(status=200, body=self._body)


class PathGate:
    """Admits POST/GET on ``/open`` with ``body_bytes_max`` (answered by a Recorder) and refuses
    everything else 401, as an API refuses a request without a key. Records, for each head,
    how many body bytes ``sender`` had given the server when the head was judged."""

    def __init__(self, body_bytes_max: int, sender: EndlessSender | None = None) -> None:
        self.recorder = Recorder()
        self._admission = Admission(body_bytes_max=body_bytes_max, handler=self.recorder)
        self._sender = sender
        self.heads: list[RequestHead] = []
        self.body_bytes_read_at_admission: list[int] = []

    def admit(self, head: RequestHead) -> Admission | Response:
        self.heads.append(head)
        if self._sender is not None:
            self.body_bytes_read_at_admission.append(self._sender.body_bytes_read)
        if head.path == "/open":
            return self._admission
        return error_response(Unauthenticated())


PEER_BATCH_HEAD = (
    b"POST /internal/v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
    % (32 * 1024 * 1024)
)
CHUNKED_HEAD = b"POST %s HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
CHUNK = b"4000\r\n" + b"z" * 0x4000 + b"\r\n"  # one chunk of 16 KiB, framed


@pytest.mark.parametrize(
    ("head", "body_part"),
    [(PEER_BATCH_HEAD, b"x" * 65536), (CHUNKED_HEAD % b"/internal/v1/messages", CHUNK)],
    ids=["content-length", "chunked"],
)
async def test_refused_request_is_answered_before_its_body_is_read(
    head: bytes, body_part: bytes, autojump_clock: trio.testing.MockClock
) -> None:
    sender = EndlessSender(head, body_part)
    gate = PathGate(body_bytes_max=32 * 1024 * 1024, sender=sender)
    status, headers, body = await serve_until_closed(gate, sender)
    assert status == 401
    assert json.loads(body)["error"]["code"] == "unauthenticated"
    assert headers["connection"] == "close"
    assert [h.path for h in gate.heads] == ["/internal/v1/messages"]
    assert gate.body_bytes_read_at_admission == [0]
    assert sender.body_bytes_read_when_answered == 0
    # After the answer, a linger bounded in bytes: the body is never drained.
    assert sender.half_closed
    assert sender.body_bytes_read <= LINGER_BYTES_MAX
    assert gate.recorder.requests == []


async def test_content_length_over_the_grant_is_413_before_reading(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sender = EndlessSender(b"POST /open HTTP/1.1\r\nhost: x\r\ncontent-length: 1001\r\n\r\n")
    gate = PathGate(body_bytes_max=1000, sender=sender)
    status, headers, body = await serve_until_closed(gate, sender)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert headers["connection"] == "close"
    assert gate.body_bytes_read_at_admission == [0]
    assert sender.body_bytes_read_when_answered == 0
    assert gate.recorder.requests == []


async def test_chunked_body_is_cut_at_the_grant(autojump_clock: trio.testing.MockClock) -> None:
    body_bytes_max = 100_000
    sender = EndlessSender(CHUNKED_HEAD % b"/open", CHUNK)
    gate = PathGate(body_bytes_max=body_bytes_max, sender=sender)
    status, _, _ = await serve_until_closed(gate, sender)
    assert status == 413
    assert gate.body_bytes_read_at_admission == [0]
    read = sender.body_bytes_read_when_answered
    assert read is not None
    assert body_bytes_max < read <= body_bytes_max + len(CHUNK)
    assert gate.recorder.requests == []


async def test_admitted_body_up_to_the_grant_is_read_and_handled() -> None:
    gate = PathGate(body_bytes_max=100_000)
    async with memory_server(gate) as (listener, _):
        client = listener.connect()
        body = b"b" * 100_000
        await client.send_all(b"POST /open HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        await client.send_all(body)
        response, answer = await read_full_response(client, b"POST")
        assert response.status_code == 200
        assert json.loads(answer)["body"] == body.decode()
        await client.aclose()
    [request] = gate.recorder.requests
    assert request.head is gate.heads[0]
    assert request.body == body


async def test_refusal_of_a_request_without_body_keeps_the_connection() -> None:
    gate = PathGate(body_bytes_max=1000)
    async with memory_server(gate) as (listener, _):
        client = listener.connect()
        statuses = []
        for request in (
            b"GET /closed HTTP/1.1\r\nhost: x\r\n\r\n",
            b"GET /open HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        ):
            await client.send_all(request)
            statuses.append((await read_full_response(client))[0].status_code)
        assert statuses == [401, 200]  # on one connection
        # With a body, the refusal closes the connection: the body stays unread.
        await client.send_all(b"POST /closed HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n")
        status, headers, _ = split_response(await read_until_eof(client, VIRTUAL_GUARD_S))
    assert status == 401
    assert headers["connection"] == "close"
    assert [h.path for h in gate.heads] == ["/closed", "/open", "/closed"]
    assert len(gate.recorder.requests) == 1


@pytest.mark.parametrize(
    "framing",
    [
        b"content-length: 45\r\ntransfer-encoding: chunked\r\n",
        b"transfer-encoding: chunked\r\ncontent-length: 45\r\n",
    ],
)
async def test_content_length_with_transfer_encoding_is_400_and_closes(framing: bytes) -> None:
    gate = PathGate(body_bytes_max=1000)
    smuggled = b"GET /open?smuggled HTTP/1.1\r\nhost: x\r\n\r\n"
    async with memory_server(gate) as (listener, _):
        client = listener.connect()
        await client.send_all(
            b"POST /open HTTP/1.1\r\nhost: x\r\n" + framing + b"\r\n0\r\n\r\n" + smuggled
        )
        raw = await read_until_eof(client, VIRTUAL_GUARD_S)
    status, headers, body = split_response(raw)
    assert status == 400
    assert headers["connection"] == "close"
    assert body == error_body(
        "invalid_request", "A request must not carry both Content-Length and Transfer-Encoding."
    )
    assert raw.count(b"HTTP/1.1 ") == 1  # the smuggled request is never answered
    assert gate.heads == []


@pytest.mark.parametrize(
    ("partial", "closed_after_s"),
    [
        (b"", ServerLimits().first_request_timeout_s),  # idle: nothing sent at all
        (b"POST /x HTTP/1.1\r\nhost: x\r\n", ServerLimits().first_request_timeout_s),
        (  # the head is in, the body stalls: the read timeout runs from the first byte
            b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789",
            ServerLimits().request_read_timeout_s,
        ),
    ],
    ids=["silent", "head-stalls", "body-stalls"],
)
async def test_first_request_deadlines_close_the_connection(
    partial: bytes, closed_after_s: float, autojump_clock: trio.testing.MockClock
) -> None:
    recorder = Recorder()
    async with memory_server(recorder) as (listener, slots):
        client = listener.connect()
        started = trio.current_time()
        if partial:
            await client.send_all(partial)
        assert await read_until_eof(client, VIRTUAL_GUARD_S) == b""
        assert trio.current_time() - started == pytest.approx(closed_after_s)
        await trio.testing.wait_all_tasks_blocked()
        assert slots.statistics().held == 0
    assert recorder.requests == []


async def test_keep_alive_connection_idles_up_to_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits()
    assert limits.idle_timeout_s > 10 * limits.first_request_timeout_s
    async with memory_server(Recorder(), limits) as (listener, _):
        client = listener.connect()
        await client.send_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        response, _ = await read_full_response(client)
        assert response.status_code == 200
        answered_at = trio.current_time()
        assert await read_until_eof(client, VIRTUAL_GUARD_S) == b""
        assert trio.current_time() - answered_at == pytest.approx(limits.idle_timeout_s)


async def test_longest_idle_connection_is_evicted_for_a_new_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits(connections_max=2)
    async with memory_server(Recorder(), limits) as (listener, slots):
        silent = listener.connect()  # idle since t=0, never sends a byte
        await trio.testing.wait_all_tasks_blocked()
        autojump_clock.jump(0.5)
        kept_alive = listener.connect()
        await kept_alive.send_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        response, _ = await read_full_response(kept_alive)  # then idle since t=0.5
        assert response.status_code == 200
        newcomer = listener.connect()
        await newcomer.send_all(b"GET /new HTTP/1.1\r\nhost: x\r\n\r\n")
        response, _ = await read_full_response(newcomer)
        assert response.status_code == 200
        # Admitted once the longest-idle holder had been idle evict_idle_after_s, not later.
        assert trio.current_time() == pytest.approx(limits.evict_idle_after_s)
        assert await read_until_eof(silent, VIRTUAL_GUARD_S) == b""
        await kept_alive.send_all(b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n")
        response, _ = await read_full_response(kept_alive)
        assert response.status_code == 200
        statistics = slots.statistics()
    assert statistics.evicted_total == 1
    assert statistics.refused_total == 0
    assert statistics.held == 2


async def test_busy_connections_are_never_evicted_newcomer_gets_503(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = HoldingHandler()
    limits = ServerLimits(connections_max=1, waiting_connections_max=1)
    async with memory_server(handler, limits) as (listener, slots):
        busy = listener.connect()
        await busy.send_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await handler.entered.wait()
        earlier = listener.connect()  # waits for a slot...
        await earlier.send_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        assert slots.statistics().waiting == 1
        autojump_clock.jump(0.5)
        newest = listener.connect()  # ...until a newer newcomer takes its place
        await newest.send_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        assert await read_until_eof(earlier, VIRTUAL_GUARD_S) == b""
        arrived = trio.current_time()
        status, headers, body = split_response(await read_until_eof(newest, VIRTUAL_GUARD_S))
        assert status == 503
        assert headers["retry-after"] == "1"
        assert json.loads(body)["error"]["code"] == "unavailable"
        assert trio.current_time() - arrived == pytest.approx(limits.evict_idle_after_s)
        handler.release.set()
        response, _ = await read_full_response(busy)
        assert response.status_code == 200
        statistics = slots.statistics()
    assert (statistics.evicted_total, statistics.refused_total, statistics.dropped_total) == (
        0,
        1,
        1,
    )


async def test_accept_failures_back_off_and_are_logged_once_per_interval(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    log_stream = io.StringIO()
    limits = ServerLimits()
    failures = 250
    async with memory_server(Recorder(), limits, EventLog("n1", log_stream)) as (listener, _):
        started = trio.current_time()
        for _ in range(failures):
            listener.fail(OSError(errno.EMFILE, "Too many open files"))
        client = listener.connect()
        await client.send_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        response, _ = await read_full_response(client, guard_s=VIRTUAL_GUARD_S)
        assert response.status_code == 200
        # Each failure waited accept_retry_delay_s: the loop never spun.
        waited_s = trio.current_time() - started
        assert waited_s == pytest.approx(failures * limits.accept_retry_delay_s)
        assert listener.accept_calls == failures + 1
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert {line["event"] for line in lines} == {"accept_failed"}
    assert len(lines) == math.ceil(waited_s / ALARM_LOG_INTERVAL_S)
    assert {line["kind"] for line in lines} == {"EMFILE"}
    assert {line["level"] for line in lines} == {"warning"}
    assert lines[0]["count"] == 1
    assert sum(line["count"] for line in lines) == lines[-1]["total"] <= failures
    assert caplog.records == []  # nothing through logging: no traceback anywhere


async def test_running_out_of_descriptors_evicts_the_longest_idle_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits()
    log_stream = io.StringIO()
    async with memory_server(Recorder(), limits, EventLog("n1", log_stream)) as (listener, slots):
        silent = listener.connect()
        await trio.testing.wait_all_tasks_blocked()
        autojump_clock.jump(limits.evict_idle_after_s)
        listener.fail(OSError(errno.EMFILE, "Too many open files"))
        assert await read_until_eof(silent, VIRTUAL_GUARD_S) == b""
        assert trio.current_time() < limits.first_request_timeout_s
        assert slots.statistics().evicted_total == 1
    events = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [(e["event"], e["kind"]) for e in events] == [
        ("accept_failed", "EMFILE"),
        ("connection_evicted", "descriptors"),
    ]


def test_connection_slots_evict_only_idle_holders_past_the_grace() -> None:
    slots = ConnectionSlots(connections_max=2, evict_idle_after_s=1.0, waiting_max=1)
    first, second = slots.take_nowait(0.0), slots.take_nowait(0.0)
    assert first is not None and second is not None
    slots.idle(first, now=0.0)
    slots.idle(second, now=0.5)
    assert slots.take_nowait(0.9) is None  # nobody idle long enough
    assert slots.busy(second)  # second's request begins: never evictable while busy
    third = slots.take_nowait(1.0)  # first, idle since 0.0, makes room
    assert third is not None
    assert not slots.busy(first)  # evicted: must end at once
    slots.give_back(first)  # its end gives back nothing more
    assert slots.statistics() == SlotStatistics(
        held=2, idle=0, waiting=0, evicted_total=1, refused_total=0, dropped_total=0
    )
    assert slots.take_nowait(100.0) is None  # both holders busy
    slots.give_back(second)
    assert slots.take_nowait(100.0) is not None
    assert slots.statistics().held == 2


def test_connection_slots_evict_unused_connections_before_kept_alive_ones() -> None:
    slots = ConnectionSlots(connections_max=2, evict_idle_after_s=1.0, waiting_max=1)
    kept_alive, unused = slots.take_nowait(0.0), slots.take_nowait(0.0)
    assert kept_alive is not None and unused is not None
    slots.idle(kept_alive, now=0.0)
    assert slots.busy(kept_alive)  # one request, then idle between requests since 0.0
    slots.idle(kept_alive, now=0.0)
    slots.idle(unused, now=0.5)  # never sent a byte, idle since 0.5
    assert slots.take_nowait(2.0) is not None  # both past the grace: the unused one goes
    assert not slots.busy(unused)
    assert slots.statistics().idle == 1  # the kept-alive one, idle the longest, stays
    assert slots.take_nowait(2.0) is not None  # and goes only when no unused one can
    assert not slots.busy(kept_alive)
    assert slots.statistics().evicted_total == 2


# -- the fast path for plain heads (head_parser.py) and the h11 path, on one connection -------


async def test_a_body_in_pieces_and_pipelined_requests_are_framed_in_order() -> None:
    """A plain head whose body arrives in several reads, then a request h11 parses (a chunked
    one), then a plain one, the last two in one read: each body is its own, the answers come
    in order, the connection stays open."""
    recorder = Recorder()
    async with memory_server(recorder) as (listener, _):
        client = listener.connect()
        with trio.fail_after(GUARD_S):
            await client.send_all(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(b"defg")
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(
                b"hij"
                + (CHUNKED_HEAD % b"/b")
                + b"3\r\nklm\r\n0\r\n\r\n"
                + b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nno"
            )
            answers = b""
            while answers.count(b"HTTP/1.1 200") < 3:
                answers += await client.receive_some(65536)
    assert [(r.path, r.body) for r in recorder.requests] == [
        ("/a", b"abcdefghij"),
        ("/b", b"klm"),
        ("/c", b"no"),
    ]
    assert b"connection: close" not in answers


async def test_a_body_cut_short_by_the_client_closing_is_400() -> None:
    recorder = Recorder()
    async with memory_server(recorder) as (listener, _):
        client = listener.connect()
        await client.send_all(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        await client.send_eof()
        status, headers, body = split_response(await read_until_eof(client))
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "invalid_request"
    assert recorder.requests == []


async def test_a_kept_alive_tcp_connection_is_evicted_or_timed_out_while_it_waits() -> None:
    """On a real socket (where the server waits for readable before it reads): eviction and
    the idle deadline both end a kept-alive connection's wait."""
    limits = ServerLimits(connections_max=1, evict_idle_after_s=0.0, idle_timeout_s=0.2)
    async with (
        running_server(Recorder(), limits) as port,
        await trio.open_tcp_stream("127.0.0.1", port) as first,
    ):
        await first.send_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        response, _ = await read_full_response(first)
        assert response.status_code == 200
        async with await trio.open_tcp_stream("127.0.0.1", port) as second:
            await second.send_all(b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n")
            response, _ = await read_full_response(second)
            assert response.status_code == 200
            assert await read_until_eof(first) == b""  # evicted for the second
            started = trio.current_time()
            assert await read_until_eof(second) == b""  # idle past idle_timeout_s
            assert trio.current_time() - started >= 0.1


async def test_a_response_larger_than_the_socket_takes_at_once_is_written_whole() -> None:
    body = bytes(range(256)) * 16 * 1024  # 4 MiB: more than one send of a TCP socket takes
    async with (
        running_server(HoldingHandler(body=body)) as port,
        await trio.open_tcp_stream("127.0.0.1", port) as stream,
    ):
        for _ in range(2):
            await stream.send_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            response, received = await read_full_response(stream)
            assert response.status_code == 200
            assert received == body
