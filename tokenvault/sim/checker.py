"""The checker: the invariants every run must keep, judged on its history and final state.

Invariants (docs/simulation.md explains each):
- one-value-per-token: a token of an owner maps to one mapping, across every answer and every
  replica, ever.
- no-uninserted-value: every mapping a read returned or a replica holds is one that some client
  tried to insert.
- answers-are-durable: when a client receives a tokenize's ok, or a detokenize that shows a
  token, at least W replicas hold that mapping durably (an acknowledgement means "fsync'd").
- acknowledged-write-visible: every ok read invoked after a tokenize was acknowledged returns its
  mapping, and the liveness phase's read (after healing) finds it with its value.
- reads-never-go-back: once an ok read returned a token, every ok read invoked after it returned
  finds the token too.
- convergence: after the liveness phase every replica that holds a token holds the same mapping,
  every acknowledged mapping is durable on at least W replicas of its preference list, every
  peer is up with nothing in flight, nothing unsynced and no output held. With
  `require_full_convergence` (off until anti-entropy and hinted handoff exist) every owner's N
  replicas must also hold identical mappings.
- no-core-exception: no exception escaped a core.
- liveness: the run quiesced within its bounds, every operation completed, and every liveness
  read succeeded.
Each violation names its operations with their virtual times, and the log lines that show it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tokenvault.quorum.messages import Mapping
from tokenvault.sim.cluster import ReplicaState
from tokenvault.sim.history import History, Operation, OperationKind, Outcome
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
        lines = [f"VIOLATION {self.invariant}: {self.summary}"]
        if self.operations:
            lines.append("  operations:")
            lines.extend(f"    {text}" for text in self.operations)
        if self.events:
            lines.append("  events:")
            lines.extend(f"    {text}" for text in self.events)
        return "\n".join(lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckInput:
    history: History
    replicas: tuple[ReplicaState, ...]
    preference_lists: dict[str, tuple[str, ...]]
    write_quorum: int
    core_errors: tuple[CoreError, ...] = ()
    quiesced: bool = True
    require_full_convergence: bool = False
    context: EventContext | None = None  # log lines mentioning needles in a time window


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
    ) -> None:
        count = self._counts.get(invariant, 0) + 1
        self._counts[invariant] = count
        if count > VIOLATIONS_PER_INVARIANT_MAX:
            return
        unique = {op.op_id: op for op in operations}
        ops = sorted(unique.values(), key=lambda op: (op.invoke_s, op.op_id))
        times = [op.invoke_s for op in ops] + [op.complete_s or op.invoke_s for op in ops]
        window = (min(times), max(times)) if times else (0.0, float("inf"))
        query = ContextQuery(
            op_ids=tuple(op.op_id for op in ops),
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
    _check_answers_durable(state, ops, report)
    _check_acknowledged_visible(state, ops, report)
    _check_reads_never_go_back(state, ops, report)
    _check_convergence(state, ops, report)
    _check_core_errors(state, report)
    _check_liveness(state, ops, report)
    return report.finish()


# -- values ------------------------------------------------------------------------------------


def _check_values(state: CheckInput, ops: list[Operation], report: _Report) -> None:
    attempted: dict[Key, set[Mapping]] = {}
    for op in ops:
        for m in op.mappings:
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
        _check_full_convergence(state, report)


def _check_full_convergence(state: CheckInput, report: _Report) -> None:
    replicas = {r.peer: r for r in state.replicas}
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
                    tokens=[key[1]],
                )
        strays = [
            (r.peer, key)
            for r in state.replicas
            if r.peer not in preference_list
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
            f"{error.error} escaped the {error.input} core of {error.peer} at"
            f" {error.at_s:.6f} s ({error.location})",
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
