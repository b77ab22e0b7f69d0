"""The Paxos acceptor and learner of owners' epochs on one replica, sans-IO.

Theory of operation: moving an owner from epoch e to e+1 is one single-decree Paxos instance,
slot e+1, among the owner's N replicas. Per (owner, slot) an acceptor keeps the highest ballot
it promised and the ballot and value it last accepted; per owner it keeps the highest decided
slot and the highest slot it accepted in (their maximum is the owner's fence, see replica.py).

Rules:
- Promise and accept only ballots >= the promised one; a promise never decreases, across
  restarts too, because the record is durable before the answer leaves (persist before send).
- An accepted value's epoch is its slot. A decided value is final: a Decide that disagrees with
  what is already decided is a safety alarm, reported, never applied.
- One ballot, one value: an Accept at the ballot already accepted here with another value (a
  proposer that broke Paxos: a bug or a hostile peer) is the same alarm, refused.
- An EpochQuery changes nothing: it reports the highest decided value and accepted slot; a
  RecoveryQuery changes nothing either: it reports every decided value (the highest
  RECOVERY_DECIDED_MAX), the meta and the open slots, for a replica that lost its store.
- Adoption (`adopt`, recovery.py): a recovering replica takes, from a majority of the other
  replicas, every decided value, the highest meta, and per open slot the highest promise and the
  accepted value of the highest ballot; it goes through the same checked writers.
- Promises and Accepted carry this store's identity (`store_id`), so a proposer can drop the
  answers of a store that was since replaced.

Invariants (invariants.py), asserted on every record write against the record it replaces, so
no peer message can break them (the rules above refuse what would): a promise never decreases;
an accepted value is never forgotten nor changed at its ballot, and its epoch is its slot; a
decided value never changes; the fence (decided and accepted slot) never falls.
"""

from __future__ import annotations

from tokenvault.quorum.effects import Effects, Event
from tokenvault.quorum.invariants import require
from tokenvault.quorum.messages import (
    GENESIS_EPOCH,
    RECOVERY_DECIDED_MAX,
    RECOVERY_SLOTS_MAX,
    Accept,
    Accepted,
    AcceptorMessage,
    Ballot,
    Decide,
    Envelope,
    EpochQuery,
    EpochReport,
    EpochValue,
    Message,
    Prepare,
    Promise,
    RecoveryQuery,
    RecoveryReport,
    SlotState,
)
from tokenvault.quorum.records import (
    ACCEPTOR_PREFIX,
    AcceptorSlot,
    EpochMeta,
    StorageReader,
    StorageView,
    acceptor_key,
    decided_key,
    encode_acceptor_slot,
    encode_decided,
    encode_epoch_meta,
    epoch_meta_key,
    read_acceptor_slot,
    read_active_epoch,
    read_decided,
    read_epoch_meta,
)


class Acceptor:
    def __init__(self, *, peer_id: str, storage: StorageView, store_id: str = "") -> None:
        self._peer_id = peer_id
        self._storage: StorageReader = storage
        self._view = storage  # scans: a recovery report's open slots
        self._store_id = store_id

    def active_epoch(self, owner: str) -> EpochValue:
        """The highest epoch decided here for the owner (the genesis epoch when none was)."""
        return read_active_epoch(self._storage, owner)

    def slot_state(self, owner: str, slot: int) -> AcceptorSlot:
        return read_acceptor_slot(self._storage, owner, slot)

    def meta(self, owner: str) -> EpochMeta:
        return read_epoch_meta(self._storage, owner)

    def on_message(self, source: str, message: Message) -> Effects:
        if isinstance(message, RecoveryQuery):
            return self._reply(source, self.recovery_report(message), Effects())
        assert isinstance(message, EpochQuery | Prepare | Accept | Decide), type(message).__name__
        return self._dispatch(source, message)

    # -- recovery of a lost store (recovery.py) ------------------------------------------------

    def recovery_report(self, query: RecoveryQuery) -> RecoveryReport:
        owner = query.owner
        meta = read_epoch_meta(self._storage, owner)
        first = max(GENESIS_EPOCH + 1, meta.decided_slot - RECOVERY_DECIDED_MAX + 1)
        decided = tuple(
            value
            for slot in range(first, meta.decided_slot + 1)
            if (value := read_decided(self._storage, owner, slot)) is not None
        )
        prefix = ACCEPTOR_PREFIX + owner.encode() + b"\x00"
        after = acceptor_key(owner, meta.decided_slot)
        slots = []
        for key, _ in self._view.scan(prefix, start_after=after, limit=RECOVERY_SLOTS_MAX):
            slot = int.from_bytes(key[len(prefix) :])
            state = read_acceptor_slot(self._storage, owner, slot)
            slots.append(
                SlotState(
                    slot=slot,
                    promised=state.promised,
                    accepted_ballot=state.accepted_ballot,
                    accepted_value=state.accepted_value,
                )
            )
        return RecoveryReport(
            op_id=query.op_id,
            owner=owner,
            decided=decided,
            decided_slot=meta.decided_slot,
            accepted_slot=meta.accepted_slot,
            slots=tuple(slots),
        )

    def adopt(self, owner: str, reports: list[RecoveryReport]) -> Effects:
        """Takes what a majority of the other replicas hold: every decided value, the highest
        meta, per open slot the highest promise and the accepted value of the highest ballot."""
        effects = Effects()
        decided_slot = read_epoch_meta(self._storage, owner).decided_slot
        for value in sorted({v.epoch: v for r in reports for v in r.decided}.values(), key=_epoch):
            values = {v for r in reports for v in r.decided if v.epoch == value.epoch}
            held = read_decided(self._storage, owner, value.epoch)
            if len(values) > 1 or (held is not None and held != value):
                effects.events.append(self._disagreement(owner, value.epoch, "recovery"))
                continue
            if held is None:
                self._write_decided(owner, value, effects)
            decided_slot = max(decided_slot, value.epoch)
        accepted_slot = max(r.accepted_slot for r in reports)
        by_slot: dict[int, list[SlotState]] = {}
        for report in reports:
            for state in report.slots:
                if state.slot > decided_slot:
                    by_slot.setdefault(state.slot, []).append(state)
        for slot, states in sorted(by_slot.items()):
            adopted = self._adopted_slot(owner, slot, states, effects)
            if adopted is not None:
                self._write_slot(owner, slot, adopted, effects)
                if adopted.accepted_ballot is not None:
                    accepted_slot = max(accepted_slot, slot)
        meta = read_epoch_meta(self._storage, owner)
        adopted_meta = EpochMeta(
            decided_slot=max(meta.decided_slot, decided_slot),
            accepted_slot=max(meta.accepted_slot, accepted_slot),
        )
        if adopted_meta != meta:
            self._write_meta(owner, adopted_meta, effects)
        effects.events.append(
            Event(
                name="recovery_owner_learned",
                owner=owner,
                epoch=adopted_meta.decided_slot,
                details=(("reports", len(reports)), ("open_slots", len(by_slot))),
            )
        )
        return effects

    def _adopted_slot(
        self, owner: str, slot: int, states: list[SlotState], effects: Effects
    ) -> AcceptorSlot | None:
        mine = read_acceptor_slot(self._storage, owner, slot)
        candidates = [
            (s.accepted_ballot, s.accepted_value)
            for s in states
            if s.accepted_ballot is not None and s.accepted_value is not None
        ]
        if mine.accepted_ballot is not None and mine.accepted_value is not None:
            candidates.append((mine.accepted_ballot, mine.accepted_value))
        accepted_ballot, accepted_value = max(candidates, key=lambda c: c[0], default=(None, None))
        if any(b == accepted_ballot and v != accepted_value for b, v in candidates):
            effects.events.append(self._disagreement(owner, slot, "recovery"))
            return None  # one ballot, two values: a broken peer; keep what is held
        promised = max([mine.promised, *(s.promised for s in states)])
        if accepted_ballot is not None:
            promised = max(promised, accepted_ballot)
        return AcceptorSlot(
            promised=promised, accepted_ballot=accepted_ballot, accepted_value=accepted_value
        )

    @staticmethod
    def _disagreement(owner: str, slot: int, found_by: str) -> Event:
        return Event(
            name="paxos_disagreement",
            owner=owner,
            epoch=slot,
            details=(("slot", slot), ("found_by", found_by)),
        )

    def _dispatch(self, source: str, message: AcceptorMessage) -> Effects:
        if isinstance(message, EpochQuery):
            return self._on_query(source, message)
        if isinstance(message, Prepare):
            return self._on_prepare(source, message)
        if isinstance(message, Accept):
            return self._on_accept(source, message)
        return self._on_decide(message)

    def _reply(self, destination: str, message: Message, effects: Effects) -> Effects:
        effects.messages.append(
            Envelope(source=self._peer_id, destination=destination, message=message)
        )
        return effects

    def _on_query(self, source: str, query: EpochQuery) -> Effects:
        meta = read_epoch_meta(self._storage, query.owner)
        report = EpochReport(
            op_id=query.op_id,
            owner=query.owner,
            decided=self.active_epoch(query.owner),
            accepted_slot=meta.accepted_slot,
        )
        return self._reply(source, report, Effects())

    def _on_prepare(self, source: str, prepare: Prepare) -> Effects:
        effects = Effects()
        owner, slot, ballot = prepare.owner, prepare.slot, prepare.ballot
        decided = read_decided(self._storage, owner, slot)
        state = read_acceptor_slot(self._storage, owner, slot)
        granted = decided is None and ballot >= state.promised
        if granted and ballot > state.promised:
            state = AcceptorSlot(
                promised=ballot,
                accepted_ballot=state.accepted_ballot,
                accepted_value=state.accepted_value,
            )
            self._write_slot(owner, slot, state, effects)
        effects.events.append(
            self._step(
                "paxos_promise" if granted else "paxos_reject_prepare",
                prepare.op_id,
                owner,
                slot,
                ballot,
            )
        )
        promise = Promise(
            op_id=prepare.op_id,
            owner=owner,
            slot=slot,
            ballot=ballot,
            granted=granted,
            promised=state.promised,
            accepted_ballot=state.accepted_ballot,
            accepted_value=state.accepted_value,
            decided=decided,
            store=self._store_id,
        )
        return self._reply(source, promise, effects)

    def _on_accept(self, source: str, accept: Accept) -> Effects:
        effects = Effects()
        owner, slot, ballot = accept.owner, accept.slot, accept.ballot
        decided = read_decided(self._storage, owner, slot)
        state = read_acceptor_slot(self._storage, owner, slot)
        granted = decided is None and ballot >= state.promised
        if granted and state.accepted_ballot == ballot and state.accepted_value != accept.value:
            granted = False  # a second value at one ballot: the proposer's misbehaviour
            effects.events.append(
                Event(
                    name="paxos_disagreement",
                    owner=owner,
                    request_id=accept.op_id,
                    epoch=slot,
                    details=(("slot", slot), ("found_by", "accept")),
                )
            )
        if granted:
            state = AcceptorSlot(
                promised=ballot, accepted_ballot=ballot, accepted_value=accept.value
            )
            self._write_slot(owner, slot, state, effects)
            meta = read_epoch_meta(self._storage, owner)
            if slot > meta.accepted_slot:
                meta = EpochMeta(decided_slot=meta.decided_slot, accepted_slot=slot)
                self._write_meta(owner, meta, effects)
        effects.events.append(
            self._step(
                "paxos_accept" if granted else "paxos_reject_accept",
                accept.op_id,
                owner,
                slot,
                ballot,
            )
        )
        reply = Accepted(
            op_id=accept.op_id,
            owner=owner,
            slot=slot,
            ballot=ballot,
            granted=granted,
            promised=state.promised,
            decided=decided,
            store=self._store_id,
        )
        return self._reply(source, reply, effects)

    def _on_decide(self, decide: Decide) -> Effects:
        effects = Effects()
        owner, value = decide.owner, decide.value
        held = read_decided(self._storage, owner, value.epoch)
        if held is not None:
            if held != value:
                effects.events.append(
                    Event(
                        name="paxos_disagreement",
                        owner=owner,
                        request_id=decide.op_id,
                        epoch=value.epoch,
                        details=(("slot", value.epoch),),
                    )
                )
            return effects
        self._write_decided(owner, value, effects)
        meta = read_epoch_meta(self._storage, owner)
        if value.epoch > meta.decided_slot:
            meta = EpochMeta(decided_slot=value.epoch, accepted_slot=meta.accepted_slot)
            self._write_meta(owner, meta, effects)
        effects.events.append(
            Event(
                name="epoch_learned",
                owner=owner,
                request_id=decide.op_id,
                epoch=value.epoch,
                details=(("requested_by", value.requested_by),),
            )
        )
        return effects

    # -- the only writers of acceptor records: each checks the record it replaces --------------
    # One more read per write: acceptor records are rare (a few per rotate and owner).

    def _write_slot(self, owner: str, slot: int, new: AcceptorSlot, effects: Effects) -> None:
        stored = read_acceptor_slot(self._storage, owner, slot)
        where = f"owner {owner} slot {slot}"
        require(
            new.promised >= stored.promised,
            f"acceptor would lower its promise: {where}, ballot {_text(new.promised)}"
            f" below {_text(stored.promised)}",
        )
        require(
            stored.accepted_ballot is None or new.accepted_ballot is not None,
            f"acceptor would forget the value it accepted at {where}",
        )
        if new.accepted_ballot is not None and new.accepted_ballot == stored.accepted_ballot:
            require(
                new.accepted_value == stored.accepted_value,
                f"acceptor would change the value accepted at {where},"
                f" ballot {_text(new.accepted_ballot)}",
            )
        elif new.accepted_value is not None:
            require(
                new.accepted_value.epoch == slot,
                f"acceptor would accept epoch {new.accepted_value.epoch} at {where}",
            )
        effects.writes.append((acceptor_key(owner, slot), encode_acceptor_slot(new)))

    def _write_decided(self, owner: str, value: EpochValue, effects: Effects) -> None:
        held = read_decided(self._storage, owner, value.epoch)
        require(
            held is None or held == value,
            f"acceptor would change the decided value of owner {owner} slot {value.epoch}",
        )
        effects.writes.append((decided_key(owner, value.epoch), encode_decided(value)))

    def _write_meta(self, owner: str, new: EpochMeta, effects: Effects) -> None:
        stored = read_epoch_meta(self._storage, owner)
        require(
            new.decided_slot >= stored.decided_slot and new.accepted_slot >= stored.accepted_slot,
            f"acceptor would lower the fence of owner {owner}: decided slot"
            f" {stored.decided_slot} -> {new.decided_slot}, accepted slot"
            f" {stored.accepted_slot} -> {new.accepted_slot}",
        )
        effects.writes.append((epoch_meta_key(owner), encode_epoch_meta(new)))

    @staticmethod
    def _step(name: str, op_id: str, owner: str, slot: int, ballot: Ballot) -> Event:
        return Event(
            name=name,
            owner=owner,
            request_id=op_id,
            epoch=slot,
            details=(("slot", slot), ("ballot", _text(ballot))),
        )


def _epoch(value: EpochValue) -> int:
    return value.epoch


def _text(ballot: Ballot) -> str:
    return f"{ballot.round}.{ballot.peer}"
