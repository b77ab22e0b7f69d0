"""End-to-end: a peer whose data directory is deleted rejoins safely (issue 11, point 5), on a
real 3-peer cluster (N=3, W=2, R=2).

The restarted peer says `recovering` (its peers remember another store for it), takes part in no
Paxos round and serves no client until it learned every owner's epochs from both other replicas
and refilled its mappings; concurrent rotates meanwhile never give two values for one epoch; it
ends `serving` with every mapping and every epoch. A brand-new cluster serves at once.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.e2e.harness import Cluster, running_cluster

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30.0
VALUES = 3_000
BATCH = 1_000
RECOVERY_TIMEOUT_S = 60.0


def admin_get(cluster: Cluster, peer: str, path: str) -> dict[str, Any]:
    answer = httpx.get(
        cluster.url(peer) + path,
        headers=cluster.admin_headers(),
        timeout=TIMEOUT_S,
        verify=cluster.verify,
    )
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def node_view(cluster: Cluster, peer: str) -> dict[str, Any]:
    return admin_get(cluster, peer, "/v1/admin/node")


def recovery_story(cluster: Cluster, peer: str) -> str:
    """What a failed wait shows: the peer's recovery progress and the events that moved its
    store's phase (a wait's message, so that a failure under load explains itself)."""
    view = node_view(cluster, peer)
    moved = [
        e
        for e in cluster.log_events(peer)
        if str(e.get("event", "")).startswith(("store_", "recovery", "ring_", "peer_store"))
    ]
    return f"state {view['state']!r}, recovery {view['recovery']!r}, events {moved!r}"


def owner_view(cluster: Cluster, peer: str) -> dict[str, Any]:
    return admin_get(cluster, peer, "/v1/admin/owners/alice")


def post(cluster: Cluster, peer: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(
        cluster.url(peer) + path,
        headers=cluster.headers("alice"),
        json=body,
        timeout=TIMEOUT_S,
        verify=cluster.verify,
    )


def tokenize_all(cluster: Cluster) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for start in range(0, VALUES, BATCH):
        values = [f"{n:03d}-00-{n:04d}" for n in range(start, start + BATCH)]
        answer = post(cluster, "n1", "/v1/tokenize", {"records": [{"ssn": v} for v in values]})
        assert answer.status_code == 200, answer.text
        tokens.update(zip(values, (r["ssn"] for r in answer.json()["records"]), strict=True))
    return tokens


async def rotate_concurrently(cluster: Cluster, peers: list[str], count: int) -> list[int]:
    """`count` blind rotates at once through `peers`; their status codes."""
    codes: list[int] = []

    async def one(index: int, client: httpx.AsyncClient) -> None:
        peer = peers[index % len(peers)]
        answer = await client.post(
            cluster.url(peer) + "/v1/epoch/rotate", headers=cluster.headers("alice")
        )
        codes.append(answer.status_code)

    async with (
        httpx.AsyncClient(timeout=TIMEOUT_S, verify=cluster.verify) as client,
        trio.open_nursery() as nursery,
    ):
        for index in range(count):
            nursery.start_soon(one, index, client)
    return codes


def decided_values(cluster: Cluster) -> dict[int, set[str]]:
    """Every epoch some peer learned or chose, with the rotates whose values they were."""
    found: dict[int, set[str]] = {}
    for peer in cluster.peer_ids:
        for event in cluster.log_events(peer):
            if event.get("event") == "epoch_learned" and event.get("owner") == "alice":
                epoch, by = event["epoch"], event["requested_by"]
                assert isinstance(epoch, int) and isinstance(by, str)
                found.setdefault(epoch, set()).add(by)
    return found


def test_a_brand_new_cluster_serves_at_once(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster", owners=("alice",))
    try:
        started = time.monotonic()
        for peer in cluster.peer_ids:
            cluster.start(peer)
        for peer in cluster.peer_ids:
            cluster.wait_ready(peer)
            cluster.wait_serving(peer)
        assert time.monotonic() - started < 10.0
        for peer in cluster.peer_ids:
            view = node_view(cluster, peer)
            assert view["state"] == "serving" and view["recovery"]["phase"] == "serving"
            assert not [e for e in cluster.log_events(peer) if e.get("event") == "store_lost"]
            new_cluster = [e for e in cluster.log_events(peer) if e["event"] == "store_new_cluster"]
            assert len(new_cluster) == 1
    finally:
        cluster.close()


async def test_a_peer_whose_data_dir_was_deleted_recovers_before_it_votes(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path / "cluster", owners=("alice",)) as cluster:
        tokens = tokenize_all(cluster)
        answer = post(cluster, "n2", "/v1/epoch/rotate", {"expected_epoch": 1})
        assert answer.status_code == 200 and answer.json()["epoch"] == 2, answer.text
        before = owner_view(cluster, "n1")
        assert before["converged"], before

        # n3 loses its disk; n2 is held so that n3 cannot learn from both others yet.
        cluster.stop("n3")
        shutil.rmtree(tmp_path / "cluster" / "data" / "n3")
        cluster.pause("n2")
        cluster.start("n3")
        cluster.wait_ready("n3", probe="/healthz")  # alive; not ready while it recovers
        # "starting" until a peer's answer shows that its store was lost, then "recovering".
        ready = httpx.get(cluster.url("n3") + "/readyz", timeout=TIMEOUT_S)
        assert ready.status_code == 503 and ready.json()["reason"] in ("starting", "recovering")
        deadline = time.monotonic() + TIMEOUT_S
        while node_view(cluster, "n3")["recovery"]["phase"] != "recovering":
            assert time.monotonic() < deadline, recovery_story(cluster, "n3")
            time.sleep(0.05)
        view = node_view(cluster, "n3")
        assert view["state"] == "recovering"
        ready = httpx.get(cluster.url("n3") + "/readyz", timeout=TIMEOUT_S)
        assert ready.status_code == 503 and ready.json()["reason"] == "recovering"
        assert view["recovery"]["owners_total"] == 1 and view["recovery"]["owners_learned"] == 0
        health = httpx.get(cluster.url("n3") + "/healthz", timeout=TIMEOUT_S)
        assert health.status_code == 200 and health.json()["status"] == "recovering"
        refused = post(cluster, "n3", "/v1/epoch/rotate", {})
        assert refused.status_code == 503 and "recovering" in refused.text
        replaced = [e for e in cluster.log_events("n1") if e["event"] == "peer_store_replaced"]
        assert [e["target"] for e in replaced] == ["n3"]

        # n2 back: concurrent rotates through n1 and n2 while n3 learns and refills.
        cluster.resume("n2")
        codes: list[int] = []
        while node_view(cluster, "n3")["state"] == "recovering" and len(codes) < 60:
            codes += await rotate_concurrently(cluster, ["n1", "n2"], 10)
        assert 200 in codes, codes
        cluster.wait_serving("n3", RECOVERY_TIMEOUT_S)
        assert [e for e in cluster.log_events("n3") if e["event"] == "store_recovered"]

        # Every epoch has one value; every replica holds the same active epoch and mappings.
        for epoch, rotates in decided_values(cluster).items():
            assert len(rotates) == 1, (epoch, rotates)
        for peer in cluster.peer_ids:
            assert not [e for e in cluster.log_events(peer) if e["event"] == "paxos_disagreement"]
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        after = owner_view(cluster, "n3")
        while not after["converged"]:  # rotates may still be spreading their Decide
            assert time.monotonic() < deadline, after
            time.sleep(0.2)
            after = owner_view(cluster, "n3")
        counts = {r["peer"]: r["token_count"] for r in after["replicas"]}
        assert counts["n3"] == counts["n1"] >= VALUES, counts
        assert after["replicas"][0]["active_epoch"] > 2

        # n3 serves every mapping (its own answer among the R it reads) and the new epoch.
        sample = list(tokens.items())[:: VALUES // 50]
        answer = post(cluster, "n3", "/v1/detokenize", {"tokens": [t for _, t in sample]})
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [(r["found"], r["value"]) for r in results] == [(True, v) for v, _ in sample]
        same = {
            post(cluster, peer, "/v1/tokenize", {"records": [{"ssn": "999-99-9999"}]}).text
            for peer in cluster.peer_ids
        }
        assert len(same) == 1
