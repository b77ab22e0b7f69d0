"""End-to-end: owners' epochs on a real 3-peer cluster (N=3, W=2, R=2), public API only.

The rotate contract of API.md: of concurrent rotates with one expected epoch exactly one
rotates, all answer the same new epoch; a retry is safe; once a rotate answered epoch e, every
tokenize, epoch read or rotate started afterwards, on any peer, answers an epoch >= e; tokens of
earlier epochs still detokenize.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import trio

from tests.e2e.harness import Cluster

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30.0


def post(
    cluster: Cluster, peer: str, path: str, body: Any = None, *, owner: str = "alice"
) -> httpx.Response:
    return httpx.post(
        cluster.url(peer) + path,
        headers=cluster.headers(owner),
        json=body,
        timeout=TIMEOUT_S,
        verify=cluster.verify,
    )


def rotate(cluster: Cluster, peer: str, body: Any = None) -> dict[str, Any]:
    answer = post(cluster, peer, "/v1/epoch/rotate", body)
    assert answer.status_code == 200, answer.text
    payload: dict[str, Any] = answer.json()
    assert set(payload) == {"owner", "epoch", "rotated"} and payload["owner"] == "alice"
    return payload


def epoch_of(cluster: Cluster, peer: str) -> int:
    answer = httpx.get(
        cluster.url(peer) + "/v1/epoch",
        headers=cluster.headers("alice"),
        timeout=TIMEOUT_S,
        verify=cluster.verify,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["owner"] == "alice"
    epoch: int = answer.json()["epoch"]
    return epoch


def tokenize(cluster: Cluster, peer: str, values: list[str]) -> tuple[int, list[str]]:
    answer = post(cluster, peer, "/v1/tokenize", {"records": [{"ssn": v} for v in values]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body["epoch"], [r["ssn"] for r in body["records"]]


def detokenize(cluster: Cluster, peer: str, tokens: list[str]) -> list[dict[str, Any]]:
    answer = post(cluster, peer, "/v1/detokenize", {"tokens": tokens})
    assert answer.status_code == 200, answer.text
    results: list[dict[str, Any]] = answer.json()["results"]
    return results


async def concurrent_rotates(cluster: Cluster, count: int, body: Any) -> list[httpx.Response]:
    answers: list[httpx.Response] = []

    async def one(index: int, client: httpx.AsyncClient) -> None:
        peer = cluster.peer_ids[index % len(cluster.peer_ids)]
        answers.append(
            await client.post(
                cluster.url(peer) + "/v1/epoch/rotate", headers=cluster.headers("alice"), json=body
            )
        )

    async with (
        httpx.AsyncClient(timeout=TIMEOUT_S, verify=cluster.verify) as client,
        trio.open_nursery() as nursery,
    ):
        for index in range(count):
            nursery.start_soon(one, index, client)
    return answers


async def test_twenty_concurrent_rotates_rotate_exactly_once(cluster: Cluster) -> None:
    for expected in range(1, 6):  # five duels: the race the bug needs shows up in nearly every run
        answers = await concurrent_rotates(cluster, 20, {"expected_epoch": expected})
        assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
        bodies = [a.json() for a in answers]
        assert {b["epoch"] for b in bodies} == {expected + 1}
        assert [b["rotated"] for b in bodies].count(True) == 1, bodies
        # every peer learned one and the same parameters: the same token everywhere
        tokens = {tuple(tokenize(cluster, peer, ["after-a-duel"])[1]) for peer in cluster.peer_ids}
        assert len(tokens) == 1
    for peer in cluster.peer_ids:
        assert not [e for e in cluster.log_events(peer) if e.get("event") == "paxos_disagreement"]


async def test_concurrent_rotates_all_answer_one_new_epoch(cluster: Cluster) -> None:
    old_epoch, old_tokens = tokenize(cluster, "n1", ["111-11-1111", "222-22-2222"])
    assert old_epoch == 1
    answers = await concurrent_rotates(cluster, 20, {"expected_epoch": 1})
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    bodies = [a.json() for a in answers]
    assert {b["epoch"] for b in bodies} == {2}
    assert all(b["owner"] == "alice" and isinstance(b["rotated"], bool) for b in bodies)
    assert any(b["rotated"] for b in bodies)
    for peer in cluster.peer_ids:
        assert epoch_of(cluster, peer) == 2
    # tokens of epoch 1 still detokenize, with their epoch, on every peer
    for peer in cluster.peer_ids:
        results = detokenize(cluster, peer, old_tokens)
        assert [(r["found"], r["value"], r["epoch"]) for r in results] == [
            (True, "111-11-1111", 1),
            (True, "222-22-2222", 1),
        ]
    # the same value tokenized again: a new token under epoch 2
    new_epoch, new_tokens = tokenize(cluster, "n2", ["111-11-1111"])
    assert new_epoch == 2
    assert new_tokens[0] != old_tokens[0]
    (found,) = detokenize(cluster, "n3", new_tokens)
    assert (found["found"], found["value"], found["epoch"]) == (True, "111-11-1111", 2)
    # retrying the same rotate is safe: nothing changes
    for peer in cluster.peer_ids:
        assert rotate(cluster, peer, {"expected_epoch": 1}) == {
            "owner": "alice",
            "epoch": 2,
            "rotated": False,
        }
    # without a body: rotate from whatever is active, once
    blind = httpx.post(
        cluster.url("n3") + "/v1/epoch/rotate",
        headers=cluster.headers("alice"),
        timeout=TIMEOUT_S,
        verify=cluster.verify,
    )
    assert blind.status_code == 200, blind.text
    assert blind.json() == {"owner": "alice", "epoch": 3, "rotated": True}
    for peer in cluster.peer_ids:
        assert epoch_of(cluster, peer) == 3
    # another owner's epoch never moved
    bob = httpx.get(
        cluster.url("n1") + "/v1/epoch",
        headers=cluster.headers("bob"),
        timeout=10,
        verify=cluster.verify,
    )
    assert bob.json() == {"owner": "bob", "epoch": 1}


def test_tokenizes_started_after_a_rotate_answered_never_use_an_older_epoch(
    cluster: Cluster,
) -> None:
    for round_ in range(4):
        rotator = cluster.peer_ids[round_ % 3]
        answered = rotate(cluster, rotator, None)
        assert answered["rotated"] is True and answered["epoch"] == round_ + 2
        # a peer that missed the Decide learns through fencing: its old-epoch write is refused
        for peer in cluster.peer_ids:
            epoch, _ = tokenize(cluster, peer, [f"value-{round_}-{peer}"])
            assert epoch >= answered["epoch"], (peer, epoch, answered)
            assert epoch_of(cluster, peer) >= answered["epoch"]
            again = rotate(cluster, peer, {"expected_epoch": answered["epoch"] - 1})
            assert again["rotated"] is False and again["epoch"] >= answered["epoch"]
    # every peer computes the same tokens for the active epoch
    tokens = {tuple(tokenize(cluster, peer, ["same", "values"])[1]) for peer in cluster.peer_ids}
    assert len(tokens) == 1
    # every log line about an owner names an epoch; mapping lines name their mappings' epoch
    # (a replica may store a write after it was answered: the wait for that is bounded)
    deadline = time.monotonic() + 10.0
    for peer in cluster.peer_ids:
        while True:
            lines = [line for line in cluster.log_events(peer) if "owner" in line]
            stored = [line for line in lines if line["event"] == "mapping_stored"]
            if {line["epoch"] for line in stored} == {2, 3, 4, 5} or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert lines and all(isinstance(line.get("epoch"), int) for line in lines), peer
        assert {line["epoch"] for line in stored} == {2, 3, 4, 5}, peer
        assert all(line.get("request_id") for line in stored), peer


def test_rotation_with_a_peer_killed_and_its_restart_catches_up(cluster: Cluster) -> None:
    old_epoch, old_tokens = tokenize(cluster, "n3", ["333-33-3333"])
    assert old_epoch == 1
    cluster.kill("n3")
    answered = rotate(cluster, "n1", {"expected_epoch": 1})
    assert answered == {"owner": "alice", "epoch": 2, "rotated": True}
    assert epoch_of(cluster, "n2") == 2
    cluster.start("n3")
    cluster.wait_ready("n3")
    # no manual step: the restarted peer answers the new epoch from a majority...
    assert epoch_of(cluster, "n3") == 2
    # ...and a tokenize through it uses the new epoch (fenced, learned, retried)
    epoch, tokens = tokenize(cluster, "n3", ["333-33-3333"])
    assert epoch == 2
    assert tokens != old_tokens
    (found,) = detokenize(cluster, "n3", old_tokens)
    assert found["found"] is True and found["epoch"] == 1
    # the same token from every peer
    for peer in ("n1", "n2"):
        assert tokenize(cluster, peer, ["333-33-3333"]) == (2, tokens)


def test_a_restarted_peer_that_never_learned_tokenizes_under_the_new_epoch_first(
    cluster: Cluster,
) -> None:
    """The restarted peer is asked to tokenize before anything else: its own store says epoch 1;
    the others fence it and it must learn and retry by itself."""
    cluster.kill("n2")
    assert rotate(cluster, "n3", {"expected_epoch": 1})["epoch"] == 2
    cluster.start("n2")
    cluster.wait_ready("n2")
    epoch, _ = tokenize(cluster, "n2", ["first-after-restart"])
    assert epoch == 2


INVALID_ROTATE_BODIES = [
    b'{"expected_epoch": 0}',
    b'{"expected_epoch": -1}',
    b'{"expected_epoch": "1"}',
    b'{"expected_epoch": true}',
    b'{"expected_epoch": 1.0}',
    b'{"expected_epoch": [1]}',
    b"[1]",
    b'"rotate"',
    b"{",
    b'{"expected_epoch": NaN}',
]


def test_invalid_rotate_bodies_are_refused_and_change_nothing(cluster: Cluster) -> None:
    for index, body in enumerate(INVALID_ROTATE_BODIES):
        peer = cluster.peer_ids[index % 3]
        answer = httpx.post(
            cluster.url(peer) + "/v1/epoch/rotate",
            headers={**cluster.headers("alice"), "Content-Type": "application/json"},
            content=body,
            timeout=TIMEOUT_S,
            verify=cluster.verify,
        )
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["code"] == "invalid_request", body
    for peer in cluster.peer_ids:
        assert epoch_of(cluster, peer) == 1


def test_rotate_and_epoch_need_an_owner_key(cluster: Cluster) -> None:
    for path, method in (("/v1/epoch/rotate", "POST"), ("/v1/epoch", "GET")):
        admin = httpx.request(
            method,
            cluster.url("n1") + path,
            headers=cluster.admin_headers(),
            timeout=TIMEOUT_S,
            verify=cluster.verify,
        )
        assert admin.status_code == 403, admin.text
        assert admin.json()["error"]["code"] == "forbidden"
        anonymous = httpx.request(
            method, cluster.url("n2") + path, timeout=TIMEOUT_S, verify=cluster.verify
        )
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "unauthenticated"
    assert epoch_of(cluster, "n3") == 1
