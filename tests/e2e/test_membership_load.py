"""Elastic membership on real processes under client load (issue 14, docs/membership.md).

While client tasks tokenize, detokenize and rotate through the current members (history.py), the
cluster grows from 3 to 5 peers (two peers started with `--join`, which add themselves), then one
member is removed (`POST /v1/admin/members`, then stopped once the change finished), then one
whose data directory was deleted is replaced by a new peer. Each change is waited for until the
membership is stable again with the change applied (its transfers committed, the finish
decided), bounded.

Afterwards the history must show what test_faults.py's does (every acknowledged token read back
through every final member, one value per token, epochs never back, only 200 or 503), and every
owner must have N replicas, all members of the final ring, converged (equal digests and epochs),
and no final member may hold a mapping of an owner it does not replicate once the last change
drained (dropping: read from the stopped peers' stores).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import plyvel
import pytest
import trio

from tests.e2e.harness import Cluster
from tests.e2e.history import (
    OWNERS,
    POLL_INTERVAL_S,
    Run,
    assert_no_problems,
    client,
    history_problems,
    wait_converged,
    write_history,
)
from tokenvault.quorum.records import MAPPING_PREFIX

pytestmark = pytest.mark.e2e

CLIENTS = 4
SEED = int(os.environ.get("TOKENVAULT_MEMBERSHIP_SEED", "20261203"))
CHANGE_BOUND_S = 90.0  # a change, transfers included, on 2 busy cores
WARMUP_S = 2.0
BETWEEN_CHANGES_S = 1.0
DROP_BOUND_S = 30.0  # former replicas hand over and delete, once the last change drained


async def members_view(http: httpx.AsyncClient, cluster: Cluster, peer: str) -> dict[str, Any]:
    answer = await http.get(
        cluster.url(peer) + "/v1/admin/members", headers=cluster.admin_headers()
    )
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def states(view: dict[str, Any]) -> dict[str, str]:
    return {m["id"]: m["state"] for m in view["members"]}


async def wait_stable(
    run: Run, http: httpx.AsyncClient, peer: str, expected: dict[str, str]
) -> dict[str, Any]:
    """Polls `peer` until its membership is stable and exactly `expected` (id -> state)."""
    deadline = trio.current_time() + CHANGE_BOUND_S
    view: dict[str, Any] = {}
    while trio.current_time() < deadline:
        try:
            view = await members_view(http, run.cluster, peer)
            if states(view) == expected:
                return view
        except (httpx.HTTPError, ValueError):
            pass
        await trio.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"membership not {expected} within {CHANGE_BOUND_S} s: {view}")


async def change(
    run: Run, http: httpx.AsyncClient, peer: str, body: dict[str, str]
) -> dict[str, Any]:
    answer = await http.post(
        run.cluster.url(peer) + "/v1/admin/members",
        headers=run.cluster.admin_headers(),
        json=body,
    )
    assert answer.status_code == 202, answer.text
    accepted: dict[str, Any] = answer.json()
    return accepted


async def membership_changes(run: Run) -> None:
    cluster = run.cluster
    active = {p: "active" for p in cluster.peer_ids}
    async with httpx.AsyncClient(timeout=5.0, trust_env=False, verify=cluster.verify) as http:
        await trio.sleep(WARMUP_S)
        for joiner in ("n4", "n5"):
            started = run.now()
            await trio.to_thread.run_sync(cluster.start_joining, joiner)
            run.note(f"{joiner} started with --join")
            active[joiner] = "active"
            view = await wait_stable(run, http, "n1", active)
            run.peers.append(joiner)
            run.note(f"{joiner} active at version {view['version']} ({run.now() - started:.1f} s)")
            await trio.sleep(BETWEEN_CHANGES_S)

        started = run.now()
        run.peers.remove("n2")  # clients leave it first: once removed it answers 503
        await change(run, http, "n1", {"action": "remove", "id": "n2"})
        del active["n2"]
        view = await wait_stable(run, http, "n1", active)
        run.note(f"n2 removed at version {view['version']} ({run.now() - started:.1f} s)")
        await trio.to_thread.run_sync(cluster.stop, "n2")
        await trio.sleep(BETWEEN_CHANGES_S)

        started = run.now()
        run.peers.remove("n3")
        await trio.to_thread.run_sync(cluster.kill, "n3")
        shutil.rmtree(cluster.data_dir("n3"))
        run.note("n3 killed and its data directory deleted")
        address = cluster.reserve_address("n6")
        await change(run, http, "n4", {"action": "replace", "id": "n6", "replaces": "n3",
                                        "address": address})  # fmt: skip
        await trio.to_thread.run_sync(cluster.start_joining, "n6")
        del active["n3"]
        active["n6"] = "active"
        view = await wait_stable(run, http, "n1", active)
        run.peers.append("n6")
        run.note(f"n3 replaced by n6 at version {view['version']} ({run.now() - started:.1f} s)")
        await trio.sleep(WARMUP_S)
    run.stopping = True
    run.note("clients stopping")


async def wait_dropped(cluster: Cluster, peers: list[str]) -> float:
    """Until every final member says its ring is drained and it holds no owner it does not
    replicate (GET /v1/admin/members `drops`); the seconds it took."""
    started = time.monotonic()
    views: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=5.0, trust_env=False, verify=cluster.verify) as http:
        while time.monotonic() < started + DROP_BOUND_S:
            views = {peer: await members_view(http, cluster, peer) for peer in peers}
            if all(v["drained"] and not v["drops"] for v in views.values()):
                return time.monotonic() - started
            await trio.sleep(POLL_INTERVAL_S)
    shown = {p: (v["version"], v["drained"], v["drops"]) for p, v in views.items()}
    pytest.fail(f"former replicas did not drop within {DROP_BOUND_S} s: {shown}")


def stray_problems(cluster: Cluster, views: dict[str, Any], members: list[str]) -> list[str]:
    """What a final member's store (read once it is stopped) holds of an owner it does not
    replicate: nothing, once dropped."""
    replicas = {
        key.split("/")[1]: {r["peer"] for r in view["replicas"]} for key, view in views.items()
    }
    problems = []
    for peer in members:
        db = plyvel.DB(str(cluster.data_dir(peer) / "leveldb"))
        try:
            for owner, holders in sorted(replicas.items()):
                if peer in holders:
                    continue
                prefix = MAPPING_PREFIX + owner.encode() + b"\x00"
                held = sum(1 for _ in db.iterator(prefix=prefix, include_value=False))
                if held:
                    problems.append(f"[stray] {peer} still holds {held} mappings of {owner}")
        finally:
            db.close()
    return problems


def replica_problems(views: dict[str, Any], members: list[str], replica_count: int) -> list[str]:
    problems = []
    for key, view in sorted(views.items()):
        peers = [r["peer"] for r in view["replicas"]]
        if len(peers) != replica_count or not set(peers) <= set(members):
            problems.append(f"[replicas] {key}: {peers} is not {replica_count} of {members}")
    return problems


async def test_grow_remove_and_replace_under_load_lose_nothing(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster", owners=OWNERS)
    run = Run(cluster, seed=SEED)
    try:
        cluster.start_all()
        async with trio.open_nursery() as nursery:
            for index in range(CLIENTS):
                nursery.start_soon(client, run, index)
            nursery.start_soon(membership_changes, run)
        run.note(f"clients done after {len(run.ops)} operations")
        started = time.monotonic()
        converged_s, views = await trio.to_thread.run_sync(wait_converged, cluster, run.peers)
        run.note(f"every owner converged on the final ring {converged_s:.2f} s after the clients")
        dropped_s = await wait_dropped(cluster, run.peers)
        run.note(f"former replicas dropped what they no longer replicate {dropped_s:.2f} s later")
        problems = replica_problems(views, run.peers, 3)
        problems += history_problems(run)  # stops every peer
        problems += stray_problems(cluster, views, run.peers)
        run.note(f"history checked in {time.monotonic() - started:.1f} s")
        assert_no_problems(problems)
    finally:
        write_history(run)
        cluster.close()
