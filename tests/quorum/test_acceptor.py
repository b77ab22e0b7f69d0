"""The Paxos acceptor of owners' epochs on a MemoryStore, driven like the node driver drives it.

A "restart" is a new Acceptor over the same store after `MemoryStore.crash()`: whatever was
synced survives, whatever was only staged is gone, as with a killed process.
"""

from __future__ import annotations

from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.quorum.helpers import FirstReadMisses
from tokenvault.quorum.acceptor import Acceptor
from tokenvault.quorum.effects import Effects, Event
from tokenvault.quorum.invariants import InvariantViolation
from tokenvault.quorum.messages import (
    GENESIS,
    ZERO_BALLOT,
    Accept,
    Accepted,
    Ballot,
    Decide,
    Envelope,
    EpochQuery,
    EpochReport,
    EpochValue,
    InsertRequest,
    Mapping,
    Prepare,
    Promise,
)
from tokenvault.quorum.records import (
    ACCEPTOR_PREFIX,
    DECIDED_PREFIX,
    EPOCH_META_PREFIX,
    AcceptorSlot,
    EpochMeta,
    acceptor_key,
    decided_key,
    epoch_meta_key,
    read_decided,
    read_epoch_meta,
)
from tokenvault.store.memory_store import MemoryStore

_T = TypeVar("_T")

OWNER = "acme"
OTHER_OWNER = "globex"
PEER = "r1"
PROPOSER = "c1"


def ballot(round_: int, peer: str = PROPOSER) -> Ballot:
    return Ballot(round=round_, peer=peer)


def value(epoch: int = 2, salt: str = "ab", by: str = "rotate-1") -> EpochValue:
    return EpochValue(epoch=epoch, salt=salt, requested_by=by, requested_at_s=1_700_000_000.5)


class Harness:
    """One acceptor on one store; `sync` says whether the driver fsyncs before it answers."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.acceptor = Acceptor(peer_id=PEER, storage=self.store)
        self.events: list[Event] = []
        self._ops = 0

    def deliver(
        self,
        message: EpochQuery | Prepare | Accept | Decide,
        *,
        source: str = PROPOSER,
        sync: bool = True,
    ) -> Effects:
        effects = self.acceptor.on_message(source, message)
        assert effects.replies == [] and effects.timers == []
        self.store.stage(effects.writes)
        if sync:
            self.store.sync()
        self.events.extend(effects.events)
        for envelope in effects.messages:
            assert envelope.source == PEER and envelope.destination == source
        return effects

    def op(self) -> str:
        self._ops += 1
        return f"op-{self._ops}"

    def prepare(self, b: Ballot, slot: int = 2, *, sync: bool = True) -> Promise:
        effects = self.deliver(
            Prepare(op_id=self.op(), owner=OWNER, slot=slot, ballot=b), sync=sync
        )
        return only(effects, Promise)

    def accept(self, b: Ballot, v: EpochValue | None = None, *, owner: str = OWNER) -> Accepted:
        v = v if v is not None else value()
        message = Accept(op_id=self.op(), owner=owner, slot=v.epoch, ballot=b, value=v)
        return only(self.deliver(message), Accepted)

    def decide(self, v: EpochValue) -> Effects:
        return self.deliver(Decide(op_id=self.op(), owner=OWNER, value=v))

    def query(self, owner: str = OWNER) -> EpochReport:
        return only(self.deliver(EpochQuery(op_id=self.op(), owner=owner)), EpochReport)

    def restart(self) -> int:
        """Crash the process: drop the unsynced writes; a new Acceptor over the same store."""
        lost = self.store.crash()
        self.acceptor = Acceptor(peer_id=PEER, storage=self.store)
        return lost

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]


def only(effects: Effects, kind: type[_T]) -> _T:
    (envelope,) = effects.messages
    assert isinstance(envelope, Envelope)
    assert isinstance(envelope.message, kind), type(envelope.message).__name__
    return envelope.message


# -- genesis and queries ------------------------------------------------------------------------


def test_a_fresh_owner_is_at_the_genesis_epoch() -> None:
    h = Harness()
    assert h.acceptor.active_epoch(OWNER) == GENESIS
    assert h.acceptor.meta(OWNER) == EpochMeta(decided_slot=1, accepted_slot=1)
    assert h.acceptor.slot_state(OWNER, 2) == AcceptorSlot()
    report = h.query()
    assert report == EpochReport(op_id="op-1", owner=OWNER, decided=GENESIS, accepted_slot=1)


def test_epoch_query_writes_nothing_and_reports_decided_and_accepted() -> None:
    h = Harness()
    h.prepare(ballot(1))
    h.accept(ballot(1), value(2))
    h.decide(value(2))
    h.accept(ballot(1), value(3, salt="cd"))  # slot 3 accepted, not decided
    before = h.store.durable_items()
    effects = h.deliver(EpochQuery(op_id="q", owner=OWNER), sync=False)
    assert effects.writes == [] and effects.events == []
    assert not h.store.has_unsynced()
    assert h.store.durable_items() == before
    report = only(effects, EpochReport)
    assert report.decided == value(2)
    assert report.accepted_slot == 3
    assert report.op_id == "q" and report.owner == OWNER


def test_other_owners_are_independent() -> None:
    h = Harness()
    h.accept(ballot(1), value(2))
    h.decide(value(2))
    assert h.query(OTHER_OWNER).decided == GENESIS
    assert h.query(OTHER_OWNER).accepted_slot == 1
    assert h.acceptor.meta(OTHER_OWNER).fence_slot == 1
    assert h.acceptor.meta(OWNER).fence_slot == 2


def test_only_acceptor_messages_are_served() -> None:
    h = Harness()
    insert = InsertRequest(
        op_id="i",
        owner=OWNER,
        mappings=(Mapping(owner=OWNER, token="t", value="v", field="f", epoch=1),),
    )
    with pytest.raises(AssertionError):
        h.acceptor.on_message(PROPOSER, insert)


# -- promises -----------------------------------------------------------------------------------


def test_prepare_is_promised_and_persisted_before_the_answer() -> None:
    h = Harness()
    effects = h.deliver(Prepare(op_id="p", owner=OWNER, slot=2, ballot=ballot(3)), sync=False)
    assert effects.writes and all(key == acceptor_key(OWNER, 2) for key, _ in effects.writes)
    promise = only(effects, Promise)
    assert promise == Promise(
        op_id="p",
        owner=OWNER,
        slot=2,
        ballot=ballot(3),
        granted=True,
        promised=ballot(3),
        accepted_ballot=None,
        accepted_value=None,
        decided=None,
    )
    (event,) = effects.events
    assert event.name == "paxos_promise" and event.request_id == "p" and event.owner == OWNER
    assert dict(event.details) == {"slot": 2, "ballot": "3.c1"}
    assert h.store.has_unsynced()  # the driver must sync before sending the promise
    assert h.acceptor.slot_state(OWNER, 2).promised == ballot(3)


def test_same_ballot_again_is_granted_without_a_write() -> None:
    h = Harness()
    h.prepare(ballot(2))
    effects = h.deliver(Prepare(op_id="again", owner=OWNER, slot=2, ballot=ballot(2)))
    assert effects.writes == []
    assert only(effects, Promise).granted is True


def test_lower_ballot_is_refused_and_changes_nothing() -> None:
    h = Harness()
    h.prepare(ballot(5, "c2"))
    for lower in (ballot(4, "c9"), ballot(5, "c1"), ballot(1)):
        effects = h.deliver(Prepare(op_id="low", owner=OWNER, slot=2, ballot=lower))
        assert effects.writes == []
        promise = only(effects, Promise)
        assert promise.granted is False
        assert promise.ballot == lower
        assert promise.promised == ballot(5, "c2")
        assert promise.decided is None
        (event,) = effects.events
        assert event.name == "paxos_reject_prepare"
    assert h.acceptor.slot_state(OWNER, 2).promised == ballot(5, "c2")


def test_higher_ballot_raises_the_promise_and_slots_are_independent() -> None:
    h = Harness()
    assert h.prepare(ballot(1)).granted
    assert h.prepare(ballot(1, "c2")).granted  # same round, higher peer id
    assert h.prepare(ballot(2)).granted
    assert h.acceptor.slot_state(OWNER, 2).promised == ballot(2)
    assert h.prepare(ballot(1), slot=3).granted  # another slot has its own promise
    assert h.acceptor.slot_state(OWNER, 3).promised == ballot(1)
    assert h.acceptor.slot_state(OWNER, 2).promised == ballot(2)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["prepare", "accept", "restart"]),
            st.integers(1, 6),
            st.sampled_from(["c1", "c2", "c3"]),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_promise_never_decreases_and_grants_follow_the_rules(
    steps: list[tuple[str, int, str]],
) -> None:
    h = Harness()
    promised = ZERO_BALLOT
    for kind, round_, peer in steps:
        b = ballot(round_, peer)
        if kind == "restart":
            assert h.restart() == 0  # every answer was synced before it left
        elif kind == "prepare":
            promise = h.prepare(b)
            assert promise.granted is (b >= promised)
            promised = max(promised, b)
            assert promise.promised == promised
        else:
            accepted = h.accept(b)
            assert accepted.granted is (b >= promised)
            promised = max(promised, b)
            assert accepted.promised == promised
        assert h.acceptor.slot_state(OWNER, 2).promised == promised


def test_a_synced_promise_survives_a_restart() -> None:
    h = Harness()
    assert h.prepare(ballot(7, "c2")).granted
    assert h.restart() == 0
    assert h.acceptor.slot_state(OWNER, 2).promised == ballot(7, "c2")
    assert h.prepare(ballot(6, "c3")).granted is False
    refused = h.accept(ballot(7, "c1"))
    assert refused.granted is False and refused.promised == ballot(7, "c2")
    assert h.acceptor.slot_state(OWNER, 2).accepted_value is None


def test_an_unsynced_promise_is_lost_in_a_crash_so_it_must_not_have_been_sent() -> None:
    """Why persist-before-send matters: had the promise left before the sync, the restarted
    acceptor would grant a lower ballot it had promised to refuse."""
    h = Harness()
    assert h.prepare(ballot(2), sync=True).granted
    assert h.prepare(ballot(9, "c2"), sync=False).granted
    assert h.restart() == 1
    # the synced promise survived; the unsynced one is gone
    assert h.acceptor.slot_state(OWNER, 2).promised == ballot(2)
    assert h.prepare(ballot(3)).granted
    assert h.prepare(ballot(1)).granted is False


# -- accepting ----------------------------------------------------------------------------------


def test_accept_at_the_promised_ballot_records_value_and_ballot() -> None:
    h = Harness()
    h.prepare(ballot(2))
    effects = h.deliver(Accept(op_id="a", owner=OWNER, slot=2, ballot=ballot(2), value=value()))
    accepted = only(effects, Accepted)
    assert accepted == Accepted(
        op_id="a",
        owner=OWNER,
        slot=2,
        ballot=ballot(2),
        granted=True,
        promised=ballot(2),
        decided=None,
    )
    keys = {key for key, _ in effects.writes}
    assert keys == {acceptor_key(OWNER, 2), epoch_meta_key(OWNER)}
    (event,) = effects.events
    assert event.name == "paxos_accept" and dict(event.details) == {"slot": 2, "ballot": "2.c1"}
    state = h.acceptor.slot_state(OWNER, 2)
    assert state == AcceptorSlot(
        promised=ballot(2), accepted_ballot=ballot(2), accepted_value=value()
    )
    # a later prepare reports it, with the ballot it was accepted at
    promise = h.prepare(ballot(3, "c2"))
    assert promise.granted
    assert promise.accepted_ballot == ballot(2) and promise.accepted_value == value()
    # the accepted value survives a restart
    h.restart()
    assert h.acceptor.slot_state(OWNER, 2).accepted_value == value()


def test_accept_above_the_promise_raises_it() -> None:
    h = Harness()
    h.prepare(ballot(1))
    assert h.accept(ballot(4, "c2")).granted
    assert h.acceptor.slot_state(OWNER, 2).promised == ballot(4, "c2")
    assert h.prepare(ballot(3, "c9")).granted is False


def test_accept_below_the_promise_is_refused_and_writes_nothing() -> None:
    h = Harness()
    h.prepare(ballot(5))
    effects = h.deliver(Accept(op_id="a", owner=OWNER, slot=2, ballot=ballot(4), value=value()))
    assert effects.writes == []
    refused = only(effects, Accepted)
    assert refused.granted is False and refused.promised == ballot(5) and refused.decided is None
    (event,) = effects.events
    assert event.name == "paxos_reject_accept"
    assert h.acceptor.slot_state(OWNER, 2).accepted_value is None
    assert h.acceptor.meta(OWNER).accepted_slot == 1


def test_a_higher_ballot_replaces_the_accepted_value() -> None:
    h = Harness()
    first, second = value(salt="01", by="a"), value(salt="02", by="b")
    assert h.accept(ballot(1), first).granted
    assert h.accept(ballot(2, "c2"), second).granted
    assert h.accept(ballot(1, "c3"), first).granted is False
    state = h.acceptor.slot_state(OWNER, 2)
    assert state.accepted_ballot == ballot(2, "c2") and state.accepted_value == second


def test_fence_rises_on_accept_and_never_falls() -> None:
    h = Harness()
    assert h.acceptor.meta(OWNER).fence_slot == 1
    h.prepare(ballot(1), slot=3)
    assert h.acceptor.meta(OWNER).fence_slot == 1  # a promise alone does not fence
    h.accept(ballot(1), value(3))
    assert h.acceptor.meta(OWNER) == EpochMeta(decided_slot=1, accepted_slot=3)
    # accepting in a lower slot later leaves the meta record alone
    effects = h.deliver(Accept(op_id="a2", owner=OWNER, slot=2, ballot=ballot(1), value=value(2)))
    assert only(effects, Accepted).granted
    assert {key for key, _ in effects.writes} == {acceptor_key(OWNER, 2)}
    assert h.acceptor.meta(OWNER).fence_slot == 3
    h.restart()
    assert read_epoch_meta(h.store, OWNER).accepted_slot == 3


# -- deciding -----------------------------------------------------------------------------------


def test_decide_persists_the_value_and_the_meta() -> None:
    h = Harness()
    effects = h.deliver(Decide(op_id="d", owner=OWNER, value=value()), sync=False)
    assert {key for key, _ in effects.writes} == {decided_key(OWNER, 2), epoch_meta_key(OWNER)}
    assert effects.messages == []
    (event,) = effects.events
    assert event.name == "epoch_learned" and event.request_id == "d"
    assert event.epoch == 2 and dict(event.details) == {"requested_by": "rotate-1"}
    h.store.sync()
    h.restart()
    assert h.acceptor.active_epoch(OWNER) == value()
    assert read_decided(h.store, OWNER, 2) == value()
    assert h.acceptor.meta(OWNER) == EpochMeta(decided_slot=2, accepted_slot=1)
    assert h.acceptor.meta(OWNER).fence_slot == 2  # deciding fences too
    assert h.query().decided == value()


def test_an_unsynced_decide_is_lost_in_a_crash() -> None:
    h = Harness()
    h.deliver(Decide(op_id="d", owner=OWNER, value=value()), sync=False)
    assert h.acceptor.active_epoch(OWNER) == value()  # staged writes are visible...
    assert h.restart() == 2
    assert h.acceptor.active_epoch(OWNER) == GENESIS  # ...but not durable


def test_the_same_decide_again_changes_nothing() -> None:
    h = Harness()
    h.decide(value())
    effects = h.decide(value())
    assert effects.is_empty()
    assert h.named("paxos_disagreement") == []


def test_a_disagreeing_decide_is_an_alarm_and_changes_nothing() -> None:
    h = Harness()
    h.decide(value(salt="aa", by="first"))
    before = h.store.durable_items()
    effects = h.deliver(Decide(op_id="d2", owner=OWNER, value=value(salt="bb", by="second")))
    assert effects.writes == [] and effects.messages == []
    (alarm,) = effects.events
    assert alarm.name == "paxos_disagreement"
    assert alarm.owner == OWNER and alarm.request_id == "d2"
    assert dict(alarm.details) == {"slot": 2}
    assert h.store.durable_items() == before
    assert h.acceptor.active_epoch(OWNER) == value(salt="aa", by="first")


def test_decide_of_a_lower_slot_keeps_the_highest_active() -> None:
    h = Harness()
    h.decide(value(3, salt="03"))
    effects = h.decide(value(2, salt="02"))
    assert {key for key, _ in effects.writes} == {decided_key(OWNER, 2)}
    assert h.acceptor.active_epoch(OWNER).epoch == 3
    assert h.acceptor.meta(OWNER).decided_slot == 3
    assert read_decided(h.store, OWNER, 2) == value(2, salt="02")


def test_prepare_and_accept_on_a_decided_slot_answer_with_the_decided_value() -> None:
    h = Harness()
    h.prepare(ballot(1))
    h.decide(value())
    promise = h.prepare(ballot(9, "c2"))
    assert promise.granted is False and promise.decided == value()
    assert h.acceptor.slot_state(OWNER, 2).promised == ballot(1)  # not raised
    other = value(salt="ff", by="late")
    effects = h.deliver(Accept(op_id="a", owner=OWNER, slot=2, ballot=ballot(9, "c2"), value=other))
    assert effects.writes == []
    accepted = only(effects, Accepted)
    assert accepted.granted is False and accepted.decided == value()
    assert h.acceptor.slot_state(OWNER, 2).accepted_value is None
    assert h.acceptor.active_epoch(OWNER) == value()
    # the next slot is open
    assert h.prepare(ballot(1), slot=3).granted


# -- invariants: asserted at every record write, never tripped by a peer -------------------------


def lying_about(h: Harness, prefix: bytes) -> None:
    """From now on the acceptor's handlers read a lie: a record under prefix looks absent."""
    h.acceptor = Acceptor(peer_id=PEER, storage=FirstReadMisses(h.store, prefix))


def test_a_handler_that_would_lower_the_promise_is_stopped_at_the_write() -> None:
    h = Harness()
    h.prepare(ballot(5, "c2"))
    lying_about(h, ACCEPTOR_PREFIX)
    before = h.store.durable_items()
    with pytest.raises(InvariantViolation, match="lower its promise: owner acme slot 2") as raised:
        h.prepare(ballot(1))
    assert "ballot 1.c1 below 5.c2" in str(raised.value)
    assert h.store.durable_items() == before and not h.store.has_unsynced()


def test_a_handler_that_would_forget_an_accepted_value_is_stopped_at_the_write() -> None:
    h = Harness()
    h.accept(ballot(2))
    lying_about(h, ACCEPTOR_PREFIX)
    with pytest.raises(InvariantViolation, match="forget the value it accepted at owner acme"):
        h.prepare(ballot(3))  # a higher promise, but it would drop the accepted value


def test_a_handler_that_would_change_the_value_accepted_at_a_ballot_is_stopped() -> None:
    h = Harness()
    h.accept(ballot(2), value(salt="aaaa1111"))
    lying_about(h, ACCEPTOR_PREFIX)
    with pytest.raises(InvariantViolation) as raised:
        h.accept(ballot(2), value(salt="bbbb2222"))
    message = str(raised.value)
    assert message == "acceptor would change the value accepted at owner acme slot 2, ballot 2.c1"
    assert h.acceptor.slot_state(OWNER, 2).accepted_value == value(salt="aaaa1111")


def test_accepting_a_value_of_another_epoch_is_stopped_at_the_write() -> None:
    h = Harness()
    bad = AcceptorSlot(promised=ballot(1), accepted_ballot=ballot(1), accepted_value=value(3))
    with pytest.raises(InvariantViolation, match="accept epoch 3 at owner acme slot 2"):
        h.acceptor._write_slot(OWNER, 2, bad, Effects())


def test_a_handler_that_would_change_a_decided_value_is_stopped_at_the_write() -> None:
    h = Harness()
    h.decide(value(salt="aa", by="first"))
    lying_about(h, DECIDED_PREFIX)
    with pytest.raises(InvariantViolation) as raised:
        h.decide(value(salt="bb", by="second"))
    assert str(raised.value) == "acceptor would change the decided value of owner acme slot 2"
    assert h.acceptor.active_epoch(OWNER) == value(salt="aa", by="first")


def test_a_handler_that_would_lower_the_fence_is_stopped_at_the_write() -> None:
    h = Harness()
    h.accept(ballot(1), value(3, salt="03"))  # accepted in slot 3: fence 3
    lying_about(h, EPOCH_META_PREFIX)
    with pytest.raises(InvariantViolation, match="lower the fence of owner acme") as raised:
        h.accept(ballot(1), value(2, salt="02"))
    assert "accepted slot 3 -> 2" in str(raised.value)


def test_a_second_value_at_an_accepted_ballot_is_refused_as_an_alarm() -> None:
    """The proposer's misbehaviour, not ours: refused and reported, never asserted."""
    h = Harness()
    h.accept(ballot(2), value(salt="aa"))
    effects = h.deliver(
        Accept(op_id="a2", owner=OWNER, slot=2, ballot=ballot(2), value=value(salt="bb"))
    )
    assert effects.writes == []
    refused = only(effects, Accepted)
    assert refused.granted is False and refused.promised == ballot(2)
    alarm, step = effects.events
    assert alarm.name == "paxos_disagreement" and alarm.request_id == "a2"
    assert dict(alarm.details) == {"slot": 2, "found_by": "accept"}
    assert step.name == "paxos_reject_accept"
    assert h.acceptor.slot_state(OWNER, 2).accepted_value == value(salt="aa")
    assert h.accept(ballot(2), value(salt="aa")).granted  # the same value again is fine
    assert h.accept(ballot(3), value(salt="bb")).granted  # and a higher ballot may change it


acceptor_messages = st.one_of(
    st.builds(
        lambda slot, round_, peer: Prepare(
            op_id="p", owner=OWNER, slot=slot, ballot=ballot(round_, peer)
        ),
        st.integers(2, 3),
        st.integers(1, 3),
        st.sampled_from(["c1", "c2"]),
    ),
    st.builds(
        lambda slot, round_, peer, salt: Accept(
            op_id="a", owner=OWNER, slot=slot, ballot=ballot(round_, peer), value=value(slot, salt)
        ),
        st.integers(2, 3),
        st.integers(1, 3),
        st.sampled_from(["c1", "c2"]),
        st.sampled_from(["aa", "bb"]),
    ),
    st.builds(
        lambda slot, salt: Decide(op_id="d", owner=OWNER, value=value(slot, salt)),
        st.integers(2, 3),
        st.sampled_from(["aa", "bb"]),
    ),
    st.just(EpochQuery(op_id="q", owner=OWNER)),
)


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(st.tuples(acceptor_messages, st.booleans()), max_size=30))
def test_no_sequence_of_peer_messages_trips_an_invariant(
    messages: list[tuple[EpochQuery | Prepare | Accept | Decide, bool]],
) -> None:
    """Conflicting proposers, contradicting Decides and restarts are all answered (refused at
    worst); every write passes the checks the acceptor makes against the stored record."""
    h = Harness()
    for message, restart in messages:
        h.deliver(message)  # an InvariantViolation would fail the test here
        if restart:
            h.restart()
