"""PublicApi.admit: route and key are judged from the request head alone, before any body
byte is read; the large body limit goes only to an authenticated peer batch on the exact peer
path, keyless routes take no body, every other admitted request the public limit.

A real Node's PublicApi (LevelDB in a temporary directory; the node is never started:
admission needs none of it), judged directly, and once behind serve_listeners on an in-memory
connection that counts the body bytes the server reads (tests/http/test_server.py's fakes).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.http.test_server import EndlessSender, serve_until_closed
from tokenvault.cluster_init import ClusterKeys, init_cluster, load_keys
from tokenvault.config import load_config
from tokenvault.http.api import (
    KEYLESS_BODY_BYTES_MAX,
    PEER_BODY_BYTES_MAX,
    PUBLIC_BODY_BYTES_MAX,
    PublicApi,
)
from tokenvault.http.peer_auth import PeerAuthError, PeerSigner, Refusal, new_incarnation
from tokenvault.http.peer_transport import PEER_MESSAGES_PATH
from tokenvault.http.server import LINGER_BYTES_MAX, Admission, Request, RequestHead, Response
from tokenvault.node import Node
from tokenvault.tokens import derive_peer_key


@dataclass(frozen=True, slots=True)
class Vault:
    api: PublicApi
    node: Node
    keys: ClusterKeys
    secret: bytes

    def key(self, who: str) -> str:
        if who == "admin":
            return self.keys.admin
        if who == "unknown":
            return "tv_" + "x" * 43
        return self.keys.owners[who]

    def head(self, method: str, path: str, who: str | None = None) -> RequestHead:
        """A request head with `who`'s credential: a bearer key, or for "peer" a batch
        signature of n2's (for an empty body: admission sees only the head)."""
        if who != "peer":
            return head(method, path, None if who is None else self.key(who))
        signer = PeerSigner(
            sender="n2",
            receiver="n1",
            key=derive_peer_key(self.secret, "n2"),
            incarnation=new_incarnation(),
            fingerprint=self.node.cluster_fingerprint,
        )
        headers = {"host": "x", **dict(signer.headers(method, path, b""))}
        return RequestHead(method=method, path=path, query="", headers=headers, client="test:1")


@pytest.fixture
async def vault(tmp_path: Path) -> AsyncIterator[Vault]:  # a Node reads the trio clock
    result = init_cluster(tmp_path / "cluster", nodes=3, base_port=7400, owners=("alice",))
    node = Node(load_config(result.config_path), "n1")
    try:
        config = load_config(result.config_path)
        keys = load_keys(result.keys_path)
        yield Vault(api=PublicApi(node), node=node, keys=keys, secret=config.secret)
    finally:
        node.close()


def head(method: str, path: str, key: str | None = None) -> RequestHead:
    headers = {"host": "x"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return RequestHead(method=method, path=path, query="", headers=headers, client="test:1")


@pytest.mark.parametrize(
    ("method", "path", "who", "expected"),
    [
        ("GET", "/healthz", None, KEYLESS_BODY_BYTES_MAX),
        ("GET", "/readyz", None, KEYLESS_BODY_BYTES_MAX),
        ("GET", "/metrics", None, KEYLESS_BODY_BYTES_MAX),
        ("POST", "/v1/tokenize", "alice", PUBLIC_BODY_BYTES_MAX),
        ("GET", "/v1/tokens/tok_abc", "alice", PUBLIC_BODY_BYTES_MAX),
        ("POST", "/v1/epoch/rotate", "admin", PUBLIC_BODY_BYTES_MAX),  # 403 from its handler
        ("POST", PEER_MESSAGES_PATH, "peer", PEER_BODY_BYTES_MAX),
        ("POST", "/v1/tokenize", None, 401),
        ("POST", "/v1/tokenize", "unknown", 401),
        ("POST", "/v1/tokenize", "peer", 401),  # a peer signature opens the peer endpoint only
        ("POST", PEER_MESSAGES_PATH, None, 401),
        ("POST", PEER_MESSAGES_PATH, "alice", 401),
        ("POST", PEER_MESSAGES_PATH, "admin", 401),
        ("POST", PEER_MESSAGES_PATH, "unknown", 401),
        ("GET", PEER_MESSAGES_PATH, "peer", 405),
        ("POST", PEER_MESSAGES_PATH + "/", "peer", 404),  # the exact path only
        ("POST", "/internal/v1/other", "peer", 404),
        ("POST", "/v1/unknown", None, 404),  # the route is judged before the key
        ("DELETE", "/v1/tokenize", None, 405),
    ],
)
async def test_admission_from_the_head(
    vault: Vault, method: str, path: str, who: str | None, expected: int
) -> None:
    verdict = vault.api.admit(vault.head(method, path, who))
    if isinstance(verdict, Admission):
        assert verdict.body_bytes_max == expected
    else:
        assert verdict.status == expected


async def test_no_key_is_refused_with_its_reason(vault: Vault) -> None:
    unsigned = str(PeerAuthError(Refusal.UNSIGNED))
    for path, message in [
        ("/v1/tokenize", "Send 'Authorization: Bearer <key>'."),
        (PEER_MESSAGES_PATH, unsigned),
    ]:
        verdict = vault.api.admit(head("POST", path))
        assert isinstance(verdict, Response)
        assert json.loads(verdict.body)["error"]["message"] == message
    verdict = vault.api.admit(head("POST", PEER_MESSAGES_PATH, vault.key("alice")))
    assert isinstance(verdict, Response)
    assert json.loads(verdict.body)["error"]["message"] == unsigned


async def test_the_handler_acts_for_the_principal_found_at_admission(vault: Vault) -> None:
    ring_head = head("GET", "/v1/ring", vault.key("alice"))
    verdict = vault.api.admit(ring_head)
    assert isinstance(verdict, Admission)
    # The key is checked once: the handler answers without looking at the headers again.
    keyless = RequestHead(method="GET", path="/v1/ring", query="", headers={}, client="test:1")
    response = await verdict.handler(Request(head=keyless, body=b""))
    assert response.status == 200
    assert json.loads(response.body)["peer"] == "n1"

    rotate = vault.api.admit(head("POST", "/v1/epoch/rotate", vault.key("admin")))
    assert isinstance(rotate, Admission)
    response = await rotate.handler(Request(head=keyless, body=b""))
    assert response.status == 403  # the admin principal found at admission acts for no owner


async def test_refusals_are_counted_by_route_and_status(vault: Vault) -> None:
    for _ in range(2):
        vault.api.admit(head("POST", PEER_MESSAGES_PATH, vault.key("alice")))
    vault.api.admit(head("GET", "/nope"))
    text = vault.node.metrics.render()
    assert 'tokenvault_http_requests_total{route="peer_messages",status="401"} 2' in text
    assert 'tokenvault_http_requests_total{route="unknown",status="404"} 1' in text


@pytest.mark.parametrize("who", [None, "alice", "unknown"])
async def test_peer_batch_without_a_peer_signature_is_401_without_reading_its_32_mib(
    vault: Vault, who: str | None, autojump_clock: trio.testing.MockClock
) -> None:
    authorization = (
        b"" if who is None else b"authorization: Bearer %s\r\n" % vault.key(who).encode()
    )
    sender = EndlessSender(
        b"POST %s HTTP/1.1\r\nhost: x\r\n%scontent-length: %d\r\n\r\n"
        % (PEER_MESSAGES_PATH.encode(), authorization, 32 * 1024 * 1024)
    )
    status, headers, body = await serve_until_closed(vault.api, sender)
    assert status == 401
    assert json.loads(body)["error"]["code"] == "unauthenticated"
    assert headers["connection"] == "close"
    assert sender.body_bytes_read_when_answered == 0
    assert sender.body_bytes_read <= LINGER_BYTES_MAX


async def test_keyless_route_with_a_body_is_413_before_reading(
    vault: Vault, autojump_clock: trio.testing.MockClock
) -> None:
    sender = EndlessSender(b"GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")
    status, _, _ = await serve_until_closed(vault.api, sender)
    assert status == 413
    assert sender.body_bytes_read_when_answered == 0
