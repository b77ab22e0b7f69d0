"""What the simulator sees inside the peers over a whole run: never what a client could see.

The checker judges clients' histories; some rules can only be judged from inside, over time, and
the observer keeps what that takes:
- Every write the API layer of a peer attempted (`WriteAttempt`: the tokenize it serves, the
  epoch it computed the tokens under, the mappings). A client never learns the tokens of a
  tokenize that failed; the workload asks the observer for them (to read them back, the way a
  test harness would), and the checker counts them as "tried to insert".
- Every epoch value an Accept carried when a peer sent it.
- The durable stream of every peer: at each sync, the records it made durable, in the order they
  were staged (`on_durable`), for the kinds the invariants watch: acceptor slots (`a`), decided
  values (`d`), epoch metas (`e`) and hints (`h`); ring records (`r`) go to the ring log
  (`ring`, ring_log.py) and transfer records (`t`) to the transfer log (`transfers`,
  transfer_log.py) the cluster attaches. A crash throws away what was staged, so only
  what a peer could have answered from is seen, across restarts too.

Invariants judged as the stream arrives (each becomes an `Observation`; the checker reports it):
- promise-never-decreases: per (peer, owner, slot) the promised ballot, and the accepted ballot,
  never go down.
- active-epoch-never-goes-back: per (peer, owner) the decided slot and the fence never go down.
- one-value-per-slot: per (owner, slot) at most one value is ever decided, on every peer.
- values-were-proposed: every value accepted or decided was carried by an Accept some proposer
  sent (and, judged by the checker, names a rotate a client asked for).
- hints-kept-until-acknowledged: a peer deletes a hint only once its target durably holds every
  mapping of it, or held it durably until a wipe took its store (or holds another mapping under
  its token: a conflict the hint cannot fix), or a decided change placed the owner off the
  target (removed, or the owner moved: such hints are forgotten).
And at the end (`chosen_value_violations`), Paxos's own: a ballot carries one value, and once a
quorum voted for a value at a ballot (accepted it on an Accept that reached them: a state a
transfer or a recovery adopted is no vote), every acceptance at a higher ballot of that slot
carries the same value. The quorum is the one of the ring version the Accept ran under (its
`ring`): a majority of each set of the owner at that version, the new set alone at a finish
version (what a proposer counts once the change is drained; every later round has a majority of
that set), any majority when no ring version is known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tokenvault.quorum.client_operations import TokenizeAttempt
from tokenvault.quorum.hinted_handoff import HINT_PREFIX, decode_hint
from tokenvault.quorum.messages import ZERO_BALLOT, Accept, Ballot, EpochValue, Mapping
from tokenvault.quorum.quorum_config import majority
from tokenvault.quorum.records import (
    ACCEPTOR_PREFIX,
    DECIDED_PREFIX,
    EPOCH_META_PREFIX,
    RING_PREFIX,
    TRANSFER_PREFIX,
    EpochMeta,
    read_acceptor_slot,
    read_decided,
    read_epoch_meta,
)
from tokenvault.sim.durable import SIM_SEALER, OneRecord
from tokenvault.sim.network import describe_ballot, describe_value, short_token
from tokenvault.sim.observation import Observation
from tokenvault.sim.ring_log import RingLog
from tokenvault.sim.transfer_log import TransferLog

Write = tuple[bytes, bytes | None]
WATCHED_PREFIXES = frozenset(
    (ACCEPTOR_PREFIX, DECIDED_PREFIX, EPOCH_META_PREFIX, HINT_PREFIX, RING_PREFIX, TRANSFER_PREFIX)
)
DurableMapping = Callable[[str, str, str], Mapping | None]  # (peer, owner, token)


def is_watched(key: bytes) -> bool:
    return key[:2] in WATCHED_PREFIXES


# One write a peer's tokenize started: the peer core reports it in its step.
WriteAttempt = TokenizeAttempt


def _proposers(*items: Ballot | EpochValue | None) -> tuple[str, ...]:
    """The operations that proposed ballots (their proposer part) and values."""
    found: dict[str, None] = {}
    for item in items:
        if isinstance(item, Ballot) and item.peer:
            found[item.peer] = None
        elif isinstance(item, EpochValue) and item.requested_by:
            found[item.requested_by] = None
    return tuple(found)


@dataclass(slots=True)
class _Slot:
    """What happened to one (owner, slot) on every acceptor."""

    accepts: dict[Ballot, dict[EpochValue, set[str]]] = field(default_factory=dict)
    # Of those, the acceptances an Accept of that ballot reached the acceptor for: votes. An
    # acceptance adopted (a transfer's or a recovery's copy of other acceptors' state) is no
    # vote: counted, it could make a value look chosen that no quorum voted for.
    votes: dict[Ballot, dict[EpochValue, set[str]]] = field(default_factory=dict)
    vote_rings: dict[Ballot, set[int]] = field(default_factory=dict)  # the Accepts' ring versions
    decided: dict[EpochValue, list[str]] = field(default_factory=dict)
    reported_split: bool = False


def _owner_and_slot(key: bytes) -> tuple[str, int]:
    return key[2:-9].decode(), int.from_bytes(key[-8:], "big")


class Observer:
    def __init__(self, *, replica_count: int) -> None:
        self._replica_count = replica_count
        self._majority = majority(replica_count)
        self._durable_mapping: DurableMapping = lambda peer, owner, token: None
        self.write_attempts: list[WriteAttempt] = []
        self._attempts_by_client_op: dict[str, list[WriteAttempt]] = {}
        self.accept_values: set[tuple[str, EpochValue]] = set()
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._promised: dict[tuple[str, str, int], Ballot] = {}
        self._accepted_ballot: dict[tuple[str, str, int], Ballot] = {}
        # (peer, owner, slot, ballot) -> the ring version of the Accept that reached the peer
        self._delivered: dict[tuple[str, str, int, Ballot], int] = {}
        self._meta: dict[tuple[str, str], EpochMeta] = {}
        self._hints: dict[tuple[str, bytes], tuple[str, str, tuple[Mapping, ...]]] = {}
        self.observations: list[Observation] = []
        self.hints_written = 0
        self.hints_deleted = 0
        self.promises_seen = 0
        self.ring: RingLog | None = None  # the ring records and decides (cluster.py attaches)
        self.transfers: TransferLog | None = None  # transfers' records (cluster.py attaches)
        # Whether a decided change ever placed the owner off the target (cluster.py attaches).
        self.unplaced: Callable[[str, str], bool] = lambda target, owner: False

    def attach(self, durable_mapping: DurableMapping) -> None:
        """How to read a peer's durable mapping (the cluster, once its peers exist)."""
        self._durable_mapping = durable_mapping

    # -- what the API layer and the proposers did ----------------------------------------------

    def on_write_attempt(self, attempt: WriteAttempt) -> None:
        self.write_attempts.append(attempt)
        self._attempts_by_client_op.setdefault(attempt.client_op, []).append(attempt)

    def attempted_tokens(self, client_op: str) -> tuple[str, ...]:
        """Every token the peers tried to write for one client operation, in order."""
        tokens: dict[str, None] = {}
        for attempt in self._attempts_by_client_op.get(client_op, ()):
            tokens.update(dict.fromkeys(m.token for m in attempt.mappings))
        return tuple(tokens)

    def on_accept_sent(self, owner: str, value: EpochValue) -> None:
        self.accept_values.add((owner, value))

    def on_accept_delivered(self, peer: str, accept: Accept) -> None:
        """An Accept reached `peer`: an acceptance of its ballot there is a vote (one adopted
        from other acceptors' state, by a transfer or a recovery, is not)."""
        self._delivered[(peer, accept.owner, accept.slot, accept.ballot)] = accept.ring

    # -- the durable stream --------------------------------------------------------------------

    def on_wipe(self, peer: str) -> None:
        """`peer` lost its whole store: its next store starts from nothing (a new acceptor to
        the per-peer rules). What it accepted before stays in the slots' history, which Paxos's
        own rule (chosen-value-kept) and one-value-per-slot keep judging."""
        self._promised = {k: v for k, v in self._promised.items() if k[0] != peer}
        self._accepted_ballot = {k: v for k, v in self._accepted_ballot.items() if k[0] != peer}
        self._meta = {k: v for k, v in self._meta.items() if k[0] != peer}
        # Its hints are gone with it; hints others hold for it can no longer be judged (what
        # it acknowledged before the wipe it no longer holds).
        self._hints = {k: v for k, v in self._hints.items() if peer not in (k[0], v[0])}
        if self.ring is not None:
            self.ring.on_wipe(peer)
        if self.transfers is not None:
            self.transfers.on_wipe(peer)

    def on_durable(self, peer: str, writes: Iterable[Write], at_s: float) -> None:
        """Records that just became durable on peer, in the order they were staged."""
        for key, raw in writes:
            prefix = key[:2]
            if prefix == ACCEPTOR_PREFIX:
                self._on_acceptor(peer, key, raw, at_s)
            elif prefix == DECIDED_PREFIX:
                self._on_decided(peer, key, raw, at_s)
            elif prefix == EPOCH_META_PREFIX:
                self._on_meta(peer, key, raw, at_s)
            elif prefix == HINT_PREFIX:
                self._on_hint(peer, key, raw, at_s)
            elif prefix == RING_PREFIX and self.ring is not None:
                self.ring.on_durable(peer, key, raw, at_s)
            elif prefix == TRANSFER_PREFIX and self.transfers is not None:
                self.transfers.on_durable(peer, raw, at_s)

    def _observe(
        self,
        invariant: str,
        summary: str,
        at_s: float,
        *peers: str,
        op_ids: tuple[str, ...] = (),
        tokens: tuple[str, ...] = (),
    ) -> None:
        self.observations.append(
            Observation(
                invariant=invariant,
                summary=summary,
                at_s=at_s,
                peers=tuple(peers),
                op_ids=op_ids,
                tokens=tokens,
            )
        )

    def _slot(self, owner: str, slot: int) -> _Slot:
        found = self._slots.get((owner, slot))
        if found is None:
            found = self._slots[(owner, slot)] = _Slot()
        return found

    def _on_acceptor(self, peer: str, key: bytes, raw: bytes | None, at_s: float) -> None:
        owner, slot = _owner_and_slot(key)
        state = read_acceptor_slot(OneRecord(key, raw), owner, slot)
        where = (peer, owner, slot)
        self.promises_seen += 1
        before = self._promised.get(where, ZERO_BALLOT)
        if state.promised < before:
            self._observe(
                "promise-never-decreases",
                f"{peer} had promised ballot {describe_ballot(before)} for {owner} slot {slot},"
                f" then durably promised {describe_ballot(state.promised)}",
                at_s,
                peer,
                op_ids=_proposers(before, state.promised),
            )
        self._promised[where] = state.promised
        ballot, value = state.accepted_ballot, state.accepted_value
        if ballot is None or value is None:
            if where in self._accepted_ballot:
                self._observe(
                    "promise-never-decreases",
                    f"{peer} forgot the value it had accepted for {owner} slot {slot}",
                    at_s,
                    peer,
                )
            return
        accepted_before = self._accepted_ballot.get(where)
        if accepted_before is not None and ballot < accepted_before:
            self._observe(
                "promise-never-decreases",
                f"{peer} had accepted at ballot {describe_ballot(accepted_before)} for {owner}"
                f" slot {slot}, then at {describe_ballot(ballot)}",
                at_s,
                peer,
                op_ids=_proposers(accepted_before, ballot),
            )
        self._accepted_ballot[where] = ballot
        record = self._slot(owner, slot)
        record.accepts.setdefault(ballot, {}).setdefault(value, set()).add(peer)
        ring = self._delivered.get((peer, owner, slot, ballot))
        if ring is not None:
            record.votes.setdefault(ballot, {}).setdefault(value, set()).add(peer)
            record.vote_rings.setdefault(ballot, set()).add(ring)
        if (owner, value) not in self.accept_values:
            self._observe(
                "values-were-proposed",
                f"{peer} accepted {describe_value(value)} for {owner} slot {slot}, a value no"
                " proposer sent in an Accept",
                at_s,
                peer,
                op_ids=_proposers(ballot, value),
            )

    def _on_decided(self, peer: str, key: bytes, raw: bytes | None, at_s: float) -> None:
        owner, slot = _owner_and_slot(key)
        value = read_decided(OneRecord(key, raw), owner, slot)
        if value is None:
            self._observe(
                "one-value-per-slot",
                f"{peer} erased the value it had decided for {owner} slot {slot}",
                at_s,
                peer,
            )
            return
        record = self._slot(owner, slot)
        record.decided.setdefault(value, []).append(peer)
        if len(record.decided) > 1 and not record.reported_split:
            record.reported_split = True
            values = "; ".join(
                f"{describe_value(v)} on {','.join(sorted(set(peers)))}"
                for v, peers in sorted(record.decided.items(), key=lambda item: item[0].salt)
            )
            self._observe(
                "one-value-per-slot",
                f"{owner} slot {slot} was decided with {len(record.decided)} values: {values}",
                at_s,
                *sorted({p for peers in record.decided.values() for p in peers}),
                op_ids=_proposers(*sorted(record.decided, key=lambda v: v.salt)),
            )
        if (owner, value) not in self.accept_values:
            self._observe(
                "values-were-proposed",
                f"{peer} decided {describe_value(value)} for {owner} slot {slot}, a value no"
                " proposer sent in an Accept",
                at_s,
                peer,
                op_ids=_proposers(value),
            )

    def _on_meta(self, peer: str, key: bytes, raw: bytes | None, at_s: float) -> None:
        owner = key[2:].decode()
        meta = read_epoch_meta(OneRecord(key, raw), owner)
        before = self._meta.get((peer, owner), EpochMeta())
        if meta.decided_slot < before.decided_slot or meta.fence_slot < before.fence_slot:
            self._observe(
                "active-epoch-never-goes-back",
                f"{peer}'s active epoch of {owner} went from {before.decided_slot} (fence"
                f" {before.fence_slot}) back to {meta.decided_slot} (fence {meta.fence_slot})",
                at_s,
                peer,
            )
        self._meta[(peer, owner)] = meta

    def _on_hint(self, peer: str, key: bytes, raw: bytes | None, at_s: float) -> None:
        if raw is not None:
            target = key[len(HINT_PREFIX) : -9].decode()
            owner, mappings = decode_hint(SIM_SEALER, raw)
            self._hints[(peer, key)] = (target, owner, mappings)
            self.hints_written += 1
            return
        found = self._hints.pop((peer, key), None)
        if found is None:
            return
        self.hints_deleted += 1
        target, owner, mappings = found
        if self.unplaced(target, owner):
            return  # a change took the owner off the target: its hints may be forgotten
        lacking = [m for m in mappings if self._durable_mapping(target, owner, m.token) is None]
        if lacking:
            tokens = ",".join(short_token(m.token) for m in lacking)
            self._observe(
                "hints-kept-until-acknowledged",
                f"{peer} deleted its hint for {target} ({owner}: {len(mappings)} mapping(s)) while"
                f" {target} did not hold {len(lacking)} of them durably [{tokens}]",
                at_s,
                peer,
                target,
                tokens=tuple(m.token for m in lacking),
            )

    # -- at the end ----------------------------------------------------------------------------

    def decided_values(self) -> list[tuple[str, int, EpochValue, tuple[str, ...]]]:
        """(owner, slot, value, peers that decided it) for every value ever decided."""
        return [
            (owner, slot, value, tuple(sorted(set(peers))))
            for (owner, slot), record in sorted(self._slots.items())
            for value, peers in sorted(record.decided.items(), key=lambda item: item[0].salt)
        ]

    def chosen_value_violations(self) -> list[str]:
        """Paxos: once a quorum voted for a value at a ballot (acceptances an Accept reached
        the acceptor for), every higher ballot of the slot that anyone accepted carries the
        same value."""
        found: list[str] = []
        for (owner, slot), record in sorted(self._slots.items()):
            for ballot, values in sorted(record.accepts.items(), key=lambda item: item[0]):
                if len(values) > 1:
                    listed = "; ".join(
                        f"{describe_value(v)} on {','.join(sorted(peers))}"
                        for v, peers in sorted(values.items(), key=lambda item: item[0].salt)
                    )
                    found.append(
                        f"{owner} slot {slot}: ballot {describe_ballot(ballot)} carried"
                        f" {len(values)} values: {listed}"
                    )
            chosen = sorted(
                [
                    (ballot, value)
                    for ballot, values in record.votes.items()
                    for value, peers in values.items()
                    if self._quorum_voted(owner, peers, record.vote_rings.get(ballot, set()))
                ],
                key=lambda item: item[0],
            )
            if not chosen:
                continue
            ballot, value = chosen[0]
            for later, values in sorted(record.accepts.items(), key=lambda item: item[0]):
                if later <= ballot:
                    continue
                for other, peers in values.items():
                    if other != value:
                        found.append(
                            f"{owner} slot {slot}: {describe_value(value)} was chosen at ballot"
                            f" {describe_ballot(ballot)}, yet {','.join(sorted(peers))} accepted"
                            f" {describe_value(other)} at the higher ballot"
                            f" {describe_ballot(later)}"
                        )
        return found

    def _quorum_voted(self, owner: str, voters: set[str], rings: set[int]) -> bool:
        """`voters` make a value chosen under one of the ring versions its Accepts ran under."""
        for version in sorted(rings):
            membership = None if self.ring is None else self.ring.decided(version)
            if membership is None:
                return len(voters) >= self._majority
            count = self._replica_count
            sets = [membership.new_ring().preference_list(owner, count)]
            if not membership.stable:
                sets.append(membership.old_ring().preference_list(owner, count))
            if all(len(voters & set(s)) >= majority(len(s)) for s in sets):
                return True
        return False

    def accept_count(self) -> int:
        return sum(
            len(peers)
            for record in self._slots.values()
            for values in record.accepts.values()
            for peers in values.values()
        )
