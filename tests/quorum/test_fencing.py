"""Fencing: a replica refuses tokenize mappings of epochs below the owner's fence.

Each replica's Replica and Acceptor cores share one MemoryStore, as on a node, so what the
acceptor accepted or learned fences what the replica stores. The fencing argument: once a
majority accepted slot e+1, no write under epoch e can gather W = 2 durable acknowledgements
out of N = 3.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.quorum.helpers import SEALER
from tokenvault.quorum.acceptor import Acceptor
from tokenvault.quorum.coordinator import Coordinator, CoordinatorLimits
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
from tokenvault.quorum.messages import (
    Accept,
    Ballot,
    Decide,
    Envelope,
    EpochValue,
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Mapping,
    Prepare,
)
from tokenvault.quorum.placement import OwnerPlacement
from tokenvault.quorum.quorum_config import QuorumConfig
from tokenvault.quorum.records import decode_mapping, encode_mapping, mapping_key
from tokenvault.quorum.replica import Replica
from tokenvault.store.memory_store import MemoryStore

OWNER = "acme"
COORD = "coord"
REPLICAS = ("r1", "r2", "r3")
QUORUM = QuorumConfig(replica_count=3, write_quorum=2, read_quorum=2)
LIMITS = CoordinatorLimits(operation_timeout_s=2.5, resend_interval_s=1.0)
BALLOT = Ballot(round=1, peer="p1")


def mapping(token: str = "tok_A", epoch: int = 1, value: str = "4111-SECRET") -> Mapping:
    return Mapping(owner=OWNER, token=token, value=value, field="card", epoch=epoch)


def epoch_value(epoch: int) -> EpochValue:
    return EpochValue(epoch=epoch, salt="0f" * 4, requested_by=f"rot-{epoch}", requested_at_s=1.0)


class Peer:
    """One replica peer: the replica and the acceptor over one store, driven like node.py."""

    def __init__(self, peer_id: str = "r1") -> None:
        self.peer_id = peer_id
        self.store = MemoryStore()
        self.replica = Replica(peer_id=peer_id, storage=self.store, sealer=SEALER)
        self.acceptor = Acceptor(peer_id=peer_id, storage=self.store)
        self.events: list[Event] = []
        self._ops = 0

    def run(self, effects: Effects) -> Effects:
        self.store.stage(effects.writes)
        self.store.sync()
        self.events.extend(effects.events)
        return effects

    def op(self) -> str:
        self._ops += 1
        return f"op-{self._ops}"

    def prepare(self, slot: int) -> None:
        prepare = Prepare(op_id=self.op(), owner=OWNER, slot=slot, ballot=BALLOT)
        self.run(self.acceptor.on_message("p1", prepare))

    def accept(self, slot: int) -> None:
        message = Accept(
            op_id=self.op(), owner=OWNER, slot=slot, ballot=BALLOT, value=epoch_value(slot)
        )
        self.run(self.acceptor.on_message("p1", message))
        assert self.acceptor.meta(OWNER).accepted_slot >= slot

    def decide(self, slot: int) -> None:
        decide = Decide(op_id=self.op(), owner=OWNER, value=epoch_value(slot))
        self.run(self.acceptor.on_message("p1", decide))

    def insert(self, *mappings: Mapping, repair: bool = False) -> tuple[Effects, InsertReply]:
        request = InsertRequest(op_id=self.op(), owner=OWNER, mappings=mappings, repair=repair)
        effects = self.run(self.replica.on_message(COORD, request))
        (envelope,) = effects.messages
        assert isinstance(envelope.message, InsertReply)
        return effects, envelope.message

    def outcomes(self, *mappings: Mapping, repair: bool = False) -> tuple[InsertOutcome, ...]:
        return self.insert(*mappings, repair=repair)[1].outcomes

    def holds(self, m: Mapping) -> bool:
        raw = dict(self.store.durable_items()).get(mapping_key(m.owner, m.token))
        return raw is not None and decode_mapping(SEALER, m.owner, m.token, raw) == m


FENCED = InsertOutcome.FENCED
STORED = InsertOutcome.STORED
IDENTICAL = InsertOutcome.IDENTICAL


# -- the replica ------------------------------------------------------------------------------


def test_no_fence_before_anything_was_accepted() -> None:
    peer = Peer()
    assert peer.outcomes(mapping(epoch=1)) == (STORED,)
    peer.prepare(2)  # a promise is not an acceptance: still no fence
    assert peer.outcomes(mapping("tok_B", epoch=1)) == (STORED,)


def test_accepting_a_later_slot_fences_older_epochs() -> None:
    peer = Peer()
    peer.accept(2)
    effects, reply = peer.insert(mapping(epoch=1))
    assert reply.outcomes == (FENCED,)
    assert reply.tokens == ("tok_A",)
    assert effects.writes == []
    assert not peer.holds(mapping(epoch=1))
    (fenced,) = [e for e in effects.events if e.name == "mapping_fenced"]
    assert fenced.owner == OWNER and dict(fenced.details) == {"count": 1, "fence_epoch": 2}
    assert [e.name for e in effects.events] == ["mapping_fenced"]


def test_deciding_a_later_slot_fences_older_epochs() -> None:
    peer = Peer()
    peer.decide(3)  # learned without accepting anything here
    assert peer.acceptor.meta(OWNER).accepted_slot == 1
    assert peer.outcomes(mapping(epoch=2)) == (FENCED,)
    assert peer.outcomes(mapping(epoch=1)) == (FENCED,)
    assert peer.outcomes(mapping(epoch=3)) == (STORED,)


def test_the_fence_epoch_and_newer_epochs_are_stored() -> None:
    peer = Peer()
    peer.accept(3)
    assert peer.outcomes(mapping("a", epoch=2)) == (FENCED,)
    assert peer.outcomes(mapping("b", epoch=3)) == (STORED,)
    assert peer.outcomes(mapping("c", epoch=4)) == (STORED,)
    assert peer.holds(mapping("b", epoch=3)) and peer.holds(mapping("c", epoch=4))


def test_a_mixed_request_is_fenced_mapping_by_mapping() -> None:
    peer = Peer()
    peer.accept(2)
    old, new = mapping("tok_old", epoch=1), mapping("tok_new", epoch=2)
    effects, reply = peer.insert(old, new)
    assert reply.tokens == ("tok_old", "tok_new")
    assert reply.outcomes == (FENCED, STORED)
    assert not peer.holds(old) and peer.holds(new)
    names = sorted(e.name for e in effects.events)
    assert names == ["mapping_fenced", "mapping_stored"]


def test_a_retry_of_a_mapping_stored_before_the_fence_is_fenced_too() -> None:
    """A tokenize retried after a rotation must move to the new epoch, not answer IDENTICAL."""
    peer = Peer()
    assert peer.outcomes(mapping(epoch=1)) == (STORED,)
    assert peer.outcomes(mapping(epoch=1)) == (IDENTICAL,)
    peer.accept(2)
    assert peer.outcomes(mapping(epoch=1)) == (FENCED,)
    assert peer.holds(mapping(epoch=1))  # what it held stays


def test_repairs_are_never_fenced() -> None:
    peer = Peer()
    peer.accept(2)
    peer.decide(2)
    assert peer.outcomes(mapping(epoch=1), repair=True) == (STORED,)
    assert peer.outcomes(mapping(epoch=1), repair=True) == (IDENTICAL,)
    assert peer.holds(mapping(epoch=1))
    assert not [e for e in peer.events if e.name == "mapping_fenced"]


def test_the_fence_is_per_owner_and_survives_a_restart() -> None:
    peer = Peer()
    peer.accept(2)
    other = Mapping(owner="globex", token="tok_A", value="v", field="card", epoch=1)
    request = InsertRequest(op_id="x", owner="globex", mappings=(other,))
    (envelope,) = peer.run(peer.replica.on_message(COORD, request)).messages
    assert isinstance(envelope.message, InsertReply)
    assert envelope.message.outcomes == (STORED,)
    peer.store.crash()
    peer.replica = Replica(peer_id="r1", storage=peer.store, sealer=SEALER)
    assert peer.outcomes(mapping(epoch=1)) == (FENCED,)


# -- the coordinator --------------------------------------------------------------------------


class Network:
    """A write coordinator and three replica peers; the test delivers, drops and fires."""

    def __init__(self) -> None:
        self.peers = {r: Peer(r) for r in REPLICAS}
        self.coordinator = Coordinator(peer_id=COORD, quorum=QUORUM, limits=LIMITS)
        self.pending: list[Envelope] = []
        self.timers: list[Timer] = []
        self.replies: list[ClientReply] = []
        self.sent: list[Envelope] = []
        self.answers: list[Envelope] = []  # every replica answer ever sent
        self.now = 0.0

    def absorb(self, effects: Effects) -> None:
        assert effects.writes == []
        self.timers.extend(effects.timers)
        self.pending.extend(effects.messages)
        self.sent.extend(effects.messages)
        self.replies.extend(effects.replies)

    def write(self, op_id: str, *mappings: Mapping) -> None:
        self.absorb(
            self.coordinator.start_write(
                op_id=op_id,
                owner=OWNER,
                placement=OwnerPlacement.stable(REPLICAS),
                mappings=mappings,
                now=self.now,
            )
        )

    def read(self, op_id: str, *tokens: str) -> None:
        self.absorb(
            self.coordinator.start_read(
                op_id=op_id,
                owner=OWNER,
                placement=OwnerPlacement.stable(REPLICAS),
                tokens=tokens,
                now=self.now,
            )
        )

    def deliver(self, envelope: Envelope) -> None:
        self.pending.remove(envelope)
        if envelope.destination == COORD:
            self.absorb(self.coordinator.on_message(envelope.source, envelope.message))
            return
        peer = self.peers[envelope.destination]
        effects = peer.run(peer.replica.on_message(envelope.source, envelope.message))
        self.pending.extend(effects.messages)
        self.answers.extend(effects.messages)

    def deliver_where(self, predicate: Callable[[Envelope], bool]) -> None:
        for envelope in [e for e in self.pending if predicate(e)]:
            self.deliver(envelope)

    def exchange(self, replica: str) -> None:
        self.deliver_where(lambda e: e.destination == replica)
        self.deliver_where(lambda e: e.source == replica)

    def fire(self, timer: Timer) -> None:
        self.timers.remove(timer)
        self.now = max(self.now, timer.due)
        self.absorb(self.coordinator.on_timer(timer, self.now))

    def acked(self, token: str) -> set[str]:
        """The replicas that ever answered a durable acknowledgement for the token."""
        return {
            e.source
            for e in self.answers
            if isinstance(e.message, InsertReply)
            and any(
                t == token and o.is_durable_ack
                for t, o in zip(e.message.tokens, e.message.outcomes, strict=True)
            )
        }

    def holders(self, m: Mapping) -> set[str]:
        return {r for r, peer in self.peers.items() if peer.holds(m)}


def test_fenced_answers_fail_the_write_once_w_unfenced_acks_are_out_of_reach() -> None:
    net = Network()
    net.peers["r2"].accept(2)
    net.peers["r3"].accept(2)
    net.write("w", mapping(epoch=1))
    net.exchange("r2")
    assert net.replies == []  # one fenced replica: r1 and r3 could still make W
    net.exchange("r3")
    assert net.replies == [WriteDone(op_id="w", owner=OWNER, failure=Failure.FENCED)]
    assert net.coordinator.operations_in_flight() == 0
    # the unfenced replica may still store it; its late ack changes nothing
    net.exchange("r1")
    assert len(net.replies) == 1
    assert net.holders(mapping(epoch=1)) == {"r1"}
    assert not [t for t in net.timers if net.coordinator.on_timer(t, t.due).messages]


def test_one_fenced_replica_alone_does_not_block_a_write() -> None:
    """An orphaned proposal accepted by one replica only fences that replica."""
    net = Network()
    net.peers["r1"].accept(2)
    net.write("w", mapping(epoch=1))
    net.exchange("r1")
    assert net.replies == []
    net.exchange("r2")
    net.exchange("r3")
    assert net.replies == [WriteDone(op_id="w", owner=OWNER, failure=None)]


def test_a_write_under_the_new_epoch_succeeds_on_fenced_replicas() -> None:
    net = Network()
    for r in ("r1", "r2"):
        net.peers[r].accept(2)
    net.write("w", mapping(epoch=2))
    net.exchange("r1")
    net.exchange("r2")
    assert net.replies == [WriteDone(op_id="w", owner=OWNER, failure=None)]


def test_w_acks_before_the_fenced_answer_win() -> None:
    """Only one replica is fenced (a minority accepted): W acks are still possible."""
    net = Network()
    net.peers["r3"].accept(2)
    net.write("w", mapping(epoch=1))
    net.exchange("r1")
    net.exchange("r2")
    net.exchange("r3")
    assert net.replies == [WriteDone(op_id="w", owner=OWNER, failure=None)]


def test_read_repair_is_not_fenced() -> None:
    net = Network()
    old = mapping(epoch=1)
    net.peers["r1"].run(
        Effects(writes=[(mapping_key(OWNER, "tok_A"), encode_mapping(SEALER, old))])
    )
    for r in REPLICAS:
        net.peers[r].accept(2)
    net.read("q", "tok_A")
    net.exchange("r1")
    net.exchange("r2")  # r2 lacks it: blocking repair
    repairs = [e for e in net.sent if isinstance(e.message, InsertRequest)]
    assert repairs and all(e.message.repair for e in repairs)  # type: ignore[union-attr]
    net.exchange("r2")
    assert net.replies == [ReadDone(op_id="q", owner=OWNER, mappings=(old,), failure=None)]
    assert net.holders(old) >= {"r1", "r2"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    accepted_by=st.sampled_from([("r1", "r2"), ("r1", "r3"), ("r2", "r3"), REPLICAS]),
    decided_too=st.booleans(),
    preloaded=st.sets(st.sampled_from(REPLICAS), max_size=1),
    data=st.data(),
)
def test_no_write_under_an_epoch_a_majority_moved_past_reaches_w(
    accepted_by: tuple[str, ...],
    decided_too: bool,
    preloaded: set[str],
    data: st.DataObject,
) -> None:
    net = Network()
    old = mapping(epoch=1)
    for replica in preloaded:  # a leftover of an earlier write that reached one replica
        net.peers[replica].run(
            Effects(writes=[(mapping_key(OWNER, "tok_A"), encode_mapping(SEALER, old))])
        )
    for replica in accepted_by:
        net.peers[replica].accept(2)
        if decided_too:
            net.peers[replica].decide(2)
    unfenced = set(REPLICAS) - set(accepted_by)
    net.write("w", old, mapping("tok_B", epoch=1))
    for step in range(80):
        actions = []
        if net.pending:
            actions += ["deliver", "deliver", "deliver", "drop", "duplicate"]
        if net.timers:
            actions.append("timer")
        if not actions:
            break
        action = data.draw(st.sampled_from(actions), label=f"action {step}")
        if action == "deliver":
            net.deliver(data.draw(st.sampled_from(net.pending), label="deliver"))
        elif action == "drop":
            net.pending.remove(data.draw(st.sampled_from(net.pending), label="drop"))
        elif action == "duplicate":
            net.pending.append(data.draw(st.sampled_from(net.pending), label="duplicate"))
        else:
            net.fire(data.draw(st.sampled_from(net.timers), label="timer"))
        assert all(not (isinstance(r, WriteDone) and r.failure is None) for r in net.replies), (
            "a write under a fenced epoch succeeded"
        )
        for m in (old, mapping("tok_B", epoch=1)):
            assert net.holders(m) - preloaded <= unfenced, "a fenced replica stored it"
    for _ in range(500):  # drain: the write ends by its deadline at the latest
        if net.pending:
            net.deliver(net.pending[0])
        elif net.timers:
            net.fire(min(net.timers, key=lambda t: t.due))
        else:
            break
    (done,) = net.replies
    assert isinstance(done, WriteDone)
    assert done.failure in (Failure.FENCED, Failure.QUORUM_TIMEOUT)
    for m in (old, mapping("tok_B", epoch=1)):
        assert net.holders(m) - preloaded <= unfenced
        assert len(net.acked(m.token)) < QUORUM.write_quorum, "W durable acks under epoch 1"


def test_fenced_timers_do_nothing_after_the_failure() -> None:
    net = Network()
    for r in REPLICAS:
        net.peers[r].accept(2)
    net.write("w", mapping(epoch=1))
    net.exchange("r1")
    net.exchange("r2")
    assert net.replies == [WriteDone(op_id="w", owner=OWNER, failure=Failure.FENCED)]
    for timer in list(net.timers):
        assert net.coordinator.on_timer(timer, timer.due).is_empty()
    assert {t.kind for t in net.timers} == {TimerKind.RESEND, TimerKind.DEADLINE}
