"""A client history under faults, and what it must show (test_faults.py, test_membership_load.py).

Client tasks tokenize overlapping values, detokenize acknowledged tokens and rotate epochs (with
`expected_epoch`) through random live peers of `Run.peers` (a list the test may change while
clients run: members join and leave). Every operation goes into the history (invoke and
completion times, peer, outcome ok/fail/timeout, status, answer). `history_problems` then lists
every violation of the contract it can see:
- every acknowledged token (tokenize 200) detokenizes through every peer of `Run.peers` to the
  value, field and epoch its client got; a detokenize 200 never misses a token acknowledged
  before it started; another owner's token is never found;
- no token maps to two values, and one (owner, epoch, field, value) never got two tokens;
- once a rotate answered epoch e, every tokenize or rotate started later answered an epoch >= e;
  one `rotated: true` per (owner, expected_epoch), with epoch expected + 1;
- nothing but 200 or 503 (with Retry-After) was ever answered;
- on disk (every peer stopped at the end), every replica that decided an epoch decided the same
  value for it, and no peer logged a Paxos disagreement or an integrity conflict.
"""

from __future__ import annotations

import bisect
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import plyvel
import pytest
import trio

from tests.e2e.harness import Cluster

OWNERS = ("alice", "bob")
FIELDS = ("ssn", "card_number", "email")
VALUES_PER_FIELD = 60  # small pools: clients overlap on the same values all the time
OPS_PER_CLIENT_MAX = 1_500
CLIENT_TIMEOUT_S = 8.0
PACE_S = 0.04
CONVERGENCE_BOUND_S = 30.0
POLL_INTERVAL_S = 0.25
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


def agreement_problems(cluster: Cluster, peers: Sequence[str]) -> list[str]:
    """Stops every peer, then compares what the replicas decided (on the disks of `peers` and
    of the first peers) and what every peer logged."""
    problems = []
    for peer_id in cluster.started_peers():
        cluster.stop(peer_id)  # SIGTERM; a no-op for a peer that is not running
    values: dict[tuple[str, int], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for peer in dict.fromkeys([*cluster.peer_ids, *peers]):
        data_dir = cluster.data_dir(peer)
        if not (data_dir / "leveldb").exists():
            continue  # a data directory the run deleted
        for slot, value in decided_epochs(data_dir).items():
            values[slot][value["salt"]].append(f"{peer} ({value['requested_by']})")
    for (owner, epoch), by_salt in sorted(values.items()):
        if len(by_salt) > 1:
            problems.append(
                f"[epoch decided twice] {owner} epoch {epoch} decided as {len(by_salt)} "
                f"different values: {sorted(by_salt.values())}"
            )
    for peer in cluster.started_peers():
        for event in cluster.log_events(peer):
            name = str(event["event"])
            if name in ALARM_EVENTS or "conflict" in name:
                problems.append(f"[alarm logged] {peer}: {json.dumps(event)}")
    return problems


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
    cluster: Cluster
    peers: list[str] = field(default_factory=list)  # members clients use; [] = every peer
    started: float = field(default_factory=time.monotonic)
    ops: list[Op] = field(default_factory=list)
    down: set[str] = field(default_factory=set)  # killed or paused: clients avoid them
    stopping: bool = False
    # owner -> tokens acknowledged so far (what detokenizes pick from)
    acked: dict[str, list[str]] = field(default_factory=lambda: {o: [] for o in OWNERS})
    seed: int = 0
    timeline: list[tuple[float, str]] = field(default_factory=list)
    views: list[tuple[float, str, str, str]] = field(default_factory=list)  # by, of, state

    def __post_init__(self) -> None:
        if not self.peers:
            self.peers = list(self.cluster.peer_ids)

    def now(self) -> float:
        return time.monotonic() - self.started

    def note(self, what: str) -> None:
        self.timeline.append((self.now(), what))
        print(f"[history] {self.now():6.2f} s  {what}")


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
    rng = random.Random(run.seed * 1000 + index)
    known_epoch = dict.fromkeys(OWNERS, 1)
    async with httpx.AsyncClient(
        timeout=CLIENT_TIMEOUT_S, trust_env=False, verify=run.cluster.verify
    ) as http:
        for _ in range(OPS_PER_CLIENT_MAX):
            if run.stopping:
                return
            live = [p for p in run.peers if p not in run.down]  # members change
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


def owner_views_converged(cluster: Cluster, peers: Sequence[str]) -> tuple[bool, dict[str, Any]]:
    views: dict[str, Any] = {}
    with httpx.Client(timeout=5.0, trust_env=False, verify=cluster.verify) as http:
        for peer in peers:
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


def wait_converged(cluster: Cluster, peers: Sequence[str]) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    deadline = started + CONVERGENCE_BOUND_S
    views: dict[str, Any] = {}
    for _ in range(int(CONVERGENCE_BOUND_S / POLL_INTERVAL_S) + 1):
        done, views = owner_views_converged(cluster, peers)
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


def history_problems(run: Run) -> list[str]:
    """Every problem the history shows (faults aside), read back through `run.peers` at the end
    (one line each, tagged by kind in brackets)."""
    cluster = run.cluster
    ops = run.ops
    tally = Counter((op.kind, op.outcome, op.status) for op in ops)
    print(f"[history] operations: {sorted(tally.items(), key=str)}")
    for op in [op for op in ops if op.outcome != "ok"][:20]:
        print(
            f"[history] not ok: op {op.index} {op.kind} via {op.peer} {op.invoked:.2f}-"
            f"{op.completed:.2f} s: {op.outcome} {op.status} {op.error or str(op.answer)[:100]}"
        )
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

    # -- progress: the run did something under every fault
    ok = Counter(op.kind for op in ops if op.outcome == "ok")
    if ok["tokenize"] < 50 or ok["detokenize"] < 20 or ok["rotate"] < 2:
        problems.append(f"[harness] too little progress to judge: {ok}")

    # -- afterwards: every acknowledged token through every peer
    with httpx.Client(timeout=30.0, trust_env=False, verify=cluster.verify) as http:
        for owner in OWNERS:
            mine = sorted(t for t, a in acked.items() if a[0] == owner)
            for peer in run.peers:
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
            print(
                f"[history] {owner}: {len(mine)} acknowledged tokens read back through every peer"
            )
    problems += agreement_problems(cluster, run.peers)
    return problems


def assert_no_problems(problems: list[str]) -> None:
    kinds = Counter(problem.split("]")[0] + "]" for problem in problems)
    assert not problems, f"{len(problems)} problems ({dict(kinds)}):\n" + "\n".join(problems[:40])
