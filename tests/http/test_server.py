"""Tests of tokenvault.http.server: keep-alive, limits, errors, timeouts, bad peers.

Every server runs on 127.0.0.1 port 0 inside a nursery that is cancelled on exit, even
when a test fails. Tests never sleep: they wait on sockets (EOF) or on
trio.testing.wait_all_tasks_blocked(); fail_after() only guards against hangs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
    json_response,
)
from tokenvault.http.server import Handler, Request, Response, ServerLimits, serve_http

GUARD_S = 10.0  # hang guard only; no test waits for it


@asynccontextmanager
async def running_server(
    handler: Handler, limits: ServerLimits | None = None
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


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    chunks = []
    with trio.fail_after(GUARD_S):
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
    stream: trio.SocketStream, method: bytes = b"GET"
) -> tuple[h11.Response, bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    response: h11.Response | None = None
    body = b""
    with trio.fail_after(GUARD_S):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
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


async def test_handler_crash_is_500_logged_without_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()

    async def handler(request: Request) -> Response:
        if request.path == "/crash":
            raise RuntimeError("secret-value-must-not-be-logged")
        return await recorder(request)

    caplog.set_level(logging.DEBUG, logger="tokenvault.http")
    async with running_server(handler) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            status, body = await connection.request(
                "POST", "/crash", body=b"secret-body", timeout_s=GUARD_S
            )
            assert status == 500
            assert json.loads(body)["error"]["code"] == "internal"
            status, _ = await connection.request("GET", "/ok", timeout_s=GUARD_S)
            assert status == 200
        finally:
            await connection.aclose()
    assert len({r.client for r in recorder.requests}) == 1
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "RuntimeError" in text
    assert "secret" not in text


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
    release = trio.Event()
    entered = trio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            entered.set()
            await release.wait()
        return Response(status=200, body=b"x" * 100_000)

    async with running_server(handler, ServerLimits(connections_max=1)) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await entered.wait()
        await stream.aclose()  # gone before the response is written
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        connection = HttpConnection("127.0.0.1", port)
        try:
            status, body = await connection.request("GET", "/fast", timeout_s=GUARD_S)
        finally:
            await connection.aclose()
        assert status == 200
        assert len(body) == 100_000


@pytest.mark.parametrize(
    "partial",
    [
        b"",  # idle: nothing sent at all
        b"POST /x HTTP/1.1\r\nhost: x\r\n",  # head never finishes
        b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789",  # body stalls
    ],
)
async def test_read_and_idle_timeouts_close_the_connection(partial: bytes) -> None:
    recorder = Recorder()
    limits = ServerLimits(request_read_timeout_s=0.2, idle_timeout_s=0.2)
    async with running_server(recorder, limits) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            if partial:
                await stream.send_all(partial)
            assert await read_until_eof(stream) == b""
    assert recorder.requests == []


async def test_idle_keep_alive_connection_is_closed_after_a_request() -> None:
    limits = ServerLimits(idle_timeout_s=0.2)
    async with running_server(Recorder(), limits) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
            response, _ = await read_full_response(stream)
            assert response.status_code == 200
            assert await read_until_eof(stream) == b""


async def test_connections_over_max_get_503() -> None:
    recorder = Recorder()
    async with running_server(recorder, ServerLimits(connections_max=1)) as port:
        first = HttpConnection("127.0.0.1", port)
        try:
            status, _ = await first.request("GET", "/one", timeout_s=GUARD_S)
            assert status == 200
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET /two HTTP/1.1\r\nhost: x\r\n\r\n")
                status, headers, body = split_response(await read_until_eof(stream))
            assert status == 503
            assert headers["retry-after"] == "1"
            assert headers["connection"] == "close"
            assert json.loads(body)["error"]["code"] == "unavailable"
            status, _ = await first.request("GET", "/three", timeout_s=GUARD_S)
            assert status == 200  # the admitted connection is unaffected
        finally:
            await first.aclose()
        await trio.testing.wait_all_tasks_blocked()
        second = HttpConnection("127.0.0.1", port)
        try:
            status, _ = await second.request("GET", "/four", timeout_s=GUARD_S)
        finally:
            await second.aclose()
        assert status == 200
    assert [r.path for r in recorder.requests] == ["/one", "/three", "/four"]


async def test_server_stops_on_cancel_and_releases_port() -> None:
    async with running_server(Recorder()) as port:
        connection = HttpConnection("127.0.0.1", port)
        status, _ = await connection.request("GET", "/x", timeout_s=GUARD_S)
        assert status == 200
    # The server is cancelled with a keep-alive connection still open: it is gone.
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    await connection.aclose()
