"""The checker: the invariants every run must keep, judged on its history and final state.

Invariants (docs/simulation.md explains each):
- one-value-per-token: a token of an owner maps to one mapping, across every answer and every
  replica, ever.
- no-uninserted-value: every mapping a read returned or a replica holds is one that some client
  tried to insert.
- no-corrupt-value: every mapping an ok read returned verifies: its token is the keyed hash of
  its field and value under its epoch (the value the run decided for it), so a record with a
  flipped bit can never reach a client, whatever the replicas hold.
- answers-are-durable: when a client receives a tokenize's ok, or a detokenize that shows a
  token, at least W replicas hold that mapping durably (an acknowledgement means "fsync'd").
- acknowledged-write-visible: every ok read invoked after a tokenize was acknowledged returns its
  mapping, and the liveness phase's read (after healing) finds it with its value.
- reads-never-go-back: once an ok read returned a token, every ok read invoked after it returned
  finds the token too.
- convergence: after the liveness phase every replica that holds a token holds the same mapping,
  every acknowledged mapping is durable on at least W replicas of its preference list, every
  peer is up with nothing in flight, nothing unsynced and no output held. With
  `require_full_convergence` (on in every run) the cluster also converged within the bound:
  every owner's N replicas hold identical mappings (and merkle roots) and one decided active
  epoch, no replica outside the preference list holds any, and no hint is pending anywhere.
- no-core-exception: no core raised (the peer core contains it, but it is a bug).
- liveness: the clients finished within the run's bounds, every operation completed, and every
  liveness read succeeded.
Epochs (single-decree Paxos per owner and slot), judged on the acceptors' durable records over the
whole run (observer.py) and at the end, and on what clients were answered:
- one-value-per-slot: at most one value is ever decided per (owner, slot) on any acceptor, and
  every answer, decided record and tokenize of one (owner, epoch) names that same value.
- values-were-proposed: every value accepted or decided was carried by an Accept a proposer sent,
  and names (requested_by) a rotate some client asked for.
- chosen-value-kept: once a majority voted for a value at a ballot (accepted it on an Accept
  that reached them; an adopted acceptor state is no vote), every acceptance at a higher
  ballot of that slot carries the same value.
- promise-never-decreases: an acceptor's promised (and accepted) ballot of a slot never goes down,
  across restarts too.
- active-epoch-never-goes-back: a peer's decided epoch and fence of an owner never go down.
- hints-kept-until-acknowledged: a hint is deleted only once its target durably holds it.
- epochs-never-go-back: an ok tokenize, epoch read or rotate invoked after one of them answered
  epoch e answers e or later.
- same-input-same-token: one (owner, epoch, field, value) always gives one token.
- rotations-agree: per (owner, epoch) at most one rotate answered rotated; a rotated answer is the
  rotate's own value, at expected + 1; a rotate expecting a known epoch e answers e + 1 or later;
  and the rotates of a burst with one expected epoch answer one epoch, unless another rotate
  that could move the epoch further (expecting e + 1, or nothing) was asked meanwhile.
The ring (membership changes; ring_log.py judges the first three as records become durable):
- one-membership-per-version: at most one membership is decided per ring version.
- ring-never-goes-back: a peer's durable learned version never decreases; every decided version
  is one change (or the finish of the pending one) of the version before it.
- ring-decided-by-voters: every decided version was accepted by a majority of the voters of the
  version before it.
- transfer-commits-complete (transfer_log.py, as records become durable): when a transfer's
  commit is durable on its new replica, it holds every mapping W old replicas held when the
  transfer started.
- owners-on-final-ring (with `require_finish`, as SimConfig has it by default): at the
  end every running member learned the final version and it is drained; every acknowledged
  mapping is on at least W replicas of the final preference lists, every decided epoch on a
  majority of them (or a later epoch of its owner is decided there).
The preference lists the checker is given are those of the ring the peers learned (the read
set of each owner), and `placed_on` where an owner's data may be (both sets of a pending change).
Each violation names its operations with their virtual times, and the log lines that show it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tokenvault.quorum.messages import GENESIS, EpochValue, Mapping
from tokenvault.quorum.quorum_config import majority
from tokenvault.ring.membership import Membership
from tokenvault.sim.cluster import ReplicaState
from tokenvault.sim.durable import SIM_SEALER
from tokenvault.sim.history import History, Operation, OperationKind, Outcome
from tokenvault.sim.network import describe_value
from tokenvault.sim.observation import Observation
from tokenvault.sim.observer import WriteAttempt
from tokenvault.sim.peer import CoreError

VIOLATIONS_PER_INVARIANT_MAX = 5

Key = tuple[str, str]  # (owner, token)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextQuery:
    """Which log lines show a violation: those of its operations and tokens, and the faults and
    syncs of its peers, around its time window."""

    op_ids: tuple[str, ...]
    tokens: tuple[str, ...]
    peers: tuple[str, ...]
    window_s: tuple[float, float]


EventContext = Callable[[ContextQuery], tuple[str, ...]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    invariant: str
    summary: str
    operations: tuple[str, ...] = ()  # Operation.describe() of the operations that show it
    events: tuple[str, ...] = ()  # log lines that show it

    def render(self) -> str:
        lines = [f"VIOLATION {self.invariant}: {self.summary}", "  operations:"]
        lines.extend(
            f"    {text}" for text in self.operations or ("(no client operation shows it)",)
        )
        lines.append("  events:")
        lines.extend(f"    {text}" for text in self.events or ("(no logged event shows it)",))
        return "\n".join(lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckInput:
    history: History
    replicas: tuple[ReplicaState, ...]
    preference_lists: dict[str, tuple[str, ...]]
    write_quorum: int
    core_errors: tuple[CoreError, ...] = ()
    quiesced: bool = True  # the clients finished within the run's bounds
    require_full_convergence: bool = False
    context: EventContext | None = None  # log lines mentioning needles in a time window
    # What the observer saw inside the peers (observer.py).
    observations: tuple[Observation, ...] = ()
    write_attempts: tuple[WriteAttempt, ...] = ()
    decided_over_run: tuple[tuple[str, int, EpochValue, tuple[str, ...]], ...] = ()
    chosen_value_violations: tuple[str, ...] = ()
    # The liveness phase: whether full convergence was reached within the bound, and when.
    converged: bool = True
    convergence_bound_s: float = 0.0
    liveness_started_s: float | None = None
    # The ring (membership changes): where an owner's data may be (both sets of a pending
    # change; the preference lists when not given), what ring_log.py saw, and the final ring.
    placed_on: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ring_observations: tuple[Observation, ...] = ()
    require_finish: bool = False
    final_ring: Membership | None = None
    ring_drained: bool = True
    ring_learned: dict[str, int] = field(default_factory=dict)  # running peer -> version


def no_context(query: ContextQuery) -> tuple[str, ...]:
    return ()


class _Report:
    """Collects violations, at most VIOLATIONS_PER_INVARIANT_MAX per invariant."""

    def __init__(self, context: EventContext) -> None:
        self._context = context
        self.violations: list[Violation] = []
        self._counts: dict[str, int] = {}

    def add(
        self,
        invariant: str,
        summary: str,
        operations: Iterable[Operation] = (),
        *,
        tokens: Iterable[str] = (),
        peers: Iterable[str] = (),
        window_s: tuple[float, float] | None = None,
        more_op_ids: Iterable[str] = (),
    ) -> None:
        count = self._counts.get(invariant, 0) + 1
        self._counts[invariant] = count
        if count > VIOLATIONS_PER_INVARIANT_MAX:
            return
        unique = {op.op_id: op for op in operations}
        ops = sorted(unique.values(), key=lambda op: (op.invoke_s, op.op_id))
        times = [op.invoke_s for op in ops] + [op.complete_s or op.invoke_s for op in ops]
        window = (min(times), max(times)) if times else (0.0, float("inf"))
        if window_s is not None:
            window = window_s
        query = ContextQuery(
            op_ids=tuple(dict.fromkeys([*(op.op_id for op in ops), *more_op_ids])),
            tokens=tuple(tokens),
            peers=tuple(peers),
            window_s=window,
        )
        self.violations.append(
            Violation(
                invariant=invariant,
                summary=summary,
                operations=tuple(op.describe() for op in ops),
                events=self._context(query),
            )
        )

    def finish(self) -> list[Violation]:
        for invariant, count in sorted(self._counts.items()):
            if count > VIOLATIONS_PER_INVARIANT_MAX:
                hidden = count - VIOLATIONS_PER_INVARIANT_MAX
                self.violations.append(
                    Violation(invariant=invariant, summary=f"... and {hidden} more like these")
                )
        return self.violations


def check(state: CheckInput) -> list[Violation]:
    report = _Report(state.context or no_context)
    ops = list(state.history)
    _check_values(state, ops, report)
    _check_no_corrupt_value(state, ops, report)
    _check_answers_durable(state, ops, report)
    _check_acknowledged_visible(state, ops, report)
    _check_reads_never_go_back(state, ops, report)
    _check_convergence(state, ops, report)
    _check_core_errors(state, report)
    _check_liveness(state, ops, report)
    _check_observations(state, ops, report)
    _check_slots(state, ops, report)
    _check_client_epochs(ops, report)
    _check_same_input_same_token(state, ops, report)
    _check_rotations(ops, report)
    _check_ring(state, ops, report)
    return report.finish()


# -- values ------------------------------------------------------------------------------------


def _check_values(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    attempted: dict[Key, set[Mapping]] = {}
    for op in ops:
        for m in op.mappings:
            attempted.setdefault((m.owner, m.token), set()).add(m)
    for attempt in state.write_attempts:
        for m in attempt.mappings:
            attempted.setdefault((m.owner, m.token), set()).add(m)
    seen: dict[Key, dict[Mapping, list[str]]] = {}  # mapping -> where it was seen
    answering: dict[Key, list[Operation]] = {}
    for op in ops:
        if op.is_read and op.outcome is Outcome.OK:
            for found in op.found:
                if found is not None:
                    key = (found.owner, found.token)
                    seen.setdefault(key, {}).setdefault(found, []).append(op.op_id)
                    answering.setdefault(key, []).append(op)
    for replica in state.replicas:
        for key, m in replica.mappings.items():
            seen.setdefault(key, {}).setdefault(m, []).append(replica.peer)
    for key, mappings in sorted(seen.items()):
        owner, token = key
        if len(mappings) > 1:
            values = "; ".join(
                f"{m.value!r}/{m.field} seen at {','.join(sorted(set(where)))}"
                for m, where in sorted(mappings.items(), key=lambda item: item[0].value)
            )
            report.add(
                "one-value-per-token",
                f"token {token} of {owner} has {len(mappings)} values: {values}",
                answering.get(key, []),
                tokens=[token],
            )
        for m, where in sorted(mappings.items(), key=lambda item: item[0].value):
            if m not in attempted.get(key, set()):
                report.add(
                    "no-uninserted-value",
                    f"token {token} of {owner} shows value {m.value!r}/{m.field} epoch"
                    f" {m.epoch}, which no client tried to insert (seen at"
                    f" {','.join(sorted(set(where)))})",
                    [op for op in answering.get(key, []) if op.op_id in where],
                    tokens=[token],
                )


def _check_no_corrupt_value(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    decided = {(owner, slot): value for owner, slot, value, _ in state.decided_over_run}
    for op in ops:
        if not (op.is_read and op.outcome is Outcome.OK):
            continue
        for found in op.found:
            if found is None:
                continue
            epoch = (
                GENESIS if found.epoch == GENESIS.epoch else decided.get((found.owner, found.epoch))
            )
            if epoch is not None and not SIM_SEALER.token_matches(found, epoch):
                report.add(
                    "no-corrupt-value",
                    f"{op.op_id} returned token {found.token} of {found.owner} with a value"
                    f" that is not the one its token was made from (epoch {found.epoch})",
                    [op],
                    tokens=[found.token],
                )


# -- answers -----------------------------------------------------------------------------------


def _check_answers_durable(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    quorum = state.write_quorum
    for op in ops:
        if op.outcome is not Outcome.OK:
            continue
        shown: tuple[Mapping | None, ...] = (
            op.mappings if op.kind is OperationKind.TOKENIZE else op.found
        )
        short = [
            (m, copies)
            for m, copies in zip(shown, op.copies_at_answer, strict=True)
            if m is not None and copies < quorum
        ]
        if short:
            verb = "acknowledged" if op.kind is OperationKind.TOKENIZE else "returned"
            listed = ", ".join(f"{m.token} on {copies}" for m, copies in short)
            report.add(
                "answers-are-durable",
                f"op {op.op_id} {verb} tokens of {op.owner} at {op.complete_s:.6f} s that fewer"
                f" than W={quorum} replicas held durably: {listed}",
                [op],
                tokens=[m.token for m, _ in short],
                peers=state.preference_lists.get(op.owner, ()),
            )


def _reads_by_token(ops: list[Operation]) -> dict[Key, list[tuple[Operation, Mapping | None]]]:
    reads: dict[Key, list[tuple[Operation, Mapping | None]]] = {}
    for op in ops:
        if op.is_read and op.outcome is Outcome.OK:
            for token, found in zip(op.tokens, op.found, strict=True):
                reads.setdefault((op.owner, token), []).append((op, found))
    return reads


def _check_acknowledged_visible(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    reads = _reads_by_token(ops)
    checked: dict[Key, Operation] = {}
    for op in ops:
        if op.kind is OperationKind.CHECK:
            for token in op.tokens:
                earlier = checked.get((op.owner, token))
                if earlier is None or earlier.outcome is not Outcome.OK:
                    checked[(op.owner, token)] = op
    for write in ops:
        if write.kind is not OperationKind.TOKENIZE or write.outcome is not Outcome.OK:
            continue
        assert write.complete_s is not None
        for m in write.mappings:
            key = (m.owner, m.token)
            for read, found in reads.get(key, []):
                if read.invoke_s > write.complete_s and found != m:
                    shown = "nothing" if found is None else repr(found.value)
                    report.add(
                        "acknowledged-write-visible",
                        f"token {m.token} of {m.owner} was acknowledged by op {write.op_id} at"
                        f" {write.complete_s:.6f} s, but op {read.op_id} invoked at"
                        f" {read.invoke_s:.6f} s read {shown}",
                        [write, read],
                        tokens=[m.token],
                        peers=state.preference_lists.get(m.owner, ()),
                    )
            check = checked.get(key)
            if check is None or check.outcome is not Outcome.OK:
                report.add(
                    "acknowledged-write-visible",
                    f"token {m.token} of {m.owner} was acknowledged by op {write.op_id} but"
                    " the liveness phase could not read it back",
                    [write] + ([] if check is None else [check]),
                    tokens=[m.token],
                    peers=state.preference_lists.get(m.owner, ()),
                )


def _check_reads_never_go_back(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    for (owner, token), reads in sorted(_reads_by_token(ops).items()):
        found_by = [op for op, m in reads if m is not None]
        if not found_by:
            continue
        first = min(found_by, key=lambda op: (op.complete_s or 0.0, op.op_id))
        assert first.complete_s is not None
        for op, m in reads:
            if m is None and op.invoke_s > first.complete_s:
                report.add(
                    "reads-never-go-back",
                    f"token {token} of {owner} was returned by op {first.op_id} (done at"
                    f" {first.complete_s:.6f} s) but op {op.op_id} invoked later at"
                    f" {op.invoke_s:.6f} s did not find it",
                    [first, op],
                    tokens=[token],
                    peers=state.preference_lists.get(owner, ()),
                )


# -- the final state ---------------------------------------------------------------------------


def _check_convergence(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    replicas = {r.peer: r for r in state.replicas}
    for replica in state.replicas:
        if not replica.judged:
            continue  # outside the learned ring: its operator stops it
        problems = []
        if not replica.up:
            problems.append("is down")
        if replica.operations_in_flight:
            problems.append(f"has {replica.operations_in_flight} operation(s) in flight")
        if replica.unsynced:
            problems.append("has unsynced writes")
        if replica.held_effects:
            problems.append(f"holds {replica.held_effects} unsent output(s)")
        if problems:
            report.add(
                "convergence",
                f"peer {replica.peer} {' and '.join(problems)} at the end",
                peers=[replica.peer],
            )
    for write in ops:
        if write.kind is not OperationKind.TOKENIZE or write.outcome is not Outcome.OK:
            continue
        for m in write.mappings:
            holders = [
                peer
                for peer in state.preference_lists[m.owner]
                if replicas[peer].mappings.get((m.owner, m.token)) == m
            ]
            if len(holders) < state.write_quorum:
                report.add(
                    "convergence",
                    f"token {m.token} of {m.owner}, acknowledged by op {write.op_id}, is durable"
                    f" on {len(holders)} replica(s) at the end: {','.join(holders) or 'none'}"
                    f" (W={state.write_quorum})",
                    [write],
                    tokens=[m.token],
                    peers=state.preference_lists.get(m.owner, ()),
                )
    if state.require_full_convergence:
        _check_full_convergence(state, ops, report)


def _writers(state: CheckInput, ops: list[Operation]) -> dict[Key, list[Operation]]:
    """The tokenizes that tried to write each (owner, token)."""
    by_id = {op.op_id: op for op in ops}
    found: dict[Key, list[Operation]] = {}
    for attempt in state.write_attempts:
        op = by_id.get(attempt.client_op)
        if op is not None:
            for m in attempt.mappings:
                found.setdefault((m.owner, m.token), []).append(op)
    for op in ops:
        if op.kind is OperationKind.TOKENIZE:
            for m in op.mappings:
                found.setdefault((m.owner, m.token), []).append(op)
    return found


def _check_full_convergence(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    replicas = {r.peer: r for r in state.replicas}
    writers = _writers(state, ops)
    if not state.converged:
        started = state.liveness_started_s
        since = "" if started is None else f" (the liveness phase began at {started:.6f} s)"
        report.add(
            "convergence",
            f"the cluster did not converge within {state.convergence_bound_s:.0f} virtual s"
            f"{since}: see what differs below",
            window_s=None if started is None else (started, started + state.convergence_bound_s),
        )
    for replica in state.replicas:
        if replica.hints_pending and replica.judged:
            report.add(
                "convergence",
                f"peer {replica.peer} still holds {replica.hints_pending} hint(s) at the end",
                peers=[replica.peer],
            )
    for owner, preference_list in sorted(state.preference_lists.items()):
        roots = {
            peer: replicas[peer].merkle_roots[owner]
            for peer in preference_list
            if owner in replicas[peer].merkle_roots
        }
        if len(set(roots.values())) > 1:
            listed = ", ".join(f"{peer}:{root[:12]}" for peer, root in sorted(roots.items()))
            report.add(
                "convergence",
                f"the replicas of {owner} end with different merkle roots: {listed}",
                peers=preference_list,
            )
        epochs = {
            peer: replicas[peer].active_epochs[owner]
            for peer in preference_list
            if owner in replicas[peer].active_epochs
        }
        if len(set(epochs.values())) > 1:
            listed = ", ".join(
                f"{peer}:{describe_value(value)}" for peer, value in sorted(epochs.items())
            )
            report.add(
                "convergence",
                f"the replicas of {owner} end with different decided epochs: {listed}",
                peers=preference_list,
            )
    for owner, preference_list in sorted(state.preference_lists.items()):
        views = {
            peer: {k: m for k, m in replicas[peer].mappings.items() if k[0] == owner}
            for peer in preference_list
        }
        union: set[Key] = set().union(*(set(v) for v in views.values()))
        for key in sorted(union):
            lacking = [peer for peer, view in views.items() if key not in view]
            if lacking:
                report.add(
                    "convergence",
                    f"token {key[1]} of {owner} is missing on {','.join(lacking)} (full"
                    " convergence: every replica of the preference list holds it)",
                    writers.get(key, [])[:3],
                    tokens=[key[1]],
                    peers=preference_list,
                )
        placed = state.placed_on.get(owner, preference_list)
        strays = [
            (r.peer, key)
            for r in state.replicas
            if r.judged and r.peer not in placed  # outside the ring: its operator stops it
            for key in r.mappings
            if key[0] == owner
        ]
        for peer, key in strays:
            report.add(
                "convergence",
                f"token {key[1]} of {owner} is held by {peer}, outside its preference list",
                tokens=[key[1]],
            )


def _check_core_errors(state: CheckInput, report: _Report) -> None:
    for error in state.core_errors:
        report.add(
            "no-core-exception",
            f"{error.error} raised by the {error.input} core call of {error.peer} at"
            f" {error.at_s:.6f} s ({error.location}); the input was dropped",
            peers=[error.peer],
        )


def _check_liveness(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    if not state.quiesced:
        report.add(
            "liveness", "the run did not quiesce within its bounds of virtual time and events"
        )
    for op in ops:
        if op.outcome is Outcome.PENDING:
            report.add("liveness", f"op {op.op_id} never completed", [op])
        elif op.kind is OperationKind.CHECK and op.outcome is not Outcome.OK:
            report.add(
                "liveness",
                f"the liveness read {op.op_id} through {op.peer} failed after healing"
                f" ({op.reason})",
                [op],
            )


# -- epochs: inside the peers --------------------------------------------------------------------


def _check_observations(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    by_id = {op.op_id: op for op in ops}
    writers: dict[str, list[str]] = {}  # token -> the client operations that tried to write it
    for attempt in state.write_attempts:
        for m in attempt.mappings:
            writers.setdefault(m.token, []).append(attempt.client_op)
    for observation in state.observations:
        # A core operation of a tokenize ("c1-5/l1") belongs to the client's operation c1-5.
        op_ids = [op_id.split("/")[0] for op_id in observation.op_ids]
        op_ids += [op_id for token in observation.tokens for op_id in writers.get(token, ())]
        involved = [by_id.get(op_id) for op_id in op_ids]
        report.add(
            observation.invariant,
            f"at {observation.at_s:.6f} s: {observation.summary}",
            [op for op in involved if op is not None],
            tokens=observation.tokens,
            peers=observation.peers,
            window_s=(observation.at_s - 1.0, observation.at_s),
            more_op_ids=observation.op_ids,
        )
    for text in state.chosen_value_violations:
        report.add("chosen-value-kept", text)


def _check_slots(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    """One value per (owner, epoch) across decided records (over the run and at the end), the
    clients' answers and the tokenizes' epochs; and every decided value names a rotate."""
    values: dict[tuple[str, int], dict[EpochValue, list[str]]] = {}
    answering: dict[tuple[str, int], list[Operation]] = {}

    def note(owner: str, value: EpochValue, where: str) -> None:
        values.setdefault((owner, value.epoch), {}).setdefault(value, []).append(where)

    for owner, _, value, peers in state.decided_over_run:
        note(owner, value, "decided on " + ",".join(peers))
    for replica in state.replicas:
        for (owner, _), value in sorted(replica.decided.items()):
            note(owner, value, f"decided on {replica.peer}")
    for attempt in state.write_attempts:
        if attempt.epoch.epoch > GENESIS.epoch:
            note(attempt.mappings[0].owner, attempt.epoch, f"tokenize {attempt.op_id}")
    for op in ops:
        if op.outcome is Outcome.OK and op.epoch_value is not None:
            if op.epoch_value.epoch > GENESIS.epoch:
                note(op.owner, op.epoch_value, f"answer {op.op_id}")
                answering.setdefault((op.owner, op.epoch_value.epoch), []).append(op)
            elif op.epoch_value != GENESIS:
                report.add(
                    "one-value-per-slot",
                    f"op {op.op_id} answered epoch 1 of {op.owner} with another value than the"
                    f" genesis one: {describe_value(op.epoch_value)}",
                    [op],
                )
    rotates = {op.op_id for op in ops if op.kind is OperationKind.ROTATE}
    for (owner, epoch), seen in sorted(values.items()):
        if len(seen) > 1:
            listed = "; ".join(
                f"{describe_value(value)} ({', '.join(sorted(set(where))[:4])})"
                for value, where in sorted(seen.items(), key=lambda item: item[0].salt)
            )
            report.add(
                "one-value-per-slot",
                f"epoch {epoch} of {owner} has {len(seen)} values: {listed}",
                answering.get((owner, epoch), []),
            )
        for value, where in sorted(seen.items(), key=lambda item: item[0].salt):
            decided = any(w.startswith("decided") for w in where)
            if decided and value.requested_by not in rotates:
                report.add(
                    "values-were-proposed",
                    f"epoch {epoch} of {owner} was decided as {describe_value(value)}, which"
                    " names no rotate a client asked for",
                    answering.get((owner, epoch), []),
                )


# -- epochs: what clients were answered ----------------------------------------------------------


def _check_client_epochs(ops: list[Operation], report: _Report) -> None:
    """An ok tokenize, epoch read or rotate invoked after one of them answered epoch e answers
    e or later (a decided epoch is fenced on a majority: W meets it)."""
    by_owner: dict[str, list[Operation]] = {}
    for op in ops:
        if op.outcome is Outcome.OK and op.epoch_value is not None:
            by_owner.setdefault(op.owner, []).append(op)
    for owner, answered in sorted(by_owner.items()):
        done = sorted(answered, key=lambda op: (op.complete_s or 0.0, op.op_id))
        times = [op.complete_s or 0.0 for op in done]
        best: list[Operation] = []  # best[i]: the highest epoch answered among done[: i + 1]
        for op in done:
            if not best or (op.epoch or 0) > (best[-1].epoch or 0):
                best.append(op)
            else:
                best.append(best[-1])
        for op in sorted(answered, key=lambda op: (op.invoke_s, op.op_id)):
            index = bisect.bisect_left(times, op.invoke_s) - 1
            if index < 0:
                continue
            earlier = best[index]
            if (op.epoch or 0) < (earlier.epoch or 0):
                report.add(
                    "epochs-never-go-back",
                    f"op {op.op_id} ({op.kind.value}) of {owner} invoked at {op.invoke_s:.6f} s"
                    f" answered epoch {op.epoch}, but op {earlier.op_id} ({earlier.kind.value})"
                    f" had answered epoch {earlier.epoch} at {earlier.complete_s:.6f} s",
                    [earlier, op],
                )


def _check_same_input_same_token(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    tokens: dict[tuple[str, int, str, str], dict[str, list[str]]] = {}

    def note(m: Mapping, where: str) -> None:
        tokens.setdefault((m.owner, m.epoch, m.field, m.value), {}).setdefault(m.token, []).append(
            where
        )

    for attempt in state.write_attempts:
        for m in attempt.mappings:
            note(m, attempt.op_id)
    for op in ops:
        if op.outcome is Outcome.OK:
            for m in op.mappings:
                note(m, op.op_id)
            for found in op.found:
                if found is not None:
                    note(found, op.op_id)
    for replica in state.replicas:
        for m in replica.mappings.values():
            note(m, replica.peer)
    for (owner, epoch, field_name, value), seen in sorted(tokens.items()):
        if len(seen) > 1:
            listed = "; ".join(
                f"{token} ({', '.join(sorted(set(where))[:3])})"
                for token, where in sorted(seen.items())
            )
            report.add(
                "same-input-same-token",
                f"{value!r}/{field_name} of {owner} at epoch {epoch} has {len(seen)} tokens:"
                f" {listed}",
                tokens=list(seen),
            )


def _check_rotations(ops: list[Operation], report: _Report) -> None:
    rotates = [op for op in ops if op.kind is OperationKind.ROTATE]
    ok = [op for op in rotates if op.outcome is Outcome.OK and op.epoch_value is not None]
    winners: dict[tuple[str, int], list[Operation]] = {}
    for op in ok:
        value = op.epoch_value
        assert value is not None
        if op.rotated:
            winners.setdefault((op.owner, value.epoch), []).append(op)
            if value.requested_by != op.op_id:
                report.add(
                    "rotations-agree",
                    f"rotate {op.op_id} answered rotated with {describe_value(value)}, a value it"
                    " did not propose",
                    [op],
                )
            if op.expected_epoch is not None and value.epoch != op.expected_epoch + 1:
                report.add(
                    "rotations-agree",
                    f"rotate {op.op_id} expected epoch {op.expected_epoch} and answered rotated"
                    f" to epoch {value.epoch}",
                    [op],
                )
    for (owner, epoch), won in sorted(winners.items()):
        if len(won) > 1:
            report.add(
                "rotations-agree",
                f"{len(won)} rotates of {owner} answered rotated to epoch {epoch}:"
                f" {', '.join(op.op_id for op in won)}",
                won,
            )
    # A rotate expecting an epoch some answer had shown (so decided) answers a later one.
    known: dict[str, list[tuple[float, int]]] = {}
    for op in ops:
        if op.outcome is Outcome.OK and op.epoch_value is not None and op.complete_s is not None:
            known.setdefault(op.owner, []).append((op.complete_s, op.epoch_value.epoch))
    for op in ok:
        expected = op.expected_epoch
        if expected is None or op.epoch is None:
            continue
        shown = any(at < op.invoke_s and e >= expected for at, e in known.get(op.owner, ()))
        if shown and op.epoch <= expected:
            report.add(
                "rotations-agree",
                f"rotate {op.op_id} expected epoch {expected}, already decided, and answered"
                f" epoch {op.epoch}",
                [op],
            )
    bursts: dict[str, list[Operation]] = {}
    for op in rotates:
        if op.group and op.expected_epoch is not None:
            bursts.setdefault(op.group, []).append(op)
    for group, members in sorted(bursts.items()):
        answered = [op for op in members if op.outcome is Outcome.OK]
        epochs = {op.epoch for op in answered}
        if len(epochs) <= 1:
            continue
        expected = members[0].expected_epoch
        assert expected is not None
        last = max(op.complete_s or op.invoke_s for op in members)
        interfering = [
            op
            for op in rotates
            if op.owner == members[0].owner
            and op.group != group
            and op.invoke_s < last
            and (op.expected_epoch is None or op.expected_epoch == expected + 1)
        ]
        if not interfering:
            listed = ", ".join(f"{op.op_id}:{op.epoch}" for op in answered)
            report.add(
                "rotations-agree",
                f"the rotates of burst {group} (expecting epoch {expected}) answered different"
                f" epochs with no other rotate that could move it: {listed}",
                members,
            )


# -- the ring ----------------------------------------------------------------------------------


def _check_ring(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    for observation in state.ring_observations:
        report.add(
            observation.invariant,
            f"at {observation.at_s:.6f} s: {observation.summary}",
            peers=observation.peers,
            window_s=(observation.at_s - 1.0, observation.at_s),
        )
    if state.require_finish and state.final_ring is not None:
        _check_final_ring(state, ops, state.final_ring, report)


def _check_final_ring(
    state: CheckInput, ops: list[Operation], final: Membership, report: _Report
) -> None:
    """owners-on-final-ring: the final ring is stable, learned by every running member and
    drained; acknowledged mappings and decided epochs are on its preference lists."""
    invariant = "owners-on-final-ring"
    if not final.stable or not state.ring_drained:
        report.add(invariant, f"the final ring version {final.version} is not finished and drained")
    behind = [
        f"{peer}:v{version}"
        for peer, version in sorted(state.ring_learned.items())
        if final.member(peer) is not None and version < final.version
    ]
    if behind:
        report.add(
            invariant,
            f"members end behind the final ring version {final.version}: {', '.join(behind)}",
            peers=[b.split(":")[0] for b in behind],
        )
    replicas = {r.peer: r for r in state.replicas}
    for write in ops:
        if write.kind is not OperationKind.TOKENIZE or write.outcome is not Outcome.OK:
            continue
        for m in write.mappings:
            listed = state.preference_lists.get(m.owner, ())
            holders = [
                p
                for p in listed
                if p in replicas and replicas[p].mappings.get((m.owner, m.token)) == m
            ]
            if len(holders) < state.write_quorum:
                report.add(
                    invariant,
                    f"token {m.token} of {m.owner}, acknowledged by op {write.op_id}, is on"
                    f" {len(holders)} replica(s) of the final ring's list {','.join(listed)}",
                    [write],
                    tokens=[m.token],
                )
    decided: dict[tuple[str, int], EpochValue] = {
        (owner, slot): value for owner, slot, value, _ in state.decided_over_run
    }
    # A replica that decided a later slot of the owner moved past this one: an acceptor keeps
    # the decided values it learned, not every slot before (a peer may learn slot 4 without 3).
    latest: dict[tuple[str, str], int] = {}
    for replica in state.replicas:
        for owner, slot in replica.decided:
            key = (replica.peer, owner)
            latest[key] = max(latest.get(key, 0), slot)
    for (owner, slot), value in sorted(decided.items()):
        listed = state.preference_lists.get(owner, ())
        holding = [
            p
            for p in listed
            if p in replicas
            and (
                replicas[p].decided.get((owner, slot)) == value or latest.get((p, owner), 0) > slot
            )
        ]
        if len(holding) < majority(len(listed) or 1):
            report.add(
                invariant,
                f"epoch {slot} of {owner} ({describe_value(value)}) is decided on"
                f" {','.join(holding) or 'no replica'} of the final ring's list {','.join(listed)}",
            )
