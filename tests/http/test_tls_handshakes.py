"""Real TLS handshakes on loopback between serve_http, HttpConnection and httpx, with the
certificates `init --tls` makes: mutual TLS between peers, public clients without a
certificate, and every way a handshake must fail.

Two clusters are made once per module (ours and a foreign one, each with its own CA). Servers
bind 127.0.0.1 port 0 inside nurseries cancelled on exit; no test sleeps.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from tokenvault.cluster_init import init_cluster
from tokenvault.config import TlsConfig, load_config
from tokenvault.http.client import HttpConnection, PeerUnreachable
from tokenvault.http.errors import json_response
from tokenvault.http.server import Request, Response, ServerLimits, serve_http
from tokenvault.tls import client_context, peer_link_context, server_context
from tokenvault.tls_certificates import PeerTls, load_peer_tls

GUARD_S = 10.0  # hang guard only


def cluster_tls(directory: Path) -> TlsConfig:
    made = init_cluster(directory, nodes=3, base_port=7400, tls=True)
    tls = load_config(made.config_path).tls
    assert tls is not None
    return tls


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> TlsConfig:
    return cluster_tls(tmp_path_factory.mktemp("ours"))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> TlsConfig:
    """Another cluster: the same peer ids and hosts, its own CA."""
    return cluster_tls(tmp_path_factory.mktemp("foreign"))


def peer(tls: TlsConfig, peer_id: str) -> PeerTls:
    return load_peer_tls(tls, peer_id, now=datetime.now(UTC))


@dataclass
class Recorder:
    requests: list[Request] = field(default_factory=list)
    handshake_failures: list[str] = field(default_factory=list)
    holding: trio.Event = field(default_factory=trio.Event)  # /hold arrived
    release: trio.Event = field(default_factory=trio.Event)  # what /hold waits for

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        if request.path == "/hold":
            self.holding.set()
            await self.release.wait()
        return json_response(200, {"peer_certificate_id": request.peer_certificate_id})

    def handshake_failed(self, reason: str, client: str) -> None:
        assert client.startswith("127.0.0.1:")
        self.handshake_failures.append(reason)


@asynccontextmanager
async def tls_server(
    recorder: Recorder, context: ssl.SSLContext, limits: ServerLimits | None = None
) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        serve = partial(
            serve_http,
            ssl_context=context,
            tls_handshake_failed=recorder.handshake_failed,
        )
        port: int = await nursery.start(serve, recorder, "127.0.0.1", 0, limits or ServerLimits())
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()


def chain(error: BaseException | None) -> list[BaseException]:
    """An exception and its causes and contexts, outermost first."""
    found = []
    while error is not None:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


async def wait_for_failures(recorder: Recorder, count: int) -> None:
    """The server reports a failed handshake after the client saw it fail: wait for it."""
    with trio.fail_after(GUARD_S):
        while len(recorder.handshake_failures) < count:
            await trio.sleep(0)


async def test_peer_link_is_mutual_tls_and_the_server_learns_the_client_peer_id(
    ours: TlsConfig,
) -> None:
    recorder = Recorder()
    async with tls_server(recorder, peer(ours, "n1").server_context) as port:
        link = HttpConnection(
            "127.0.0.1", port, ssl_context=peer(ours, "n2").link_context, server_peer_id="n1"
        )
        try:
            for _ in range(3):  # one connection, kept alive
                status, body = await link.request("POST", "/internal", timeout_s=GUARD_S)
                assert (status, body) == (200, b'{"peer_certificate_id":"n2"}')
        finally:
            await link.aclose()
    assert len({request.client for request in recorder.requests}) == 1
    assert recorder.handshake_failures == []


async def test_a_public_client_with_the_ca_needs_no_certificate(ours: TlsConfig) -> None:
    recorder = Recorder()
    async with (
        tls_server(recorder, peer(ours, "n1").server_context) as port,
        httpx.AsyncClient(verify=client_context(ours.ca_path)) as client,
    ):
        answer = await client.get(f"https://127.0.0.1:{port}/healthz")
    assert answer.json() == {"peer_certificate_id": None}
    assert recorder.requests[0].peer_certificate_id is None


async def test_a_client_without_the_ca_fails_and_never_reaches_the_handler(
    ours: TlsConfig,
) -> None:
    recorder = Recorder()
    async with tls_server(recorder, peer(ours, "n1").server_context) as port:
        async with httpx.AsyncClient() as client:  # the system's CAs only
            with pytest.raises(httpx.ConnectError) as refused:
                await client.get(f"https://127.0.0.1:{port}/healthz")
        await wait_for_failures(recorder, 1)
    assert any(isinstance(error, ssl.SSLCertVerificationError) for error in chain(refused.value))
    assert recorder.requests == []


async def failing_link(
    server: ssl.SSLContext, link: ssl.SSLContext, server_peer_id: str, server_failures: int = 0
) -> tuple[str, Recorder]:
    """One request over a link that must fail: its PeerUnreachable message, and the server's
    recorder once it has reported `server_failures` failed handshakes."""
    recorder = Recorder()
    async with tls_server(recorder, server) as port:
        connection = HttpConnection(
            "127.0.0.1", port, ssl_context=link, server_peer_id=server_peer_id
        )
        try:
            with pytest.raises(PeerUnreachable) as failed:
                await connection.request("POST", "/internal", timeout_s=GUARD_S)
        finally:
            await connection.aclose()
        await wait_for_failures(recorder, server_failures)
    assert recorder.requests == []
    return str(failed.value), recorder


async def test_a_peer_certificate_from_another_clusters_ca_is_refused_by_the_server(
    ours: TlsConfig, foreign: TlsConfig
) -> None:
    # The client trusts our CA (so it accepts our server) but presents a foreign certificate.
    impostor = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    impostor.check_hostname = False
    impostor.load_verify_locations(cafile=ours.ca_path)
    impostor.load_cert_chain(foreign.cert_path("n2"), foreign.key_path("n2"))
    _, recorder = await failing_link(peer(ours, "n1").server_context, impostor, "n1", 1)
    assert recorder.handshake_failures == ["CERTIFICATE_VERIFY_FAILED"]


async def test_a_server_certificate_from_another_clusters_ca_is_refused_by_the_link(
    ours: TlsConfig, foreign: TlsConfig
) -> None:
    server, link = peer(foreign, "n1").server_context, peer(ours, "n2").link_context
    message, _ = await failing_link(server, link, "n1")
    assert "TLS handshake failed (CERTIFICATE_VERIFY_FAILED)" in message


async def test_a_link_refuses_a_server_that_is_another_peer_of_the_cluster(
    ours: TlsConfig,
) -> None:
    server, link = peer(ours, "n1").server_context, peer(ours, "n2").link_context
    message, _ = await failing_link(server, link, "n3")
    assert message.endswith("its certificate names n1, not n3")


async def test_plain_http_to_a_tls_port_gets_no_answer_and_no_traceback(
    ours: TlsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    async with tls_server(recorder, peer(ours, "n1").server_context) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            received = b""
            with trio.fail_after(GUARD_S):
                while chunk := await stream.receive_some(65536):
                    received += chunk
        await wait_for_failures(recorder, 1)
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"http://127.0.0.1:{port}/healthz")
        await wait_for_failures(recorder, 2)
    assert b"HTTP/" not in received  # at most a TLS alert, never an HTTP answer
    assert recorder.requests == []
    assert recorder.handshake_failures == ["HTTP_REQUEST", "HTTP_REQUEST"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_client_that_never_finishes_the_handshake_is_closed_at_its_deadline(
    ours: TlsConfig, autojump_clock: trio.testing.MockClock
) -> None:
    recorder = Recorder()
    limits = ServerLimits(tls_handshake_timeout_s=5.0)
    async with tls_server(recorder, peer(ours, "n1").server_context, limits) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            started = trio.current_time()
            with trio.fail_after(GUARD_S):
                assert await stream.receive_some(65536) == b""
            assert trio.current_time() - started >= limits.tls_handshake_timeout_s
    assert recorder.handshake_failures == ["timeout"]


async def test_over_the_connection_limit_a_tls_client_gets_a_503_over_tls(
    ours: TlsConfig,
) -> None:
    recorder = Recorder()
    limits = ServerLimits(connections_max=1)
    context = client_context(ours.ca_path)
    async with (
        tls_server(recorder, peer(ours, "n1").server_context, limits) as port,
        httpx.AsyncClient(verify=context) as holder,  # its request holds the only slot
        httpx.AsyncClient(verify=context) as second,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(holder.get, f"https://127.0.0.1:{port}/hold")
        await recorder.holding.wait()
        refused = await second.get(f"https://127.0.0.1:{port}/second")
        recorder.release.set()
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "unavailable"
    assert [request.path for request in recorder.requests] == ["/hold"]


async def test_a_body_over_the_limit_is_answered_413_over_tls(ours: TlsConfig) -> None:
    recorder = Recorder()
    limits = ServerLimits(body_bytes_max=1024)
    async with (
        tls_server(recorder, peer(ours, "n1").server_context, limits) as port,
        httpx.AsyncClient(verify=client_context(ours.ca_path)) as client,
    ):
        answer = await client.post(f"https://127.0.0.1:{port}/big", content=b"x" * 100_000)
    assert answer.status_code == 413
    assert answer.headers["connection"] == "close"
    assert recorder.requests == []


async def test_during_a_ca_rotation_peers_of_either_ca_trust_each_other(
    ours: TlsConfig, foreign: TlsConfig, tmp_path: Path
) -> None:
    """operations.md's CA rotation: a ca_file holding both CAs; n1 still has a certificate of
    the old CA, n2 one of the new."""
    bundle = tmp_path / "both.pem"
    bundle.write_bytes(ours.ca_path.read_bytes() + foreign.ca_path.read_bytes())
    old_n1 = {"cert_path": ours.cert_path("n1"), "key_path": ours.key_path("n1")}
    new_n2 = {"cert_path": foreign.cert_path("n2"), "key_path": foreign.key_path("n2")}
    recorder = Recorder()
    async with tls_server(recorder, server_context(ca_path=bundle, **old_n1)) as port:
        link = HttpConnection(
            "127.0.0.1",
            port,
            ssl_context=peer_link_context(ca_path=bundle, **new_n2),
            server_peer_id="n1",
        )
        try:
            status, body = await link.request("POST", "/internal", timeout_s=GUARD_S)
        finally:
            await link.aclose()
    assert (status, body) == (200, b'{"peer_certificate_id":"n2"}')
