"""The ring register: the membership of every ring version, agreed by Paxos, sans-IO.

Theory of operation (docs/membership.md §1): version v+1 is one single-decree Paxos instance
whose acceptors are the *voters* of version v (its members that are not leaving). Every peer
that learned v computes the same voters, so each instance has one fixed acceptor set and plain
single-decree Paxos is safe per version (the previous value picks the next configuration, as in
Vertical Paxos). One core plays the three roles on each peer:
- **acceptor** of the instance right after the version it learned: it votes in version s only
  when it learned s-1 and is one of its voters. Behind, it answers `behind`; ahead (it learned s
  or later), it answers with its learned membership instead of a vote.
- **learner**: the learned membership only moves to a higher version (a `RingDecide`, a vote
  carrying one, or the answer to a `RingFetch` sent when a heartbeat's gossip shows a higher
  version). The same version with another membership is `ring_disagreement`, never applied.
- **proposer** of a change (`propose`): PREPARE version v+1 with ballot (round, op id) to the
  voters of v; with a majority of promises, ACCEPT the value of the highest accepted ballot, or
  its own (the change applied to v); with a majority of acceptances the value is chosen: learned
  here, sent to every member of v and v+1. An operation whose version was taken by another value
  starts again on the new membership: done if the change is already in it (idempotent by intent),
  refused if it no longer applies, else proposed for the next version. Refusals that put a
  majority out of reach back off (jittered, growing, from the injected random source) and prepare
  with a higher round; `attempts_max` attempts in all; `operation_timeout_s` in all.

Rules: the acceptor's Paxos rules are acceptor.py's (promise and accept only ballots >= the
promise, persist before the answer leaves, one value per ballot); an accepted value must be a
successor of the learned membership (`is_successor`), else it is refused as a disagreement.
Invariants (invariants.py), checked in the only writers: a promise never decreases, an accepted
value is never forgotten nor changed at its ballot, the learned version never goes back; a value
is reported chosen only with a majority of the voters' granted acceptances at its ballot.
Storage reads see the writes of earlier inputs (effects.py's contract); within one input the
core passes what it learned along instead of reading it back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tokenvault.quorum.effects import Effects, Event, RingDone, RingOutcome, Timer, TimerKind
from tokenvault.quorum.epoch_coordinator import RandomSource
from tokenvault.quorum.invariants import require
from tokenvault.quorum.messages import (
    Ballot,
    Envelope,
    RingAccept,
    RingDecide,
    RingFetch,
    RingMessage,
    RingPrepare,
    RingVote,
)
from tokenvault.quorum.quorum_config import majority
from tokenvault.quorum.records import StorageView
from tokenvault.quorum.ring_records import (
    LEARNED_KEY,
    NAMED_KEY,
    RING_ACCEPTOR_PREFIX,
    RingSlot,
    encode_learned,
    encode_ring_slot,
    read_learned,
    read_ring_slot,
    ring_slot_key,
    version_of_slot_key,
)
from tokenvault.ring.membership import (
    ChangeRefused,
    Membership,
    MembershipChange,
    RemoveMember,
    ReplaceMember,
    apply_change,
    change_satisfied,
    is_successor,
)

RING_SLOTS_SCAN_MAX = 64  # acceptor records looked at when a version is learned (one, in fact)


@dataclass(frozen=True, slots=True, kw_only=True)
class RingLimits:
    operation_timeout_s: float = 5.0
    resend_interval_s: float = 1.0
    backoff_initial_s: float = 0.02
    backoff_max_s: float = 0.5
    attempts_max: int = 12  # preemptions and restarts on a newer version, per operation
    operations_max: int = 16  # changes in flight on this peer (operators make them one by one)
    fetch_interval_s: float = 1.0  # between two fetches while the gossip says we are behind


class _Phase(enum.Enum):
    PREPARE = "prepare"
    ACCEPT = "accept"
    BACKOFF = "backoff"


@dataclass(slots=True, kw_only=True)
class _Proposal:
    op_id: str
    change: MembershipChange
    base: Membership
    own: Membership
    ballot: Ballot
    phase: _Phase = _Phase.PREPARE
    value: Membership | None = None  # what ACCEPT proposes
    promises: dict[str, RingVote] = field(default_factory=dict)
    accepts: set[str] = field(default_factory=set)
    refusals: set[str] = field(default_factory=set)
    round_seen: int = 0
    attempts: int = 0


class RingRegister:
    def __init__(
        self,
        *,
        peer_id: str,
        storage: StorageView,
        bootstrap: Membership,
        rng: RandomSource,
        limits: RingLimits | None = None,
    ) -> None:
        require(bootstrap.version == 1, "the bootstrap membership is version 1")
        self._peer_id = peer_id
        self._storage = storage
        self._bootstrap = bootstrap
        self._rng = rng
        self._limits = limits or RingLimits()
        self._proposals: dict[str, _Proposal] = {}
        self._fetch_sent_at: float | None = None
        self._fetches = 0

    @property
    def learned(self) -> Membership:
        """The highest version learned here (the bootstrap until a change was learned)."""
        return read_learned(self._storage) or self._bootstrap

    @property
    def ever_named(self) -> bool:
        """Whether a membership learned here (durably) ever named this peer."""
        return self._storage.get(NAMED_KEY) is not None

    def gossip(self) -> tuple[int, str]:
        """What a heartbeat carries: the learned version and its digest."""
        learned = self.learned
        return learned.version, learned.digest()

    def operations_in_flight(self) -> int:
        return len(self._proposals)

    # -- inputs ---------------------------------------------------------------------------------

    def propose(self, op_id: str, change: MembershipChange, now: float) -> Effects:
        require(op_id not in self._proposals, f"ring operation {op_id} started twice")
        effects = Effects()
        learned = self.learned
        if len(self._proposals) >= self._limits.operations_max:
            return self._done(op_id, RingOutcome.REFUSED, learned, effects, reason="overloaded")
        if _names_a_stranger(learned, change):  # a typo, not a retry: say so
            return self._done(op_id, RingOutcome.REFUSED, learned, effects, reason="unknown_member")
        if change_satisfied(learned, change):
            return self._done(op_id, RingOutcome.ALREADY, learned, effects)
        try:
            own = apply_change(learned, change)
        except ChangeRefused as refused:
            return self._done(op_id, RingOutcome.REFUSED, learned, effects, reason=refused.reason)
        proposal = _Proposal(
            op_id=op_id, change=change, base=learned, own=own, ballot=Ballot(round=1, peer=op_id)
        )
        self._proposals[op_id] = proposal
        self._prepare(proposal, 1, effects)
        limits = self._limits
        effects.timers.append(
            Timer(kind=TimerKind.RESEND, op_id=op_id, due=now + limits.resend_interval_s)
        )
        effects.timers.append(
            Timer(kind=TimerKind.DEADLINE, op_id=op_id, due=now + limits.operation_timeout_s)
        )
        return effects

    def on_message(self, source: str, message: RingMessage, now: float) -> Effects:
        effects = Effects()
        if isinstance(message, RingPrepare):
            self._on_prepare(source, message, effects)
        elif isinstance(message, RingAccept):
            self._on_accept(source, message, effects)
        elif isinstance(message, RingVote):
            self._on_vote(source, message, now, effects)
        elif isinstance(message, RingDecide):
            learned = self._learn(message.value, source, effects)
            if learned is not None:
                self._rebase_all(learned, now, effects)
        elif isinstance(message, RingFetch):
            self._on_fetch(source, message, effects)
        return effects  # a join request is the peer core's (peer_core.py)

    def on_gossip(self, source: str, version: int, digest: str, now: float) -> Effects:
        """A heartbeat's ring fields: fetch from a peer ahead (at most once a fetch interval)."""
        effects = Effects()
        learned = self.learned
        if version == learned.version and digest != learned.digest():
            effects.events.append(self._event("ring_disagreement", version, ("sender", source)))
        elif version > learned.version and (
            self._fetch_sent_at is None
            or now - self._fetch_sent_at >= self._limits.fetch_interval_s
        ):
            self._fetch_sent_at = now
            self._fetches += 1
            op_id = f"{self._peer_id}-ring-fetch-{self._fetches}"
            self._send(source, RingFetch(op_id=op_id, version=learned.version), effects)
        return effects

    def on_timer(self, timer: Timer, now: float) -> Effects:
        effects = Effects()
        proposal = self._proposals.get(timer.op_id)
        if proposal is None:
            return effects
        if timer.kind is TimerKind.DEADLINE:
            self._finish(proposal, RingOutcome.TIMEOUT, self.learned, effects)
        elif timer.kind is TimerKind.BACKOFF:
            if proposal.phase is _Phase.BACKOFF:
                self._prepare(proposal, proposal.round_seen + 1, effects)
        else:
            self._resend(proposal, effects)
            effects.timers.append(
                Timer(
                    kind=TimerKind.RESEND,
                    op_id=proposal.op_id,
                    due=now + self._limits.resend_interval_s,
                )
            )
        return effects

    # -- acceptor -------------------------------------------------------------------------------

    def _not_voting(self, source: str, op_id: str, version: int, ballot: Ballot) -> RingVote | None:
        """The answer of an acceptor that does not vote in `version`, or None if it votes."""
        learned = self.learned
        if learned.version >= version:
            return RingVote(
                op_id=op_id,
                phase="prepare",
                version=version,
                ballot=ballot,
                granted=False,
                promised=ballot,
                learned_version=learned.version,
                learned=learned,
            )
        if learned.version < version - 1:
            return RingVote(
                op_id=op_id,
                phase="prepare",
                version=version,
                ballot=ballot,
                granted=False,
                promised=ballot,
                behind=True,
                learned_version=learned.version,
            )
        return None

    def _on_prepare(self, source: str, prepare: RingPrepare, effects: Effects) -> None:
        version, ballot = prepare.version, prepare.ballot
        answer = self._not_voting(source, prepare.op_id, version, ballot)
        if answer is not None:
            self._send(source, answer, effects)
            return
        learned = self.learned
        if self._peer_id not in learned.voters or prepare.base_digest != learned.digest():
            effects.events.append(self._event("ring_disagreement", version, ("sender", source)))
            return
        state = read_ring_slot(self._storage, version)
        granted = ballot >= state.promised
        if granted and ballot > state.promised:
            state = RingSlot(
                promised=ballot,
                accepted_ballot=state.accepted_ballot,
                accepted_value=state.accepted_value,
            )
            self._write_slot(version, state, effects)
        vote = _vote(prepare.op_id, "prepare", version, ballot, granted, state, learned)
        self._send(source, vote, effects)

    def _on_accept(self, source: str, accept: RingAccept, effects: Effects) -> None:
        version, ballot = accept.version, accept.ballot
        answer = self._not_voting(source, accept.op_id, version, ballot)
        if answer is not None:
            self._send(source, _as_accept_phase(answer), effects)
            return
        learned = self.learned
        state = read_ring_slot(self._storage, version)
        granted = ballot >= state.promised
        if self._peer_id not in learned.voters or not is_successor(learned, accept.value):
            granted = False
            effects.events.append(self._event("ring_disagreement", version, ("sender", source)))
        elif granted and state.accepted_ballot == ballot and state.accepted_value != accept.value:
            granted = False  # a second value at one ballot: the proposer's misbehaviour
            effects.events.append(self._event("ring_disagreement", version, ("sender", source)))
        if granted:
            state = RingSlot(promised=ballot, accepted_ballot=ballot, accepted_value=accept.value)
            self._write_slot(version, state, effects)
        kept = RingSlot(promised=state.promised)  # an answer to an accept carries no value
        vote = _vote(accept.op_id, "accept", version, ballot, granted, kept, learned)
        self._send(source, vote, effects)

    def _on_fetch(self, source: str, fetch: RingFetch, effects: Effects) -> None:
        learned = self.learned
        if learned.version > fetch.version:
            self._send(source, RingDecide(op_id=fetch.op_id, value=learned), effects)

    # -- learner --------------------------------------------------------------------------------

    def _learn(self, value: Membership, source: str, effects: Effects) -> Membership | None:
        """Learns `value` if it is newer; returns it then, else None."""
        learned = self.learned
        if value.version < learned.version:
            return None
        if value.version == learned.version:
            if value != learned:
                event = self._event("ring_disagreement", value.version, ("sender", source))
                effects.events.append(event)
            return None
        self._write_learned(value, effects)
        for key, _ in self._storage.scan(RING_ACCEPTOR_PREFIX, limit=RING_SLOTS_SCAN_MAX):
            if version_of_slot_key(key) <= value.version:
                effects.writes.append((key, None))  # never voted in again
        effects.events.append(
            self._event("ring_learned", value.version, ("was", learned.version), ("from", source))
        )
        return value

    # -- proposer -------------------------------------------------------------------------------

    def _prepare(self, proposal: _Proposal, round_: int, effects: Effects) -> None:
        proposal.phase = _Phase.PREPARE
        proposal.ballot = Ballot(round=round_, peer=proposal.op_id)
        proposal.value = None
        proposal.promises.clear()
        proposal.accepts.clear()
        proposal.refusals.clear()
        effects.events.append(self._event("ring_proposed", proposal.own.version, ("round", round_)))
        self._resend(proposal, effects)

    def _resend(self, proposal: _Proposal, effects: Effects) -> None:
        """The current phase's message to every voter that has not answered it."""
        answered = proposal.refusals | (
            proposal.promises.keys() if proposal.phase is _Phase.PREPARE else proposal.accepts
        )
        for voter in proposal.base.voters:
            if voter not in answered:
                self._send_phase(proposal, voter, effects)

    def _send_phase(self, proposal: _Proposal, voter: str, effects: Effects) -> None:
        version = proposal.base.version + 1
        message: RingMessage
        if proposal.phase is _Phase.PREPARE:
            message = RingPrepare(
                op_id=proposal.op_id,
                version=version,
                ballot=proposal.ballot,
                base_digest=proposal.base.digest(),
            )
        elif proposal.phase is _Phase.ACCEPT and proposal.value is not None:
            message = RingAccept(
                op_id=proposal.op_id, version=version, ballot=proposal.ballot, value=proposal.value
            )
        else:
            return
        self._send(voter, message, effects)

    def _on_vote(self, source: str, vote: RingVote, now: float, effects: Effects) -> None:
        if vote.learned is not None:
            learned = self._learn(vote.learned, source, effects)
            if learned is not None:
                self._rebase_all(learned, now, effects)
            return
        proposal = self._proposals.get(vote.op_id)
        if (
            proposal is None
            or vote.version != proposal.base.version + 1
            or vote.ballot != proposal.ballot
            or vote.phase != proposal.phase.value
            or source not in proposal.base.voters
        ):
            return  # late, or for a round this operation left
        if vote.behind:
            self._send(source, RingDecide(op_id=proposal.op_id, value=proposal.base), effects)
            self._send_phase(proposal, source, effects)
            return
        if not vote.granted:
            proposal.refusals.add(source)
            proposal.round_seen = max(proposal.round_seen, vote.promised.round)
            voters = len(proposal.base.voters)
            if voters - len(proposal.refusals) < majority(voters):
                self._back_off(proposal, now, effects)
            return
        if proposal.phase is _Phase.PREPARE:
            proposal.promises[source] = vote
            if len(proposal.promises) >= majority(len(proposal.base.voters)):
                self._start_accept(proposal, effects)
        else:
            proposal.accepts.add(source)
            if len(proposal.accepts) >= majority(len(proposal.base.voters)):
                self._chosen(proposal, now, effects)

    def _start_accept(self, proposal: _Proposal, effects: Effects) -> None:
        accepted = [
            (v.accepted_ballot, v.accepted_value)
            for v in proposal.promises.values()
            if v.accepted_ballot is not None and v.accepted_value is not None
        ]
        value = max(accepted, key=lambda a: a[0])[1] if accepted else proposal.own
        require(
            value.version == proposal.base.version + 1,
            f"ring proposer would propose version {value.version} in {proposal.base.version + 1}",
        )
        proposal.phase = _Phase.ACCEPT
        proposal.value = value
        proposal.refusals.clear()
        self._resend(proposal, effects)

    def _chosen(self, proposal: _Proposal, now: float, effects: Effects) -> None:
        value = proposal.value
        require(
            value is not None
            and proposal.phase is _Phase.ACCEPT
            and len(proposal.accepts & set(proposal.base.voters))
            >= majority(len(proposal.base.voters)),
            "ring proposer would report a value chosen without a majority of the voters",
        )
        assert value is not None
        self._learn(value, self._peer_id, effects)
        others = {m.id for m in (*proposal.base.members, *value.members)} - {self._peer_id}
        for member in sorted(others):
            self._send(member, RingDecide(op_id=proposal.op_id, value=value), effects)
        self._rebase_all(value, now, effects)  # this operation too: done if `value` is its own

    def _rebase_all(self, learned: Membership, now: float, effects: Effects) -> None:
        """Operations proposing a version now learned start again on `learned`."""
        for proposal in list(self._proposals.values()):
            if proposal.base.version < learned.version:
                self._rebase(proposal, learned, now, effects)

    def _rebase(
        self, proposal: _Proposal, learned: Membership, now: float, effects: Effects
    ) -> None:
        if learned == proposal.own:
            self._finish(proposal, RingOutcome.CHANGED, learned, effects)
            return
        if change_satisfied(learned, proposal.change):
            self._finish(proposal, RingOutcome.ALREADY, learned, effects)
            return
        proposal.attempts += 1
        if proposal.attempts >= self._limits.attempts_max:
            self._finish(proposal, RingOutcome.CONTENDED, learned, effects)
            return
        try:
            own = apply_change(learned, proposal.change)
        except ChangeRefused as refused:
            self._finish(proposal, RingOutcome.REFUSED, learned, effects, reason=refused.reason)
            return
        proposal.base, proposal.own, proposal.round_seen = learned, own, 0
        self._prepare(proposal, 1, effects)

    def _back_off(self, proposal: _Proposal, now: float, effects: Effects) -> None:
        proposal.attempts += 1
        if proposal.attempts >= self._limits.attempts_max:
            self._finish(proposal, RingOutcome.CONTENDED, self.learned, effects)
            return
        proposal.phase = _Phase.BACKOFF
        limits = self._limits
        delay_s = min(limits.backoff_max_s, limits.backoff_initial_s * 2**proposal.attempts)
        delay_s *= 0.5 + self._rng.random()
        effects.events.append(
            self._event("ring_preempted", proposal.own.version, ("by_round", proposal.round_seen))
        )
        effects.timers.append(
            Timer(kind=TimerKind.BACKOFF, op_id=proposal.op_id, due=now + delay_s)
        )

    def _finish(
        self,
        proposal: _Proposal,
        outcome: RingOutcome,
        learned: Membership,
        effects: Effects,
        *,
        reason: str = "",
    ) -> None:
        del self._proposals[proposal.op_id]
        self._done(proposal.op_id, outcome, learned, effects, reason=reason)

    def _done(
        self,
        op_id: str,
        outcome: RingOutcome,
        learned: Membership,
        effects: Effects,
        *,
        reason: str = "",
    ) -> Effects:
        effects.replies.append(
            RingDone(op_id=op_id, outcome=outcome, membership=learned, reason=reason)
        )
        return effects

    # -- the only writers of ring records: each checks the record it replaces -------------------

    def _write_slot(self, version: int, new: RingSlot, effects: Effects) -> None:
        stored = read_ring_slot(self._storage, version)
        require(
            self.learned.version == version - 1,
            f"ring acceptor would vote in version {version}, learned {self.learned.version}",
        )
        require(
            new.promised >= stored.promised, f"ring acceptor would lower its promise: {version}"
        )
        require(
            stored.accepted_ballot is None or new.accepted_ballot is not None,
            f"ring acceptor would forget the value it accepted in version {version}",
        )
        if new.accepted_ballot is not None and new.accepted_ballot == stored.accepted_ballot:
            require(
                new.accepted_value == stored.accepted_value,
                f"ring acceptor would change the value accepted in version {version}",
            )
        effects.writes.append((ring_slot_key(version), encode_ring_slot(new)))

    def _write_learned(self, value: Membership, effects: Effects) -> None:
        stored = self.learned
        require(
            value.version > stored.version,
            f"ring learner would go back from version {stored.version} to {value.version}",
        )
        effects.writes.append((LEARNED_KEY, encode_learned(value)))
        if value.member(self._peer_id) is not None and not self.ever_named:
            effects.writes.append((NAMED_KEY, b""))

    # -- helpers --------------------------------------------------------------------------------

    def _send(self, destination: str, message: RingMessage, effects: Effects) -> None:
        effects.messages.append(
            Envelope(source=self._peer_id, destination=destination, message=message)
        )

    @staticmethod
    def _event(name: str, version: int, *details: tuple[str, str | int]) -> Event:
        return Event(name=name, details=(("version", version), *details))


def _vote(
    op_id: str,
    phase: str,
    version: int,
    ballot: Ballot,
    granted: bool,
    state: RingSlot,
    learned: Membership,
) -> RingVote:
    """A voting acceptor's answer: granted or not, with the promise (and value) it holds."""
    return RingVote(
        op_id=op_id,
        phase=phase,
        version=version,
        ballot=ballot,
        granted=granted,
        promised=state.promised,
        accepted_ballot=state.accepted_ballot,
        accepted_value=state.accepted_value,
        learned_version=learned.version,
    )


def _names_a_stranger(learned: Membership, change: MembershipChange) -> bool:
    """A remove or replace of an id that is no member. (Once an operation runs, a member gone
    by a newer version means the change is in: `change_satisfied`.)"""
    if isinstance(change, RemoveMember):
        return learned.member(change.id) is None
    if isinstance(change, ReplaceMember):
        return learned.member(change.old) is None and learned.member(change.new) is None
    return False


def _as_accept_phase(vote: RingVote) -> RingVote:
    return RingVote(
        op_id=vote.op_id,
        phase="accept",
        version=vote.version,
        ballot=vote.ballot,
        granted=False,
        promised=vote.promised,
        behind=vote.behind,
        learned_version=vote.learned_version,
        learned=vote.learned,
    )
