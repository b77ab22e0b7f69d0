"""End-to-end under real faults: peers in network namespaces (netns.py), clients running throughout.

While client tasks tokenize overlapping values, detokenize acknowledged tokens and rotate epochs
(with `expected_epoch`) through random live peers, a nemesis injects, one after the other: SIGKILL
and restart of a peer, SIGSTOP/SIGCONT of a peer, a partition isolating a peer from the others
(clients still reach it) then heal, and a one-way cut (one peer's requests to another are lost).
Every client operation goes into a history (invoke and completion times, peer, outcome
ok/fail/timeout, status, answer), written to <cluster dir>/history.jsonl.

Afterwards (everything healed, a bounded wait for convergence) the history must show:
- every acknowledged token (tokenize 200) detokenizes through every peer to the value, field and
  epoch its client got; a detokenize 200 never misses a token acknowledged before it started;
- no token maps to two values, and one (owner, epoch, field, value) never got two tokens;
- every owner converged in every peer's admin view;
- once a rotate answered epoch e, every tokenize or rotate started later answered an epoch >= e;
  one `rotated: true` per (owner, expected_epoch), with epoch expected + 1;
- nothing but 200 or 503 (with Retry-After) was ever answered, and the isolated peer answered no
  200 for anything that needs a quorum while it was cut off;
- on disk (every peer stopped at the end), every replica that decided an epoch decided the same
  value for it, and no peer logged a Paxos disagreement or an integrity conflict.

A second, smaller test fires concurrent rotates with one expected_epoch through one peer while
another is down (loopback, no namespaces needed): one `rotated: true` and one value per epoch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.e2e.harness import Cluster
from tests.e2e.history import (
    CLIENT_TIMEOUT_S,
    OWNERS,
    POLL_INTERVAL_S,
    Run,
    agreement_problems,
    assert_no_problems,
    client,
    history_problems,
    wait_converged,
    write_history,
)
from tests.e2e.netns import REQUIRE_ENV, NetnsCluster, netns_cluster, netns_problem

pytestmark = pytest.mark.e2e

CLIENTS = 6
SEED = int(os.environ.get("TOKENVAULT_FAULTS_SEED", "20240611"))

# The fault schedule, seconds: these are the faults' own durations, not waits for conditions.
WARMUP_S = 2.0
KILLED_FOR_S = 2.5
PAUSED_FOR_S = 3.0
ISOLATED_FOR_S = 6.0  # longer than the failure detector's down_after (4 s)
ONE_WAY_FOR_S = 5.0
BETWEEN_FAULTS_S = 1.0
CALM_S = 2.0
ROTATE_ROUNDS = 6
CONCURRENT_ROTATES = 10


@pytest.fixture
def ns_cluster(tmp_path: Path, tls_mode: bool) -> Iterator[NetnsCluster]:
    problem = netns_problem()
    if problem:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but network namespaces are unusable: {problem}")
        pytest.skip(f"needs network namespaces: {problem}")
    with netns_cluster(tmp_path / "cluster", tls=tls_mode) as cluster:
        yield cluster


async def watch_views(
    run: Run, http: httpx.AsyncClient, pairs: list[tuple[str, str]], duration_s: float
) -> None:
    """For duration_s, sample how peer `by` sees peer `of` (GET /v1/ring) for every pair."""
    cluster = run.cluster
    deadline = trio.current_time() + duration_s
    for _ in range(int(duration_s / POLL_INTERVAL_S) + 1):
        for by, of in pairs:
            try:
                answer = await http.get(
                    cluster.url(by) + "/v1/ring", headers=cluster.headers("alice")
                )
                state = {p["id"]: p["state"] for p in answer.json()["peers"]}[of]
            except (httpx.HTTPError, ValueError, KeyError) as error:
                state = f"error: {type(error).__name__}"
            run.views.append((run.now(), by, of, state))
        if trio.current_time() >= deadline:
            return
        await trio.sleep(min(POLL_INTERVAL_S, max(0.0, deadline - trio.current_time())))


async def seen_up_again(
    run: Run, http: httpx.AsyncClient, by: str, of: str, since: float, bound_s: float = 10.0
) -> None:
    """Polls until peer `by` sees peer `of` up again; notes how long after `since` that was."""
    cluster = run.cluster
    deadline = trio.current_time() + bound_s
    for _ in range(int(bound_s / 0.05) + 1):
        try:
            answer = await http.get(cluster.url(by) + "/v1/ring", headers=cluster.headers("alice"))
            if {p["id"]: p["state"] for p in answer.json()["peers"]}[of] == "up":
                run.note(f"{by} sees {of} up again {run.now() - since:.2f} s after the heal")
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if trio.current_time() >= deadline:
            break
        await trio.sleep(0.05)
    run.note(f"{by} still does not see {of} up {bound_s} s after the heal")


async def nemesis(run: Run) -> None:
    cluster = run.cluster
    assert isinstance(cluster, NetnsCluster)
    network = cluster.network
    async with httpx.AsyncClient(timeout=1.0, trust_env=False, verify=cluster.verify) as http:
        await trio.sleep(WARMUP_S)

        run.down.add("n1")
        await trio.to_thread.run_sync(cluster.kill, "n1")
        run.note("n1 killed (SIGKILL)")
        await trio.sleep(KILLED_FOR_S)
        await trio.to_thread.run_sync(cluster.start, "n1")
        await trio.to_thread.run_sync(cluster.wait_ready, "n1")
        run.down.discard("n1")
        run.note("n1 restarted and serving")
        await trio.sleep(BETWEEN_FAULTS_S)

        run.down.add("n2")
        cluster.pause("n2")
        run.note("n2 paused (SIGSTOP)")
        await trio.sleep(PAUSED_FOR_S)
        cluster.resume("n2")
        run.down.discard("n2")
        run.note("n2 resumed (SIGCONT)")
        await trio.sleep(BETWEEN_FAULTS_S)

        await trio.to_thread.run_sync(network.isolate, "n3")
        run.note("n3 isolated from n1 and n2 (clients still reach it)")
        await watch_views(run, http, [("n1", "n3"), ("n3", "n1")], ISOLATED_FOR_S)
        await trio.to_thread.run_sync(network.rejoin, "n3")
        run.note("n3 rejoined")
        await seen_up_again(run, http, "n1", "n3", since=run.now())
        await trio.sleep(BETWEEN_FAULTS_S)

        await trio.to_thread.run_sync(network.one_way, "n1", "n2")
        run.note("one-way cut: n1's requests to n2 are lost")
        await watch_views(run, http, [("n2", "n1"), ("n1", "n2")], ONE_WAY_FOR_S)
        await trio.to_thread.run_sync(network.heal_one_way, "n1", "n2")
        run.note("one-way cut healed")
        await seen_up_again(run, http, "n2", "n1", since=run.now())
        await trio.sleep(CALM_S)
    run.stopping = True
    run.note("clients stopping")


async def test_history_is_consistent_under_kill_pause_partition_and_one_way_cut(
    ns_cluster: NetnsCluster,
) -> None:
    cluster = ns_cluster
    run = Run(cluster, seed=SEED)
    history = cluster.directory / "history.jsonl"
    try:
        async with trio.open_nursery() as nursery:
            for index in range(CLIENTS):
                nursery.start_soon(client, run, index)
            nursery.start_soon(nemesis, run)
        run.note(f"clients done after {len(run.ops)} operations")
        cluster.network.heal_all()
        assert all(cluster.is_running(p) for p in cluster.peer_ids)
        converged_s, views = await trio.to_thread.run_sync(wait_converged, cluster, run.peers)
        healed = max(t for t, what in run.timeline if what in ("n3 rejoined", "one-way cut healed"))
        run.note(
            f"every owner converged in every peer's view {converged_s:.2f} s after the clients "
            f"stopped, {run.now() - healed:.2f} s after the last heal"
        )
        for key, view in sorted(views.items()):
            replicas = [(r["peer"], r["token_count"], r["active_epoch"]) for r in view["replicas"]]
            print(f"[faults] {key}: {replicas}")
        check_history(run)
    finally:
        history = write_history(run)
        print(f"[faults] history: {history}")


def check_history(run: Run) -> None:
    problems = history_problems(run)
    ops = run.ops
    # -- the isolated peer could not reach a quorum: no 200 while it was cut off
    isolated = [t for t, what in run.timeline if what.startswith("n3 isolated")]
    rejoined = [t for t, what in run.timeline if what == "n3 rejoined"]
    assert isolated and rejoined, run.timeline
    for op in ops:
        cut_off = op.invoked > isolated[0] and op.completed < rejoined[0]
        if op.peer == "n3" and cut_off and op.outcome == "ok":
            problems.append(f"[no quorum, yet 200] op {op.index} {op.kind} via isolated n3")

    # -- the faults really happened (the harness cut what it says it cut)
    during_isolation = {s for _, by, of, s in run.views if (by, of) == ("n1", "n3")}
    during_one_way = {s for _, by, of, s in run.views if (by, of) == ("n2", "n1")}
    print(
        f"[faults] n1's view of isolated n3: {sorted(during_isolation)}; n2's view of n1 "
        f"during the one-way cut: {sorted(during_one_way)}; n1's view of n2 then: "
        f"{sorted({s for _, by, of, s in run.views if (by, of) == ('n1', 'n2')})}"
    )
    if "down" not in during_isolation:
        problems.append("[harness] isolating n3 never made n1 see it down")
    if not during_one_way - {"up"}:
        problems.append("[harness] the one-way cut never made n2 miss n1")

    assert_no_problems(problems)


async def test_concurrent_rotates_through_one_peer_decide_one_value(
    tmp_path: Path, tls_mode: bool
) -> None:
    """API.md: of concurrent rotates with one expected_epoch exactly one answers rotated: true,
    all answer the same epoch; and one epoch has one value (so one token per input)."""
    cluster = Cluster(tmp_path / "cluster", owners=OWNERS, tls=tls_mode)
    try:
        cluster.start_all()
        cluster.kill("n3")  # two live replicas: both must take part in every decision
        problems = []
        async with httpx.AsyncClient(
            timeout=CLIENT_TIMEOUT_S, trust_env=False, verify=cluster.verify
        ) as http:
            for _ in range(ROTATE_ROUNDS):
                epoch = await http.get(
                    cluster.url("n1") + "/v1/epoch", headers=cluster.headers("alice")
                )
                assert epoch.status_code == 200, epoch.text
                expected = epoch.json()["epoch"]
                answers: list[dict[str, Any]] = []

                async def rotate(
                    expected: int = expected, answers: list[dict[str, Any]] = answers
                ) -> None:
                    answer = await http.post(
                        cluster.url("n1") + "/v1/epoch/rotate",
                        headers=cluster.headers("alice"),
                        json={"expected_epoch": expected},
                    )
                    assert answer.status_code == 200, answer.text
                    answers.append(answer.json())

                async with trio.open_nursery() as nursery:
                    for _ in range(CONCURRENT_ROTATES):
                        nursery.start_soon(rotate)
                winners = sum(1 for a in answers if a["rotated"])
                epochs = {a["epoch"] for a in answers}
                print(
                    f"[rotates] expected {expected}: rotated true {winners} times, epochs {epochs}"
                )
                if winners != 1 or epochs != {expected + 1}:
                    problems.append(
                        f"[rotated twice] from {expected}: {winners} answered rotated: true, "
                        f"epochs {epochs}"
                    )
        problems += agreement_problems(cluster, cluster.peer_ids)
        assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
    finally:
        cluster.close()
