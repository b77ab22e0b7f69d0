"""End-to-end: a hostile peer. The test knows the cluster secret (it reads the cluster
directory), so it signs batches with the real per-peer keys, as a peer that went bad could,
and sends every message type with hostile values. Afterwards every peer answers, alice rotates
and tokenizes, her earlier tokens read back her own values on every peer, and no planted value
is readable. Batches built from what crosses the wire alone (replayed, re-labelled, signed with
another peer's key, unsigned) are refused; forged heartbeats do not bring a stopped peer up."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Cluster
from tests.e2e.test_cluster import detokenize, tokenize
from tokenvault.config import cluster_fingerprint, load_config
from tokenvault.http.peer_auth import PeerSigner, new_incarnation
from tokenvault.http.peer_transport import PEER_MESSAGES_PATH
from tokenvault.tokens import derive_peer_key

pytestmark = pytest.mark.e2e

EPOCH_MAX = 4294967295  # written out: the test states the wire's limits, not the module's
WAIT_S = 15.0
PLANTED = "planted-by-a-hostile-peer"
RECORDS = [{"ssn": "123-45-6789", "email": "alice@example.com"}, {"ssn": "987-65-4321"}]


class HostilePeer:
    """Signs and sends batches as any peer, with any peer's key (it knows the secret)."""

    def __init__(self, cluster: Cluster) -> None:
        config = load_config(cluster.init.config_path)
        self._cluster = cluster
        self._secret = config.secret
        self._fingerprint = cluster_fingerprint(config)
        self._signers: dict[tuple[str, str, str], PeerSigner] = {}

    def signed(
        self,
        receiver: str,
        messages: list[Any],
        *,
        sender: str,
        source: str | None = None,
        key_of: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        body = json.dumps({"source": source or sender, "messages": messages}).encode()
        key_of = key_of or sender
        signer = self._signers.get((sender, receiver, key_of))
        if signer is None:
            signer = self._signers[(sender, receiver, key_of)] = PeerSigner(
                sender=sender,
                receiver=receiver,
                key=derive_peer_key(self._secret, key_of),
                incarnation=new_incarnation(),
                fingerprint=self._fingerprint,
            )
        return dict(signer.headers("POST", PEER_MESSAGES_PATH, body)), body

    def post(self, receiver: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        url = self._cluster.url(receiver) + PEER_MESSAGES_PATH
        return httpx.post(url, headers=headers, content=body, timeout=10.0)

    def send(self, receiver: str, messages: list[Any], **how: str) -> httpx.Response:
        headers, body = self.signed(receiver, messages, **how)
        return self.post(receiver, headers, body)


def another_peer(receiver: str) -> str:
    return "n1" if receiver != "n1" else "n2"


def value(epoch: int, **changes: Any) -> dict[str, Any]:
    fields = {"epoch": epoch, "salt": "ab" * 16, "requested_by": "hostile-1", "requested_at_s": 1.0}
    return fields | changes


def hostile_messages(alice_token: str) -> list[tuple[str, Any, int]]:
    """(what, message, the status a peer answers): 204 for what fits the wire and the
    configuration (the cores then judge it: a conflict, a refusal, an answer nobody waits for),
    400 for everything else. Each goes in a batch of its own."""
    row = ["alice", alice_token, PLANTED, "ssn", 1]
    fresh = "tok_" + "Z" * 32

    def insert(**changes: Any) -> dict[str, Any]:
        return {"type": "insert", "op": "h-1", "owner": "alice", "mappings": [row]} | changes

    promise = {
        "type": "promise",
        "op": "h-2",
        "owner": "alice",
        "slot": 2,
        "ballot": [1, "h-2"],
        "granted": True,
        "promised": [1, "h-2"],
        "accepted_ballot": None,
        "accepted_value": None,
        "decided": None,
    }
    accepted = {k: v for k, v in promise.items() if not k.startswith("accepted_")}
    accepted["type"] = "accepted"
    view = {
        "type": "owner_view",
        "op": "h-3",
        "owner": "alice",
        "token_count": 7,
        "digest": "0" * 32,
        "complete": True,
        "decided": value(2),
        "accepted_slot": 2,
        "next_slot_promised": [0, ""],
        "next_slot_accepted": None,
    }
    keys = {
        "type": "ae_keys",
        "op": "h-4",
        "owner": "alice",
        "bucket": 0,
        "start_after": None,
        "last": None,
        "entries": [[alice_token, "0" * 32]],
    }
    return [
        # inserts: planted values for alice's existing token, through every origin
        ("plant by a client write", insert(), 204),
        ("plant by a repair", insert(repair=True), 204),
        ("plant by hints", insert(repair=True, origin="hints"), 204),
        ("plant by anti-entropy", insert(repair=True, origin="anti_entropy"), 204),
        (
            "insert for an unknown owner",
            insert(owner="mallory", mappings=[["mallory", *row[1:]]]),
            400,
        ),
        ("insert of an unknown field", insert(mappings=[["alice", fresh, PLANTED, "pin", 1]]), 400),
        ("insert epoch past the last", insert(mappings=[[*row[:4], EPOCH_MAX + 1]]), 400),
        ("insert epoch negative", insert(mappings=[[*row[:4], -1]]), 400),
        ("insert value oversized", insert(mappings=[[*row[:2], "x" * 5000, "ssn", 1]]), 400),
        ("insert value of a wrong type", insert(mappings=[[*row[:2], 4111, "ssn", 1]]), 400),
        ("insert op oversized", insert(op="o" * 300), 400),
        ("insert owner of a wrong type", insert(owner=7), 400),
        # replies nobody waits for
        (
            "insert_reply",
            {
                "type": "insert_reply",
                "op": "h-1",
                "owner": "alice",
                "tokens": [alice_token],
                "outcomes": ["stored"],
                "origin": "hints",
            },
            204,
        ),
        (
            "insert_reply lengths differ",
            {
                "type": "insert_reply",
                "op": "h-1",
                "owner": "alice",
                "tokens": [],
                "outcomes": ["stored"],
            },
            400,
        ),
        ("read", {"type": "read", "op": "h-5", "owner": "alice", "tokens": [alice_token]}, 204),
        ("read of no token", {"type": "read", "op": "h-5", "owner": "alice", "tokens": []}, 400),
        (
            "read_reply planting a value",
            {
                "type": "read_reply",
                "op": "h-5",
                "owner": "alice",
                "tokens": [alice_token],
                "mappings": [row],
            },
            204,
        ),
        # Paxos
        ("epoch_query", {"type": "epoch_query", "op": "h-6", "owner": "alice"}, 204),
        (
            "epoch_report accepted slot past the last",
            {
                "type": "epoch_report",
                "op": "h-6",
                "owner": "alice",
                "decided": value(2),
                "accepted_slot": EPOCH_MAX + 1,
            },
            400,
        ),
        (
            "prepare alice's next slot",
            {"type": "prepare", "op": "h-7", "owner": "alice", "slot": 2, "ballot": [3, "h-7"]},
            204,
        ),
        (
            "prepare round past the last",
            {"type": "prepare", "op": "h-7", "owner": "alice", "slot": 2, "ballot": [2**53, "h-7"]},
            400,
        ),
        (
            "prepare round negative",
            {"type": "prepare", "op": "h-7", "owner": "alice", "slot": 2, "ballot": [-1, "h"]},
            400,
        ),
        (
            "prepare slot past the last",
            {
                "type": "prepare",
                "op": "h-7",
                "owner": "alice",
                "slot": EPOCH_MAX + 1,
                "ballot": [1, "h-7"],
            },
            400,
        ),
        ("promise", promise, 204),
        ("promise slot of a wrong type", promise | {"slot": "2"}, 400),
        (
            "accept below the promise",
            {
                "type": "accept",
                "op": "h-8",
                "owner": "alice",
                "slot": 2,
                "ballot": [1, "h-8"],
                "value": value(2),
            },
            204,
        ),
        (
            "accept at the last slot plus one",
            {
                "type": "accept",
                "op": "h-8",
                "owner": "alice",
                "slot": EPOCH_MAX + 1,
                "ballot": [9, "h-8"],
                "value": value(EPOCH_MAX + 1),
            },
            400,
        ),
        ("accepted", accepted, 204),
        (
            "decide bob's epoch before the last",
            {"type": "decide", "op": "h-9", "owner": "bob", "value": value(EPOCH_MAX - 1)},
            204,
        ),
        (
            "decide carol's last epoch",
            {"type": "decide", "op": "h-9", "owner": "carol", "value": value(EPOCH_MAX)},
            204,
        ),
        (
            "decide past the last epoch",
            {"type": "decide", "op": "h-9", "owner": "alice", "value": value(EPOCH_MAX + 1)},
            400,
        ),
        (
            "decide the genesis epoch",
            {"type": "decide", "op": "h-9", "owner": "alice", "value": value(1, salt="")},
            400,
        ),
        (
            "decide time not finite",
            {
                "type": "decide",
                "op": "h-9",
                "owner": "alice",
                "value": value(2, requested_at_s=1e400),
            },
            400,
        ),
        (
            "decide for an unknown owner",
            {"type": "decide", "op": "h-9", "owner": "mallory", "value": value(2)},
            400,
        ),
        # inspection and anti-entropy
        ("owner_inspect", {"type": "owner_inspect", "op": "h-3", "owner": "alice"}, 204),
        ("owner_view", view, 204),
        ("owner_view count negative", view | {"token_count": -1}, 400),
        (
            "ae_summary",
            {
                "type": "ae_summary",
                "op": "h-4",
                "owner": "alice",
                "leaves": ["0" * 32] * 64,
                "count": 0,
                "decided": value(1, salt=""),
            },
            204,
        ),
        (
            "ae_summary_reply bucket huge",
            {
                "type": "ae_summary_reply",
                "op": "h-4",
                "owner": "alice",
                "differing": [2**70],
                "decided": value(1, salt=""),
            },
            400,
        ),
        ("ae_keys", keys, 204),
        ("ae_keys bucket out of the tree", keys | {"bucket": 4096}, 204),
        ("ae_keys bucket negative", keys | {"bucket": -1}, 400),
        (
            "ae_keys_reply",
            {
                "type": "ae_keys_reply",
                "op": "h-4",
                "owner": "alice",
                "bucket": 0,
                "missing": [alice_token],
            },
            204,
        ),
        # wrong types and shapes
        ("heartbeat sender of a wrong type", {"type": "heartbeat", "sender": 3}, 400),
        ("unknown type", {"type": "delete_everything", "op": "h", "owner": "alice"}, 400),
        ("message that is a list", ["insert", "alice"], 400),
    ]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "cluster", owners=("alice", "bob", "carol"))
    try:
        running.start_all()
        yield running
    finally:
        running.close()


def wait_until(what: str, check: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def peer_states(cluster: Cluster, peer: str) -> dict[str, str]:
    view = httpx.get(cluster.url(peer) + "/v1/admin/node", headers=cluster.admin_headers())
    return {p["id"]: p["state"] for p in view.json()["peers"]}


def converged(cluster: Cluster, owner: str) -> bool:
    view = httpx.get(
        cluster.url("n1") + f"/v1/admin/owners/{owner}",
        headers=cluster.admin_headers(),
        timeout=10.0,
    )
    return bool(view.json()["converged"])


def rotate(cluster: Cluster, peer: str, owner: str) -> httpx.Response:
    return httpx.post(
        cluster.url(peer) + "/v1/epoch/rotate", headers=cluster.headers(owner), timeout=30.0
    )


def test_a_hostile_peer_cannot_crash_plant_or_impersonate(cluster: Cluster) -> None:
    hostile = HostilePeer(cluster)
    answer = tokenize(cluster, "n1", "alice", RECORDS)
    assert answer.status_code == 200, answer.text
    records = answer.json()["records"]
    originals = {
        records[0]["ssn"]: "123-45-6789",
        records[0]["email"]: "alice@example.com",
        records[1]["ssn"]: "987-65-4321",
    }
    alice_token = records[0]["ssn"]
    wait_until("alice's mappings on every replica", lambda: converged(cluster, "alice"))

    # -- forged heartbeats do not bring a stopped peer up -------------------------------------
    assert cluster.stop("n3") == 0
    heartbeat = [{"type": "heartbeat", "sender": "n3"}]
    deadline = time.monotonic() + WAIT_S
    while peer_states(cluster, "n1")["n3"] != "down":
        assert time.monotonic() < deadline, peer_states(cluster, "n1")
        for receiver in ("n1", "n2"):
            sender = another_peer(receiver)
            # a heartbeat naming n3 in a batch of another peer's
            assert hostile.send(receiver, heartbeat, sender=sender).status_code == 400
            # a batch naming n3, signed with another peer's key
            forged = hostile.send(receiver, heartbeat, sender="n3", key_of=sender)
            assert forged.status_code == 401
            # a batch signed by another peer whose body names n3 as its source
            relabelled = hostile.send(receiver, heartbeat, sender=sender, source="n3")
            assert relabelled.status_code == 401
        time.sleep(0.2)
    cluster.start("n3")
    cluster.wait_ready("n3")

    # -- every message type with hostile values, to every peer ----------------------------------
    answers: dict[str, list[int]] = {}
    for receiver in cluster.peer_ids:
        for what, message, _ in hostile_messages(alice_token):
            sent = hostile.send(receiver, [message], sender=another_peer(receiver))
            answers.setdefault(what, []).append(sent.status_code)
    expected = {what: [status] * 3 for what, _, status in hostile_messages(alice_token)}
    assert answers == expected

    # -- what crosses the wire alone is not enough ----------------------------------------------
    captured_headers, captured_body = hostile.signed("n1", heartbeat[:0], sender="n2")
    assert hostile.post("n1", captured_headers, captured_body).status_code == 204
    assert hostile.post("n1", captured_headers, captured_body).status_code == 401  # replayed
    to_another = hostile.post("n3", captured_headers, captured_body)  # signed for n1
    assert to_another.status_code == 401
    headers, body = hostile.signed("n1", [], sender="n2")
    relabelled_body = body.replace(b'"source": "n2"', b'"source": "n3"')
    assert relabelled_body != body
    assert hostile.post("n1", headers, relabelled_body).status_code == 401
    as_n3 = headers["authorization"].replace("sender=n2,", "sender=n3,")
    assert as_n3 != headers["authorization"]
    assert hostile.post("n1", headers | {"authorization": as_n3}, body).status_code == 401
    wrong_key = hostile.send("n1", [], sender="n2", key_of="n3")
    assert wrong_key.status_code == 401
    unsigned = {k: v for k, v in headers.items() if k != "authorization"}
    assert hostile.post("n1", unsigned, body).status_code == 401
    bearer = {
        "authorization": "Bearer "
        + derive_peer_key(load_config(cluster.init.config_path).secret, "n2").hex()
    }
    assert hostile.post("n1", bearer, body).status_code == 401
    for refused in (to_another, wrong_key):
        assert refused.json()["error"]["code"] == "unauthenticated"

    # -- afterwards: every peer serves, alice rotates and tokenizes, nothing planted reads ----
    for peer in cluster.peer_ids:
        assert httpx.get(cluster.url(peer) + "/healthz", timeout=5.0).status_code == 200
    rotated = rotate(cluster, "n2", "alice")
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["rotated"] is True and rotated.json()["epoch"] == 2
    for peer in cluster.peer_ids:
        fresh = tokenize(cluster, peer, "alice", [{"ssn": f"after-{peer}"}])
        assert fresh.status_code == 200 and fresh.json()["epoch"] == 2, fresh.text
        read = detokenize(cluster, peer, "alice", list(originals))
        assert read.status_code == 200
        assert {r["token"]: r["value"] for r in read.json()["results"]} == originals
        assert PLANTED not in read.text
    # bob was sent the epoch before the last: one rotate is left; carol was sent the last
    assert rotate(cluster, "n1", "bob").json()["epoch"] == EPOCH_MAX
    assert tokenize(cluster, "n3", "bob", [{"ssn": "b"}]).json()["epoch"] == EPOCH_MAX
    for owner in ("bob", "carol"):
        exhausted = rotate(cluster, "n1", owner)
        assert exhausted.status_code == 503
        assert "last epoch" in exhausted.json()["error"]["message"]

    # -- what the peers said about it -----------------------------------------------------------
    for peer in cluster.peer_ids:
        events = cluster.log_events(peer)
        names = {str(e["event"]) for e in events}
        assert "core_error" not in names and "storage_error" not in names, peer
        assert "Traceback" not in cluster.log(peer)
        assert PLANTED not in cluster.log(peer)
        assert "mapping_conflict" in names  # the planted values: refused, and alarmed
        refusals = [e for e in events if e["event"] == "peer_auth_refused"]
        assert refusals and all(e["level"] == "error" for e in refusals)
    reasons = {
        str(e["reason"])
        for peer in cluster.peer_ids
        for e in cluster.log_events(peer)
        if e["event"] == "peer_auth_refused"
    }
    assert {"bad_signature", "source_mismatch", "replayed", "body_mismatch", "unsigned"} <= reasons
    batch_refusals = [e for e in cluster.log_events("n2") if e["event"] == "peer_batch_refused"]
    assert {e["reason"] for e in batch_refusals} == {"malformed", "not_configured"}
    metrics = httpx.get(cluster.url("n1") + "/metrics", timeout=5.0).text
    assert 'tokenvault_peer_auth_refused_total{reason="replayed"} 1' in metrics
