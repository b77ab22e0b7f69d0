"""The coordinator core: one client operation fanned out to an owner's replicas, sans-IO.

Theory of operation:
- An operation runs under the owner's placement at one ring version (placement.py): one set of N
  replicas (its preference list) when the owner is stable; while a membership change moves it,
  an old and a new set, and then quorums are joint (docs/membership.md §3): W of EACH set for a
  write or a repair, R of the one read set for a read. A stable placement is the one-set case,
  with the same messages in the same order as before placements existed. Every request a
  client's operation sends carries the placement's ring version (`ring`, the ring fence of
  peer_core.py); repairs carry none (never fenced).
- A write sends every mapping to every replica of the placement and succeeds when each mapping
  has W durable acknowledgements (STORED or IDENTICAL) in each set. A CONFLICT is an integrity
  alarm and fails the write. A write that misses its deadline fails and claims nothing: the
  client gets no token, and whatever a minority stored is the same deterministic mapping a retry
  would write.
- A read asks R replicas of the read set (this peer first when it is one, then the others in
  preference order, those the failure detector holds down last) and decides on the first R
  answers; the replicas of the read set it did not ask are asked too when it is still
  undecided after `read_hedge_s`, or at once when an answer cannot count (a recovering
  replica, a record that failed verification), and at every resend. A read costs R replicas'
  work, not N. A mapping found on fewer than W replicas of some set is written back until W of
  each hold it (blocking read repair: to every replica of the placement, the new set too while
  the owner moves) before the read answers, so once a read returned a token, every later read
  (R meets W) finds it too. Responders that lacked
  a mapping W already hold are repaired in the background.
- A replica whose record of a token failed verification says so (`ReadReply.corrupt`): for that
  token its answer is neither a value nor an absence. A token is decided by the healthy answers:
  a value found among them, or R healthy absences; until then the read waits for more answers
  (and, with too few, times out: it never answers "not found" for a corrupt record). A corrupt
  replica is no holder, so read repair sends it the good mapping, which its replica writes in
  place of the corrupt record (replica.py: the one overwrite); a refusal from it (CONFLICT: the
  mapping did not verify there) does not fail the read: that replica is just no holder.
- FENCED answers fail the write once W unfenced replicas of some set are out of reach: the
  owner moved to a later epoch, the caller learns it and tokenizes again. (A single fenced
  replica, e.g. one that accepted an orphaned proposal, does not block writes the others can
  still take.) Read repairs are marked as repairs and never fenced.
- An answered write lingers until its deadline for the replicas that lag (no more resends);
  whatever they still lack then becomes hints (hinted_handoff.py) on this peer.
- Replicas the failure detector holds down are not waited for: when some set has fewer than its
  quorum left, the operation's deadline is a short grace (`down_grace_s`) instead of the full
  timeout.
- Replicas that have not answered get the request again every `resend_interval_s` (inserts and
  reads are idempotent), until the operation's deadline.
- Time arrives as `now`; the core has no clock, no randomness and no I/O.
- A replica recovering a lost store (recovery.py) answers UNAVAILABLE (an insert) or an
  `unavailable` read reply: it is no holder and no responder, like a replica that is down but
  without the wait; when some set has too few replicas left for its quorum the operation fails
  at once.
  An answered write leaves hints for it, which it takes (repairs are never refused).
- A FENCED answer to a repair breaks the protocol (repairs are never fenced): a buggy or
  hostile replica. It is refused, the replica counts as no holder, and it is reported
  (`peer_protocol_conflict`).

Invariant (invariants.py): success is answered only with W durable acknowledgements in each set.
When the core answers a write or a read as successful, every mapping of the write, and every
mapping the read returns, is durably held by at least W distinct replicas of EACH quorum set of
the owner's placement (the preference list when stable; the old and the new list while moving).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from tokenvault.quorum.effects import (
    Effects,
    Event,
    Failure,
    ReadDone,
    Timer,
    TimerKind,
    WriteDone,
)
from tokenvault.quorum.hinted_handoff import HintedHandoff
from tokenvault.quorum.invariants import InvariantViolation
from tokenvault.quorum.messages import (
    Envelope,
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
    ReadReply,
    ReadRequest,
    highest_epoch,
)
from tokenvault.quorum.placement import OwnerPlacement, quorum_in_each, reachable_in_each
from tokenvault.quorum.quorum_config import QuorumConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinatorLimits:
    operation_timeout_s: float = 2.5
    resend_interval_s: float = 1.0
    operations_max: int = 10_000  # operations in flight on this coordinator
    down_grace_s: float = 0.5  # the deadline when the failure detector says the quorum is down
    read_hedge_s: float = 0.25  # an undecided read then asks the replicas it has not asked


class _Phase(enum.Enum):
    WRITING = "writing"
    LINGERING = "lingering"  # answered; still delivering to the replicas that lag, then hints
    READING = "reading"
    REPAIRING = "repairing"


@dataclass(slots=True, kw_only=True)
class _Operation:
    op_id: str
    owner: str
    placement: OwnerPlacement
    phase: _Phase
    # writes and repairs: the mappings to make durable on W replicas, and who holds each.
    mappings: dict[str, Mapping] = field(default_factory=dict)
    holders: dict[str, set[str]] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    fenced: set[str] = field(default_factory=set)  # replicas holding a later epoch
    unavailable: set[str] = field(default_factory=set)  # replicas recovering a lost store
    # reads: the tokens asked, in order, and the answers received.
    tokens: tuple[str, ...] = ()
    responses: dict[str, tuple[Mapping | None, ...]] = field(default_factory=dict)
    corrupt: dict[str, frozenset[str]] = field(default_factory=dict)  # replica -> tokens
    asked: set[str] = field(default_factory=set)  # replicas a read was sent to

    @property
    def replicas(self) -> tuple[str, ...]:
        """Every replica of the owner: whom writes and repairs go to, whose answers count."""
        return self.placement.replicas

    def lacking(self, replica: str) -> tuple[Mapping, ...]:
        return tuple(m for t, m in self.mappings.items() if replica not in self.holders[t])


def _epoch_of(operation: _Operation) -> int:
    """The epoch its log lines name: of its mappings; 0 for a read that found none yet."""
    return highest_epoch(operation.mappings.values())


def _event(operation: _Operation, name: str, *details: tuple[str, str | int]) -> Event:
    """A log line about an operation: its owner, its id and the epoch of its mappings."""
    return Event(
        name=name,
        owner=operation.owner,
        request_id=operation.op_id,
        epoch=_epoch_of(operation),
        details=details,
    )


class Coordinator:
    def __init__(
        self,
        *,
        peer_id: str,
        quorum: QuorumConfig,
        limits: CoordinatorLimits = CoordinatorLimits(),
        hints: HintedHandoff | None = None,
    ) -> None:
        self._hints = hints
        self._peer_id = peer_id
        self._quorum = quorum
        self._limits = limits
        self._operations: dict[str, _Operation] = {}

    def operations_in_flight(self) -> int:
        return len(self._operations)

    # -- client inputs -------------------------------------------------------------------------

    def start_write(
        self,
        *,
        op_id: str,
        owner: str,
        placement: OwnerPlacement,
        mappings: Sequence[Mapping],
        now: float,
        down: frozenset[str] = frozenset(),
    ) -> Effects:
        assert op_id not in self._operations, "operation ids are unique"
        assert all(len(s) == self._quorum.replica_count for s in placement.quorum_sets)
        assert mappings, "a write carries at least one mapping"
        if len(self._operations) >= self._limits.operations_max:
            return Effects(
                replies=[WriteDone(op_id=op_id, owner=owner, failure=Failure.OVERLOADED)]
            )
        unique = {m.token: m for m in mappings}
        assert all(m.owner == owner for m in unique.values())
        assert all(unique[m.token] == m for m in mappings), "one token, one mapping per write"
        operation = _Operation(
            op_id=op_id,
            owner=owner,
            placement=placement,
            phase=_Phase.WRITING,
            mappings=unique,
            holders={token: set() for token in unique},
        )
        self._operations[op_id] = operation
        looks_down = not reachable_in_each(down, placement.quorum_sets, self._quorum.write_quorum)
        effects = self._arm_timers(op_id, now, looks_down)
        self._send_inserts(operation, placement.replicas, effects)
        return effects

    def start_read(
        self,
        *,
        op_id: str,
        owner: str,
        placement: OwnerPlacement,
        tokens: Sequence[str],
        now: float,
        down: frozenset[str] = frozenset(),
    ) -> Effects:
        assert op_id not in self._operations, "operation ids are unique"
        assert all(len(s) == self._quorum.replica_count for s in placement.quorum_sets)
        assert tokens, "a read asks for at least one token"
        if len(self._operations) >= self._limits.operations_max:
            return Effects(
                replies=[
                    ReadDone(op_id=op_id, owner=owner, mappings=(), failure=Failure.OVERLOADED)
                ]
            )
        operation = _Operation(
            op_id=op_id,
            owner=owner,
            placement=placement,
            phase=_Phase.READING,
            tokens=tuple(dict.fromkeys(tokens)),
        )
        self._operations[op_id] = operation
        read_set = placement.read_set
        looks_down = not reachable_in_each(down, (read_set,), self._quorum.read_quorum)
        effects = self._arm_timers(op_id, now, looks_down)
        ranked = sorted(read_set, key=lambda r: (r in down, r != self._peer_id))  # stable
        first = ranked[: self._quorum.read_quorum]
        self._send_reads(operation, first, effects)
        if len(first) < len(read_set):
            effects.timers.append(
                Timer(kind=TimerKind.HEDGE, op_id=op_id, due=now + self._limits.read_hedge_s)
            )
        return effects

    # -- peer and timer inputs -----------------------------------------------------------------

    def abandon_older_than(self, ring_version: int) -> list[str]:
        """Drops every operation not yet answered that runs under a placement of an older ring
        version (the replicas that learned the later one refuse its requests: the ring fence);
        the caller starts each again under its new placement. Nothing is answered for them and
        their timers and late answers do nothing. An answered write lingering for its laggards
        is kept: its answer is given."""
        abandoned = [
            op_id
            for op_id, operation in self._operations.items()
            if operation.phase is not _Phase.LINGERING
            and 0 < operation.placement.version < ring_version
        ]
        for op_id in abandoned:
            del self._operations[op_id]
        return abandoned

    def on_message(self, source: str, message: Message) -> Effects:
        operation = self._operations.get(message.op_id)
        if operation is None or source not in operation.replicas:
            return Effects()  # late or stray answer for a finished operation
        if isinstance(message, InsertReply) and operation.phase is not _Phase.READING:
            return self._on_insert_reply(operation, source, message)
        if (
            isinstance(message, ReadReply)
            and operation.phase is not _Phase.WRITING
            and source in operation.placement.read_set  # only the read set is asked
        ):
            return self._on_read_reply(operation, source, message)
        return Effects()

    def on_timer(self, timer: Timer, now: float) -> Effects:
        operation = self._operations.get(timer.op_id)
        if operation is None:
            return Effects()
        if timer.kind is TimerKind.DEADLINE and operation.phase is _Phase.LINGERING:
            return self._hand_off(operation)
        if timer.kind is TimerKind.DEADLINE:
            effects = Effects()
            effects.events.append(
                _event(
                    operation,
                    "quorum_failed",
                    ("phase", operation.phase.value),
                    ("answered", len(operation.answered)),
                )
            )
            self._finish(operation, Failure.QUORUM_TIMEOUT, effects)
            return effects
        if timer.kind is TimerKind.HEDGE:
            effects = Effects()
            if operation.phase is _Phase.READING:
                self._ask_the_rest(operation, effects)
            return effects
        if operation.phase is _Phase.LINGERING:
            # Answered: a lagging replica is usually just busy, and resending would add to its
            # load (measured: a third more inserts under saturation). A hint covers a loss.
            return Effects()
        effects = Effects(
            timers=[
                Timer(
                    kind=TimerKind.RESEND,
                    op_id=timer.op_id,
                    due=now + self._limits.resend_interval_s,
                )
            ]
        )
        if operation.phase is _Phase.READING:
            read_set = operation.placement.read_set
            silent = tuple(r for r in read_set if r not in operation.responses)
            self._send_reads(operation, silent, effects)
        else:
            self._send_inserts(operation, operation.replicas, effects)
        return effects

    # -- internals -----------------------------------------------------------------------------

    def _arm_timers(self, op_id: str, now: float, quorum_looks_down: bool) -> Effects:
        # When the failure detector holds too many replicas down for the quorum, do not wait
        # the whole timeout for them; a short grace still lets a peer just back answer.
        timeout_s = (
            self._limits.down_grace_s if quorum_looks_down else self._limits.operation_timeout_s
        )
        return Effects(
            timers=[
                Timer(kind=TimerKind.DEADLINE, op_id=op_id, due=now + timeout_s),
                Timer(kind=TimerKind.RESEND, op_id=op_id, due=now + self._limits.resend_interval_s),
            ]
        )

    def _send_inserts(
        self, operation: _Operation, targets: Sequence[str], effects: Effects
    ) -> None:
        request: InsertRequest | None = None
        for replica in targets:
            lacking = operation.lacking(replica)
            if not lacking:
                continue
            if request is None or request.mappings != lacking:
                # Replicas that lack the same share one request object: encoded once.
                repair = operation.phase is not _Phase.WRITING
                request = InsertRequest(
                    op_id=operation.op_id,
                    owner=operation.owner,
                    mappings=lacking,
                    repair=repair,
                    # A client's write is ring-fenced, a repair never (docs/membership.md §1).
                    ring=0 if repair else operation.placement.version,
                )
            effects.messages.append(
                Envelope(source=self._peer_id, destination=replica, message=request)
            )

    def _ask_the_rest(self, operation: _Operation, effects: Effects) -> None:
        """A read that cannot decide on the replicas it asked asks the rest of the read set."""
        rest = [r for r in operation.placement.read_set if r not in operation.asked]
        if rest:
            self._send_reads(operation, rest, effects)

    def _send_reads(self, operation: _Operation, targets: Sequence[str], effects: Effects) -> None:
        request = ReadRequest(
            op_id=operation.op_id,
            owner=operation.owner,
            tokens=operation.tokens,
            ring=operation.placement.version,
        )
        operation.asked.update(targets)
        for replica in targets:
            effects.messages.append(
                Envelope(source=self._peer_id, destination=replica, message=request)
            )

    def _on_insert_reply(self, operation: _Operation, source: str, reply: InsertReply) -> Effects:
        effects = Effects()
        operation.answered.add(source)
        if operation.phase is _Phase.REPAIRING and InsertOutcome.FENCED in reply.outcomes:
            effects.events.append(
                _event(
                    operation,
                    "peer_protocol_conflict",
                    ("source", source),
                    ("what", "fenced_repair"),
                )
            )
        for token, outcome in zip(reply.tokens, reply.outcomes, strict=True):
            if token not in operation.mappings:
                continue
            if outcome.is_durable_ack:
                operation.holders[token].add(source)
            elif operation.phase is _Phase.LINGERING:
                continue  # answered already; what a lagging replica refuses, hints cannot fix
            elif outcome is InsertOutcome.UNAVAILABLE:
                operation.unavailable.add(source)
                if self._out_of_reach(operation, writing=True):
                    failure = Failure.FENCED if operation.fenced else Failure.QUORUM_TIMEOUT
                    self._finish(operation, failure, effects)
                    return effects
            elif outcome is InsertOutcome.FENCED:
                if operation.phase is not _Phase.WRITING:
                    continue  # a fenced repair, reported above: no holder
                operation.fenced.add(source)
                if self._out_of_reach(operation, writing=True):
                    self._finish(operation, Failure.FENCED, effects)
                    return effects
            elif token in operation.corrupt.get(source, ()):
                continue  # a corrupt replica that refused the repair: no holder
            else:
                effects.events.append(_event(operation, "integrity_conflict", ("replica", source)))
                self._finish(operation, Failure.INTEGRITY_CONFLICT, effects)
                return effects
        if operation.phase is _Phase.LINGERING:
            if not any(operation.lacking(r) for r in operation.replicas):
                del self._operations[operation.op_id]  # every replica has it: nothing to hint
        elif self._write_quorum_reached(operation):
            self._finish(operation, None, effects)
        return effects

    def _hand_off(self, operation: _Operation) -> Effects:
        """The deadline of an answered write: leave hints for the replicas still lacking."""
        del self._operations[operation.op_id]
        effects = Effects()
        if self._hints is None:
            return effects
        for replica in operation.replicas:
            lacking = operation.lacking(replica)
            if lacking and replica != self._peer_id:
                effects.extend(self._hints.add(replica, operation.owner, lacking, operation.op_id))
        return effects

    def _on_read_reply(self, operation: _Operation, source: str, reply: ReadReply) -> Effects:
        effects = Effects()
        if operation.phase is _Phase.REPAIRING:
            # A late answer: whoever already holds a mapping under repair counts as a holder.
            for token, held in zip(reply.tokens, reply.mappings, strict=True):
                if held is not None and operation.mappings.get(token) == held:
                    operation.holders[token].add(source)
            if self._write_quorum_reached(operation):
                self._finish(operation, None, effects)
            return effects
        if reply.tokens != operation.tokens:
            return effects  # not an answer to what we asked
        if reply.unavailable:
            operation.unavailable.add(source)
            if self._out_of_reach(operation, writing=False):
                effects.events.append(
                    _event(operation, "quorum_failed", ("phase", "replicas_recovering"))
                )
                self._finish(operation, Failure.QUORUM_TIMEOUT, effects)
            else:
                self._ask_the_rest(operation, effects)
            return effects
        operation.responses[source] = reply.mappings
        if reply.corrupt:
            operation.corrupt[source] = frozenset(reply.corrupt)
            self._ask_the_rest(operation, effects)
        operation.answered.add(source)
        if len(operation.responses) < self._quorum.read_quorum:
            return effects
        healthy = [self._healthy_answers(operation, index) for index in range(len(reply.tokens))]
        if any(len(answers) < self._quorum.read_quorum and not any(answers) for answers in healthy):
            return effects  # a token with too few healthy answers: wait for more
        for index, token in enumerate(operation.tokens):
            seen = set(healthy[index]) - {None}
            if len(seen) > 1:
                effects.events.append(_event(operation, "integrity_conflict", ("phase", "read")))
                self._finish(operation, Failure.INTEGRITY_CONFLICT, effects)
                return effects
            if seen:
                (mapping,) = seen
                assert mapping is not None
                operation.mappings[token] = mapping
                operation.holders[token] = {
                    peer for peer, r in operation.responses.items() if r[index] == mapping
                }
        operation.phase = _Phase.REPAIRING
        if self._write_quorum_reached(operation):
            self._finish(operation, None, effects)
            return effects
        behind = sum(
            1
            for holders in operation.holders.values()
            if not self._held_in_each(operation, holders)
        )
        effects.events.append(
            _event(operation, "read_repair", ("mappings", behind), ("blocking", 1))
        )
        operation.answered.clear()
        self._send_inserts(operation, operation.replicas, effects)
        return effects

    def _out_of_reach(self, operation: _Operation, *, writing: bool) -> bool:
        """Some set has fewer replicas left than its quorum, once the fenced and recovering
        ones are out: W in each set for a write or a repair, R in the read set for a read."""
        excluded = operation.fenced | operation.unavailable
        if writing:
            sets, quorum = operation.placement.quorum_sets, self._quorum.write_quorum
        else:
            sets, quorum = (operation.placement.read_set,), self._quorum.read_quorum
        return not reachable_in_each(excluded, sets, quorum)

    @staticmethod
    def _healthy_answers(operation: _Operation, index: int) -> list[Mapping | None]:
        """The answers for one token, but those of replicas that hold it corrupt."""
        token = operation.tokens[index]
        return [
            answer[index]
            for peer, answer in operation.responses.items()
            if token not in operation.corrupt.get(peer, ())
        ]

    def _held_in_each(self, operation: _Operation, holders: set[str]) -> bool:
        """W of each quorum set hold a mapping. Holders are always replicas of the owner, so a
        stable owner (one set) only counts them: the fast path of every operation but a
        moved owner's."""
        if not operation.placement.joint:
            return len(holders) >= self._quorum.write_quorum
        return quorum_in_each(holders, operation.placement.quorum_sets, self._quorum.write_quorum)

    def _write_quorum_reached(self, operation: _Operation) -> bool:
        return all(self._held_in_each(operation, h) for h in operation.holders.values())

    def _require_write_quorum(self, operation: _Operation) -> None:
        """A success needs every mapping held durably by W distinct replicas of EACH set of the
        owner's placement (both the old and the new one while it moves)."""
        quorum = self._quorum.write_quorum
        for token in operation.mappings:
            holders = operation.holders.get(token, set())
            for replica_set in operation.placement.quorum_sets:
                held = len(holders & frozenset(replica_set))
                if held < quorum:
                    raise InvariantViolation(
                        f"coordinator would answer success below W ({operation.phase.value}):"
                        f" owner {operation.owner} token prefix {token[:8]}"
                        f" epoch {_epoch_of(operation)}: {held} of {quorum}"
                        f" in set {','.join(replica_set)} at ring {operation.placement.version}"
                    )

    def _finish(self, operation: _Operation, failure: Failure | None, effects: Effects) -> None:
        if failure is None:
            self._require_write_quorum(operation)
        if operation.phase is _Phase.WRITING:
            effects.replies.append(
                WriteDone(op_id=operation.op_id, owner=operation.owner, failure=failure)
            )
            if failure is None and any(operation.lacking(r) for r in operation.replicas):
                operation.phase = _Phase.LINGERING  # until every replica has it, or hints
            else:
                del self._operations[operation.op_id]
            return
        del self._operations[operation.op_id]
        if failure is not None:
            effects.replies.append(
                ReadDone(op_id=operation.op_id, owner=operation.owner, mappings=(), failure=failure)
            )
            return
        # Background read repair: responders known to lack a mapping that W replicas now hold.
        lagging = [r for r in operation.responses if operation.lacking(r)]
        if lagging:
            effects.events.append(
                _event(operation, "read_repair", ("replicas", len(lagging)), ("blocking", 0))
            )
            self._send_inserts(operation, lagging, effects)
        effects.replies.append(
            ReadDone(
                op_id=operation.op_id,
                owner=operation.owner,
                mappings=tuple(operation.mappings.get(t) for t in operation.tokens),
                failure=None,
            )
        )
