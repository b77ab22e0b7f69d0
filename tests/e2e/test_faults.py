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

import bisect
import json
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import plyvel
import pytest
import trio

from tests.e2e.harness import Cluster
from tests.e2e.netns import REQUIRE_ENV, NetnsCluster, netns_cluster, netns_problem

pytestmark = pytest.mark.e2e

OWNERS = ("alice", "bob")
FIELDS = ("ssn", "card_number", "email")
VALUES_PER_FIELD = 60  # small pools: clients overlap on the same values all the time
CLIENTS = 6
OPS_PER_CLIENT_MAX = 1_500
CLIENT_TIMEOUT_S = 8.0
PACE_S = 0.04
CONVERGENCE_BOUND_S = 30.0
POLL_INTERVAL_S = 0.25
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


DECIDED_PREFIX = b"d\x00"
ALARM_EVENTS = ("paxos_disagreement",)  # and every event with "conflict" in its name


def decided_epochs(data_dir: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (owner, epoch) -> decided value in a stopped peer's LevelDB."""
    db = plyvel.DB(str(data_dir / "leveldb"))
    try:
        return {
            (key.split(b"\x00")[1].decode(), int.from_bytes(key[-8:], "big")): json.loads(raw)
            for key, raw in db.iterator(prefix=DECIDED_PREFIX)
        }
    finally:
        db.close()


def agreement_problems(cluster: Cluster) -> list[str]:
    """Stops every peer, then compares what the replicas decided and what they logged."""
    problems = []
    for peer_id in cluster.peer_ids:
        cluster.stop(peer_id)  # SIGTERM; a no-op for a peer that is not running
    values: dict[tuple[str, int], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for replica in cluster.init.peers:
        for slot, value in decided_epochs(replica.data_dir).items():
            values[slot][value["salt"]].append(f"{replica.id} ({value['requested_by']})")
    for (owner, epoch), by_salt in sorted(values.items()):
        if len(by_salt) > 1:
            problems.append(
                f"[epoch decided twice] {owner} epoch {epoch} decided as {len(by_salt)} "
                f"different values: {sorted(by_salt.values())}"
            )
    for peer in cluster.peer_ids:
        for event in cluster.log_events(peer):
            name = str(event["event"])
            if name in ALARM_EVENTS or "conflict" in name:
                problems.append(f"[alarm logged] {peer}: {json.dumps(event)}")
    return problems


@pytest.fixture
def ns_cluster(tmp_path: Path, tls_mode: bool) -> Iterator[NetnsCluster]:
    problem = netns_problem()
    if problem:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but network namespaces are unusable: {problem}")
        pytest.skip(f"needs network namespaces: {problem}")
    with netns_cluster(tmp_path / "cluster", tls=tls_mode) as cluster:
        yield cluster


@dataclass
class Op:
    index: int
    client: int
    kind: str  # tokenize | detokenize | rotate
    owner: str
    peer: str
    request: dict[str, Any]
    invoked: float = 0.0
    completed: float = 0.0
    outcome: str = ""  # ok | fail | timeout
    status: int | None = None
    retry_after: str | None = None
    answer: Any = None
    error: str = ""


@dataclass
class Run:
    cluster: NetnsCluster
    started: float = field(default_factory=time.monotonic)
    ops: list[Op] = field(default_factory=list)
    down: set[str] = field(default_factory=set)  # killed or paused: clients avoid them
    stopping: bool = False
    # owner -> tokens acknowledged so far (what detokenizes pick from)
    acked: dict[str, list[str]] = field(default_factory=lambda: {o: [] for o in OWNERS})
    timeline: list[tuple[float, str]] = field(default_factory=list)
    views: list[tuple[float, str, str, str]] = field(default_factory=list)  # by, of, state

    def now(self) -> float:
        return time.monotonic() - self.started

    def note(self, what: str) -> None:
        self.timeline.append((self.now(), what))
        print(f"[faults] {self.now():6.2f} s  {what}")


def value_of(rng: random.Random, field_name: str) -> str:
    return f"{field_name}-{rng.randrange(VALUES_PER_FIELD):03d}"


async def call(run: Run, http: httpx.AsyncClient, op: Op, path: str, body: Any) -> None:
    cluster = run.cluster
    run.ops.append(op)
    op.invoked = run.now()
    try:
        with trio.fail_after(CLIENT_TIMEOUT_S + 2.0):
            response = await http.post(
                cluster.url(op.peer) + path, headers=cluster.headers(op.owner), json=body
            )
    except (httpx.TimeoutException, trio.TooSlowError) as error:
        op.outcome, op.error = "timeout", type(error).__name__
    except httpx.TransportError as error:
        op.outcome, op.error = "fail", f"{type(error).__name__}: {error}"
    else:
        op.status = response.status_code
        op.retry_after = response.headers.get("retry-after")
        try:
            op.answer = response.json()
        except ValueError:
            op.answer = response.text
        op.outcome = "ok" if response.status_code == 200 else "fail"
    op.completed = run.now()


async def client(run: Run, index: int) -> None:
    rng = random.Random(SEED * 1000 + index)
    known_epoch = dict.fromkeys(OWNERS, 1)
    peers = run.cluster.peer_ids
    async with httpx.AsyncClient(
        timeout=CLIENT_TIMEOUT_S, trust_env=False, verify=run.cluster.verify
    ) as http:
        for _ in range(OPS_PER_CLIENT_MAX):
            if run.stopping:
                return
            live = [p for p in peers if p not in run.down]
            owner = rng.choice(OWNERS)
            op = Op(len(run.ops), index, "", owner, rng.choice(live), {})
            roll = rng.random()
            if roll < 0.05:
                op.kind = "rotate"
                op.request = {"expected_epoch": known_epoch[owner]}
                await call(run, http, op, "/v1/epoch/rotate", op.request)
            elif roll < 0.35 and run.acked[owner]:
                op.kind = "detokenize"
                pool = run.acked[owner]
                tokens = [pool[rng.randrange(len(pool))] for _ in range(rng.randint(1, 20))]
                other = run.acked[OWNERS[1 - OWNERS.index(owner)]]
                if other and rng.random() < 0.3:  # another owner's token: must not be found
                    tokens.append(other[rng.randrange(len(other))])
                op.request = {"tokens": tokens}
                await call(run, http, op, "/v1/detokenize", op.request)
            else:
                op.kind = "tokenize"
                records = []
                for n in range(rng.randint(1, 12)):
                    names = rng.sample(FIELDS, rng.randint(1, len(FIELDS)))
                    record: dict[str, str] = {f: value_of(rng, f) for f in names}
                    record["note"] = f"c{index}-{n}"
                    records.append(record)
                op.request = {"records": records}
                await call(run, http, op, "/v1/tokenize", op.request)
                if op.outcome == "ok":
                    for record in op.answer["records"]:
                        run.acked[owner].extend(record[f] for f in FIELDS if f in record)
            if op.outcome == "ok" and op.kind != "detokenize":
                known_epoch[owner] = max(known_epoch[owner], int(op.answer["epoch"]))
            await trio.sleep(rng.uniform(0, PACE_S))  # pacing between operations


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
    cluster, network = run.cluster, run.cluster.network
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


def owner_views_converged(cluster: NetnsCluster) -> tuple[bool, dict[str, Any]]:
    views: dict[str, Any] = {}
    with httpx.Client(timeout=5.0, trust_env=False, verify=cluster.verify) as http:
        for peer in cluster.peer_ids:
            for owner in OWNERS:
                try:
                    answer = http.get(
                        cluster.url(peer) + f"/v1/admin/owners/{owner}",
                        headers=cluster.admin_headers(),
                    )
                    views[f"{peer}/{owner}"] = answer.json()
                except (httpx.HTTPError, ValueError) as error:
                    views[f"{peer}/{owner}"] = {"converged": False, "error": repr(error)}
    return all(v.get("converged") is True for v in views.values()), views


def wait_converged(cluster: NetnsCluster) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    deadline = started + CONVERGENCE_BOUND_S
    views: dict[str, Any] = {}
    for _ in range(int(CONVERGENCE_BOUND_S / POLL_INTERVAL_S) + 1):
        done, views = owner_views_converged(cluster)
        if done:
            return time.monotonic() - started, views
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    summary = {
        k: [(r["peer"], r.get("token_count"), r.get("active_epoch")) for r in v.get("replicas", [])]
        for k, v in views.items()
    }
    pytest.fail(f"owners not converged within {CONVERGENCE_BOUND_S} s: {summary}")


def write_history(run: Run) -> Path:
    path = run.cluster.directory / "history.jsonl"
    with path.open("w") as out:
        for op in run.ops:
            out.write(json.dumps(asdict(op)) + "\n")
        out.write(json.dumps({"timeline": run.timeline, "views": run.views}) + "\n")
    return path


async def test_history_is_consistent_under_kill_pause_partition_and_one_way_cut(
    ns_cluster: NetnsCluster,
) -> None:
    cluster = ns_cluster
    run = Run(cluster)
    history = cluster.directory / "history.jsonl"
    try:
        async with trio.open_nursery() as nursery:
            for index in range(CLIENTS):
                nursery.start_soon(client, run, index)
            nursery.start_soon(nemesis, run)
        run.note(f"clients done after {len(run.ops)} operations")
        cluster.network.heal_all()
        assert all(cluster.is_running(p) for p in cluster.peer_ids)
        converged_s, views = await trio.to_thread.run_sync(wait_converged, cluster)
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
    cluster = run.cluster
    ops = run.ops
    tally = Counter((op.kind, op.outcome, op.status) for op in ops)
    print(f"[faults] operations: {sorted(tally.items(), key=str)}")
    problems: list[str] = []

    # -- statuses: only 200 or 503 (with Retry-After), never a 500 or anything else
    for op in ops:
        if op.status is not None and op.status not in (200, 503):
            problems.append(
                f"[bad status] op {op.index} {op.kind} via {op.peer}: {op.status} {op.answer}"
            )
        if op.status == 503 and not op.retry_after:
            problems.append(f"[bad status] op {op.index}: 503 without Retry-After")

    # -- tokenize answers: shape, one value per token, one token per (owner, epoch, field, value)
    acked: dict[str, tuple[str, str, str, int, float]] = {}  # token -> owner, field, value, epoch
    tokens_of_input: dict[tuple[str, int, str, str], set[str]] = defaultdict(set)
    seen_value: dict[str, tuple[str, str, str]] = {}
    reported: set[str] = set()

    def saw(token: str, owner: str, field_name: str, value: str, where: str) -> None:
        before = seen_value.setdefault(token, (owner, field_name, value))
        if before != (owner, field_name, value) and token not in reported:
            reported.add(token)
            problems.append(
                f"[token with two values] {token[:12]}… maps to {before} and to "
                f"{(owner, field_name, value)} ({where})"
            )

    for op in ops:
        if op.kind != "tokenize" or op.outcome != "ok":
            continue
        epoch = int(op.answer["epoch"])
        sent, got = op.request["records"], op.answer["records"]
        if len(sent) != len(got):
            problems.append(f"[bad answer] op {op.index}: {len(sent)} records, {len(got)} back")
            continue
        for record, answered in zip(sent, got, strict=True):
            if answered.get("note") != record["note"]:
                problems.append(f"[bad answer] op {op.index}: a non-configured field changed")
            for field_name in FIELDS:
                if field_name not in record:
                    continue
                token, value = answered[field_name], record[field_name]
                saw(token, op.owner, field_name, value, f"tokenize op {op.index}")
                tokens_of_input[(op.owner, epoch, field_name, value)].add(token)
                if token not in acked or acked[token][4] > op.completed:
                    acked[token] = (op.owner, field_name, value, epoch, op.completed)

    for (owner, epoch, field_name, value), tokens in sorted(tokens_of_input.items()):
        if len(tokens) > 1:
            problems.append(
                f"[input with two tokens] {owner} epoch {epoch} {field_name}={value}: "
                f"{sorted(t[:12] + '…' for t in tokens)}"
            )

    # -- detokenize answers during the run: values as acknowledged; acknowledged tokens found
    for op in ops:
        if op.kind != "detokenize" or op.outcome != "ok":
            continue
        for result in op.answer["results"]:
            token = result["token"]
            owner, field_name, value, epoch, acked_at = acked[token]
            if owner != op.owner:
                if result["found"]:
                    problems.append(f"[owner leak] op {op.index}: {op.owner} saw {owner}'s token")
                continue
            if result["found"]:
                saw(token, op.owner, result["field"], result["value"], f"detokenize op {op.index}")
                if result["epoch"] != epoch:
                    problems.append(
                        f"[bad answer] op {op.index}: epoch {epoch} token read as {result['epoch']}"
                    )
            elif acked_at < op.invoked:
                problems.append(
                    f"[acked token missed] op {op.index} via {op.peer} at {op.invoked:.2f} s: "
                    f"token acknowledged at {acked_at:.2f} s not found"
                )

    # -- epochs: never back after a rotate answered; rotate answers as API.md says
    for owner in OWNERS:
        rotates = sorted(
            (op for op in ops if op.owner == owner and op.kind == "rotate" and op.outcome == "ok"),
            key=lambda op: op.completed,
        )
        completions = [op.completed for op in rotates]
        floor, highest = [], 0
        for op in rotates:
            highest = max(highest, int(op.answer["epoch"]))
            floor.append(highest)
        winners: dict[int, list[int]] = defaultdict(list)
        for op in rotates:
            expected, epoch = op.request["expected_epoch"], int(op.answer["epoch"])
            if op.answer["rotated"]:
                winners[expected].append(op.index)
                if epoch != expected + 1:
                    problems.append(f"[rotate] op {op.index}: rotated from {expected} to {epoch}")
            elif epoch <= expected:
                problems.append(f"[rotate] op {op.index}: not rotated, epoch {epoch} <= {expected}")
        for expected, indexes in winners.items():
            if len(indexes) > 1:
                problems.append(
                    f"[rotated twice] {owner}: rotates {indexes} all answered rotated: true "
                    f"from {expected}"
                )
        for op in ops:
            if op.owner != owner or op.outcome != "ok" or op.kind == "detokenize":
                continue
            before = bisect.bisect_left(completions, op.invoked)
            if before and int(op.answer["epoch"]) < floor[before - 1]:
                problems.append(
                    f"[epoch went back] {op.kind} op {op.index} via {op.peer} started at "
                    f"{op.invoked:.2f} s "
                    f"answered epoch {op.answer['epoch']} after a rotate answered "
                    f"{floor[before - 1]}"
                )

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

    # -- progress: the run did something under every fault
    ok = Counter(op.kind for op in ops if op.outcome == "ok")
    if ok["tokenize"] < 50 or ok["detokenize"] < 20 or ok["rotate"] < 2:
        problems.append(f"[harness] too little progress to judge: {ok}")

    # -- afterwards: every acknowledged token through every peer
    with httpx.Client(timeout=30.0, trust_env=False, verify=cluster.verify) as http:
        for owner in OWNERS:
            mine = sorted(t for t, a in acked.items() if a[0] == owner)
            for peer in cluster.peer_ids:
                for start in range(0, len(mine), 1000):
                    chunk = mine[start : start + 1000]
                    answer = http.post(
                        cluster.url(peer) + "/v1/detokenize",
                        headers=cluster.headers(owner),
                        json={"tokens": chunk},
                    )
                    assert answer.status_code == 200, (peer, answer.text)
                    for result in answer.json()["results"]:
                        _, field_name, value, epoch, _ = acked[result["token"]]
                        got = (result["found"], result.get("field"), result.get("value"))
                        if got != (True, field_name, value) or result.get("epoch") != epoch:
                            problems.append(f"[read back] {peer}: {owner} {result} != {value}")
            print(f"[faults] {owner}: {len(mine)} acknowledged tokens read back through every peer")
    problems += agreement_problems(cluster)
    kinds = Counter(problem.split("]")[0] + "]" for problem in problems)
    assert not problems, f"{len(problems)} problems ({dict(kinds)}):\n" + "\n".join(problems[:40])


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
        problems += agreement_problems(cluster)
        assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
    finally:
        cluster.close()
