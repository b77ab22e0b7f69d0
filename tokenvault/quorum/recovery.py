"""Store identity and the recovery of a peer that lost its store, sans-IO.

Why: a peer that starts with an empty store has forgotten its Paxos promises and acceptances.
If it voted at once, two values could be chosen for one epoch (the amnesia that breaks
single-decree Paxos), and it would count toward read and write quorums while holding nothing.

Theory of operation:
- Identity. A store gets a random identity (32 hex characters, from the driver's random source)
  when the peer first opens it, kept in the record `i\\0` with the store's phase. A store that
  holds records but no identity (made by an older version) gets one and is `serving`; a store
  with no record at all is fresh and starts `undecided`.
- Peers remember each other. Every heartbeat carries the sender's identity ("" while it is
  undecided) and the identity the sender remembers for the destination ("" when none). A peer
  records the identity it last saw from each peer (`p\\0<peer>`), and reports a change
  (`peer_store_replaced`: the peer came back with another, empty store).
- Undecided -> recovering or serving. A fresh store listens to heartbeats: if any peer remembers
  another identity for it, it lost its store: `recovering`. Once a majority of the cluster
  (counting itself) answered and none remembered it, the cluster is brand new: `serving`. Only
  then does it send its own identity, so a peer's answer is never its own echo.
- Recovering: it casts no Paxos vote and counts toward no quorum (`refusal`: an explicit
  UNAVAILABLE answer that the coordinators do not count), coordinates no client operation, but
  takes every repair insert and Decide. For each owner it replicates it asks the other replicas
  (RecoveryQuery) for their epoch state. With reports from a majority of the OTHER replicas of
  EACH quorum set that holds it (two while a ring change moves the owner and it is in both) it
  adopts (acceptor.py `adopt`): every decided value, the highest meta, per open slot the highest
  promise and the accepted value of the highest ballot. Anti-entropy runs back to back meanwhile;
  an owner is refilled once passes with a majority of the other replicas of its read set each
  found nothing this peer lacks (a joint write is on W of each set, the read set among them);
  an owner of whose joint placement it is only a new replica needs no refill: like any new
  replica its transfer fills it (transfer.py), before the finish moves reads to it. It is
  `serving` when every owner is learned and refilled and every other peer echoed its new
  identity (or the proposers' deadline passed since it started recovering), and the `serving`
  record is durable.
- The ring (`set_placements`): owners and partners follow the ring the peer learned. A wiped
  store restarts on the bootstrap ring (its ring records went with it) and learns the current
  one from gossip; an owner whose sets changed then starts over with its new partners (reports
  and passes of the old ones count nowhere), an owner whose sets stayed keeps its progress. The
  peer core does not let it serve while a peer gossips a later ring version than it learned
  (peer_core.py `_check_recovered`).

Safety argument. A majority of the others, not of all: the lost state took part only in quorums
of size majority(N) that included this peer, so each holds at least majority(N) - 1 = N//2 other
replicas, and N//2 + (N//2 + 1) > N - 1 others: the replicas heard intersect every such quorum.
So the adopted promise is at least every promise the lost store gave that a proposer could have
counted in a quorum, and the adopted accepted value dominates every value it helped choose.
The same count refills mappings: an acknowledged mapping is on W replicas, at least W - 1 others,
and (W - 1) + (N//2 + 1) > N - 1 since W > N/2. During a joint placement the argument holds per
set: an epoch quorum is a majority of each set and a write W of each, so hearing a majority of
the others of every set that holds this peer meets each quorum it took part in.
The hole left is a promise in flight: given before the loss, counted by a proposer whose round
is still open and that none of the replicas heard from holds. Promises and Accepted carry the
acceptor's identity; a proposer drops those of an identity it learns was replaced
(epoch_coordinator.py `note_store`), and a peer notes the identity of a RecoveryQuery before it
answers. With N = 3 on a 3-peer ring every proposer is a replica and answers the query before
the recovering peer can serve: closed. With more peers or larger N, a proposer that is not among
the replicas heard learns the new identity from the heartbeats; recovery waits until every peer
echoed it, or until the proposers' operation deadline passed since it started (no round that
counted a promise of the lost store is still open then, on clocks that run at the same rate).
Limits: a fresh store cannot tell a brand-new cluster from one whose majority also lost its
disks (or that never heard this peer): those are beyond the model (more than a minority lost).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tokenvault.quorum.effects import Effects, Event, Write
from tokenvault.quorum.epoch_coordinator import RandomSource
from tokenvault.quorum.messages import (
    GENESIS,
    GENESIS_EPOCH,
    ZERO_BALLOT,
    Accept,
    Accepted,
    Envelope,
    EpochQuery,
    EpochReport,
    Heartbeat,
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Message,
    Prepare,
    Promise,
    ReadReply,
    ReadRequest,
    RecoveryQuery,
    RecoveryReport,
    TransferPage,
    TransferPageReply,
)
from tokenvault.quorum.placement import OwnerPlacement
from tokenvault.quorum.quorum_config import majority
from tokenvault.quorum.records import (
    IDENTITY_KEY,
    StorageView,
    StoreIdentity,
    encode_identity,
    encode_peer_identity,
    is_empty_store,
    peer_identity_key,
    read_identity,
    read_peer_identities,
)

STORE_ID_BITS = 128


class Phase(enum.Enum):
    UNDECIDED = "undecided"
    RECOVERING = "recovering"
    SERVING = "serving"


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryLimits:
    query_interval_s: float = 1.0  # recovery queries go again to replicas that did not answer
    in_flight_bound_s: float = 5.0  # the proposers' operation deadline (EpochLimits)
    peers_remembered_max: int = 4_096


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryProgress:
    phase: str
    owners_total: int
    owners_learned: int
    owners_refilled: int
    peers_total: int  # other peers of the ring
    peers_acknowledged: int  # of them, those that echoed this store's identity


@dataclass(slots=True)
class _Owner:
    # The others of each quorum set of the owner that holds this peer (two while a change
    # moves it and this peer is in both); epochs are learned from a majority of each.
    learn_from: tuple[tuple[str, ...], ...]
    # The others of the owner's read set when this peer is in it: the mappings are refilled
    # from a majority of them. Empty when this peer is only a new replica of a joint owner:
    # its transfer fills it (transfer.py), as any new replica, and the finish waits for it.
    refill_from: tuple[str, ...]
    reports: dict[str, RecoveryReport] = field(default_factory=dict)
    learned: bool = False
    in_sync_with: set[str] = field(default_factory=set)

    @property
    def partners(self) -> frozenset[str]:
        return frozenset(p for others in self.learn_from for p in others)

    def heard_enough(self) -> bool:
        return all(
            sum(1 for p in others if p in self.reports) >= needed_from_others(len(others) + 1)
            for others in self.learn_from
        )

    @property
    def refilled(self) -> bool:
        if not self.refill_from:
            return True
        needed = needed_from_others(len(self.refill_from) + 1)
        return sum(1 for p in self.refill_from if p in self.in_sync_with) >= needed


def _owner_of(peer_id: str, placement: OwnerPlacement) -> _Owner | None:
    """What recovering `peer_id` needs of the owner at `placement`; None when no replica."""
    learn_from = tuple(
        tuple(p for p in replica_set if p != peer_id)
        for replica_set in placement.quorum_sets
        if peer_id in replica_set
    )
    if not learn_from:
        return None
    read_set = placement.read_set
    refill_from = tuple(p for p in read_set if p != peer_id) if peer_id in read_set else ()
    return _Owner(learn_from=learn_from, refill_from=refill_from)


def needed_from_others(replica_count: int) -> int:
    """How many other replicas a recovering one must hear from: a majority of the others'
    count, N//2 + 1, so that every quorum it took part in meets them (at most all others)."""
    return min(majority(replica_count), replica_count - 1)


class Recovery:
    def __init__(
        self,
        *,
        peer_id: str,
        peers: tuple[str, ...],
        storage: StorageView,
        rng: RandomSource,
        placements: dict[str, OwnerPlacement],
        limits: RecoveryLimits = RecoveryLimits(),
    ) -> None:
        self._peer_id = peer_id
        self._others = tuple(p for p in peers if p != peer_id)
        self._cluster_size = len(peers)
        self._limits = limits
        self.startup_writes: list[Write] = []
        identity = read_identity(storage)
        if identity is None:
            phase = Phase.UNDECIDED if is_empty_store(storage) else Phase.SERVING
            identity = StoreIdentity(
                store_id=f"{rng.getrandbits(STORE_ID_BITS):0{STORE_ID_BITS // 4}x}",
                phase=phase.value,
            )
            self.startup_writes.append((IDENTITY_KEY, encode_identity(identity)))
        self.store_id = identity.store_id
        self.phase = Phase(identity.phase)
        if self.phase is Phase.UNDECIDED and majority(len(peers)) == 1:
            # Nobody else to ask (a one-peer cluster): the store cannot have been known.
            self.phase = Phase.SERVING
            identity = StoreIdentity(store_id=self.store_id, phase=self.phase.value)
            self.startup_writes.append((IDENTITY_KEY, encode_identity(identity)))
        self._known = read_peer_identities(storage, limits.peers_remembered_max)
        self._unknown_to: set[str] = set()  # peers that never saw this store (undecided)
        self._acknowledged: set[str] = set()  # peers that echoed this store's identity
        self._recovering_since: float | None = None
        self._next_query_at = 0.0
        self._owners: dict[str, _Owner] = {}
        self.set_placements(placements, peers)

    def set_placements(self, placements: dict[str, OwnerPlacement], peers: tuple[str, ...]) -> None:
        """The ring the peer learned: the owners it replicates there and with whom, and the
        other peers that must echo its identity. An owner whose sets changed is learned and
        refilled again from its new partners (what the old ones answered proves nothing about
        quorums of the new sets); an owner whose sets did not change keeps its progress."""
        peer_id = self._peer_id
        self._others = tuple(p for p in peers if p != peer_id)
        self._cluster_size = len(peers)
        owners: dict[str, _Owner] = {}
        for owner, placement in sorted(placements.items()):
            fresh = _owner_of(peer_id, placement)
            if fresh is None:
                continue
            kept = self._owners.get(owner)
            same = kept is not None and (kept.learn_from, kept.refill_from) == (
                fresh.learn_from,
                fresh.refill_from,
            )
            if same and kept is not None:
                owners[owner] = kept
            else:
                owners[owner] = fresh
                self._next_query_at = 0.0  # ask the new partners at the next tick
        self._owners = owners
        self._acknowledged &= set(self._others)

    # -- queries -------------------------------------------------------------------------------

    def known_store(self, peer: str) -> str:
        """The identity last seen from `peer`, "" when none."""
        return self._known.get(peer, "")

    def heartbeat(self, destination: str) -> Heartbeat:
        own = "" if self.phase is Phase.UNDECIDED else self.store_id
        return Heartbeat(sender=self._peer_id, store=own, known=self.known_store(destination))

    def progress(self) -> RecoveryProgress:
        owners = self._owners.values()
        return RecoveryProgress(
            phase=self.phase.value,
            owners_total=len(self._owners),
            owners_learned=sum(1 for o in owners if o.learned),
            owners_refilled=sum(1 for o in owners if o.refilled),
            peers_total=len(self._others),
            peers_acknowledged=len(self._acknowledged),
        )

    def is_ready(self, now: float) -> bool:
        """Recovering, and everything learned and refilled, and no proposer can still count a
        promise of the lost store."""
        if self.phase is not Phase.RECOVERING or self._recovering_since is None:
            return False
        if not all(o.learned and o.refilled for o in self._owners.values()):
            return False
        echoed = self._acknowledged.issuperset(self._others)
        return echoed or now - self._recovering_since >= self._limits.in_flight_bound_s

    # -- inputs --------------------------------------------------------------------------------

    def on_heartbeat(self, source: str, heartbeat: Heartbeat, now: float) -> Effects:
        """Notes the sender's identity and what it remembers of ours."""
        effects = self.note_store(source, heartbeat.store)
        known = heartbeat.known
        if self.phase is Phase.UNDECIDED:
            if known and known != self.store_id:
                self._decide(Phase.RECOVERING, now, effects, ("remembered_by", source))
            else:
                self._unknown_to.add(source)
                if len(self._unknown_to) + 1 >= majority(self._cluster_size):
                    self._decide(Phase.SERVING, now, effects, ("answered", len(self._unknown_to)))
        elif known == self.store_id:
            self._acknowledged.add(source)
        return effects

    def note_store(self, peer: str, store_id: str) -> Effects:
        """`peer` runs on store `store_id` ("" says nothing); a change is recorded and
        reported (`peer_store_replaced`: it came back with another, empty store)."""
        effects = Effects()
        old = self._known.get(peer, "")
        if not store_id or store_id == old:
            return effects
        if peer not in self._known and len(self._known) >= self._limits.peers_remembered_max:
            return effects
        self._known[peer] = store_id
        effects.writes.append((peer_identity_key(peer), encode_peer_identity(store_id)))
        if old:
            effects.events.append(
                Event(name="peer_store_replaced", details=(("target", peer), ("was", old[:8])))
            )
        return effects

    def tick(self, now: float) -> Effects:
        """While recovering: ask the replicas that have not reported yet, once per interval."""
        effects = Effects()
        if self.phase is not Phase.RECOVERING or now < self._next_query_at:
            return effects
        self._next_query_at = now + self._limits.query_interval_s
        for owner, state in self._owners.items():
            if state.learned:
                continue
            query = RecoveryQuery(op_id=f"rq:{self._peer_id}", owner=owner, store=self.store_id)
            for replica in sorted(state.partners):
                if replica not in state.reports:
                    effects.messages.append(
                        Envelope(source=self._peer_id, destination=replica, message=query)
                    )
        return effects

    def on_report(self, source: str, report: RecoveryReport) -> list[RecoveryReport] | None:
        """A report; the reports to adopt once a majority of the others answered, else None."""
        state = self._owners.get(report.owner)
        if self.phase is not Phase.RECOVERING or state is None or state.learned:
            return None
        if source not in state.partners:
            return None
        state.reports[source] = report
        if not state.heard_enough():
            return None
        state.learned = True
        return list(state.reports.values())

    def on_pass(self, owner: str, partner: str, nothing_missing: bool) -> None:
        """An anti-entropy pass this peer started ended; `nothing_missing`: the partner had
        nothing this peer lacks."""
        state = self._owners.get(owner)
        recovering = self.phase is Phase.RECOVERING and nothing_missing
        if recovering and state is not None and partner in state.refill_from:
            state.in_sync_with.add(partner)

    def finish(self) -> Effects:
        """Recovered: the `serving` record (the caller serves once it is durable)."""
        assert self.phase is Phase.RECOVERING
        effects = Effects()
        self._set_phase(Phase.SERVING, effects)
        effects.events.append(
            Event(name="store_recovered", details=(("owners", len(self._owners)),))
        )
        return effects

    # -- internals -----------------------------------------------------------------------------

    def _decide(
        self, phase: Phase, now: float, effects: Effects, detail: tuple[str, str | int]
    ) -> None:
        self._set_phase(phase, effects)
        if phase is Phase.RECOVERING:
            self._recovering_since = now
            name = "store_lost"  # peers knew another store here: learn before voting
        else:
            name = "store_new_cluster"
        effects.events.append(Event(name=name, details=(detail,)))

    def _set_phase(self, phase: Phase, effects: Effects) -> None:
        self.phase = phase
        identity = StoreIdentity(store_id=self.store_id, phase=phase.value)
        effects.writes.append((IDENTITY_KEY, encode_identity(identity)))

    def resume(self, now: float) -> None:
        """A store that was recovering when the process stopped recovers again from the start."""
        if self.phase is Phase.RECOVERING and self._recovering_since is None:
            self._recovering_since = now


def refusal(peer_id: str, store_id: str, source: str, message: Message) -> list[Envelope] | None:
    """What a peer that is not serving answers instead of voting or counting toward a quorum:
    None when it handles the message as usual (repairs, Decide, anti-entropy, inspection)."""
    reply: Message | None
    if isinstance(message, InsertRequest):
        if message.repair:
            return None  # refills the store
        reply = InsertReply(
            op_id=message.op_id,
            owner=message.owner,
            tokens=tuple(m.token for m in message.mappings),
            outcomes=(InsertOutcome.UNAVAILABLE,) * len(message.mappings),
            origin=message.origin,
        )
    elif isinstance(message, ReadRequest):
        reply = ReadReply(
            op_id=message.op_id,
            owner=message.owner,
            tokens=message.tokens,
            mappings=(None,) * len(message.tokens),
            unavailable=True,
        )
    elif isinstance(message, EpochQuery):
        reply = EpochReport(
            op_id=message.op_id,
            owner=message.owner,
            decided=GENESIS,
            accepted_slot=GENESIS_EPOCH,
            unavailable=True,
        )
    elif isinstance(message, Prepare):
        reply = Promise(
            op_id=message.op_id,
            owner=message.owner,
            slot=message.slot,
            ballot=message.ballot,
            granted=False,
            promised=ZERO_BALLOT,
            accepted_ballot=None,
            accepted_value=None,
            decided=None,
            store=store_id,
            unavailable=True,
        )
    elif isinstance(message, Accept):
        reply = Accepted(
            op_id=message.op_id,
            owner=message.owner,
            slot=message.slot,
            ballot=message.ballot,
            granted=False,
            promised=ZERO_BALLOT,
            decided=None,
            store=store_id,
            unavailable=True,
        )
    elif isinstance(message, RecoveryQuery):
        return []  # what it knows is what it is learning: no answer
    elif isinstance(message, TransferPage):
        reply = TransferPageReply(  # what it holds may lack anything: ask another source
            op_id=message.op_id,
            owner=message.owner,
            after=message.after,
            request=message.request,
            unavailable=True,
        )
    else:
        return None
    return [Envelope(source=peer_id, destination=source, message=reply)]
