"""End-to-end, measured: a peer that missed writes, or lost half its mappings on disk, catches up.

Real peer processes on loopback (N=3, W=2, R=2, three peers: every peer replicates every owner).
Convergence is what the admin API says: GET /v1/admin/owners/<owner> answers `converged` (every
replica reachable, same digest, same epoch, complete) and per-replica token counts; leftovers of
hinted handoff are the `hints` of GET /v1/admin/node. Every wait is a poll with a deadline; the
measured times are printed (run with -s to see them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import plyvel
import pytest

from tests.e2e.harness import Cluster

pytestmark = pytest.mark.e2e

OWNERS = ("alice", "bob")
CONVERGENCE_BOUND_S = 30.0
POLL_INTERVAL_S = 0.1
MAPPING_PREFIX = b"m\x00"


@pytest.fixture
def cluster(tmp_path: Path, tls_mode: bool) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "cluster", owners=OWNERS, tls=tls_mode)
    try:
        running.start_all()
        yield running
    finally:
        running.close()


def owner_view(http: httpx.Client, cluster: Cluster, peer: str, owner: str) -> dict[str, Any]:
    answer = http.get(
        cluster.url(peer) + f"/v1/admin/owners/{owner}", headers=cluster.admin_headers()
    )
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def node_view(http: httpx.Client, cluster: Cluster, peer: str) -> dict[str, Any]:
    answer = http.get(cluster.url(peer) + "/v1/admin/node", headers=cluster.admin_headers())
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def converged_everywhere(
    http: httpx.Client, cluster: Cluster, expected_counts: dict[str, int]
) -> tuple[bool, dict[str, Any]]:
    """Every peer's admin view of every owner: converged, with the expected count everywhere."""
    views = {}
    for peer in cluster.peer_ids:
        for owner in expected_counts:
            view = owner_view(http, cluster, peer, owner)
            views[f"{peer}/{owner}"] = view
            counts = {r.get("token_count") for r in view["replicas"]}
            if not view["converged"] or counts != {expected_counts[owner]}:
                return False, views
    return True, views


def no_hints_left(
    http: httpx.Client, cluster: Cluster, peers: list[str] | None = None
) -> tuple[bool, dict[str, Any]]:
    peers = cluster.peer_ids if peers is None else peers
    hints = {peer: node_view(http, cluster, peer)["hints"] for peer in peers}
    left = {peer: [h for h in held if h["hints"] or h["in_flight"]] for peer, held in hints.items()}
    return not any(left.values()), hints


def logged_mappings(cluster: Cluster, peer: str, event: str, target: str) -> int:
    """How many mappings the peer's log says went into `event` lines for target."""
    return sum(
        int(str(e.get("mappings", 0)))
        for e in cluster.log_events(peer)
        if e["event"] == event and e.get("target") == target
    )


def hints_for(
    http: httpx.Client, cluster: Cluster, peers: list[str], target: str, *, mappings: int
) -> tuple[bool, dict[str, Any]]:
    """Whether the peers stored hints holding `mappings` mappings for target, all still held."""
    hints = {peer: node_view(http, cluster, peer)["hints"] for peer in peers}
    stored = sum(logged_mappings(cluster, peer, "hint_stored", target) for peer in peers)
    return stored >= mappings, {"hints": hints, "mappings_hinted": stored}


def wait_for(
    what: str, condition: Callable[[], tuple[bool, Any]], deadline: float
) -> tuple[float, Any]:
    """Polls condition until it holds; returns (when, last detail); fails at the deadline."""
    detail: Any = None
    for _ in range(int(CONVERGENCE_BOUND_S * 2 / POLL_INTERVAL_S) + 1):
        done, detail = condition()
        if done:
            return time.monotonic(), detail
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    pytest.fail(f"not within the bound: {what}; last seen: {detail}")


def replica_summary(view: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    return [
        (r["peer"], r.get("token_count"), r.get("digest"), r.get("active_epoch"))
        for r in view["replicas"]
    ]


def stored_mappings(data_dir: Path) -> dict[bytes, bytes]:
    db = plyvel.DB(str(data_dir / "leveldb"))
    try:
        return dict(db.iterator(prefix=MAPPING_PREFIX))
    finally:
        db.close()


def assert_all_found(
    http: httpx.Client, cluster: Cluster, peer: str, owner: str, tokens: list[str]
) -> None:
    """Every token detokenizes through peer (in pages of the API's 1,000 tokens)."""
    for start in range(0, len(tokens), 1_000):
        answer = http.post(
            cluster.url(peer) + "/v1/detokenize",
            headers=cluster.headers(owner),
            json={"tokens": tokens[start : start + 1_000]},
        )
        assert answer.status_code == 200, answer.text
        assert all(r["found"] for r in answer.json()["results"]), (peer, owner)


def tokenize_batches(
    http: httpx.Client, cluster: Cluster, peers: list[str], label: str
) -> dict[str, set[str]]:
    """1,000 distinct values: 10 requests of 100 records, alternating owners and live peers."""
    tokens: dict[str, set[str]] = {owner: set() for owner in OWNERS}
    for batch in range(10):
        owner = OWNERS[batch % len(OWNERS)]
        peer = peers[batch % len(peers)]
        records = [{"ssn": f"{label}-{batch:02d}-{i:03d}"} for i in range(100)]
        answer = http.post(
            cluster.url(peer) + "/v1/tokenize",
            headers=cluster.headers(owner),
            json={"records": records},
        )
        assert answer.status_code == 200, (peer, answer.text)
        tokens[owner].update(r["ssn"] for r in answer.json()["records"])
    assert sum(len(t) for t in tokens.values()) == 1000
    return tokens


def test_killed_peer_catches_up_after_restart(cluster: Cluster) -> None:
    with httpx.Client(timeout=10.0, trust_env=False, verify=cluster.verify) as http:
        cluster.kill("n3")  # SIGKILL
        tokens = tokenize_batches(http, cluster, ["n1", "n2"], "missed")
        expected = {owner: len(tokens[owner]) for owner in OWNERS}
        down_view = owner_view(http, cluster, "n1", "alice")
        assert down_view["converged"] is False
        # A write answered with n3 silent leaves its hint for n3 once its deadline passed.
        _, hints_before = wait_for(
            "every write left its hint for n3 on its coordinator",
            lambda: hints_for(http, cluster, ["n1", "n2"], "n3", mappings=1000),
            time.monotonic() + CONVERGENCE_BOUND_S,
        )
        print(f"\n[2a] hints held while n3 is down: {hints_before}")

        restarted_at = time.monotonic()
        cluster.start("n3")
        cluster.wait_ready("n3")
        ready_at = time.monotonic()
        deadline = restarted_at + CONVERGENCE_BOUND_S
        converged_at, views = wait_for(
            "every owner converged on every peer after the restart",
            lambda: converged_everywhere(http, cluster, expected),
            deadline,
        )
        drained_at, hints = wait_for(
            "no hints left on any peer", lambda: no_hints_left(http, cluster), deadline
        )
        print(
            f"[2a] n3 restarted: serving after {ready_at - restarted_at:.2f} s, every owner "
            f"converged on every peer after {converged_at - restarted_at:.2f} s, hints drained "
            f"after {drained_at - restarted_at:.2f} s (bound {CONVERGENCE_BOUND_S:.0f} s)"
        )
        for key, view in views.items():
            print(f"[2a] {key}: {replica_summary(view)}")
        delivered = {
            peer: logged_mappings(cluster, peer, "hint_delivered", "n3") for peer in ("n1", "n2")
        }
        pushed = {
            peer: node_view(http, cluster, peer)["anti_entropy"]["mappings_pushed"]
            for peer in cluster.peer_ids
        }
        print(
            f"[2a] hints after: {hints}; mappings delivered to n3 as hints (peers' logs): "
            f"{delivered}; anti-entropy mappings pushed: {pushed}"
        )
        assert sum(delivered.values()) == 1000, "every hint for n3 was delivered"
        for owner in OWNERS:
            for peer in cluster.peer_ids:
                view = owner_view(http, cluster, peer, owner)
                assert view["converged"] is True, view
                replicas = view["replicas"]
                assert {r["peer"] for r in replicas} == set(cluster.peer_ids)
                assert {r["token_count"] for r in replicas} == {expected[owner]}, view
                assert len({r["digest"] for r in replicas}) == 1, view
        assert max(converged_at, drained_at) - restarted_at <= CONVERGENCE_BOUND_S
        # What n3 holds now answers reads even with one of the others gone.
        cluster.kill("n1")
        for owner in OWNERS:
            assert_all_found(http, cluster, "n3", owner, sorted(tokens[owner]))
    cluster.stop("n2")
    cluster.stop("n3")
    held = stored_mappings(cluster.init.peers[2].data_dir)
    assert len(held) == 1000, "n3's own disk holds every mapping it missed"


def test_anti_entropy_restores_mappings_lost_from_disk(cluster: Cluster) -> None:
    with httpx.Client(timeout=10.0, trust_env=False, verify=cluster.verify) as http:
        tokens = tokenize_batches(http, cluster, cluster.peer_ids, "kept")
        expected = {owner: len(tokens[owner]) for owner in OWNERS}
        start = time.monotonic()
        wait_for(
            "the fresh cluster converged",
            lambda: converged_everywhere(http, cluster, expected),
            start + CONVERGENCE_BOUND_S,
        )
        wait_for("no hints left", lambda: no_hints_left(http, cluster), start + 10.0)
        pushed_before = {
            peer: node_view(http, cluster, peer)["anti_entropy"]["mappings_pushed"]
            for peer in cluster.peer_ids
        }

        assert cluster.stop("n2") == 0
        data_dir = cluster.init.peers[1].data_dir
        original = stored_mappings(data_dir)
        assert len(original) == 1000
        db = plyvel.DB(str(data_dir / "leveldb"))
        try:
            keys = [key for key, _ in db.iterator(prefix=MAPPING_PREFIX)]
            with db.write_batch(sync=True) as batch:
                for key in keys[::2]:
                    batch.delete(key)
        finally:
            db.close()
        remaining = stored_mappings(data_dir)
        assert len(remaining) == 500
        lost_per_owner = {
            owner: sum(1 for key in keys[::2] if key.split(b"\x00")[1] == owner.encode())
            for owner in OWNERS
        }
        print(f"\n[2b] deleted from n2's disk while stopped: {lost_per_owner}")

        restarted_at = time.monotonic()
        cluster.start("n2")
        cluster.wait_ready("n2")
        ready_at = time.monotonic()
        converged_at, views = wait_for(
            "anti-entropy restored n2's lost mappings (every owner converged on every peer)",
            lambda: converged_everywhere(http, cluster, expected),
            restarted_at + CONVERGENCE_BOUND_S,
        )
        pushed_after = {
            peer: node_view(http, cluster, peer)["anti_entropy"]["mappings_pushed"]
            for peer in cluster.peer_ids
        }
        print(
            f"[2b] n2 restarted: serving after {ready_at - restarted_at:.2f} s, every owner "
            f"converged on every peer after {converged_at - restarted_at:.2f} s "
            f"(bound {CONVERGENCE_BOUND_S:.0f} s); anti-entropy mappings pushed "
            f"before {pushed_before}, after {pushed_after}"
        )
        for key, view in views.items():
            print(f"[2b] {key}: {replica_summary(view)}")
        assert converged_at - restarted_at <= CONVERGENCE_BOUND_S
        repaired = sum(pushed_after.values()) - sum(pushed_before.values())
        assert repaired >= 500, "the lost mappings came back through anti-entropy"
    assert cluster.stop("n2") == 0
    assert stored_mappings(data_dir) == original, "n2's disk holds every mapping again, unchanged"
