"""Tests of tokenvault.http.client.HttpConnection against serve_http and raw peers.

Servers bind 127.0.0.1 port 0 inside nurseries cancelled on exit; no test sleeps.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from tokenvault.http.client import HttpConnection, PeerUnreachable
from tokenvault.http.server import Handler, Request, Response, ServerLimits, serve_http

GUARD_S = 10.0  # hang guard only


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


@asynccontextmanager
async def raw_server(
    serve_one: Callable[[trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[int]:
    """A bare TCP server whose connections run ``serve_one`` (for misbehaving peers)."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
        port: int = listeners[0].socket.getsockname()[1]
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()


async def echo(request: Request) -> Response:
    payload = {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": dict(request.headers),
        "body": request.body.decode(),
        "client": request.client,
    }
    close = (("connection", "close"),) if request.path == "/close" else ()
    return Response(status=200, body=json.dumps(payload).encode(), headers=close)


async def receive_request_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


async def test_roundtrip() -> None:
    async with running_server(echo) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            status, body = await connection.request(
                "PUT",
                "/v1/things/1?x=y",
                headers=[("x-api-key", "k"), ("content-type", "application/json")],
                body=b'{"a":1}',
                timeout_s=GUARD_S,
            )
            status2, body2 = await connection.request("GET", "/v1/other", timeout_s=GUARD_S)
        finally:
            await connection.aclose()
    assert status == 200
    echoed = json.loads(body)
    assert echoed["method"] == "PUT"
    assert echoed["path"] == "/v1/things/1"
    assert echoed["query"] == "x=y"
    assert echoed["body"] == '{"a":1}'
    assert echoed["headers"]["host"] == f"127.0.0.1:{port}"
    assert echoed["headers"]["content-length"] == "7"
    assert echoed["headers"]["x-api-key"] == "k"
    assert status2 == 200
    assert json.loads(body2)["headers"]["content-length"] == "0"
    assert json.loads(body2)["client"] == echoed["client"]  # same keep-alive connection


async def test_reconnects_after_server_asked_to_close() -> None:
    async with running_server(echo) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            _, first = await connection.request("GET", "/close", timeout_s=GUARD_S)
            _, second = await connection.request("GET", "/a", timeout_s=GUARD_S)
            _, third = await connection.request("GET", "/b", timeout_s=GUARD_S)
        finally:
            await connection.aclose()
    clients = [json.loads(body)["client"] for body in (first, second, third)]
    assert clients[0] != clients[1]
    assert clients[1] == clients[2]


async def test_reconnects_after_server_silently_closed_idle_connection() -> None:
    closed = trio.Event()
    connections = 0

    async def serve_one(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        async with stream:
            await receive_request_head(stream)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        # Closed without a word after the response, like an idle timeout.
        closed.set()

    async with raw_server(serve_one) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            assert await connection.request("GET", "/1", timeout_s=GUARD_S) == (200, b"ok")
            await closed.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert await connection.request("GET", "/2", timeout_s=GUARD_S) == (200, b"ok")
        finally:
            await connection.aclose()
    assert connections == 2


async def test_reconnects_after_server_restart_on_same_connection_object() -> None:
    async with running_server(echo) as port:
        connection = HttpConnection("127.0.0.1", port)
        assert (await connection.request("GET", "/x", timeout_s=GUARD_S))[0] == 200
    # Server gone: the stale connection fails (or reconnect is refused).
    with pytest.raises(PeerUnreachable):
        await connection.request("GET", "/x", timeout_s=GUARD_S)
    await connection.aclose()


async def test_peer_unreachable_on_closed_port() -> None:
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    connection = HttpConnection("127.0.0.1", port)
    try:
        with pytest.raises(PeerUnreachable) as caught:
            await connection.request("POST", "/x", body=b"secret-body", timeout_s=GUARD_S)
        assert "secret" not in str(caught.value)
        assert f"127.0.0.1:{port}" in str(caught.value)
        with pytest.raises(PeerUnreachable):  # again: each call tries to reconnect
            await connection.request("GET", "/x", timeout_s=GUARD_S)
    finally:
        await connection.aclose()


async def test_timeout_raises_and_next_request_reconnects() -> None:
    connections = 0

    async def serve_one(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        async with stream:
            head = await receive_request_head(stream)
            if b"/hang" in head:
                await trio.sleep_forever()  # a peer that never answers
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await receive_request_head(stream)

    async with raw_server(serve_one) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            with pytest.raises(PeerUnreachable, match="timed out"):
                await connection.request("GET", "/hang", timeout_s=0.2)
            assert await connection.request("GET", "/ok", timeout_s=GUARD_S) == (200, b"")
        finally:
            await connection.aclose()
    assert connections == 2


@pytest.mark.parametrize(
    "reply",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",  # then EOF
        b"",  # EOF without any response
    ],
)
async def test_bad_peer_replies_raise_peer_unreachable(reply: bytes) -> None:
    async def serve_one(stream: trio.SocketStream) -> None:
        async with stream:
            await receive_request_head(stream)
            await stream.send_all(reply)

    async with raw_server(serve_one) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            with pytest.raises(PeerUnreachable):
                await connection.request("GET", "/x", timeout_s=GUARD_S)
        finally:
            await connection.aclose()


async def test_chunked_and_informational_responses() -> None:
    async def serve_one(stream: trio.SocketStream) -> None:
        async with stream:
            await receive_request_head(stream)
            await stream.send_all(
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            )
            await receive_request_head(stream)

    async with raw_server(serve_one) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            assert await connection.request("GET", "/x", timeout_s=GUARD_S) == (201, b"abcde")
        finally:
            await connection.aclose()


async def test_response_over_limit_raises() -> None:
    async def big(request: Request) -> Response:
        return Response(status=200, body=b"x" * 1000)

    async with running_server(big) as port:
        connection = HttpConnection("127.0.0.1", port, response_bytes_max=100)
        try:
            with pytest.raises(PeerUnreachable, match="larger"):
                await connection.request("GET", "/x", timeout_s=GUARD_S)
        finally:
            await connection.aclose()


async def test_concurrent_callers_are_serialized() -> None:
    in_handler = 0
    max_in_handler = 0

    async def handler(request: Request) -> Response:
        nonlocal in_handler, max_in_handler
        in_handler += 1
        max_in_handler = max(max_in_handler, in_handler)
        await trio.lowlevel.checkpoint()
        in_handler -= 1
        return Response(status=200, body=request.path.encode())

    results: dict[int, tuple[int, bytes]] = {}
    async with running_server(handler) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:

            async def call(i: int) -> None:
                results[i] = await connection.request("GET", f"/{i}", timeout_s=GUARD_S)

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(call, i)
        finally:
            await connection.aclose()
    assert results == {i: (200, f"/{i}".encode()) for i in range(20)}
    assert max_in_handler == 1


async def test_cancelled_request_drops_connection_and_next_works() -> None:
    entered = trio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            entered.set()
            await trio.sleep_forever()
        return Response(status=200, body=b"fine")

    async with running_server(handler) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            async with trio.open_nursery() as nursery:

                async def slow() -> None:
                    await connection.request("GET", "/slow", timeout_s=GUARD_S)

                nursery.start_soon(slow)
                await entered.wait()
                nursery.cancel_scope.cancel()
            assert await connection.request("GET", "/fast", timeout_s=GUARD_S) == (200, b"fine")
        finally:
            await connection.aclose()


async def test_reserved_headers_rejected_and_closed_connection_refuses() -> None:
    connection = HttpConnection("127.0.0.1", 1)
    with pytest.raises(ValueError):
        await connection.request("GET", "/", headers=[("Host", "x")], timeout_s=1.0)
    with pytest.raises(ValueError):
        await connection.request("GET", "/", headers=[("Content-Length", "1")], timeout_s=1.0)
    await connection.aclose()
    with pytest.raises(PeerUnreachable, match="closed"):
        await connection.request("GET", "/", timeout_s=1.0)


async def test_bytes_past_a_response_close_the_connection_after_it() -> None:
    """A response followed by bytes nothing asked for: the response is the answer, and the
    next request goes on a new connection, never reading those bytes as its response."""
    reply = (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\njunk"
    )
    connections = 0

    async def serve_one(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        async with stream:
            while await receive_request_head(stream):
                await stream.send_all(reply)

    async with raw_server(serve_one) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            answers = [await connection.request("GET", p, timeout_s=GUARD_S) for p in ("/a", "/b")]
        finally:
            await connection.aclose()
    assert answers == [(200, b"ok"), (200, b"ok")]
    assert connections == 2


async def test_a_response_in_pieces_and_to_head_are_read_whole() -> None:
    """A body that arrives after its head (in several reads), and a response to HEAD (its
    Content-Length frames no body), on one kept-alive connection."""
    heads: list[bytes] = []
    connections = 0

    async def serve_one(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        async with stream:
            heads.append(await receive_request_head(stream))
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n")
            await trio.testing.wait_all_tasks_blocked()
            await stream.send_all(b"abc")
            await trio.testing.wait_all_tasks_blocked()
            await stream.send_all(b"def")
            heads.append(await receive_request_head(stream))
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n")
            heads.append(await receive_request_head(stream))

    async with raw_server(serve_one) as port:
        connection = HttpConnection("127.0.0.1", port)
        try:
            assert await connection.request(
                "POST", "/a", headers=[("x-a", "b c")], body=b"xyz", timeout_s=GUARD_S
            ) == (200, b"abcdef")
            assert await connection.request("HEAD", "/b", timeout_s=GUARD_S) == (200, b"")
            await connection.request("GET", "/c", timeout_s=0.5)  # the same connection
        except PeerUnreachable:
            pass  # the raw server answers no third request: only its head matters
        finally:
            await connection.aclose()
    assert heads[0] == (
        b"POST /a HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-length: 3\r\nx-a: b c\r\n\r\nxyz" % port
    )
    assert heads[1].startswith(b"HEAD /b HTTP/1.1\r\n")
    assert heads[2].startswith(b"GET /c HTTP/1.1\r\n")
    assert connections == 1


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/", [("bad name", "x")]),
        ("GET", "/", [("x-a", "line\r\nbreak")]),
        ("GET", "/", [("x-a", "\x00")]),
        ("GET", "/", [("x-a", "caf\u00e9")]),
        ("G T", "/", []),
        ("GET", "/a b", []),
        ("GET", "", []),
    ],
)
async def test_a_request_that_cannot_be_framed_is_refused_before_sending(
    method: str, path: str, headers: list[tuple[str, str]]
) -> None:
    connection = HttpConnection("127.0.0.1", 1)
    with pytest.raises(ValueError):
        await connection.request(method, path, headers=headers, timeout_s=1.0)
    await connection.aclose()
