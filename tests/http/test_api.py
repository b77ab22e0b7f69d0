"""The API's peer endpoint on a real node (LevelDB in a temporary directory), its requests
handed straight to `PublicApi.handle`: a signed batch is taken; a batch that is unsigned,
signed by another peer, replayed, or re-labelled is refused 401 with a `peer_auth_refused`
alarm; one that does not fit the configuration is refused 400 with `peer_batch_refused`; the
cluster fingerprint is still checked; no alarm line holds a key or a value."""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from tokenvault.cluster_init import init_cluster
from tokenvault.config import load_config
from tokenvault.http.api import PublicApi
from tokenvault.http.messages import Request, RequestHead, Response
from tokenvault.http.peer_auth import PeerSigner, new_incarnation
from tokenvault.http.peer_transport import PEER_MESSAGES_PATH
from tokenvault.log import EventLog
from tokenvault.node import Node
from tokenvault.quorum.failure_detector import PeerState
from tokenvault.quorum.records import mapping_key
from tokenvault.tokens import derive_peer_key

PLANTED = "planted-value-0451"


class Peer:
    """Peer n1 in process, and what another peer (or an attacker) may send it."""

    def __init__(self, node: Node, api: PublicApi, log: io.StringIO) -> None:
        self.node, self.api, self.log = node, api, log
        self.secret = node.config.secret
        self.links = {p: self.signer(p) for p in ("n2", "n3")}

    def signer(self, sender: str, *, key_of: str | None = None) -> PeerSigner:
        return PeerSigner(
            sender=sender,
            receiver="n1",
            key=derive_peer_key(self.secret, key_of or sender),
            incarnation=new_incarnation(),
            fingerprint=self.node.cluster_fingerprint,
        )

    def signed(self, body: bytes, sender: str = "n2") -> dict[str, str]:
        return dict(self.links[sender].headers("POST", PEER_MESSAGES_PATH, body))

    async def post(self, headers: dict[str, str], body: bytes) -> Response:
        request = Request(
            head=RequestHead(
                method="POST",
                path=PEER_MESSAGES_PATH,
                query="",
                headers=headers,
                client="192.0.2.7:40000",
            ),
            body=body,
        )
        return await self.api.handle(request)

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.getvalue().splitlines()]
        return [line for line in lines if line["event"] == name]


def relabel(headers: dict[str, str], sender: str) -> dict[str, str]:
    """The same signature headers, naming another sender."""
    fields = re.sub(r"sender=[^,]*,", f"sender={sender},", headers["authorization"], count=1)
    assert fields != headers["authorization"]
    return headers | {"authorization": fields}


def batch(source: str, *messages: dict[str, Any]) -> bytes:
    return json.dumps({"source": source, "messages": list(messages)}).encode()


def heartbeat(sender: str) -> dict[str, Any]:
    return {"type": "heartbeat", "sender": sender}


def insert(owner: str, field: str, value: str = PLANTED, *, repair: bool = True) -> dict[str, Any]:
    row = [owner, "tok_" + "P" * 32, value, field, 1]
    return {"type": "insert", "op": "x-1", "owner": owner, "mappings": [row], "repair": repair}


@asynccontextmanager
async def peer_n1(tmp_path: Path) -> AsyncIterator[Peer]:
    init = init_cluster(tmp_path / "cluster", nodes=3, base_port=1, owners=("alice", "bob"))
    log = io.StringIO()
    node = Node(load_config(init.config_path), "n1", log=EventLog("n1", log))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            yield Peer(node, PublicApi(node), log)
            nursery.cancel_scope.cancel()
    finally:
        node.close()


async def test_a_signed_batch_is_taken_and_its_replay_refused(tmp_path: Path) -> None:
    async with peer_n1(tmp_path) as n1:
        body = batch("n2", heartbeat("n2"))
        headers = n1.signed(body)
        assert (await n1.post(headers, body)).status == 204
        assert n1.node.core.failure_detector.views()[0].last_heard is not None
        replayed = await n1.post(headers, body)
        assert replayed.status == 401
        assert b"accepted before" in replayed.body
        (alarm,) = n1.events("peer_auth_refused")
        assert alarm["level"] == "error"
        assert (alarm["reason"], alarm["sender"], alarm["client"]) == (
            "replayed",
            "n2",
            "192.0.2.7",
        )


async def test_every_forgery_is_refused_401_and_alarmed_once_per_sender_and_reason(
    tmp_path: Path,
) -> None:
    async with peer_n1(tmp_path) as n1:
        body = batch("n2", heartbeat("n2"))
        bearer = {"authorization": "Bearer " + derive_peer_key(n1.secret, "n2").hex()}
        n3_as_n2 = dict(n1.signer("n2", key_of="n3").headers("POST", PEER_MESSAGES_PATH, body))
        relabelled_body = batch("n3", heartbeat("n3"))
        relabelled = relabel(n1.signed(body), "n3")
        cases = [
            ({}, body, "unsigned"),
            (bearer, body, "unsigned"),  # even the right peer's key, sent as a bearer key
            (n3_as_n2, body, "bad_signature"),  # n2's name, n3's key
            (relabelled, body, "bad_signature"),  # n2's batch, re-labelled n3 in the head
            (n1.signed(body), relabelled_body, "body_mismatch"),  # ... or in the body
            (n1.signed(relabelled_body), relabelled_body, "source_mismatch"),  # signed as n2
        ]
        for headers, sent, reason in cases:
            answer = await n1.post(headers, sent)
            assert answer.status == 401, (reason, answer.body)
            assert json.loads(answer.body)["error"]["code"] == "unauthenticated"
        for headers, sent, _ in cases:  # again: counted, not logged again (but the batch
            assert (await n1.post(headers, sent)).status == 401  # re-labelled n3 is a replay)
        alarms = n1.events("peer_auth_refused")
        assert sorted((a["reason"], a["sender"]) for a in alarms) == [
            ("bad_signature", "n2"),
            ("bad_signature", "n3"),  # the claimed sender, as the head claims it
            ("body_mismatch", "n2"),
            ("replayed", "n2"),
            ("source_mismatch", "n2"),
            ("unsigned", "unknown"),
        ]
        metrics = n1.node.metrics.render()
        assert 'tokenvault_peer_auth_refused_total{reason="unsigned"} 4' in metrics
        assert 'tokenvault_peer_auth_refused_total{reason="bad_signature"} 4' in metrics
        assert 'tokenvault_peer_auth_refused_total{reason="replayed"} 1' in metrics
        assert 'tokenvault_peer_auth_refused_total{reason="malformed"} 0' in metrics
        assert derive_peer_key(n1.secret, "n2").hex() not in n1.log.getvalue()
        assert n1.node.core.failure_detector.state("n3") is PeerState.UP  # never heard: start


async def test_a_batch_that_does_not_fit_the_configuration_is_refused_whole(
    tmp_path: Path,
) -> None:
    async with peer_n1(tmp_path) as n1:
        cases = {
            "unknown owner": insert("mallory", "ssn"),
            "unknown field in a new write": insert("alice", "password", repair=False),
            "heartbeat for another peer": heartbeat("n3"),
        }
        for name, message in cases.items():
            body = batch("n2", insert("alice", "ssn", "fine"), message)
            answer = await n1.post(n1.signed(body), body)
            assert answer.status == 400, name
            assert json.loads(answer.body)["error"]["code"] == "invalid_request"
        alarms = n1.events("peer_batch_refused")
        assert [(a["reason"], a["sender"], a["level"]) for a in alarms] == [
            ("not_configured", "n2", "error")
        ]
        assert alarms[0]["where"] == "$.messages[1].owner is not a configured owner"
        # nothing of any refused batch was stored, not even its good first message
        for owner in ("alice", "mallory"):
            assert n1.node.store.get(mapping_key(owner, "tok_" + "P" * 32)) is None
        assert PLANTED not in n1.log.getvalue()
        metrics = n1.node.metrics.render()
        assert 'tokenvault_peer_batches_refused_total{reason="not_configured"} 3' in metrics
        malformed = batch("n2", {"type": "decide", "op": "x", "owner": "alice", "value": 1})
        assert (await n1.post(n1.signed(malformed), malformed)).status == 400
        assert 'tokenvault_peer_batches_refused_total{reason="malformed"} 1' in (
            n1.node.metrics.render()
        )


async def test_a_fitting_insert_is_stored_once_durable(tmp_path: Path) -> None:
    async with peer_n1(tmp_path) as n1:
        body = batch("n3", insert("alice", "ssn", "123-45-6789"))
        assert (await n1.post(n1.signed(body, "n3"), body)).status == 204
        assert n1.node.store.get(mapping_key("alice", "tok_" + "P" * 32)) is not None
        assert not n1.events("peer_auth_refused") and not n1.events("peer_batch_refused")


async def test_the_cluster_fingerprint_is_still_checked(tmp_path: Path) -> None:
    async with peer_n1(tmp_path) as n1:
        other = PeerSigner(
            sender="n2",
            receiver="n1",
            key=derive_peer_key(n1.secret, "n2"),
            incarnation=new_incarnation(),
            fingerprint="f" * 32,
        )
        body = batch("n2", heartbeat("n2"))
        answer = await n1.post(dict(other.headers("POST", PEER_MESSAGES_PATH, body)), body)
        assert answer.status == 400
        assert b"configuration differs" in answer.body
        alarms = n1.events("config_mismatch")
        assert alarms and not n1.events("peer_auth_refused")
        assert alarms[0]["sender"] == "n2" and alarms[0]["theirs"] == "f" * 32
