"""The proposer and learner of owners' epochs: learn the active epoch, or rotate it, sans-IO.

Theory of operation, per operation. The owner's acceptors are its placement at one ring version
(placement.py): its N replicas when stable; while a membership change moves it, the old and the
new set, and then every "majority" below is a majority of EACH set (joint consensus, Raft §6,
docs/membership.md §3), messages go to both sets, and a refusal or an unavailable answer ends a
round once some set can no longer give a majority. Queries, prepares and accepts carry the
placement's ring version (`ring`: the ring fence, peer_core.py); a Decide does not (a decided
value is final: any replica may learn it, whatever its version).
1. QUERY: ask the owner's N replicas what they decided and accepted (changes nothing). With a
   majority of reports: d = the highest decided epoch, a = the highest slot anyone accepted in.
   If a > d a round may be half done: finish slot d+1 (step 2 with no value of our own).
   Otherwise d is the active epoch: a learn answers it; a rotate with expected epoch e answers
   "not rotated" unless d == e, and then proposes its own value for slot e+1. A rotate without
   an expected epoch takes the first active epoch it learns as e, so it rotates at most once.
2. PREPARE slot s with a fresh ballot (a round above any seen, and this operation's id, unique
   across peers, operations and restarts, so no two proposals share a ballot). With a majority of
   promises: adopt the accepted value of the highest ballot, else propose our own value (a
   rotate at s == e+1), else nothing was chosen at s and d is the answer.
3. ACCEPT: with a majority of acceptances the value is chosen; every replica is told (Decide)
   and the operation goes back to QUERY, except a rotate whose own value won, which answers.
Refusals (higher promises) from more acceptors than a majority can spare mean a duel: back off
for a jittered, growing delay drawn from the injected random source, then prepare again with a
higher round, `attempts_max` times at most.
Bounds (messages.py): a rotate of an owner whose active epoch is `EPOCH_MAX` answers
EPOCHS_EXHAUSTED (there is no slot to rotate into), and a round that would pass
`BALLOT_ROUND_MAX` (a promise at the last round, which only a hostile acceptor gives) ends the
operation CONTENDED: this core never builds a message out of range.
An acceptor that already decided the slot answers with the value: it is learned (and spread).
An answer whose decided or accepted value is not of its slot, or that names this operation as
the requester of a value that is not its own, breaks the protocol (a buggy or hostile acceptor):
it is refused and reported (`peer_protocol_conflict`).

Acceptors that recover a lost store (recovery.py) answer `unavailable`: not a vote and not a
refusal by a higher ballot. Such an answer is not counted; when too few replicas are left for a
majority the operation fails at once (QUORUM_TIMEOUT) instead of waiting for its deadline.
Amnesia: every Promise and Accepted carries the acceptor's store identity. The proposer keeps,
per answer it counted, the identity it came from; when it learns (`note_store`: a heartbeat or
a RecoveryQuery, see peer_core.py) that a peer runs on a new store, it drops that peer's answers
from its open rounds, and a round already in ACCEPT whose promise majority counted the old store
prepares again with a higher ballot. An answer from a store other than the one last noted for its
peer is never counted. With N = 3 on a 3-peer ring this closes the in-flight hole: the recovering
peer hears from both other replicas (the only proposers) before it serves, and each drops first.
With more peers or larger N, a proposer outside the replicas it heard from learns the new store
by heartbeat; recovery.py waits for every peer to echo it or for `operation_timeout_s` (the
deadline of every open round) to pass.

Invariants: at most one value is chosen per slot (Paxos), and this core only counts answers to
the ballot and slot of its current phase. Asserted (invariants.py): a ballot carries one value,
of its slot; a value is reported chosen only with a majority of granted Accepted for its slot
and ballot from distinct replicas of each set of the placement; a rotate answers `rotated` only
with its own value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from tokenvault.quorum.effects import Effects, EpochDone, Event, Failure, Timer, TimerKind
from tokenvault.quorum.invariants import require
from tokenvault.quorum.messages import (
    BALLOT_ROUND_MAX,
    EPOCH_MAX,
    Accept,
    Accepted,
    Ballot,
    Decide,
    Envelope,
    EpochQuery,
    EpochReport,
    EpochValue,
    Message,
    Prepare,
    Promise,
)
from tokenvault.quorum.placement import OwnerPlacement, quorum_in_each, reachable_in_each
from tokenvault.quorum.quorum_config import majority


class RandomSource(Protocol):
    def random(self) -> float: ...

    def getrandbits(self, k: int, /) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochLimits:
    operation_timeout_s: float = 5.0
    down_grace_s: float = 0.5  # the deadline when the failure detector says no majority is up
    resend_interval_s: float = 1.0
    backoff_initial_s: float = 0.02
    backoff_max_s: float = 0.5
    attempts_max: int = 12  # preemptions and re-queries of one operation
    operations_max: int = 1_000
    salt_bits: int = 128


class _Phase(enum.Enum):
    QUERY = "query"
    PREPARE = "prepare"
    ACCEPT = "accept"
    BACKOFF = "backoff"


@dataclass(slots=True, kw_only=True)
class _Operation:
    op_id: str
    owner: str
    placement: OwnerPlacement
    rotate: bool
    expected: int | None
    own_value_salt: str
    requested_at_s: float
    phase: _Phase = _Phase.QUERY
    known: EpochValue | None = None  # the highest decided value learned so far
    slot: int = 0
    ballot: Ballot = field(default_factory=Ballot)
    value: EpochValue | None = None  # what ACCEPT proposes
    answered: dict[str, Message] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)  # acceptors that refused this phase's ballot
    highest_round: int = 0
    attempts: int = 0
    stores: dict[str, str] = field(default_factory=dict)  # counted answer -> its store identity
    promise_stores: dict[str, str] = field(default_factory=dict)  # the promises ACCEPT rests on
    unavailable: set[str] = field(default_factory=set)  # replicas recovering a lost store

    @property
    def replicas(self) -> tuple[str, ...]:
        """Every acceptor of the owner (both sets while it moves): asked, and told decisions."""
        return self.placement.replicas


class EpochCoordinator:
    def __init__(
        self, *, peer_id: str, rng: RandomSource, limits: EpochLimits = EpochLimits()
    ) -> None:
        self._peer_id = peer_id
        self._rng = rng
        self._limits = limits
        self._operations: dict[str, _Operation] = {}
        self._stores: dict[str, str] = {}  # peer -> the store identity last noted for it

    def operations_in_flight(self) -> int:
        return len(self._operations)

    # -- client inputs -------------------------------------------------------------------------

    def start_learn(
        self,
        *,
        op_id: str,
        owner: str,
        placement: OwnerPlacement,
        now: float,
        down: frozenset[str] = frozenset(),
    ) -> Effects:
        return self._start(
            op_id, owner, placement, now, down, rotate=False, expected=None, at_s=0.0
        )

    def start_rotate(
        self,
        *,
        op_id: str,
        owner: str,
        placement: OwnerPlacement,
        expected_epoch: int | None,
        requested_at_s: float,
        now: float,
        down: frozenset[str] = frozenset(),
    ) -> Effects:
        return self._start(
            op_id,
            owner,
            placement,
            now,
            down,
            rotate=True,
            expected=expected_epoch,
            at_s=requested_at_s,
        )

    def _start(
        self,
        op_id: str,
        owner: str,
        placement: OwnerPlacement,
        now: float,
        down: frozenset[str],
        *,
        rotate: bool,
        expected: int | None,
        at_s: float,
    ) -> Effects:
        assert op_id not in self._operations, "operation ids are unique"
        assert placement.old, "an owner has acceptors"
        if len(self._operations) >= self._limits.operations_max:
            overloaded = EpochDone(
                op_id=op_id, owner=owner, value=None, rotated=False, failure=Failure.OVERLOADED
            )
            return Effects(replies=[overloaded])
        salt = f"{self._rng.getrandbits(self._limits.salt_bits):0{self._limits.salt_bits // 4}x}"
        operation = _Operation(
            op_id=op_id,
            owner=owner,
            placement=placement,
            rotate=rotate,
            expected=expected,
            own_value_salt=salt,
            requested_at_s=at_s,
        )
        self._operations[op_id] = operation
        # When the failure detector holds no majority up, do not wait the whole timeout for
        # it; a short grace still lets a peer just back answer.
        no_majority = not reachable_in_each(down, placement.quorum_sets)
        limits = self._limits
        timeout_s = limits.down_grace_s if no_majority else limits.operation_timeout_s
        effects = Effects(
            timers=[
                Timer(kind=TimerKind.DEADLINE, op_id=op_id, due=now + timeout_s),
                Timer(kind=TimerKind.RESEND, op_id=op_id, due=now + self._limits.resend_interval_s),
            ]
        )
        self._enter_query(operation, effects)
        return effects

    def abandon_older_than(self, ring_version: int) -> list[str]:
        """Drops every learn running under a placement of an older ring version (the replicas
        that learned the later one refuse its queries: the ring fence); the caller starts each
        again under its new placement, which Paxos allows (a learn proposes no value of its own:
        an abandoned round is one more proposer that stopped). Rotates are kept: one started
        again could answer `rotated: false` for its own rotation. Nothing is answered for the
        dropped ones; their timers and late answers do nothing."""
        abandoned = [
            op_id
            for op_id, operation in self._operations.items()
            if not operation.rotate and 0 < operation.placement.version < ring_version
        ]
        for op_id in abandoned:
            del self._operations[op_id]
        return abandoned

    # -- peer and timer inputs -----------------------------------------------------------------

    def note_store(self, peer: str, store_id: str, now: float) -> Effects:
        """`peer` now runs on store `store_id`: answers counted from any other store of it are
        dropped from open rounds; a round in ACCEPT that rests on such a promise prepares again."""
        effects = Effects()
        if not store_id or self._stores.get(peer) == store_id:
            return effects
        self._stores[peer] = store_id
        for operation in list(self._operations.values()):
            if (
                operation.phase is _Phase.ACCEPT
                and operation.promise_stores.get(peer, store_id) != store_id
            ):
                effects.events.append(
                    self._event(operation, "paxos_votes_dropped", ("target", peer))
                )
                if self._spend_attempt(operation, effects):
                    self._enter_prepare(operation, operation.slot, effects)
                continue
            if (
                operation.phase in (_Phase.PREPARE, _Phase.ACCEPT)
                and operation.stores.get(peer, store_id) != store_id
            ):
                operation.answered.pop(peer, None)
                operation.stores.pop(peer, None)
                effects.events.append(
                    self._event(operation, "paxos_votes_dropped", ("target", peer))
                )
        return effects

    def on_message(self, source: str, message: Message, now: float) -> Effects:
        operation = self._operations.get(message.op_id)
        if operation is None or source not in operation.replicas:
            return Effects()
        effects = Effects()
        if isinstance(message, EpochReport | Promise | Accepted) and message.unavailable:
            self._on_unavailable(operation, source, effects)
            return effects
        if isinstance(message, Promise | Accepted) and message.store != self._stores.get(
            source, message.store
        ):
            return effects  # from a store of that peer that was since replaced
        if isinstance(message, EpochReport) and operation.phase is _Phase.QUERY:
            operation.answered[source] = message
            self._learn(operation, message.decided)
            self._after_query(operation, effects)
        elif isinstance(message, Promise | Accepted):
            phase = _Phase.PREPARE if isinstance(message, Promise) else _Phase.ACCEPT
            if not self._is_current(operation, phase, message):
                return effects
            if self._breaks_protocol(operation, source, message, effects):
                return effects
            if isinstance(message, Promise):
                self._on_promise(operation, source, message, now, effects)
            else:
                self._on_accepted(operation, source, message, now, effects)
        return effects

    def on_timer(self, timer: Timer, now: float) -> Effects:
        operation = self._operations.get(timer.op_id)
        if operation is None:
            return Effects()
        effects = Effects()
        if timer.kind is TimerKind.DEADLINE:
            effects.events.append(
                self._event(operation, "epoch_operation_failed", ("phase", operation.phase.value))
            )
            self._finish(operation, Failure.QUORUM_TIMEOUT, effects)
        elif timer.kind is TimerKind.BACKOFF:
            if operation.phase is _Phase.BACKOFF:
                self._enter_prepare(operation, operation.slot, effects)
        else:
            effects.timers.append(
                Timer(
                    kind=TimerKind.RESEND,
                    op_id=operation.op_id,
                    due=now + self._limits.resend_interval_s,
                )
            )
            self._send_phase(operation, effects, only_silent=True)
        return effects

    # -- phases --------------------------------------------------------------------------------

    def _enter_query(self, operation: _Operation, effects: Effects) -> None:
        operation.phase = _Phase.QUERY
        operation.answered = {}
        operation.refused = set()
        self._send_phase(operation, effects, only_silent=False)

    def _after_query(self, operation: _Operation, effects: Effects) -> None:
        if not self._majority_of_each(operation, operation.answered):
            return
        known = operation.known
        assert known is not None, "a report always carries a decided value"
        reports = [m for m in operation.answered.values() if isinstance(m, EpochReport)]
        accepted_slot = max(r.accepted_slot for r in reports)
        if operation.rotate and operation.expected is None:
            operation.expected = known.epoch  # rotate from whatever is active, once
        if accepted_slot > known.epoch:
            self._enter_prepare(operation, known.epoch + 1, effects)  # finish a half-done round
            return
        if not operation.rotate:
            self._finish(operation, None, effects)
            return
        if known.epoch != operation.expected:
            self._finish(operation, None, effects)
            return
        if known.epoch >= EPOCH_MAX:
            self._fail(operation, Failure.EPOCHS_EXHAUSTED, effects)
            return
        self._enter_prepare(operation, known.epoch + 1, effects)

    def _enter_prepare(self, operation: _Operation, slot: int, effects: Effects) -> None:
        if operation.highest_round >= BALLOT_ROUND_MAX:  # no ballot can outrank what was seen
            self._fail(operation, Failure.CONTENDED, effects, phase="rounds_exhausted")
            return
        operation.phase = _Phase.PREPARE
        operation.slot = slot
        operation.highest_round += 1
        # The proposer part of a ballot is the operation id: unique across operations on one
        # peer and across restarts, so no two proposals ever share a ballot.
        operation.ballot = Ballot(round=operation.highest_round, peer=operation.op_id)
        operation.value = None
        operation.answered = {}
        operation.refused = set()
        operation.stores = {}
        operation.promise_stores = {}
        effects.events.append(
            self._event(
                operation, "paxos_prepare", ("slot", slot), ("ballot", operation.highest_round)
            )
        )
        self._send_phase(operation, effects, only_silent=False)

    def _on_promise(
        self, operation: _Operation, source: str, promise: Promise, now: float, effects: Effects
    ) -> None:
        if promise.decided is not None:
            self._learned_decided(operation, promise.decided, effects)
            return
        if not promise.granted:
            self._refused(operation, source, promise.promised, now, effects)
            return
        operation.answered[source] = promise
        operation.stores[source] = promise.store
        operation.unavailable.discard(source)
        if not self._majority_of_each(operation, operation.answered):
            return
        promises = [m for m in operation.answered.values() if isinstance(m, Promise)]
        accepted = [p for p in promises if p.accepted_ballot is not None]
        if accepted:
            best = max(accepted, key=lambda p: p.accepted_ballot or Ballot())
            assert best.accepted_value is not None
            value = best.accepted_value  # adopt: it may have been chosen
        elif (
            operation.rotate
            and operation.expected is not None
            and (operation.slot == operation.expected + 1)
        ):
            value = self._own_value(operation)
        else:
            # A majority accepted nothing at this slot: nothing was chosen there.
            self._finish(operation, None, effects)
            return
        where = self._where(operation)
        require(operation.value is None, f"proposer would propose a second value at {where}")
        require(
            value.epoch == operation.slot, f"proposer would propose epoch {value.epoch} at {where}"
        )
        operation.phase = _Phase.ACCEPT
        operation.value = value
        operation.promise_stores = operation.stores
        operation.stores = {}
        operation.answered = {}
        operation.refused = set()
        self._send_phase(operation, effects, only_silent=False)

    def _on_accepted(
        self, operation: _Operation, source: str, accepted: Accepted, now: float, effects: Effects
    ) -> None:
        if accepted.decided is not None:
            self._learned_decided(operation, accepted.decided, effects)
            return
        if not accepted.granted:
            self._refused(operation, source, accepted.promised, now, effects)
            return
        operation.answered[source] = accepted
        operation.stores[source] = accepted.store
        operation.unavailable.discard(source)
        if not self._majority_of_each(operation, operation.answered):
            return
        value = operation.value
        assert value is not None and value.epoch == operation.slot
        voters = {
            replica
            for replica, answer in operation.answered.items()
            if isinstance(answer, Accepted)
            and answer.granted
            and answer.slot == operation.slot
            and answer.ballot == operation.ballot
        }
        for acceptors in operation.placement.quorum_sets:
            votes = sum(1 for replica in acceptors if replica in voters)
            require(
                votes >= majority(len(acceptors)),
                f"proposer would report a value chosen with {votes} granted Accepted of"
                f" {len(acceptors)} in set {','.join(acceptors)} at {self._where(operation)}",
            )
        effects.events.append(
            self._event(
                operation,
                "epoch_chosen",
                ("own", int(value.requested_by == operation.op_id)),
            )
        )
        self._learned_decided(operation, value, effects)

    def _learned_decided(self, operation: _Operation, value: EpochValue, effects: Effects) -> None:
        self._learn(operation, value)
        for replica in operation.replicas:
            decide = Decide(op_id=operation.op_id, owner=operation.owner, value=value)
            effects.messages.append(
                Envelope(source=self._peer_id, destination=replica, message=decide)
            )
        if operation.rotate and value.requested_by == operation.op_id:
            self._finish(operation, None, effects, rotated=True)
            return
        if not self._spend_attempt(operation, effects):
            return
        self._enter_query(operation, effects)

    def _on_unavailable(self, operation: _Operation, source: str, effects: Effects) -> None:
        """A replica recovering a lost store: not counted; fail at once without a majority."""
        if source in operation.answered:
            return  # it answered this phase before (a late or reordered reply)
        operation.unavailable.add(source)
        if not reachable_in_each(operation.unavailable, operation.placement.quorum_sets):
            self._fail(operation, Failure.QUORUM_TIMEOUT, effects, phase="replicas_recovering")

    def _refused(
        self, operation: _Operation, source: str, promised: Ballot, now: float, effects: Effects
    ) -> None:
        """A refusal preempts the round only once a majority of grants is out of reach in some
        set."""
        operation.highest_round = max(operation.highest_round, promised.round)
        operation.refused.add(source)
        if not reachable_in_each(operation.refused, operation.placement.quorum_sets):
            self._preempted(operation, promised, now, effects)

    def _preempted(
        self, operation: _Operation, promised: Ballot, now: float, effects: Effects
    ) -> None:
        operation.highest_round = max(operation.highest_round, promised.round)
        if not self._spend_attempt(operation, effects):
            return
        operation.phase = _Phase.BACKOFF
        limits = self._limits
        delay_s = min(limits.backoff_max_s, limits.backoff_initial_s * 2**operation.attempts)
        delay_s *= 0.5 + self._rng.random()
        effects.events.append(
            self._event(
                operation, "paxos_preempted", ("slot", operation.slot), ("by_round", promised.round)
            )
        )
        effects.timers.append(
            Timer(kind=TimerKind.BACKOFF, op_id=operation.op_id, due=now + delay_s)
        )

    def _spend_attempt(self, operation: _Operation, effects: Effects) -> bool:
        operation.attempts += 1
        if operation.attempts <= self._limits.attempts_max:
            return True
        self._fail(operation, Failure.CONTENDED, effects)
        return False

    def _fail(
        self, operation: _Operation, failure: Failure, effects: Effects, *, phase: str = ""
    ) -> None:
        """Ends the operation with `failure`, logged as `epoch_operation_failed`."""
        event = self._event(operation, "epoch_operation_failed", ("phase", phase or failure.value))
        effects.events.append(event)
        self._finish(operation, failure, effects)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _majority_of_each(operation: _Operation, answered: dict[str, Message]) -> bool:
        """Answers from a majority of each set (both while the owner moves: joint consensus).
        Only replicas' answers are ever kept, so a stable owner just counts them."""
        if not operation.placement.joint:
            return len(answered) >= majority(len(operation.replicas))
        return quorum_in_each(answered, operation.placement.quorum_sets)

    def _is_current(self, operation: _Operation, phase: _Phase, reply: Promise | Accepted) -> bool:
        return (
            operation.phase is phase
            and reply.slot == operation.slot
            and reply.ballot == operation.ballot
        )

    def _breaks_protocol(
        self, operation: _Operation, source: str, reply: Promise | Accepted, effects: Effects
    ) -> bool:
        """Whether the answer carries a value not of its slot, or one that names this operation
        as its requester but is not its own value; if so it is reported, for the caller to
        refuse."""
        values = (reply.decided, reply.accepted_value if isinstance(reply, Promise) else None)
        if all(
            value is None
            or (
                value.epoch == operation.slot
                and (value.requested_by != operation.op_id or value == self._own_value(operation))
            )
            for value in values
        ):
            return False
        effects.events.append(
            self._event(
                operation, "peer_protocol_conflict", ("source", source), ("what", "foreign_value")
            )
        )
        return True

    @staticmethod
    def _own_value(operation: _Operation) -> EpochValue:
        """The value this operation proposes (a rotate, at the slot after its expected epoch)."""
        return EpochValue(
            epoch=operation.slot,
            salt=operation.own_value_salt,
            requested_by=operation.op_id,
            requested_at_s=operation.requested_at_s,
        )

    @staticmethod
    def _where(operation: _Operation) -> str:
        ballot = operation.ballot
        return f"owner {operation.owner} slot {operation.slot} ballot {ballot.round}.{ballot.peer}"

    @staticmethod
    def _learn(operation: _Operation, value: EpochValue) -> None:
        if operation.known is None or value.epoch > operation.known.epoch:
            operation.known = value

    def _send_phase(self, operation: _Operation, effects: Effects, *, only_silent: bool) -> None:
        message: Message
        ring = operation.placement.version  # the ring fence (peer_core.py); not on a Decide
        if operation.phase is _Phase.QUERY:
            message = EpochQuery(op_id=operation.op_id, owner=operation.owner, ring=ring)
        elif operation.phase is _Phase.PREPARE:
            message = Prepare(
                op_id=operation.op_id,
                owner=operation.owner,
                slot=operation.slot,
                ballot=operation.ballot,
                ring=ring,
            )
        elif operation.phase is _Phase.ACCEPT:
            assert operation.value is not None
            message = Accept(
                op_id=operation.op_id,
                owner=operation.owner,
                slot=operation.slot,
                ballot=operation.ballot,
                value=operation.value,
                ring=ring,
            )
        else:
            return  # backing off: the BACKOFF timer sends the next prepare
        for replica in operation.replicas:
            if only_silent and replica in operation.answered:
                continue
            effects.messages.append(
                Envelope(source=self._peer_id, destination=replica, message=message)
            )

    def _finish(
        self,
        operation: _Operation,
        failure: Failure | None,
        effects: Effects,
        *,
        rotated: bool = False,
    ) -> None:
        del self._operations[operation.op_id]
        value = None if failure is not None else operation.known
        assert failure is not None or value is not None
        if rotated:
            require(
                value == self._own_value(operation),
                f"a rotate would answer rotated without its own value at {self._where(operation)}",
            )
            effects.events.append(
                self._event(operation, "epoch_rotated", epoch=value.epoch if value else None)
            )
        effects.replies.append(
            EpochDone(
                op_id=operation.op_id,
                owner=operation.owner,
                value=value,
                rotated=rotated,
                failure=failure,
            )
        )

    @staticmethod
    def _event(
        operation: _Operation, name: str, *details: tuple[str, str | int], epoch: int | None = None
    ) -> Event:
        return Event(
            name=name,
            owner=operation.owner,
            request_id=operation.op_id,
            epoch=operation.slot if epoch is None else epoch,
            details=details,
        )
