"""The coordinator core with three replica cores on MemoryStores, messages delivered by hand."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.quorum.helpers import SEALER
from tokenvault.quorum.coordinator import Coordinator, CoordinatorLimits, _Phase
from tokenvault.quorum.effects import (
    ClientReply,
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
    ReadReply,
    ReadRequest,
)
from tokenvault.quorum.placement import OwnerPlacement
from tokenvault.quorum.quorum_config import QuorumConfig
from tokenvault.quorum.records import encode_mapping, mapping_key
from tokenvault.quorum.replica import Replica
from tokenvault.store.memory_store import MemoryStore

OWNER = "acme"
COORD = "coord"
REPLICAS = ("r1", "r2", "r3")
N3_W2_R2 = QuorumConfig(replica_count=3, write_quorum=2, read_quorum=2)
LIMITS = CoordinatorLimits(operation_timeout_s=2.5, resend_interval_s=1.0)


def mapping(token: str = "tok_A", value: str = "secret-A") -> Mapping:
    return Mapping(owner=OWNER, token=token, value=value, field="card", epoch=1)


class Network:
    """A coordinator and its replicas; the test decides what is delivered, dropped and fired.

    Delivering to a replica runs the replica core, stages its writes, syncs the store and only
    then queues the replica's replies (persist before send), as the node driver does. A replica
    in `down` neither receives nor answers: messages to or from it are dropped on delivery.
    """

    def __init__(
        self,
        quorum: QuorumConfig = N3_W2_R2,
        limits: CoordinatorLimits = LIMITS,
        replicas: tuple[str, ...] = REPLICAS,
        placement: OwnerPlacement | None = None,  # of `replicas` at version 0 when None
    ) -> None:
        self.quorum = quorum
        self.placement = placement or OwnerPlacement.stable(replicas)
        replicas = self.placement.replicas
        self.replica_ids = replicas
        self.stores = {r: MemoryStore() for r in replicas}
        self.replicas = {
            r: Replica(peer_id=r, storage=self.stores[r], sealer=SEALER) for r in replicas
        }
        self.coordinator = Coordinator(peer_id=COORD, quorum=quorum, limits=limits)
        self.pending: list[Envelope] = []
        self.timers: list[Timer] = []
        self.replies: list[ClientReply] = []
        self.events: list[Event] = []
        self.sent: list[Envelope] = []  # every envelope the coordinator ever sent
        self.down: set[str] = set()
        self.dropped = 0
        self.now = 0.0

    # -- inputs -------------------------------------------------------------------------------

    def absorb(self, effects: Effects) -> Effects:
        assert effects.writes == [], "the coordinator never writes"
        self.timers.extend(effects.timers)
        self.pending.extend(effects.messages)
        self.sent.extend(effects.messages)
        self.replies.extend(effects.replies)
        self.events.extend(effects.events)
        for envelope in effects.messages:
            assert envelope.source == COORD
            assert envelope.destination in self.replica_ids
        return effects

    def write(self, op_id: str, *mappings: Mapping) -> Effects:
        return self.absorb(
            self.coordinator.start_write(
                op_id=op_id,
                owner=OWNER,
                placement=self.placement,
                mappings=mappings,
                now=self.now,
            )
        )

    def read(self, op_id: str, *tokens: str) -> Effects:
        return self.absorb(
            self.coordinator.start_read(
                op_id=op_id,
                owner=OWNER,
                placement=self.placement,
                tokens=tokens,
                now=self.now,
            )
        )

    def deliver(self, envelope: Envelope) -> Effects | None:
        """Deliver one pending envelope; returns the coordinator's Effects when it was the
        destination, None otherwise (also when the envelope was dropped)."""
        self.pending.remove(envelope)
        if envelope.source in self.down or envelope.destination in self.down:
            self.dropped += 1
            return None
        if envelope.destination == COORD:
            return self.absorb(self.coordinator.on_message(envelope.source, envelope.message))
        replica = envelope.destination
        assert envelope.source == COORD
        effects = self.replicas[replica].on_message(envelope.source, envelope.message)
        assert effects.replies == [] and effects.timers == []
        store = self.stores[replica]
        store.stage(effects.writes)
        store.sync()
        self.events.extend(effects.events)
        for out in effects.messages:
            assert out.source == replica and out.destination == COORD
        self.pending.extend(effects.messages)
        return None

    def deliver_where(self, predicate: Callable[[Envelope], bool]) -> int:
        """Deliver every pending envelope matching predicate (once; not what they cause)."""
        chosen = [e for e in self.pending if predicate(e)]
        for envelope in chosen:
            self.deliver(envelope)
        return len(chosen)

    def to(self, replica: str) -> Callable[[Envelope], bool]:
        return lambda e: e.destination == replica

    def replies_from(self, replica: str) -> Callable[[Envelope], bool]:
        return lambda e: e.source == replica and e.destination == COORD

    def exchange(self, replica: str) -> None:
        """Deliver what is pending for replica, then its answers to the coordinator."""
        self.deliver_where(self.to(replica))
        self.deliver_where(self.replies_from(replica))

    def run(self) -> None:
        """Deliver until nothing is pending (timers are not fired)."""
        while self.pending:
            self.deliver(self.pending[0])

    def fire(self, kind: TimerKind, op_id: str) -> Effects:
        timer = next(t for t in self.timers if t.kind is kind and t.op_id == op_id)
        self.timers.remove(timer)
        self.now = max(self.now, timer.due)
        return self.absorb(self.coordinator.on_timer(timer, self.now))

    # -- observations -------------------------------------------------------------------------

    def durable_holders(self, m: Mapping) -> set[str]:
        key = mapping_key(m.owner, m.token)
        holders = set()
        for replica, store in self.stores.items():
            durable = dict(store.durable_items(key))
            raw = durable.get(key)
            if (
                raw is not None
                and Replica(peer_id=replica, storage=store, sealer=SEALER).verified(
                    m.owner, m.token, raw
                )
                == m
            ):
                holders.add(replica)
        return holders

    def put_durably(self, replica: str, *mappings: Mapping) -> None:
        store = self.stores[replica]
        store.stage([(mapping_key(m.owner, m.token), encode_mapping(SEALER, m)) for m in mappings])
        store.sync()

    def replies_for(self, op_id: str) -> list[ClientReply]:
        return [r for r in self.replies if r.op_id == op_id]

    def events_named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]


def _is_for(replica: str, envelope: Envelope) -> bool:
    return envelope.destination == replica


def messages_of(envelopes: Iterable[Envelope], kind: type) -> list[Envelope]:
    return [e for e in envelopes if isinstance(e.message, kind)]


# -- writes ------------------------------------------------------------------------------------


def test_write_fans_out_and_arms_both_timers() -> None:
    net = Network()
    net.now = 10.0
    effects = net.write("w1", mapping())
    assert sorted(e.destination for e in effects.messages) == list(REPLICAS)
    for envelope in effects.messages:
        assert isinstance(envelope.message, InsertRequest)
        assert envelope.message.mappings == (mapping(),)
        assert envelope.message.op_id == "w1"
    kinds = {t.kind: t.due for t in effects.timers}
    assert kinds == {TimerKind.DEADLINE: 12.5, TimerKind.RESEND: 11.0}
    assert effects.replies == []
    assert net.coordinator.operations_in_flight() == 1


def test_write_succeeds_after_exactly_w_acks() -> None:
    net = Network()
    net.write("w1", mapping())
    net.exchange("r1")
    assert net.replies == []
    assert net.coordinator.operations_in_flight() == 1
    # the second replica stores it, but its ack has not arrived yet: still no answer
    net.deliver_where(net.to("r2"))
    assert net.replies == []
    net.deliver_where(net.replies_from("r2"))
    assert net.replies == [WriteDone(op_id="w1", owner=OWNER, failure=None)]
    assert net.durable_holders(mapping()) == {"r1", "r2"}
    # answered, the write lingers to reach the third replica (or leave a hint for it)
    assert net.coordinator.operations_in_flight() == 1
    # the third answer arrives late: it completes the write silently, no second reply
    net.deliver_where(net.to("r3"))
    (late,) = [e for e in net.pending if e.source == "r3"]
    late_effects = net.deliver(late)
    assert late_effects is not None and late_effects.is_empty()
    assert len(net.replies) == 1
    assert net.coordinator.operations_in_flight() == 0


def test_write_of_several_mappings_needs_w_acks_for_each() -> None:
    net = Network()
    a, b = mapping("tok_A", "va"), mapping("tok_B", "vb")
    net.put_durably("r2", b)  # r2 already holds b only
    net.write("w1", a, b)
    net.exchange("r1")
    assert net.replies == []
    net.deliver_where(net.to("r2"))
    (answer,) = [e for e in net.pending if e.source == "r2"]
    assert isinstance(answer.message, InsertReply)
    assert answer.message.tokens == ("tok_A", "tok_B")
    assert answer.message.outcomes == (InsertOutcome.STORED, InsertOutcome.IDENTICAL)
    net.deliver(answer)
    assert net.replies_for("w1") == [WriteDone(op_id="w1", owner=OWNER, failure=None)]
    assert net.durable_holders(a) == net.durable_holders(b) == {"r1", "r2"}


def test_duplicate_mappings_in_one_write_are_sent_once() -> None:
    net = Network()
    effects = net.write("w1", mapping(), mapping())
    for envelope in effects.messages:
        assert isinstance(envelope.message, InsertRequest)
        assert envelope.message.mappings == (mapping(),)


def test_write_with_two_replicas_unreachable_times_out() -> None:
    net = Network()
    net.down = {"r2", "r3"}
    net.write("w1", mapping())
    net.run()
    assert net.replies == []
    net.fire(TimerKind.RESEND, "w1")
    net.run()
    assert net.replies == []
    assert net.events_named("quorum_failed") == []
    effects = net.fire(TimerKind.DEADLINE, "w1")
    assert effects.replies == [WriteDone(op_id="w1", owner=OWNER, failure=Failure.QUORUM_TIMEOUT)]
    (failed,) = net.events_named("quorum_failed")
    assert failed.owner == OWNER and failed.request_id == "w1"
    assert dict(failed.details) == {"phase": "writing", "answered": 1}
    assert net.coordinator.operations_in_flight() == 0
    # once finished, its timers do nothing
    assert net.fire(TimerKind.RESEND, "w1").is_empty()


def test_write_resend_goes_only_to_replicas_that_did_not_answer() -> None:
    net = Network()
    net.down = {"r2", "r3"}
    net.write("w1", mapping())
    net.run()
    assert net.dropped == 2
    before = len(net.sent)
    effects = net.fire(TimerKind.RESEND, "w1")
    resent = net.sent[before:]
    assert sorted(e.destination for e in resent) == ["r2", "r3"]
    assert all(isinstance(e.message, InsertRequest) for e in resent)
    assert [t.kind for t in effects.timers] == [TimerKind.RESEND]
    assert effects.timers[0].due == pytest.approx(net.now + LIMITS.resend_interval_s)
    # r2 comes back: the resent insert reaches it and the write succeeds
    net.down = {"r3"}
    net.run()
    assert net.replies_for("w1") == [WriteDone(op_id="w1", owner=OWNER, failure=None)]
    # answered, it no longer resends: the replica that lags gets a hint at the deadline
    before = len(net.sent)
    assert net.fire(TimerKind.RESEND, "w1").is_empty()
    assert net.sent[before:] == []
    assert not [t for t in net.timers if t.kind is TimerKind.RESEND and t.op_id == "w1"]
    # at the deadline the lingering write ends: no second reply, no more timers
    net.fire(TimerKind.DEADLINE, "w1")
    assert net.replies_for("w1") == [WriteDone(op_id="w1", owner=OWNER, failure=None)]
    assert net.coordinator.operations_in_flight() == 0


def test_read_resend_goes_only_to_replicas_that_did_not_answer() -> None:
    net = Network()
    net.down = {"r2", "r3"}
    net.read("q1", "tok_A")
    net.run()
    before = len(net.sent)
    net.fire(TimerKind.RESEND, "q1")
    resent = net.sent[before:]
    assert sorted(e.destination for e in resent) == ["r2", "r3"]
    assert all(isinstance(e.message, ReadRequest) for e in resent)
    net.down = set()
    net.exchange("r3")
    assert net.replies_for("q1") == [
        ReadDone(op_id="q1", owner=OWNER, mappings=(None,), failure=None)
    ]


def test_conflict_from_a_replica_fails_the_write() -> None:
    net = Network()
    net.put_durably("r2", mapping(value="a different value"))
    net.write("w1", mapping())
    net.exchange("r1")
    net.exchange("r2")
    assert net.replies == [WriteDone(op_id="w1", owner=OWNER, failure=Failure.INTEGRITY_CONFLICT)]
    (alarm,) = net.events_named("integrity_conflict")
    assert alarm.request_id == "w1" and dict(alarm.details) == {"replica": "r2"}
    assert len(net.events_named("mapping_conflict")) == 1
    # the conflicting replica was not overwritten
    assert net.durable_holders(mapping(value="a different value")) == {"r2"}
    net.exchange("r3")
    assert len(net.replies) == 1


def test_coordinator_ignores_read_replies_to_a_write() -> None:
    net = Network()
    net.write("w1", mapping())
    stray = ReadReply(op_id="w1", owner=OWNER, tokens=("tok_A",), mappings=(mapping(),))
    assert net.coordinator.on_message("r1", stray).is_empty()
    assert net.coordinator.on_message("r2", stray).is_empty()
    assert net.coordinator.operations_in_flight() == 1


def test_answers_from_peers_outside_the_preference_list_are_ignored() -> None:
    net = Network()
    net.write("w1", mapping())
    ack = InsertReply(op_id="w1", owner=OWNER, tokens=("tok_A",), outcomes=(InsertOutcome.STORED,))
    assert net.coordinator.on_message("r9", ack).is_empty()
    assert net.coordinator.on_message("r8", ack).is_empty()
    assert net.coordinator.operations_in_flight() == 1


# -- reads -------------------------------------------------------------------------------------


def test_read_after_write_finds_the_mapping() -> None:
    net = Network()
    net.write("w1", mapping())
    net.run()
    assert net.replies_for("w1") == [WriteDone(op_id="w1", owner=OWNER, failure=None)]
    net.read("q1", "tok_A", "tok_missing")
    net.run()
    assert net.replies_for("q1") == [
        ReadDone(op_id="q1", owner=OWNER, mappings=(mapping(), None), failure=None)
    ]


def test_read_of_absent_token_is_none_and_repairs_nothing() -> None:
    net = Network()
    net.read("q1", "tok_nothing")
    sent_reads = len(net.sent)
    net.run()
    assert net.replies == [ReadDone(op_id="q1", owner=OWNER, mappings=(None,), failure=None)]
    assert len(net.sent) == sent_reads  # no insert was ever sent
    assert net.events_named("read_repair") == []


def test_read_decides_on_r_answers() -> None:
    net = Network()
    for r in REPLICAS:
        net.put_durably(r, mapping())
    net.read("q1", "tok_A")
    assert {e.destination for e in net.pending} == {"r1", "r2"}  # R of them, in order
    net.fire(TimerKind.HEDGE, "q1")  # undecided after read_hedge_s: r3 is asked too
    net.exchange("r3")
    assert net.replies == []
    net.exchange("r1")
    assert net.replies == [ReadDone(op_id="q1", owner=OWNER, mappings=(mapping(),), failure=None)]
    assert net.events_named("read_repair") == []


def test_blocking_read_repair_answers_only_after_a_second_durable_ack() -> None:
    net = Network()
    net.put_durably("r1", mapping())  # a write that reached only r1
    net.down = {"r3"}
    net.read("q1", "tok_A")
    net.exchange("r1")
    net.deliver_where(net.to("r2"))
    before = len(net.sent)
    net.deliver_where(net.replies_from("r2"))
    # R answers are in: r1 holds it, r2 does not; repair before answering
    assert net.replies == []
    repairs = net.sent[before:]
    assert sorted(e.destination for e in repairs) == ["r2", "r3"]
    for envelope in repairs:
        assert isinstance(envelope.message, InsertRequest)
        assert envelope.message.mappings == (mapping(),)
    (repair_event,) = net.events_named("read_repair")
    assert dict(repair_event.details) == {"mappings": 1, "blocking": 1}
    # r2 stores it (durably) but its ack is still on the way: no answer yet
    net.deliver_where(net.to("r2"))
    assert "r2" in net.durable_holders(mapping())
    assert net.replies == []
    net.deliver_where(net.replies_from("r2"))
    assert net.replies == [ReadDone(op_id="q1", owner=OWNER, mappings=(mapping(),), failure=None)]
    assert net.durable_holders(mapping()) == {"r1", "r2"}


def test_blocking_read_repair_times_out_without_a_second_holder() -> None:
    net = Network()
    net.put_durably("r1", mapping())
    net.down = {"r3"}
    net.read("q1", "tok_A")
    net.exchange("r1")
    net.exchange("r2")
    net.down = {"r2", "r3"}
    net.run()  # the repair inserts are lost
    assert net.replies == []
    before = len(net.sent)
    net.fire(TimerKind.RESEND, "q1")
    assert sorted(e.destination for e in net.sent[before:]) == ["r2", "r3"]
    assert all(isinstance(e.message, InsertRequest) for e in net.sent[before:])
    net.run()
    net.fire(TimerKind.DEADLINE, "q1")
    assert net.replies == [
        ReadDone(op_id="q1", owner=OWNER, mappings=(), failure=Failure.QUORUM_TIMEOUT)
    ]
    (failed,) = net.events_named("quorum_failed")
    assert dict(failed.details)["phase"] == "repairing"


def test_late_read_answer_counts_as_holder_and_triggers_background_repair() -> None:
    net = Network()
    net.put_durably("r1", mapping())
    net.put_durably("r3", mapping())
    net.read("q1", "tok_A")
    net.fire(TimerKind.HEDGE, "q1")  # r3 is asked too
    net.exchange("r1")
    net.exchange("r2")  # R answers: only r1 holds it -> blocking repair to r2 and r3
    assert net.replies == []
    net.deliver_where(lambda e: e.destination == "r3" and isinstance(e.message, ReadRequest))
    before = len(net.sent)
    net.deliver_where(net.replies_from("r3"))  # r3's late read answer: it holds the mapping
    assert net.replies == [ReadDone(op_id="q1", owner=OWNER, mappings=(mapping(),), failure=None)]
    background = net.sent[before:]
    assert [e.destination for e in background] == ["r2"]
    assert isinstance(background[0].message, InsertRequest)
    assert background[0].message.mappings == (mapping(),)
    (_, background_event) = net.events_named("read_repair")
    assert dict(background_event.details) == {"replicas": 1, "blocking": 0}


def test_background_repair_sends_inserts_to_responders_that_lacked_it() -> None:
    quorum = QuorumConfig(replica_count=3, write_quorum=2, read_quorum=3)
    net = Network(quorum=quorum)
    net.put_durably("r1", mapping())
    net.put_durably("r2", mapping())
    net.read("q1", "tok_A")
    before = len(net.sent)
    net.exchange("r1")
    net.exchange("r2")
    net.exchange("r3")
    assert net.replies == [ReadDone(op_id="q1", owner=OWNER, mappings=(mapping(),), failure=None)]
    background = [e for e in net.sent[before:] if isinstance(e.message, InsertRequest)]
    assert [e.destination for e in background] == ["r3"]
    (event,) = net.events_named("read_repair")
    assert dict(event.details) == {"replicas": 1, "blocking": 0}
    net.run()
    assert net.durable_holders(mapping()) == {"r1", "r2", "r3"}
    assert len(net.replies) == 1


def test_read_sees_conflicting_replicas_as_integrity_conflict() -> None:
    net = Network()
    net.put_durably("r1", mapping(value="one"))
    net.put_durably("r2", mapping(value="two"))
    net.read("q1", "tok_A")
    net.exchange("r1")
    net.exchange("r2")
    assert net.replies == [
        ReadDone(op_id="q1", owner=OWNER, mappings=(), failure=Failure.INTEGRITY_CONFLICT)
    ]
    assert len(net.events_named("integrity_conflict")) == 1


def test_repair_insert_meeting_a_conflict_fails_the_read() -> None:
    net = Network()
    net.put_durably("r1", mapping(value="one"))
    net.put_durably("r3", mapping(value="three"))
    net.down = {"r3"}
    net.read("q1", "tok_A")
    net.exchange("r1")
    net.exchange("r2")  # r1 and r2 answered: repair to r2 and r3
    net.down = {"r2"}
    net.run()
    assert net.replies == [
        ReadDone(op_id="q1", owner=OWNER, mappings=(), failure=Failure.INTEGRITY_CONFLICT)
    ]


def test_read_of_duplicate_tokens() -> None:
    net = Network()
    net.write("w1", mapping())
    net.run()
    effects = net.read("q1", "tok_A", "tok_A")
    (first, *_) = effects.messages
    assert isinstance(first.message, ReadRequest)
    assert first.message.tokens == ("tok_A",)
    net.run()
    (done,) = net.replies_for("q1")
    assert isinstance(done, ReadDone) and done.failure is None
    assert mapping() in done.mappings


# -- bookkeeping -------------------------------------------------------------------------------


def test_duplicate_operation_ids_assert() -> None:
    net = Network()
    net.write("op", mapping())
    with pytest.raises(AssertionError):
        net.write("op", mapping("tok_B"))
    with pytest.raises(AssertionError):
        net.read("op", "tok_A")
    assert net.coordinator.operations_in_flight() == 1


def test_wrong_preference_list_asserts() -> None:
    coordinator = Coordinator(peer_id=COORD, quorum=N3_W2_R2)
    with pytest.raises(AssertionError):
        coordinator.start_write(
            op_id="w",
            owner=OWNER,
            placement=OwnerPlacement.stable(("r1", "r2")),
            mappings=[mapping()],
            now=0.0,
        )
    with pytest.raises(AssertionError):
        coordinator.start_read(
            op_id="q",
            owner=OWNER,
            placement=OwnerPlacement.stable(("r1", "r1", "r2")),
            tokens=["t"],
            now=0.0,
        )
    assert coordinator.operations_in_flight() == 0


def test_late_replies_and_timers_after_finish_are_ignored() -> None:
    net = Network()
    net.write("w1", mapping())
    net.read("q1", "tok_A")
    net.fire(TimerKind.HEDGE, "q1")  # the read asks every replica
    # let every replica answer, but hold the answers
    for r in REPLICAS:
        net.deliver_where(functools.partial(_is_for, r))
    answers = list(net.pending)
    assert len(answers) == 6
    for envelope in answers:
        net.deliver(envelope)
    assert {r.op_id for r in net.replies} == {"w1", "q1"}
    assert net.coordinator.operations_in_flight() == 0
    for envelope in answers:
        assert net.coordinator.on_message(envelope.source, envelope.message).is_empty()
    for timer in list(net.timers):
        assert net.coordinator.on_timer(timer, timer.due).is_empty()
    assert len(net.replies) == 2


def test_operations_max_answers_overloaded() -> None:
    net = Network(limits=CoordinatorLimits(operations_max=2))
    net.write("w1", mapping("tok_A"))
    net.read("q1", "tok_A")
    sent = len(net.sent)
    timers = len(net.timers)
    effects = net.write("w2", mapping("tok_B"))
    assert effects.replies == [WriteDone(op_id="w2", owner=OWNER, failure=Failure.OVERLOADED)]
    effects = net.read("q2", "tok_B")
    assert effects.replies == [
        ReadDone(op_id="q2", owner=OWNER, mappings=(), failure=Failure.OVERLOADED)
    ]
    assert len(net.sent) == sent and len(net.timers) == timers
    assert net.coordinator.operations_in_flight() == 2
    net.run()
    assert net.coordinator.operations_in_flight() == 0
    net.write("w2", mapping("tok_B"))
    assert net.coordinator.operations_in_flight() == 1


def test_insert_reply_to_a_read_in_progress_does_not_finish_it() -> None:
    """Regression: a read in its READING phase has no holders to wait for, so an InsertReply
    carrying its op id once made _write_quorum_reached vacuously true and finished the read
    with every mapping None, without R answers."""
    net = Network()
    for r in REPLICAS:
        net.put_durably(r, mapping())
    net.read("q1", "tok_A")
    stray = InsertReply(op_id="q1", owner=OWNER, tokens=(), outcomes=())
    net.absorb(net.coordinator.on_message("r1", stray))
    net.run()
    assert net.replies == [ReadDone(op_id="q1", owner=OWNER, mappings=(mapping(),), failure=None)]


# -- property: acknowledged means durable on W -------------------------------------------------

TOKENS = ("tok_A", "tok_B", "tok_C")


def candidate(token: str, variant: int) -> Mapping:
    return mapping(token, f"value-{token}-{variant}")


operation_strategy = st.tuples(
    st.sampled_from(["write", "read"]),
    st.lists(st.sampled_from(TOKENS), min_size=1, max_size=3),
    st.sampled_from([0, 0, 0, 1]),  # mostly one value per token, sometimes a conflicting one
)


# A moved owner: old set r1..r3, new set r3..r5 (two peers replaced), or r1, r2, r4 (one).
JOINT = OwnerPlacement(old=REPLICAS, new=("r3", "r4", "r5"), version=7)
ONE_MOVED = OwnerPlacement(old=REPLICAS, new=("r1", "r2", "r4"), version=7)
FINISHING = OwnerPlacement(old=REPLICAS, new=("r3", "r4", "r5"), reads_new=True, version=8)
PLACEMENTS = (OwnerPlacement.stable(REPLICAS), JOINT, ONE_MOVED, FINISHING)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operations=st.lists(operation_strategy, min_size=1, max_size=6),
    placement=st.sampled_from(PLACEMENTS),
    preload=st.lists(
        st.tuples(st.sampled_from(JOINT.replicas), st.sampled_from(TOKENS)), max_size=4
    ),
    data=st.data(),
)
def test_acknowledged_writes_and_returned_reads_are_durable_on_w(
    operations: list[tuple[str, list[str], int]],
    placement: OwnerPlacement,
    preload: list[tuple[str, str]],
    data: st.DataObject,
) -> None:
    """Whatever is delivered, dropped or late: a success means W durable holders in EACH set."""
    net = Network(placement=placement)
    w = net.quorum.write_quorum
    for replica, token in preload:  # leftovers of writes that failed or were never acked
        if replica in net.stores and net.stores[replica].get(mapping_key(OWNER, token)) is None:
            net.put_durably(replica, candidate(token, 0))

    def held_in_each(m: Mapping) -> bool:
        holders = net.durable_holders(m)
        return all(len(holders & set(s)) >= w for s in placement.quorum_sets)

    started: dict[str, tuple[Mapping, ...]] = {}
    seen_replies = 0

    def check_new_replies() -> None:
        nonlocal seen_replies
        for reply in net.replies[seen_replies:]:
            if isinstance(reply, WriteDone) and reply.failure is None:
                for m in started[reply.op_id]:
                    assert held_in_each(m)
            if isinstance(reply, ReadDone) and reply.failure is None:
                for held in reply.mappings:
                    if held is not None:
                        assert held_in_each(held)
        seen_replies = len(net.replies)

    queue = list(operations)
    for step in range(200):
        actions = ["toggle"]
        if queue:
            actions.append("start")
        if net.pending:
            actions += ["deliver", "deliver", "deliver", "drop"]
        if net.timers:
            actions.append("timer")
        if actions == ["toggle"]:
            break
        action = data.draw(st.sampled_from(actions), label=f"action {step}")
        if action == "start":
            kind, tokens, variant = queue.pop(0)
            op_id = f"op{len(started)}"
            if kind == "write":
                mappings = tuple(candidate(t, variant) for t in dict.fromkeys(tokens))
                started[op_id] = mappings
                net.write(op_id, *mappings)
            else:
                started[op_id] = ()
                net.read(op_id, *tokens)
        elif action == "deliver":
            envelope = data.draw(st.sampled_from(net.pending), label="deliver")
            net.deliver(envelope)
        elif action == "drop":
            envelope = data.draw(st.sampled_from(net.pending), label="drop")
            net.pending.remove(envelope)
        elif action == "timer":
            timer = data.draw(st.sampled_from(net.timers), label="timer")
            net.timers.remove(timer)
            net.now = max(net.now, timer.due)
            net.absorb(net.coordinator.on_timer(timer, net.now))
        else:
            replica = data.draw(st.sampled_from(net.replica_ids), label="toggle")
            net.down ^= {replica}
        check_new_replies()

    # drain: every operation ends, by its deadline at the latest
    for _ in range(1000):
        if net.pending:
            net.deliver(net.pending[0])
        elif net.timers:
            timer = min(net.timers, key=lambda t: t.due)
            net.timers.remove(timer)
            net.now = max(net.now, timer.due)
            net.absorb(net.coordinator.on_timer(timer, net.now))
        else:
            break
        check_new_replies()
    assert net.coordinator.operations_in_flight() == 0
    ended = [r.op_id for r in net.replies]
    assert sorted(ended) == sorted(started), "every operation gets exactly one reply"


def test_a_quorum_the_failure_detector_holds_down_gets_a_short_deadline() -> None:
    coordinator = Coordinator(peer_id="c", quorum=N3_W2_R2, limits=LIMITS)
    effects = coordinator.start_write(
        op_id="w",
        owner=OWNER,
        placement=OwnerPlacement.stable(REPLICAS),
        mappings=[mapping()],
        now=0.0,
        down=frozenset({"r2", "r3"}),
    )
    deadlines = [t.due for t in effects.timers if t.kind is TimerKind.DEADLINE]
    assert deadlines == [LIMITS.down_grace_s]
    assert len(effects.messages) == 3  # still asked: a peer just back may answer in time
    effects = coordinator.start_read(
        op_id="r",
        owner=OWNER,
        placement=OwnerPlacement.stable(REPLICAS),
        tokens=["tok_A"],
        now=0.0,
        down=frozenset({"r3"}),
    )
    deadlines = [t.due for t in effects.timers if t.kind is TimerKind.DEADLINE]
    assert deadlines == [LIMITS.operation_timeout_s]


# -- invariant: success only with W durable acknowledgements ------------------------------------


def test_a_write_counted_done_below_w_is_stopped_before_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = Network()
    monkeypatch.setattr(Coordinator, "_write_quorum_reached", lambda self, operation: True)
    net.write("w1", mapping())
    with pytest.raises(InvariantViolation) as raised:
        net.exchange("r1")
    assert str(raised.value) == (
        "coordinator would answer success below W (writing):"
        " owner acme token prefix tok_A epoch 1: 1 of 2 in set r1,r2,r3 at ring 0"
    )
    assert net.replies == []


def test_a_read_answered_before_its_blocking_repair_is_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = Network()
    reached = Coordinator._write_quorum_reached
    monkeypatch.setattr(
        Coordinator,
        "_write_quorum_reached",
        lambda self, operation: operation.phase is _Phase.REPAIRING or reached(self, operation),
    )
    net.put_durably("r1", mapping())  # a write that reached only r1
    net.read("q1", "tok_A")
    net.exchange("r1")
    with pytest.raises(InvariantViolation, match=r"below W \(repairing\): owner acme token"):
        net.exchange("r2")
    assert net.replies == []


def test_acknowledgements_from_outside_the_preference_list_never_make_a_quorum() -> None:
    net = Network()
    net.write("w1", mapping())
    holders = net.coordinator._operations["w1"].holders["tok_A"]
    holders.update({"stranger-1", "stranger-2"})  # corrupted bookkeeping
    with pytest.raises(
        InvariantViolation, match=r"\(writing\): owner acme .* 1 of 2 in set r1,r2,r3 at ring 0$"
    ):
        net.exchange("r1")
    assert net.replies == []


def test_a_fenced_answer_to_a_repair_is_refused_and_reported_not_asserted() -> None:
    """Repairs are never fenced: a replica that says so misbehaves; it counts as no holder."""
    net = Network()
    net.put_durably("r1", mapping())
    net.read("q1", "tok_A")
    net.exchange("r1")
    net.exchange("r2")  # R answers in: repair to r2 and r3 before answering
    fenced = InsertReply(
        op_id="q1", owner=OWNER, tokens=("tok_A",), outcomes=(InsertOutcome.FENCED,)
    )
    effects = net.absorb(net.coordinator.on_message("r2", fenced))
    (event,) = effects.events
    assert event.name == "peer_protocol_conflict" and event.request_id == "q1"
    assert dict(event.details) == {"source": "r2", "what": "fenced_repair"}
    assert effects.replies == []
    net.deliver_where(lambda e: e.destination == "r3" and isinstance(e.message, InsertRequest))
    net.deliver_where(net.replies_from("r3"))
    assert net.replies == [ReadDone(op_id="q1", owner=OWNER, mappings=(mapping(),), failure=None)]


forged_outcomes = st.lists(st.sampled_from(list(InsertOutcome)), min_size=1, max_size=2)


@settings(max_examples=300, deadline=None)
@given(
    replies=st.lists(
        st.tuples(
            st.sampled_from([*REPLICAS, "stranger"]),
            st.sampled_from(["w1", "q1"]),
            st.one_of(forged_outcomes, st.sampled_from([None, "held", "other"])),
        ),
        max_size=12,
    )
)
def test_no_answers_a_replica_can_send_trip_the_invariant(
    replies: list[tuple[str, str, list[InsertOutcome] | str | None]],
) -> None:
    """Any insert or read answers, true or not, to a write and to a read under blocking repair:
    success or failure, never a violation (an ack is the replica's word; the count is ours)."""
    net = Network()
    a, b = mapping("tok_A"), mapping("tok_B", "vb")
    net.put_durably("r1", a)
    net.write("w1", a, b)
    net.read("q1", "tok_A", "tok_B")
    net.deliver_where(lambda e: isinstance(e.message, ReadRequest) and e.destination != "r3")
    net.deliver_where(lambda e: isinstance(e.message, ReadReply))  # r1 holds tok_A: repairing
    assert net.replies == []
    for source, op_id, answer in replies:
        message: InsertReply | ReadReply
        if isinstance(answer, list):
            tokens = ("tok_A", "tok_B")[: len(answer)]
            message = InsertReply(op_id=op_id, owner=OWNER, tokens=tokens, outcomes=tuple(answer))
        else:
            found = {None: None, "held": a, "other": mapping("tok_A", "other")}[answer]
            message = ReadReply(
                op_id=op_id, owner=OWNER, tokens=("tok_A", "tok_B"), mappings=(found, None)
            )
        net.absorb(net.coordinator.on_message(source, message))
    assert all(len(net.replies_for(op_id)) <= 1 for op_id in ("w1", "q1"))


# -- a replica holding a corrupt record ---------------------------------------------------------


def corrupt(net: Network, replica: str, m: Mapping) -> bytes:
    """Flip one bit of the sealed value of `m` in `replica`'s store."""
    store = net.stores[replica]
    raw = bytearray(encode_mapping(SEALER, m))
    raw[-3] ^= 0x04
    store.stage([(mapping_key(m.owner, m.token), bytes(raw))])
    store.sync()
    return bytes(raw)


@pytest.mark.parametrize("first", REPLICAS)
def test_a_corrupt_replica_never_makes_a_read_fail_or_answer_a_wrong_value(first: str) -> None:
    """Whichever replica answers first, the read answers the good value; when the corrupt
    replica is among the answers it is repaired with it."""
    net = Network()
    m = mapping()
    for replica in REPLICAS:
        net.put_durably(replica, m)
    corrupt(net, "r2", m)
    net.read("rd", m.token)
    net.exchange(first)
    net.exchange("r2")
    net.run()
    (reply,) = net.replies_for("rd")
    assert isinstance(reply, ReadDone) and reply.failure is None and reply.mappings == (m,)
    assert not net.events_named("integrity_conflict")
    assert net.durable_holders(m) == {"r1", "r2", "r3"}
    (repaired,) = net.events_named("mapping_repaired")
    assert dict(repaired.details)["source"] == COORD


def test_a_corrupt_answer_is_no_absence_the_read_waits_for_a_healthy_one() -> None:
    """r1 lacks the mapping and r2 holds it corrupt: two answers, but only one healthy; the
    read waits for r3 instead of answering "not found"."""
    net = Network()
    m = mapping()
    net.put_durably("r2", m)
    net.put_durably("r3", m)
    corrupt(net, "r2", m)
    net.read("rd", m.token)
    net.exchange("r1")
    net.exchange("r2")
    assert net.replies_for("rd") == []
    net.exchange("r3")
    net.run()
    (reply,) = net.replies_for("rd")
    assert isinstance(reply, ReadDone) and reply.failure is None and reply.mappings == (m,)
    assert net.durable_holders(m) == {"r1", "r2", "r3"}


def test_with_only_corrupt_answers_a_read_times_out_and_never_says_not_found() -> None:
    net = Network()
    m = mapping()
    for replica in REPLICAS:
        net.put_durably(replica, m)
        corrupt(net, replica, m)
    net.read("rd", m.token)
    net.run()
    assert net.replies_for("rd") == []
    net.fire(TimerKind.DEADLINE, "rd")
    (reply,) = net.replies_for("rd")
    assert isinstance(reply, ReadDone) and reply.failure is Failure.QUORUM_TIMEOUT


# -- joint placements (a moved owner: docs/membership.md §3) ------------------------------------


def test_a_stable_placement_sends_what_a_preference_list_did() -> None:
    """The fast path: one set, the same messages to the same replicas in the same order; only
    the ring version the placement was computed at is stamped on client requests."""
    net = Network(placement=OwnerPlacement.stable(REPLICAS, version=5))
    effects = net.write("w1", mapping())
    request = InsertRequest(op_id="w1", owner=OWNER, mappings=(mapping(),), ring=5)
    assert effects.messages == [
        Envelope(source=COORD, destination=r, message=request) for r in REPLICAS
    ]
    net.run()
    assert net.replies == [WriteDone(op_id="w1", owner=OWNER, failure=None)]
    effects = net.read("q1", "tok_A")
    read = ReadRequest(op_id="q1", owner=OWNER, tokens=("tok_A",), ring=5)
    assert effects.messages == [
        Envelope(source=COORD, destination=r, message=read) for r in REPLICAS[:2]
    ]
    assert [t.kind for t in effects.timers] == [
        TimerKind.DEADLINE,
        TimerKind.RESEND,
        TimerKind.HEDGE,
    ]


def test_a_joint_write_goes_to_both_sets_and_needs_w_of_each() -> None:
    net = Network(placement=JOINT)
    effects = net.write("w1", mapping())
    assert [e.destination for e in effects.messages] == ["r1", "r2", "r3", "r4", "r5"]
    assert {e.message.ring for e in effects.messages if isinstance(e.message, InsertRequest)} == {7}
    net.exchange("r1")
    net.exchange("r2")  # W of the old set
    assert net.replies == [], "W in the old set alone is no joint quorum"
    net.exchange("r4")  # one of the new set
    assert net.replies == []
    net.exchange("r5")  # W of the new set too
    assert net.replies == [WriteDone(op_id="w1", owner=OWNER, failure=None)]
    assert net.durable_holders(mapping()) == {"r1", "r2", "r4", "r5"}


def test_a_replica_of_both_sets_counts_in_each() -> None:
    net = Network(placement=ONE_MOVED)  # old r1 r2 r3, new r1 r2 r4
    net.write("w1", mapping())
    net.exchange("r3")
    net.exchange("r4")
    assert net.replies == []
    net.exchange("r1")  # r1 + r3 in old, r1 + r4 in new
    assert net.replies == [WriteDone(op_id="w1", owner=OWNER, failure=None)]


def test_a_joint_write_lingers_and_hints_for_every_replica_lacking() -> None:
    hints = HintedHandoff(peer_id=COORD, storage=MemoryStore(), sealer=SEALER)
    net = Network(placement=JOINT)
    net.coordinator = Coordinator(peer_id=COORD, quorum=N3_W2_R2, limits=LIMITS, hints=hints)
    net.write("w1", mapping())
    for replica in ("r1", "r4", "r5"):
        net.exchange(replica)
    assert net.replies == []
    net.exchange("r2")
    assert net.replies == [WriteDone(op_id="w1", owner=OWNER, failure=None)]
    (deadline,) = [t for t in net.timers if t.kind is TimerKind.DEADLINE]
    effects = net.coordinator.on_timer(deadline, deadline.due)
    assert [s.target for s in hints.statistics()] == ["r3"]
    assert len(effects.writes) == 1
    assert net.coordinator.operations_in_flight() == 0


def test_fenced_replicas_of_one_set_fail_a_joint_write() -> None:
    net = Network(placement=JOINT)
    net.write("w1", mapping())
    for replica in ("r1", "r2"):
        net.exchange(replica)
    for replica in ("r4", "r5"):  # the new set's replicas at a later epoch: W of it out of reach
        (request,) = [e for e in net.pending if e.destination == replica]
        net.pending.remove(request)
        assert isinstance(request.message, InsertRequest)
        reply = InsertReply(
            op_id="w1",
            owner=OWNER,
            tokens=("tok_A",),
            outcomes=(InsertOutcome.FENCED,),
        )
        net.absorb(net.coordinator.on_message(replica, reply))
    assert net.replies == [WriteDone(op_id="w1", owner=OWNER, failure=Failure.FENCED)]


def test_a_set_held_down_gives_a_joint_write_the_short_deadline() -> None:
    coordinator = Coordinator(peer_id=COORD, quorum=N3_W2_R2, limits=LIMITS)
    effects = coordinator.start_write(
        op_id="w",
        owner=OWNER,
        placement=JOINT,
        mappings=[mapping()],
        now=0.0,
        down=frozenset({"r4", "r5"}),
    )
    assert [t.due for t in effects.timers if t.kind is TimerKind.DEADLINE] == [LIMITS.down_grace_s]
    effects = coordinator.start_read(  # reads need the old set only
        op_id="r",
        owner=OWNER,
        placement=JOINT,
        tokens=["tok_A"],
        now=0.0,
        down=frozenset({"r4", "r5"}),
    )
    assert [t.due for t in effects.timers if t.kind is TimerKind.DEADLINE] == [
        LIMITS.operation_timeout_s
    ]


@pytest.mark.parametrize(
    ("placement", "first", "rest"),
    [(JOINT, ["r1", "r2"], ["r3"]), (FINISHING, ["r3", "r4"], ["r5"])],
)
def test_a_joint_read_asks_the_read_set_only(
    placement: OwnerPlacement, first: list[str], rest: list[str]
) -> None:
    net = Network(placement=placement)
    effects = net.read("q1", "tok_A")
    assert [e.destination for e in effects.messages] == first
    assert {e.message.ring for e in effects.messages if isinstance(e.message, ReadRequest)} == {
        placement.version
    }
    hedge = net.fire(TimerKind.HEDGE, "q1")
    assert [e.destination for e in hedge.messages] == rest
    resend = net.fire(TimerKind.RESEND, "q1")
    assert sorted(e.destination for e in resend.messages) == sorted(first + rest)


def test_a_joint_read_decides_on_the_read_set_and_ignores_the_others() -> None:
    net = Network(placement=JOINT)
    for replica in ("r4", "r5"):
        net.put_durably(replica, mapping())  # only the new set holds it (the read cannot see it)
    net.read("q1", "tok_A")
    stray = ReadReply(op_id="q1", owner=OWNER, tokens=("tok_A",), mappings=(mapping(),))
    assert net.coordinator.on_message("r4", stray).is_empty(), "r4 was not asked"
    net.exchange("r1")
    net.exchange("r2")
    assert net.replies == [ReadDone(op_id="q1", owner=OWNER, mappings=(None,), failure=None)]


def test_a_joint_read_repairs_until_w_of_each_set_hold_it() -> None:
    net = Network(placement=JOINT)
    net.put_durably("r1", mapping())
    net.put_durably("r2", mapping())  # W of the old set hold it, none of the new
    net.read("q1", "tok_A")
    net.exchange("r1")
    net.exchange("r2")
    assert net.replies == [], "the new set lacks it: blocking repair first"
    repairs = {e.destination: e.message for e in net.pending}
    assert sorted(repairs) == ["r3", "r4", "r5"]
    for repair in repairs.values():
        assert isinstance(repair, InsertRequest)
        assert repair.repair and repair.ring == 0  # never ring-fenced
    net.exchange("r3")
    assert net.replies == []
    net.exchange("r4")
    assert net.replies == [ReadDone(op_id="q1", owner=OWNER, mappings=(mapping(),), failure=None)]
    holders = net.durable_holders(mapping())
    assert len(holders & set(JOINT.old)) >= 2 and len(holders & set(JOINT.new)) >= 2


def test_a_joint_read_answered_before_its_new_set_is_repaired_is_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = Network(placement=JOINT)
    monkeypatch.setattr(  # the bug: repairs count the old set only
        Coordinator,
        "_held_in_each",
        lambda self, operation, holders: len(holders & set(operation.placement.old)) >= 2,
    )
    net.put_durably("r1", mapping())
    net.put_durably("r2", mapping())
    net.read("q1", "tok_A")
    net.exchange("r1")
    with pytest.raises(InvariantViolation, match=r"0 of 2 in set r3,r4,r5 at ring 7$"):
        net.exchange("r2")
    assert net.replies == []
