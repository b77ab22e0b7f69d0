"""The epoch proposer/learner with three acceptor cores on MemoryStores, delivered by hand.

The network decides what is delivered, in which order, what is dropped, duplicated or lost with
a crashed peer, and when timers fire. Delivering to an acceptor runs its core, stages and syncs
its writes and only then queues its answers (persist before send), as the node driver does.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokenvault.quorum.acceptor import Acceptor
from tokenvault.quorum.effects import Effects, EpochDone, Event, Failure, Timer, TimerKind
from tokenvault.quorum.epoch_coordinator import EpochCoordinator, EpochLimits, RandomSource
from tokenvault.quorum.invariants import InvariantViolation
from tokenvault.quorum.messages import (
    BALLOT_ROUND_MAX,
    EPOCH_MAX,
    GENESIS,
    Accept,
    Accepted,
    Ballot,
    Decide,
    Envelope,
    EpochQuery,
    EpochReport,
    EpochValue,
    Prepare,
    Promise,
)
from tokenvault.quorum.placement import OwnerPlacement
from tokenvault.quorum.records import read_acceptor_slot, read_decided, read_epoch_meta
from tokenvault.store.memory_store import MemoryStore

OWNER = "acme"
REPLICAS = ("r1", "r2", "r3")
LIMITS = EpochLimits(
    operation_timeout_s=5.0,
    resend_interval_s=1.0,
    backoff_initial_s=0.02,
    backoff_max_s=0.5,
    attempts_max=12,
)
ACCEPTOR_MESSAGES = (EpochQuery, Prepare, Accept, Decide)


class Network:
    """Acceptors r1..r3 and proposers (EpochCoordinators) c1.., wired by hand.

    A peer in `down` neither receives nor answers: what is delivered to or from it is dropped.
    """

    def __init__(
        self,
        coordinators: tuple[str, ...] = ("c1",),
        *,
        limits: EpochLimits = LIMITS,
        seed: int = 0,
        rngs: dict[str, RandomSource] | None = None,
        placement: OwnerPlacement = OwnerPlacement.stable(REPLICAS),
    ) -> None:
        self.placement = placement
        self.stores = {r: MemoryStore() for r in placement.replicas}
        self.acceptors = {r: Acceptor(peer_id=r, storage=self.stores[r]) for r in self.stores}
        rngs = rngs or {}
        self.coordinators = {
            c: EpochCoordinator(
                peer_id=c, rng=rngs.get(c, random.Random(seed * 31 + i)), limits=limits
            )
            for i, c in enumerate(coordinators)
        }
        self.pending: list[Envelope] = []
        self.timers: list[Timer] = []
        self.replies: list[EpochDone] = []
        self.events: list[Event] = []
        self.sent: list[Envelope] = []  # every envelope a proposer ever sent
        self.owner_of: dict[str, str] = {}  # op id -> the proposer running it
        self.down: set[str] = set()
        self.now = 0.0

    # -- inputs -------------------------------------------------------------------------------

    def absorb(self, coordinator: str, effects: Effects) -> Effects:
        assert effects.writes == [], "a proposer never writes"
        self.timers.extend(effects.timers)
        self.pending.extend(effects.messages)
        self.sent.extend(effects.messages)
        self.replies.extend(r for r in effects.replies if isinstance(r, EpochDone))
        assert all(isinstance(r, EpochDone) for r in effects.replies)
        self.events.extend(effects.events)
        for envelope in effects.messages:
            assert envelope.source == coordinator
            assert envelope.destination in self.placement.replicas
            assert isinstance(envelope.message, ACCEPTOR_MESSAGES)
        return effects

    def rotate(self, op_id: str, expected: int | None, coordinator: str = "c1") -> Effects:
        self.owner_of[op_id] = coordinator
        return self.absorb(
            coordinator,
            self.coordinators[coordinator].start_rotate(
                op_id=op_id,
                owner=OWNER,
                placement=self.placement,
                expected_epoch=expected,
                requested_at_s=1_700_000_000.0 + self.now,
                now=self.now,
            ),
        )

    def learn(self, op_id: str, coordinator: str = "c1") -> Effects:
        self.owner_of[op_id] = coordinator
        return self.absorb(
            coordinator,
            self.coordinators[coordinator].start_learn(
                op_id=op_id, owner=OWNER, placement=self.placement, now=self.now
            ),
        )

    def deliver(self, envelope: Envelope) -> Effects | None:
        """Deliver one pending envelope (None when it went to an acceptor or was dropped)."""
        self.pending.remove(envelope)
        if envelope.source in self.down or envelope.destination in self.down:
            return None
        destination = envelope.destination
        if destination in self.coordinators:
            return self.absorb(
                destination,
                self.coordinators[destination].on_message(
                    envelope.source, envelope.message, self.now
                ),
            )
        if destination not in self.acceptors:
            return None  # a proposer that crashed
        effects = self.acceptors[destination].on_message(envelope.source, envelope.message)
        assert effects.replies == [] and effects.timers == []
        store = self.stores[destination]
        store.stage(effects.writes)
        store.sync()
        self.events.extend(effects.events)
        for out in effects.messages:
            assert out.source == destination and out.destination == envelope.source
        self.pending.extend(effects.messages)
        return None

    def deliver_where(self, predicate: Callable[[Envelope], bool]) -> int:
        chosen = [e for e in self.pending if predicate(e)]
        for envelope in chosen:
            self.deliver(envelope)
        return len(chosen)

    def step(self, op_id: str, kind: type, replicas: tuple[str, ...] = REPLICAS) -> None:
        """Deliver the pending `kind` messages of op_id to `replicas`, then their answers."""
        self.deliver_where(
            lambda e: (
                e.message.op_id == op_id
                and isinstance(e.message, kind)
                and e.destination in replicas
            )
        )
        self.deliver_where(
            lambda e: (
                e.message.op_id == op_id
                and e.source in replicas
                and e.destination in self.coordinators
            )
        )

    def run(self, pick: Callable[[list[Envelope]], Envelope] | None = None) -> None:
        """Deliver until nothing is pending (timers are not fired)."""
        for _ in range(10_000):
            if not self.pending:
                return
            self.deliver(pick(self.pending) if pick else self.pending[0])
        raise AssertionError("the network never went quiet")

    def fire(self, kind: TimerKind, op_id: str) -> Effects:
        timer = next(t for t in self.timers if t.kind is kind and t.op_id == op_id)
        return self.fire_timer(timer)

    def fire_timer(self, timer: Timer) -> Effects:
        self.timers.remove(timer)
        self.now = max(self.now, timer.due)
        coordinator = self.owner_of[timer.op_id]
        if coordinator not in self.coordinators:
            return Effects()
        return self.absorb(coordinator, self.coordinators[coordinator].on_timer(timer, self.now))

    def settle(self) -> None:
        """Deliver everything and fire timers in due order until every operation ended."""
        for _ in range(10_000):
            if self.pending:
                self.deliver(self.pending[0])
            elif self.timers:
                self.fire_timer(min(self.timers, key=lambda t: t.due))
            else:
                return
        raise AssertionError("operations never ended")

    def crash_proposer(self, coordinator: str) -> None:
        """The proposer's process dies: its state, its timers and its queued messages vanish."""
        del self.coordinators[coordinator]
        self.pending = [e for e in self.pending if coordinator not in (e.source, e.destination)]
        self.timers = [t for t in self.timers if self.owner_of[t.op_id] != coordinator]

    def restart_acceptor(self, replica: str) -> int:
        lost = self.stores[replica].crash()
        self.acceptors[replica] = Acceptor(peer_id=replica, storage=self.stores[replica])
        return lost

    # -- observations -------------------------------------------------------------------------

    def reply(self, op_id: str) -> EpochDone:
        (done,) = [r for r in self.replies if r.op_id == op_id]
        return done

    def decided(self, slot: int) -> dict[str, EpochValue]:
        """Each acceptor's durable decided value for the slot, where it has one."""
        held = {}
        for replica, store in self.stores.items():
            assert not store.has_unsynced()
            found = read_decided(store, OWNER, slot)
            if found is not None:
                held[replica] = found
        return held

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]

    def sent_of(self, kind: type, op_id: str | None = None) -> list[Envelope]:
        return [
            e
            for e in self.sent
            if isinstance(e.message, kind) and (op_id is None or e.message.op_id == op_id)
        ]


def is_op(op_id: str) -> Callable[[Envelope], bool]:
    return lambda e: e.message.op_id == op_id


# -- the happy path -----------------------------------------------------------------------------


def test_learn_of_a_fresh_owner_is_genesis_after_a_majority_of_reports() -> None:
    net = Network()
    effects = net.learn("l1")
    assert sorted(e.destination for e in effects.messages) == list(REPLICAS)
    assert all(isinstance(e.message, EpochQuery) for e in effects.messages)
    assert {t.kind: t.due for t in effects.timers} == {
        TimerKind.DEADLINE: 5.0,
        TimerKind.RESEND: 1.0,
    }
    net.step("l1", EpochQuery, ("r1",))
    assert net.replies == []
    net.step("l1", EpochQuery, ("r3",))
    assert net.reply("l1") == EpochDone(
        op_id="l1", owner=OWNER, value=GENESIS, rotated=False, failure=None
    )
    assert net.sent_of(Prepare) == []
    assert net.coordinators["c1"].operations_in_flight() == 0
    assert all(not s.durable_items() for s in net.stores.values())  # a learn wrote nothing


def test_simple_rotate_from_1_to_2_is_decided_everywhere() -> None:
    net = Network()
    net.now = 3.0
    net.rotate("rot", expected=1)
    net.step("rot", EpochQuery)
    prepares = net.sent_of(Prepare, "rot")
    assert len(prepares) == 3
    assert all(
        isinstance(p.message, Prepare)
        and p.message.slot == 2
        and p.message.ballot == Ballot(round=1, peer="rot")
        for p in prepares
    )
    net.step("rot", Prepare)
    (accept, *_) = net.sent_of(Accept, "rot")
    assert isinstance(accept.message, Accept)
    proposed = accept.message.value
    assert proposed.epoch == 2 and proposed.requested_by == "rot"
    assert proposed.requested_at_s == 1_700_000_003.0
    assert len(proposed.salt) == LIMITS.salt_bits // 4
    net.step("rot", Accept, ("r1", "r2"))
    done = net.reply("rot")
    assert done == EpochDone(op_id="rot", owner=OWNER, value=proposed, rotated=True, failure=None)
    assert len(net.sent_of(Decide, "rot")) == 3
    net.pending = [e for e in net.pending if not isinstance(e.message, Accept)]
    net.run()
    assert net.decided(2) == {r: proposed for r in REPLICAS}
    for replica in REPLICAS:
        assert net.acceptors[replica].active_epoch(OWNER) == proposed
        assert read_epoch_meta(net.stores[replica], OWNER).decided_slot == 2
    (chosen,) = net.named("epoch_chosen")
    assert chosen.epoch == 2 and dict(chosen.details) == {"own": 1}
    (rotated,) = net.named("epoch_rotated")
    assert rotated.request_id == "rot" and rotated.epoch == 2 and not rotated.details
    assert [e.epoch for e in net.named("epoch_learned")] == [2, 2, 2]
    # r3 never got the accept: it learned from the Decide alone
    assert read_acceptor_slot(net.stores["r3"], OWNER, 2).accepted_value is None


def test_learn_after_a_rotate_answers_the_new_epoch_on_any_proposer() -> None:
    net = Network(("c1", "c2"))
    net.rotate("rot", expected=1)
    net.run()
    rotated = net.reply("rot")
    assert rotated.rotated and rotated.value is not None
    for coordinator, op_id in (("c1", "l1"), ("c2", "l2")):
        net.learn(op_id, coordinator)
        net.run()
        assert net.reply(op_id) == EpochDone(
            op_id=op_id, owner=OWNER, value=rotated.value, rotated=False, failure=None
        )
    assert len(net.sent_of(Prepare)) == 3  # only the rotate ever prepared


def test_salts_differ_between_rotations() -> None:
    net = Network()
    net.rotate("a", expected=1)
    net.run()
    net.rotate("b", expected=2)
    net.run()
    a, b = net.reply("a").value, net.reply("b").value
    assert a is not None and b is not None
    assert (a.epoch, b.epoch) == (2, 3)
    assert a.salt != b.salt
    assert net.acceptors["r2"].active_epoch(OWNER) == b


def test_rotate_with_a_stale_expected_epoch_changes_nothing() -> None:
    net = Network()
    net.rotate("first", expected=1)
    net.run()
    current = net.reply("first").value
    prepares = len(net.sent_of(Prepare))
    net.rotate("retry", expected=1)
    net.run()
    assert net.reply("retry") == EpochDone(
        op_id="retry", owner=OWNER, value=current, rotated=False, failure=None
    )
    assert len(net.sent_of(Prepare)) == prepares
    assert net.decided(3) == {}


def test_rotate_expecting_a_future_epoch_changes_nothing() -> None:
    net = Network()
    net.rotate("ahead", expected=5)
    net.run()
    assert net.reply("ahead") == EpochDone(
        op_id="ahead", owner=OWNER, value=GENESIS, rotated=False, failure=None
    )
    assert net.sent_of(Prepare) == []


def test_rotate_without_expected_epoch_rotates_once_from_the_active_one() -> None:
    net = Network()
    net.rotate("one", expected=1)
    net.run()
    net.rotate("blind", expected=None)
    net.run()
    done = net.reply("blind")
    assert done.rotated is True and done.value is not None
    assert done.value.epoch == 3 and done.value.requested_by == "blind"
    assert set(net.decided(3).values()) == {done.value}
    assert net.decided(4) == {}


# -- dueling proposers --------------------------------------------------------------------------


def test_dueling_proposers_interleaved_choose_one_value() -> None:
    net = Network(("c1", "c2"))
    net.rotate("a", expected=1, coordinator="c1")
    net.rotate("b", expected=1, coordinator="c2")
    net.step("a", EpochQuery)
    net.step("b", EpochQuery)
    net.step("a", Prepare, ("r1", "r2"))  # a holds promises of r1, r2 at 1.c1
    net.step("b", Prepare, ("r2", "r3"))  # b outranks it on r2, r3 at 1.c2
    # r1 accepts a's value, r2 and r3 refuse: no majority is left, a is preempted
    net.step("a", Accept, ("r1", "r2", "r3"))
    assert [e.name for e in net.events if e.request_id == "a"][-1] == "paxos_preempted"
    assert net.replies == []
    net.step("b", Accept, ("r2", "r3"))
    b_done = net.reply("b")
    assert b_done.rotated is True and b_done.value is not None
    assert b_done.value.requested_by == "b"
    net.run()
    net.fire(TimerKind.BACKOFF, "a")
    net.run()
    a_done = net.reply("a")
    assert a_done == EpochDone(
        op_id="a", owner=OWNER, value=b_done.value, rotated=False, failure=None
    )
    assert set(net.decided(2).values()) == {b_done.value}
    assert net.named("paxos_disagreement") == []
    # a's second round carried a higher round than the one that beat it
    rounds = sorted({e.message.ballot.round for e in net.sent_of(Prepare, "a")})  # type: ignore[union-attr]
    assert rounds[0] == 1 and rounds[-1] >= 2


@pytest.mark.parametrize("seed", range(40))
def test_dueling_proposers_in_random_orders_agree(seed: int) -> None:
    order = random.Random(seed)
    net = Network(("c1", "c2"), seed=seed)
    net.rotate("a", expected=1, coordinator="c1")
    net.rotate("b", expected=1, coordinator="c2")
    for _ in range(200):
        if net.pending:
            envelope = order.choice(net.pending)
            if order.random() < 0.1:
                net.pending.remove(envelope)  # dropped
            else:
                net.deliver(envelope)
        elif quick := [t for t in net.timers if t.kind is not TimerKind.DEADLINE]:
            net.fire_timer(order.choice(quick))
        else:
            break
    net.settle()
    a, b = net.reply("a"), net.reply("b")
    assert a.failure is None and b.failure is None
    assert [a.rotated, b.rotated].count(True) == 1
    assert a.value == b.value and a.value is not None and a.value.epoch == 2
    winner = "a" if a.rotated else "b"
    assert a.value.requested_by == winner
    assert set(net.decided(2).values()) <= {a.value}
    assert net.named("paxos_disagreement") == []


def test_two_rotates_on_one_proposer_choose_one_value() -> None:
    net = Network(("c1",))
    net.rotate("a", expected=1)
    net.rotate("b", expected=1)
    net.step("a", EpochQuery)
    net.step("b", EpochQuery)
    net.step("a", Prepare)
    net.step("b", Prepare)  # 1.b, not 1.a: every operation has a ballot of its own
    net.step("a", Accept, ("r1", "r2"))
    net.step("b", Accept, ("r2", "r3"))
    net.settle()  # the preempted one backs off, learns, and answers
    a, b = net.reply("a"), net.reply("b")
    assert [a.rotated, b.rotated].count(True) == 1
    assert a.value == b.value
    assert len(set(net.decided(2).values())) == 1
    assert net.named("paxos_disagreement") == []
    assert net.named("paxos_disagreement") == []


# -- a proposer dies halfway --------------------------------------------------------------------


def crash_after_one_accept(net: Network) -> EpochValue:
    """c1's rotate gets its value accepted by r1 only, then c1 dies."""
    net.rotate("lost", expected=1, coordinator="c1")
    net.step("lost", EpochQuery)
    net.step("lost", Prepare)
    net.deliver_where(lambda e: isinstance(e.message, Accept) and e.destination == "r1")
    net.crash_proposer("c1")
    state = read_acceptor_slot(net.stores["r1"], OWNER, 2)
    assert state.accepted_value is not None
    assert read_acceptor_slot(net.stores["r2"], OWNER, 2).accepted_value is None
    assert net.replies == []
    return state.accepted_value


def test_a_later_learn_finishes_the_value_a_dead_proposer_left_behind() -> None:
    net = Network(("c1", "c2"))
    orphan = crash_after_one_accept(net)
    assert orphan.requested_by == "lost"
    net.learn("z-learn", coordinator="c2")
    net.step("z-learn", EpochQuery, ("r1", "r2"))  # r1 reports accepted slot 2 > decided 1
    prepares = net.sent_of(Prepare, "z-learn")
    assert prepares and all(p.message.slot == 2 for p in prepares)  # type: ignore[union-attr]
    net.step("z-learn", Prepare, ("r1", "r3"))  # a majority that includes r1: its value is adopted
    accepts = net.sent_of(Accept, "z-learn")
    assert accepts and all(a.message.value == orphan for a in accepts)  # type: ignore[union-attr]
    net.run()
    assert net.reply("z-learn") == EpochDone(
        op_id="z-learn", owner=OWNER, value=orphan, rotated=False, failure=None
    )
    assert net.decided(2) == {r: orphan for r in REPLICAS}
    (chosen,) = net.named("epoch_chosen")
    assert chosen.epoch == 2 and dict(chosen.details) == {"own": 0}


def test_a_later_rotate_adopts_the_dead_proposers_value_instead_of_its_own() -> None:
    net = Network(("c1", "c2"))
    orphan = crash_after_one_accept(net)
    net.rotate("mine", expected=1, coordinator="c2")
    net.step("mine", EpochQuery, ("r1", "r3"))
    net.step("mine", Prepare, ("r1", "r2"))
    net.run()
    done = net.reply("mine")
    assert done == EpochDone(op_id="mine", owner=OWNER, value=orphan, rotated=False, failure=None)
    assert set(net.decided(2).values()) == {orphan}
    assert net.decided(3) == {}


def test_a_learn_whose_majority_missed_the_orphan_reports_the_old_epoch() -> None:
    net = Network(("c1", "c2"))
    crash_after_one_accept(net)
    net.learn("z-learn", coordinator="c2")
    net.step("z-learn", EpochQuery, ("r1", "r2"))
    net.step("z-learn", Prepare, ("r2", "r3"))  # neither accepted anything: nothing was chosen
    assert net.reply("z-learn") == EpochDone(
        op_id="z-learn", owner=OWNER, value=GENESIS, rotated=False, failure=None
    )
    assert net.sent_of(Accept, "z-learn") == []
    assert net.decided(2) == {}


def test_a_rotate_whose_majority_missed_the_orphan_proposes_its_own_value() -> None:
    net = Network(("c1", "c2"))
    orphan = crash_after_one_accept(net)
    net.rotate("mine", expected=1, coordinator="c2")
    net.step("mine", EpochQuery, ("r1", "r2"))
    net.step("mine", Prepare, ("r2", "r3"))
    net.run()
    done = net.reply("mine")
    assert done.rotated is True and done.value is not None
    assert done.value.requested_by == "mine" and done.value != orphan
    assert set(net.decided(2).values()) == {done.value}
    # r1's orphan was overwritten by the higher ballot when it accepted "mine"
    assert read_acceptor_slot(net.stores["r1"], OWNER, 2).accepted_value == done.value


def test_a_rotate_without_body_meeting_an_orphan_still_rotates() -> None:
    net = Network(("c1", "c2"))
    crash_after_one_accept(net)
    net.rotate("blind", expected=None, coordinator="c2")
    net.step("blind", EpochQuery, ("r1", "r2"))
    # the dead proposer's promises (1.lost) outrank 1.blind: it backs off and prepares again
    net.step("blind", Prepare, ("r2", "r3"))
    net.pending = [e for e in net.pending if not isinstance(e.message, Prepare)]
    net.fire(TimerKind.BACKOFF, "blind")
    net.step("blind", Prepare, ("r2", "r3"))  # a majority that never saw the orphan
    net.settle()
    done = net.reply("blind")
    assert done.failure is None and done.value is not None
    # the active epoch was 1 and nothing else was chosen: "rotates from whatever is active"
    assert done.rotated is True and done.value.epoch == 2


# -- acceptor crashes ---------------------------------------------------------------------------


@pytest.mark.parametrize("lose_unsynced", [False, True])
def test_an_acceptor_restarted_between_promise_and_accept_keeps_its_promise(
    lose_unsynced: bool,
) -> None:
    net = Network(("c1", "c2"))
    net.rotate("a-low", expected=1, coordinator="c1")
    net.rotate("b-high", expected=1, coordinator="c2")
    net.step("a-low", EpochQuery)
    net.step("b-high", EpochQuery)
    net.step("a-low", Prepare, ("r1", "r2"))  # 1.c1 promised by r1, r2
    net.step("b-high", Prepare, ("r1", "r2"))  # 1.c2 promised by r1, r2 (low does not hear yet)
    for replica in ("r1", "r2"):
        if lose_unsynced:
            # the process was in the middle of a later write when it died
            net.stores[replica].stage([(b"zz-unrelated", b"x")])
            assert net.restart_acceptor(replica) == 1
        else:
            assert net.restart_acceptor(replica) == 0
        assert net.acceptors[replica].slot_state(OWNER, 2).promised == Ballot(
            round=1, peer="b-high"
        )
    # low still believes it holds a majority and sends its accepts: both restarted refuse
    low_accepts = [
        e
        for e in net.pending
        if isinstance(e.message, Accept) and e.message.op_id == "a-low" and e.destination != "r3"
    ]
    assert len(low_accepts) == 2
    for envelope in low_accepts:
        net.deliver(envelope)
    for replica in ("r1", "r2"):
        assert net.acceptors[replica].slot_state(OWNER, 2).accepted_value is None
    net.settle()
    low, high = net.reply("a-low"), net.reply("b-high")
    assert high.rotated is True and low.rotated is False
    assert low.value == high.value
    assert set(net.decided(2).values()) == {high.value}


# -- partitions, timers, backoff ----------------------------------------------------------------


def test_two_acceptors_unreachable_fails_at_the_deadline_then_a_learn_finishes() -> None:
    net = Network(("c1", "c2"))
    net.rotate("cut", expected=1, coordinator="c1")
    net.step("cut", EpochQuery)
    net.step("cut", Prepare)
    net.down = {"r2", "r3"}  # the partition starts as the accepts leave
    net.run()
    assert read_acceptor_slot(net.stores["r1"], OWNER, 2).accepted_value is not None
    before = len(net.sent)
    net.fire(TimerKind.RESEND, "cut")
    resent = net.sent[before:]
    assert sorted(e.destination for e in resent) == ["r2", "r3"]
    assert all(isinstance(e.message, Accept) for e in resent)
    net.run()
    assert net.replies == []
    assert net.named("epoch_operation_failed") == []
    effects = net.fire(TimerKind.DEADLINE, "cut")
    assert effects.replies == [
        EpochDone(
            op_id="cut", owner=OWNER, value=None, rotated=False, failure=Failure.QUORUM_TIMEOUT
        )
    ]
    (failed,) = net.named("epoch_operation_failed")
    assert failed.request_id == "cut" and dict(failed.details) == {"phase": "accept"}
    assert net.coordinators["c1"].operations_in_flight() == 0
    assert net.fire(TimerKind.RESEND, "cut").is_empty()  # a finished operation ignores timers
    # healed: a learn that hears r1 finishes the half-done round
    net.down = set()
    net.learn("z-after", coordinator="c2")
    net.step("z-after", EpochQuery, ("r1", "r3"))
    net.step("z-after", Prepare, ("r1", "r2"))
    net.run()
    done = net.reply("z-after")
    assert done.failure is None and done.value is not None
    assert done.value.epoch == 2 and done.value.requested_by == "cut"
    assert set(net.decided(2).values()) == {done.value}


def test_a_partition_before_anything_was_accepted_reports_the_old_epoch_after_healing() -> None:
    net = Network(("c1", "c2"))
    net.down = {"r2", "r3"}
    net.rotate("cut", expected=1, coordinator="c1")
    net.run()
    net.fire(TimerKind.RESEND, "cut")
    net.run()
    net.fire(TimerKind.DEADLINE, "cut")
    assert net.reply("cut").failure is Failure.QUORUM_TIMEOUT
    (failed,) = net.named("epoch_operation_failed")
    assert dict(failed.details) == {"phase": "query"}
    net.down = set()
    net.learn("after", coordinator="c2")
    net.run()
    assert net.reply("after").value == GENESIS
    assert net.sent_of(Prepare) == []


def test_resend_goes_only_to_silent_acceptors_and_rearms() -> None:
    net = Network()
    net.rotate("r", expected=1)
    net.step("r", EpochQuery, ("r1",))
    net.pending.clear()  # the queries to r2 and r3 are lost
    net.now = 0.5
    before = len(net.sent)
    effects = net.fire(TimerKind.RESEND, "r")
    assert sorted(e.destination for e in net.sent[before:]) == ["r2", "r3"]
    assert all(isinstance(e.message, EpochQuery) for e in net.sent[before:])
    assert effects.timers == [Timer(kind=TimerKind.RESEND, op_id="r", due=2.0)]
    net.step("r", EpochQuery, ("r2",))
    # in the prepare phase, the silent acceptors are the ones without a promise
    net.step("r", Prepare, ("r3",))
    net.pending.clear()
    before = len(net.sent)
    net.fire(TimerKind.RESEND, "r")
    resent = net.sent[before:]
    assert sorted(e.destination for e in resent) == ["r1", "r2"]
    assert all(isinstance(e.message, Prepare) for e in resent)
    net.run()
    assert net.reply("r").rotated is True


def test_duplicated_answers_count_once() -> None:
    net = Network()
    net.learn("l")
    net.deliver_where(lambda e: e.destination == "r1")
    (report,) = [e for e in net.pending if isinstance(e.message, EpochReport)]
    for _ in range(3):
        net.absorb("c1", net.coordinators["c1"].on_message("r1", report.message, net.now))
    assert net.replies == []
    net.rotate("r", expected=1)
    net.step("r", EpochQuery)
    net.deliver_where(lambda e: e.destination == "r2" and isinstance(e.message, Prepare))
    (promise,) = [e for e in net.pending if isinstance(e.message, Promise)]
    for _ in range(3):
        effects = net.coordinators["c1"].on_message("r2", promise.message, net.now)
        assert effects.messages == []  # no accept on a single promise, however often it came


def test_answers_from_strangers_and_stale_ballots_are_ignored() -> None:
    net = Network()
    net.rotate("r", expected=1)
    net.step("r", EpochQuery)
    stranger = EpochReport(op_id="r", owner=OWNER, decided=GENESIS, accepted_slot=1)
    assert net.coordinators["c1"].on_message("r9", stranger, 0.0).is_empty()
    stale = Promise(
        op_id="r",
        owner=OWNER,
        slot=2,
        ballot=Ballot(round=7, peer="c1"),  # not the ballot it prepared with
        granted=True,
        promised=Ballot(round=7, peer="c1"),
        accepted_ballot=None,
        accepted_value=None,
        decided=None,
    )
    for replica in REPLICAS:
        assert net.coordinators["c1"].on_message(replica, stale, 0.0).is_empty()
    late_report = net.coordinators["c1"].on_message("r1", stranger, 0.0)
    assert late_report.is_empty()  # a report in the prepare phase counts for nothing
    net.run()
    assert net.reply("r").rotated is True


class ScriptedRandom:
    """A RandomSource whose random() answers a script, recording each draw."""

    def __init__(self, draws: list[float]) -> None:
        self.draws = list(draws)
        self.used: list[float] = []

    def random(self) -> float:
        self.used.append(self.draws.pop(0))
        return self.used[-1]

    def getrandbits(self, k: int, /) -> int:
        return 0xABC


def preempt_everywhere(net: Network, round_: int) -> None:
    """Another proposer (never answered) prepares slot 2 on every acceptor at `round_`."""
    prepare = Prepare(op_id="ghost", owner=OWNER, slot=2, ballot=Ballot(round=round_, peer="zz"))
    for replica in REPLICAS:
        store = net.stores[replica]
        store.stage(net.acceptors[replica].on_message("ghost", prepare).writes)
        store.sync()


def test_preemption_backs_off_with_the_injected_random_source() -> None:
    rng = ScriptedRandom([0.0, 0.999])
    net = Network(rngs={"c1": rng})
    net.now = 10.0
    net.rotate("r", expected=1)
    net.step("r", EpochQuery)
    preempt_everywhere(net, 4)
    net.step("r", Prepare, ("r2",))
    assert rng.used == []  # one refusal: a majority of grants is still possible
    net.step("r", Prepare, ("r3",))
    assert rng.used == [0.0]
    (backoff,) = [t for t in net.timers if t.kind is TimerKind.BACKOFF]
    # first preemption: attempts == 1, delay = 0.02 * 2 * (0.5 + 0.0)
    assert backoff.due == pytest.approx(10.0 + 0.02)
    (preempted,) = net.named("paxos_preempted")
    assert dict(preempted.details) == {"slot": 2, "by_round": 4}
    # the last refusal arrives while it backs off: ignored, nothing sent, no second timer
    sent = len(net.sent)
    net.step("r", Prepare)
    assert len(net.sent) == sent and rng.used == [0.0]
    net.fire_timer(backoff)
    second = net.sent_of(Prepare, "r")[-3:]
    assert {p.message.ballot for p in second} == {Ballot(round=5, peer="r")}  # type: ignore[union-attr]
    preempt_everywhere(net, 9)
    net.step("r", Prepare, ("r1", "r3"))
    (backoff,) = [t for t in net.timers if t.kind is TimerKind.BACKOFF]
    # second preemption: attempts == 2, delay = 0.02 * 4 * (0.5 + 0.999)
    assert backoff.due == pytest.approx(net.now + 0.08 * 1.499)
    assert rng.used == [0.0, 0.999]
    net.fire_timer(backoff)
    net.run()
    done = net.reply("r")
    assert done.rotated is True and done.value is not None and done.value.salt == f"{0xABC:032x}"


def test_backoff_delay_is_capped() -> None:
    limits = EpochLimits(backoff_initial_s=0.1, backoff_max_s=0.3, attempts_max=20)
    rng = ScriptedRandom([0.5] * 20)
    net = Network(limits=limits, rngs={"c1": rng})
    net.rotate("r", expected=1)
    net.step("r", EpochQuery)
    delays = []
    for attempt in range(1, 6):
        preempt_everywhere(net, 10 * attempt)
        net.step("r", Prepare, ("r1", "r2"))
        (backoff,) = [t for t in net.timers if t.kind is TimerKind.BACKOFF]
        delays.append(round(backoff.due - net.now, 9))
        net.pending.clear()
        net.fire_timer(backoff)
    assert delays == [0.2, 0.3, 0.3, 0.3, 0.3]


def test_attempts_max_ends_in_contended() -> None:
    limits = EpochLimits(attempts_max=3)
    net = Network(limits=limits)
    net.rotate("r", expected=1)
    net.step("r", EpochQuery)
    for attempt in range(1, 5):
        preempt_everywhere(net, 10 * attempt)
        net.step("r", Prepare, ("r1", "r2"))
        net.pending.clear()
        if attempt <= 3:
            assert net.replies == []
            net.fire(TimerKind.BACKOFF, "r")
    done = net.reply("r")
    assert done == EpochDone(
        op_id="r", owner=OWNER, value=None, rotated=False, failure=Failure.CONTENDED
    )
    (failed,) = net.named("epoch_operation_failed")
    assert dict(failed.details) == {"phase": "contended"}
    assert len(net.named("paxos_preempted")) == 3
    assert net.coordinators["c1"].operations_in_flight() == 0
    assert not [t for t in net.timers if t.kind is TimerKind.BACKOFF]
    assert net.decided(2) == {}


def decide_everywhere(net: Network, value: EpochValue) -> None:
    """Every acceptor is told that `value` was decided (as a peer's Decide may say)."""
    decide = Decide(op_id="elsewhere", owner=OWNER, value=value)
    for replica in REPLICAS:
        store = net.stores[replica]
        store.stage(net.acceptors[replica].on_message("elsewhere", decide).writes)
        store.sync()


def test_a_rotate_at_the_last_epoch_answers_epochs_exhausted_and_sends_no_prepare() -> None:
    last = EpochValue(epoch=EPOCH_MAX, salt="ab" * 8, requested_by="x", requested_at_s=0.0)
    decide_everywhere(net := Network(), last)
    net.rotate("r", expected=None)
    net.step("r", EpochQuery)
    assert net.reply("r") == EpochDone(
        op_id="r", owner=OWNER, value=None, rotated=False, failure=Failure.EPOCHS_EXHAUSTED
    )
    assert net.sent_of(Prepare) == []
    (failed,) = net.named("epoch_operation_failed")
    assert dict(failed.details) == {"phase": "epochs_exhausted"}
    assert net.coordinators["c1"].operations_in_flight() == 0
    net.learn("l")  # a learn still answers the last epoch
    net.run()
    assert net.reply("l").value == last


def test_the_epoch_before_the_last_rotates_once_more_then_is_exhausted() -> None:
    before_last = EpochValue(epoch=EPOCH_MAX - 1, salt="cd" * 8, requested_by="x", requested_at_s=0)
    decide_everywhere(net := Network(), before_last)
    net.rotate("r1", expected=EPOCH_MAX - 1)
    net.run()
    done = net.reply("r1")
    assert done.rotated and done.value is not None and done.value.epoch == EPOCH_MAX
    assert net.decided(EPOCH_MAX) == {r: done.value for r in REPLICAS}
    net.rotate("r2", expected=None)
    net.run()
    assert net.reply("r2").failure is Failure.EPOCHS_EXHAUSTED


def test_a_promise_at_the_last_round_ends_the_rotate_contended_without_a_bad_ballot() -> None:
    net = Network()
    net.rotate("r", expected=1)
    net.step("r", EpochQuery)
    preempt_everywhere(net, BALLOT_ROUND_MAX)
    net.step("r", Prepare)  # refused everywhere: the highest round seen is the last one
    net.fire(TimerKind.BACKOFF, "r")
    assert net.reply("r") == EpochDone(
        op_id="r", owner=OWNER, value=None, rotated=False, failure=Failure.CONTENDED
    )
    assert dict(net.named("epoch_operation_failed")[-1].details) == {"phase": "rounds_exhausted"}
    assert all(p.message.ballot.round < BALLOT_ROUND_MAX for p in net.sent_of(Prepare))  # type: ignore[union-attr]


def test_operations_max_answers_overloaded() -> None:
    net = Network(limits=EpochLimits(operations_max=2))
    net.learn("a")
    net.rotate("b", expected=1)
    sent, timers = len(net.sent), len(net.timers)
    effects = net.learn("c")
    assert effects.replies == [
        EpochDone(op_id="c", owner=OWNER, value=None, rotated=False, failure=Failure.OVERLOADED)
    ]
    assert len(net.sent) == sent and len(net.timers) == timers
    net.run()
    assert net.coordinators["c1"].operations_in_flight() == 0


def test_a_replica_that_missed_the_decide_teaches_it_through_a_later_prepare() -> None:
    net = Network(("c1", "c2"))
    net.rotate("rot", expected=1, coordinator="c1")
    net.step("rot", EpochQuery)
    net.step("rot", Prepare)
    net.step("rot", Accept)
    winner = net.reply("rot").value
    net.deliver_where(lambda e: isinstance(e.message, Decide) and e.destination == "r1")
    net.pending.clear()  # the Decides to r2, r3 are lost
    assert net.decided(2) == {"r1": winner}
    # a learn that hears only r2, r3 sees accepted slot 2 > decided 1 and finishes it
    net.learn("l", coordinator="c2")
    net.step("l", EpochQuery, ("r2", "r3"))
    net.run()
    assert net.reply("l").value == winner
    assert net.decided(2) == {r: winner for r in REPLICAS}
    assert net.named("paxos_disagreement") == []


# -- property: one value per slot, whatever the network does -----------------------------------

COORDINATORS = ("c1", "c2", "c3")
operation_strategy = st.tuples(
    st.sampled_from(["rotate", "rotate", "blind", "learn"]),
    st.sampled_from(COORDINATORS),
    st.integers(min_value=-1, max_value=1),  # expected epoch relative to what is active
)


Acceptances = dict[tuple[Ballot, EpochValue], set[str]]


def chosen_so_far(net: Network, slot: int, accepted: Acceptances) -> EpochValue | None:
    """A value is chosen once a majority of acceptors have accepted it at one ballot: Paxos's
    definition is over what they accepted, ever, not what they hold now (an acceptor may move
    on to a higher ballot before the last of the majority accepts). `accepted` gathers every
    acceptance seen on the acceptors (synced at each step) across calls."""
    for replica, store in net.stores.items():
        state = read_acceptor_slot(store, OWNER, slot)
        if state.accepted_ballot is not None and state.accepted_value is not None:
            accepted.setdefault((state.accepted_ballot, state.accepted_value), set()).add(replica)
    winners = {v for (_, v), acceptors in accepted.items() if len(acceptors) >= 2}
    assert len(winners) <= 1
    return next(iter(winners), None)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    operations=st.lists(operation_strategy, min_size=2, max_size=7),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_at_most_one_value_per_slot_under_any_delivery(
    operations: list[tuple[str, str, int]], seed: int, data: st.DataObject
) -> None:
    """Proposers run at most one operation each at a time (see the xfail above for why)."""
    # a long deadline: timeouts come mostly from the rare "deadline" action below
    net = Network(COORDINATORS, seed=seed, limits=EpochLimits(operation_timeout_s=30.0))
    chosen: dict[int, EpochValue] = {}
    accepted: dict[int, Acceptances] = {}  # slot -> every acceptance seen
    started_at: dict[str, int] = {}  # op id -> number of replies seen when it started
    kinds: dict[str, tuple[str, int | None]] = {}
    busy: dict[str, str] = {}  # coordinator -> op id in flight
    queue = list(operations)

    replies_seen = 0

    def observe() -> None:
        nonlocal replies_seen
        for slot in range(2, 2 + len(operations) + 1):
            now_chosen = chosen_so_far(net, slot, accepted.setdefault(slot, {}))
            if now_chosen is not None:
                assert chosen.setdefault(slot, now_chosen) == now_chosen
            for held in net.decided(slot).values():
                assert chosen.get(slot) == held, "decided without being chosen, or differently"
        assert net.named("paxos_disagreement") == []
        for reply in net.replies[replies_seen:]:
            assert busy.pop(net.owner_of[reply.op_id]) == reply.op_id
        replies_seen = len(net.replies)

    def active_epoch() -> int:
        return max([1, *chosen])

    for step in range(300):
        actions = []
        free = [op for op in queue if op[1] not in busy]
        if free:
            actions.append("start")
        if net.pending:
            actions += ["deliver"] * 6 + ["drop", "duplicate"]
        # the clock moves forward: one of the two timers due first fires
        quick = sorted(net.timers, key=lambda t: t.due)[:2]
        deadlines = [t for t in net.timers if t.kind is TimerKind.DEADLINE]
        if quick:
            actions.append("timer")
        if deadlines:
            actions.append("deadline")
        if not actions:
            break
        action = data.draw(st.sampled_from(actions), label=f"action {step}")
        if action == "start":
            operation = free[0]
            queue.remove(operation)
            kind, coordinator, offset = operation
            op_id = f"op{len(kinds)}"
            busy[coordinator] = op_id
            started_at[op_id] = len(net.replies)
            if kind == "learn":
                kinds[op_id] = ("learn", None)
                net.learn(op_id, coordinator)
            else:
                expected = None if kind == "blind" else max(1, active_epoch() + offset)
                kinds[op_id] = (kind, expected)
                net.rotate(op_id, expected, coordinator)
        elif action == "deliver":
            net.deliver(data.draw(st.sampled_from(net.pending), label="deliver"))
        elif action == "drop":
            net.pending.remove(data.draw(st.sampled_from(net.pending), label="drop"))
        elif action == "duplicate":
            net.pending.append(data.draw(st.sampled_from(net.pending), label="duplicate"))
        elif action == "timer":
            net.fire_timer(data.draw(st.sampled_from(quick), label="next timer"))
        elif data.draw(st.integers(0, 19), label="fire a deadline early") == 19:
            net.fire_timer(data.draw(st.sampled_from(deadlines), label="deadline"))
        observe()
    net.settle()
    observe()

    assert sorted(r.op_id for r in net.replies) == sorted(kinds), "one answer per operation"
    finished_before: list[tuple[int, int]] = []  # (reply index, epoch) of answered operations
    for index, reply in enumerate(net.replies):
        kind, expected = kinds[reply.op_id]
        if reply.failure is not None:
            assert reply.value is None and not reply.rotated
            continue
        assert reply.value is not None
        epoch = reply.value.epoch
        assert (epoch == 1 and reply.value == GENESIS) or chosen.get(epoch) == reply.value
        if reply.rotated:
            assert kind != "learn"
            assert reply.value.requested_by == reply.op_id
            if expected is not None:
                assert epoch == expected + 1
        # an operation started after another one answered never answers an older epoch
        for answered_at, answered_epoch in finished_before:
            if answered_at < started_at[reply.op_id]:
                assert epoch >= answered_epoch, "an epoch went back"
        finished_before.append((index, epoch))
    rotated = [r for r in net.replies if r.rotated]
    event(f"slots chosen: {len(chosen)}")
    event(f"rotated answers: {len(rotated)}")
    failed_in = sorted(dict(e.details)["phase"] for e in net.named("epoch_operation_failed"))
    event(f"failed in phases: {failed_in}")
    assert len({r.value.epoch for r in rotated if r.value}) == len(rotated), "one winner a slot"


@pytest.mark.parametrize(
    ("down", "deadline_s"),
    [
        (frozenset(), LIMITS.operation_timeout_s),
        (frozenset({"r3"}), LIMITS.operation_timeout_s),  # a majority is still up: wait
        (frozenset({"r2", "r3"}), LIMITS.down_grace_s),  # no majority up: give up soon
    ],
)
def test_the_deadline_is_short_when_the_failure_detector_holds_no_majority_up(
    down: frozenset[str], deadline_s: float
) -> None:
    for start in ("learn", "rotate"):
        coordinator = EpochCoordinator(peer_id="c1", rng=random.Random(0), limits=LIMITS)
        if start == "learn":
            effects = coordinator.start_learn(
                op_id="op",
                owner=OWNER,
                placement=OwnerPlacement.stable(REPLICAS),
                now=10.0,
                down=down,
            )
        else:
            effects = coordinator.start_rotate(
                op_id="op",
                owner=OWNER,
                placement=OwnerPlacement.stable(REPLICAS),
                expected_epoch=None,
                requested_at_s=0.0,
                now=10.0,
                down=down,
            )
        (deadline,) = [t for t in effects.timers if t.kind is TimerKind.DEADLINE]
        assert deadline.due == 10.0 + deadline_s
        # the operation still asks every replica: a peer just back may answer in the grace
        assert {e.destination for e in effects.messages} == set(REPLICAS)


# -- invariants: asserted where the proposer decides; never tripped by an acceptor's answer -----


class FixedRandom:
    """A RandomSource with one known salt, so a test can forge this proposer's own value."""

    def random(self) -> float:
        return 0.5

    def getrandbits(self, k: int, /) -> int:
        return 0xABC


def own_value(op_id: str = "r", epoch: int = 2) -> EpochValue:
    """The value a rotate `op_id` started at net.now == 0 on a FixedRandom proposes."""
    return EpochValue(
        epoch=epoch, salt=f"{0xABC:032x}", requested_by=op_id, requested_at_s=1_700_000_000.0
    )


def rotate_queried() -> Network:
    """A rotate "r" from epoch 1 on a FixedRandom proposer, its query answered: preparing."""
    net = Network(rngs={"c1": FixedRandom()})
    net.rotate("r", expected=1)
    net.step("r", EpochQuery)
    return net


def test_a_proposer_counting_answers_to_another_ballot_is_stopped_before_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = rotate_queried()
    net.step("r", Prepare)
    monkeypatch.setattr(  # the bug: an answer's ballot is no longer compared
        EpochCoordinator,
        "_is_current",
        lambda self, operation, phase, reply: operation.phase is phase,
    )
    old = Ballot(round=7, peer="old")
    stale = as_accepted(forged_promise(accepted=None, decided=None, ballot=old, promised=old))
    net.coordinators["c1"].on_message("r1", stale, net.now)
    with pytest.raises(InvariantViolation) as raised:
        net.coordinators["c1"].on_message("r2", stale, net.now)
    assert str(raised.value) == (
        "proposer would report a value chosen with 0 granted Accepted of 3"
        " in set r1,r2,r3 at owner acme slot 2 ballot 1.r"
    )
    assert net.named("epoch_chosen") == []


def test_a_rotate_that_did_not_learn_its_own_value_cannot_answer_rotated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = rotate_queried()
    monkeypatch.setattr(EpochCoordinator, "_learn", staticmethod(lambda operation, value: None))
    net.step("r", Prepare)
    with pytest.raises(
        InvariantViolation,
        match=r"^a rotate would answer rotated without its own value at owner acme slot 2",
    ):
        net.step("r", Accept)
    assert net.replies == []


def test_a_ballot_carries_one_value() -> None:
    net = rotate_queried()
    net.coordinators["c1"]._operations["r"].value = own_value("other")  # corrupted state
    with pytest.raises(InvariantViolation, match=r"second value at owner acme slot 2 ballot 1\.r$"):
        net.step("r", Prepare)
    assert net.sent_of(Accept) == []


def test_a_proposed_value_is_of_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    net = rotate_queried()
    monkeypatch.setattr(
        EpochCoordinator, "_own_value", staticmethod(lambda operation: own_value(epoch=3))
    )
    with pytest.raises(
        InvariantViolation, match=r"^proposer would propose epoch 3 at owner acme slot 2"
    ):
        net.step("r", Prepare)


CURRENT = Ballot(round=1, peer="r")  # the ballot of rotate_queried()'s first prepare


def forged_promise(
    *,
    accepted: EpochValue | None,
    decided: EpochValue | None,
    granted: bool = True,
    ballot: Ballot = CURRENT,
    promised: Ballot = CURRENT,
) -> Promise:
    return Promise(
        op_id="r",
        owner=OWNER,
        slot=2,
        ballot=ballot,
        granted=granted,
        promised=promised,
        accepted_ballot=None if accepted is None else Ballot(round=1, peer="old"),
        accepted_value=accepted,
        decided=decided,
    )


def as_accepted(promise: Promise) -> Accepted:
    """The Accepted answer with the promise's ballot, grant, promise and decided value."""
    return Accepted(
        op_id=promise.op_id,
        owner=promise.owner,
        slot=promise.slot,
        ballot=promise.ballot,
        granted=promise.granted,
        promised=promise.promised,
        decided=promise.decided,
    )


FOREIGN = EpochValue(epoch=2, salt="ff", requested_by="r", requested_at_s=0.0)


@pytest.mark.parametrize(
    ("accepted", "decided"),
    [(own_value("old", epoch=3), None), (None, own_value("old", epoch=3)), (None, FOREIGN)],
    ids=["accepted-of-another-slot", "decided-of-another-slot", "decided-naming-it-not-its-own"],
)
def test_an_answer_with_a_foreign_value_is_refused_and_reported(
    accepted: EpochValue | None, decided: EpochValue | None
) -> None:
    """The acceptor's misbehaviour, not ours: reported, ignored; the round goes on."""
    net = rotate_queried()
    net.deliver_where(lambda e: isinstance(e.message, Prepare))
    promise = forged_promise(accepted=accepted, decided=decided, granted=decided is None)
    effects = net.absorb("c1", net.coordinators["c1"].on_message("r1", promise, net.now))
    (event,) = effects.events
    assert event.name == "peer_protocol_conflict" and event.request_id == "r"
    assert dict(event.details) == {"source": "r1", "what": "foreign_value"}
    assert effects.messages == [] and effects.replies == []
    net.run()
    assert net.reply("r") == EpochDone(
        op_id="r", owner=OWNER, value=own_value(), rotated=True, failure=None
    )


forged_values = st.sampled_from(
    [
        None,
        own_value(),  # its own value, as an honest acceptor may report it
        own_value(epoch=3),
        own_value("other"),
        own_value("other", epoch=3),
        FOREIGN,
    ]
)
forged_ballots = st.sampled_from([Ballot(round=1, peer="r"), Ballot(round=2, peer="r")])


@st.composite
def forged_answers(draw: st.DrawFn) -> EpochReport | Promise | Accepted:
    kind = draw(st.sampled_from(["report", "promise", "accepted"]))
    decided = draw(forged_values)
    if kind == "report":
        return EpochReport(
            op_id="r",
            owner=OWNER,
            decided=decided or GENESIS,
            accepted_slot=draw(st.integers(1, 3)),
        )
    promise = forged_promise(
        accepted=draw(forged_values),
        decided=decided,
        granted=draw(st.booleans()),
        ballot=draw(forged_ballots),
        promised=draw(forged_ballots),
    )
    return as_accepted(promise) if kind == "accepted" else promise


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from(REPLICAS), forged_answers()), max_size=8
    )
)
def test_no_answers_an_acceptor_can_send_trip_an_invariant(
    steps: list[tuple[int, str, EpochReport | Promise | Accepted]],
) -> None:
    """An honest round with forged answers of the current slot and ballots slipped in at any
    point: the rotate answers once, and `rotated` only with its own value."""
    net = Network(rngs={"c1": FixedRandom()})
    net.rotate("r", expected=1)
    for honest, source, forged in steps:
        for _ in range(min(honest, len(net.pending))):
            net.deliver(net.pending[0])
        net.absorb("c1", net.coordinators["c1"].on_message(source, forged, net.now))
    net.settle()
    (done,) = [r for r in net.replies if r.op_id == "r"]
    assert not done.rotated or done.value == own_value()


# -- joint placements: a majority of each set (docs/membership.md §3) ---------------------------

# A moved owner: old set r1..r3, new set r3..r5.
JOINT = OwnerPlacement(old=REPLICAS, new=("r3", "r4", "r5"), version=7)


def test_a_stable_placement_sends_what_a_preference_list_did() -> None:
    """The fast path: the same rounds, messages, destinations and order; client requests carry
    the placement's ring version, a Decide none."""
    traces = []
    for version in (0, 5):
        net = Network(placement=OwnerPlacement.stable(REPLICAS, version=version))
        net.rotate("rot", expected=1)
        net.settle()
        assert net.reply("rot").rotated
        traces.append(net.sent)
    unversioned, versioned = traces
    assert [e.destination for e in versioned] == [e.destination for e in unversioned]
    for before, after in zip(unversioned, versioned, strict=True):
        ring = 0 if isinstance(before.message, Decide) else 5
        assert after.message == msgspec.structs.replace(before.message, ring=ring)


def test_a_joint_learn_needs_a_majority_of_each_set() -> None:
    net = Network(placement=JOINT)
    effects = net.learn("l1")
    assert [e.destination for e in effects.messages] == ["r1", "r2", "r3", "r4", "r5"]
    assert {e.message.ring for e in effects.messages if isinstance(e.message, EpochQuery)} == {7}
    net.step("l1", EpochQuery, ("r1", "r2"))
    assert net.replies == [], "a majority of the old set alone"
    net.step("l1", EpochQuery, ("r4",))
    assert net.replies == []
    net.step("l1", EpochQuery, ("r5",))
    assert net.reply("l1").value == GENESIS


def test_a_joint_rotate_prepares_and_accepts_with_a_majority_of_each_set() -> None:
    net = Network(placement=JOINT)
    net.rotate("rot", expected=1)
    net.step("rot", EpochQuery, JOINT.replicas)
    net.step("rot", Prepare, ("r1", "r2", "r4"))
    assert net.sent_of(Accept, "rot") == [], "one of the new set promised"
    net.step("rot", Prepare, ("r5",))
    accepts = net.sent_of(Accept, "rot")
    assert [e.destination for e in accepts] == list(JOINT.replicas)
    assert {e.message.ring for e in accepts if isinstance(e.message, Accept)} == {7}
    net.step("rot", Accept, ("r1", "r2", "r4"))
    assert net.replies == [], "accepted by a majority of the old set only"
    net.step("rot", Accept, ("r3",))
    done = net.reply("rot")
    assert done.rotated and done.value is not None and done.value.epoch == 2
    decides = net.sent_of(Decide, "rot")
    assert [e.destination for e in decides] == list(JOINT.replicas)
    assert {e.message.ring for e in decides if isinstance(e.message, Decide)} == {0}


def test_a_set_that_cannot_give_a_majority_ends_a_joint_round() -> None:
    net = Network(placement=JOINT)
    net.rotate("rot", expected=1)
    net.step("rot", EpochQuery, JOINT.replicas)
    (prepare,) = [e for e in net.pending if e.destination == "r4"]
    assert isinstance(prepare.message, Prepare)
    higher = Ballot(round=9, peer="other")
    for replica in ("r4", "r5"):  # two of the new set promised a higher ballot
        refusal = Promise(
            op_id="rot",
            owner=OWNER,
            slot=prepare.message.slot,
            ballot=prepare.message.ballot,
            granted=False,
            promised=higher,
            accepted_ballot=None,
            accepted_value=None,
            decided=None,
        )
        net.absorb("c1", net.coordinators["c1"].on_message(replica, refusal, net.now))
    assert [e.details for e in net.named("paxos_preempted")] == [(("slot", 2), ("by_round", 9))]


def test_recovering_replicas_of_one_set_fail_a_joint_learn_at_once() -> None:
    net = Network(placement=JOINT)
    net.learn("l1")
    for replica in ("r4", "r5"):
        report = EpochReport(
            op_id="l1", owner=OWNER, decided=GENESIS, accepted_slot=1, unavailable=True
        )
        net.absorb("c1", net.coordinators["c1"].on_message(replica, report, net.now))
    assert net.reply("l1").failure is Failure.QUORUM_TIMEOUT


def test_a_new_set_held_down_gives_a_joint_round_the_short_deadline() -> None:
    coordinator = EpochCoordinator(peer_id="c1", rng=random.Random(0), limits=LIMITS)
    effects = coordinator.start_learn(
        op_id="l1", owner=OWNER, placement=JOINT, now=0.0, down=frozenset({"r4", "r5"})
    )
    assert [t.due for t in effects.timers if t.kind is TimerKind.DEADLINE] == [LIMITS.down_grace_s]


def test_a_joint_value_chosen_by_one_set_only_is_stopped_before_it_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(  # the bug: a round counts the old set only
        EpochCoordinator,
        "_majority_of_each",
        staticmethod(lambda operation, answered: len(set(answered) & set(REPLICAS)) >= 2),
    )
    net = Network(placement=JOINT)
    net.rotate("rot", expected=1)
    net.step("rot", EpochQuery, ("r1", "r2"))
    net.step("rot", Prepare, ("r1", "r2"))
    with pytest.raises(InvariantViolation, match=r"0 granted Accepted of 3 in set r3,r4,r5"):
        net.step("rot", Accept, ("r1", "r2"))
    assert net.replies == []
