"""The ring register (quorum/ring_register.py): scripted cases, then a seeded network of
registers that drops, duplicates and reorders messages and restarts peers, checked for one
membership per version, versions that never go back, and convergence after healing."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenvault.quorum.effects import Effects, Event, RingDone, RingOutcome, Timer, TimerKind
from tokenvault.quorum.invariants import InvariantViolation
from tokenvault.quorum.messages import (
    RING_MESSAGE_TYPES,
    Ballot,
    Envelope,
    RingAccept,
    RingDecide,
    RingFetch,
    RingPrepare,
    RingVote,
)
from tokenvault.quorum.ring_records import LEARNED_KEY, RING_ACCEPTOR_PREFIX, read_ring_slot
from tokenvault.quorum.ring_register import RingLimits, RingRegister
from tokenvault.ring.membership import (
    AddMember,
    FinishChange,
    Membership,
    MembershipChange,
    RemoveMember,
    ReplaceMember,
    apply_change,
    bootstrap_membership,
    is_successor,
)
from tokenvault.store.memory_store import MemoryStore

BOOT = bootstrap_membership(
    [("n1", "h1:1"), ("n2", "h2:1"), ("n3", "h3:1")], replica_count=3, vnodes_per_peer=8
)
ALL = ("n1", "n2", "n3", "n4", "n5")


@dataclass
class Net:
    """Registers on in-memory stores; every write is staged and synced at once."""

    seed: int = 0
    drop: float = 0.0
    duplicate: float = 0.0
    rng: random.Random = field(init=False)
    stores: dict[str, MemoryStore] = field(default_factory=dict)
    cores: dict[str, RingRegister] = field(default_factory=dict)
    queue: list[Envelope] = field(default_factory=list)
    timers: list[tuple[float, int, str, Timer]] = field(default_factory=list)
    replies: dict[str, RingDone] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    decided: dict[int, Membership] = field(default_factory=dict)
    cut: set[str] = field(default_factory=set)  # peers every message to is lost
    now: float = 0.0
    _seq: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        for peer in ALL:
            self.stores[peer] = MemoryStore()
            self.start(peer)

    def start(self, peer: str) -> None:
        """(Re)starts a peer's register over its store: what it learned and promised stays."""
        self.cores[peer] = RingRegister(
            peer_id=peer,
            storage=self.stores[peer],
            bootstrap=BOOT,
            rng=random.Random(self.rng.random()),
        )

    def apply(self, peer: str, effects: Effects) -> None:
        before = self.cores[peer].learned.version
        self.stores[peer].stage(effects.writes)
        self.stores[peer].sync()
        learned = self.cores[peer].learned
        assert learned.version >= before, "a learned version went back"
        self.note_decided(learned)
        for envelope in effects.messages:
            if isinstance(envelope.message, RingDecide):
                self.note_decided(envelope.message.value)
            self.queue.append(envelope)
        for timer in effects.timers:
            self._seq += 1
            heapq.heappush(self.timers, (timer.due, self._seq, peer, timer))
        for reply in effects.replies:
            assert isinstance(reply, RingDone)
            assert reply.op_id not in self.replies, "an operation answered twice"
            self.replies[reply.op_id] = reply
            if reply.outcome is RingOutcome.CHANGED:
                self.note_decided(reply.membership)
        self.events.extend(effects.events)

    def note_decided(self, value: Membership) -> None:
        held = self.decided.setdefault(value.version, value)
        assert held == value, f"two memberships decided for version {value.version}"
        previous = self.decided.get(value.version - 1)
        if previous is not None:
            assert is_successor(previous, value)

    def propose(self, peer: str, op_id: str, change: MembershipChange) -> None:
        self.apply(peer, self.cores[peer].propose(op_id, change, self.now))

    def deliver(self, envelope: Envelope) -> None:
        core = self.cores[envelope.destination]
        message = envelope.message
        assert isinstance(message, RING_MESSAGE_TYPES)
        self.apply(envelope.destination, core.on_message(envelope.source, message, self.now))

    def step(self) -> bool:
        """Delivers one message (chaos as configured), else fires the next timer."""
        if self.queue:
            envelope = self.queue.pop(self.rng.randrange(len(self.queue)))
            if envelope.destination in self.cut or self.rng.random() < self.drop:
                return True
            if self.rng.random() < self.duplicate:
                self.queue.append(envelope)
            self.deliver(envelope)
            return True
        if self.timers:
            due, _, peer, timer = heapq.heappop(self.timers)
            self.now = max(self.now, due)
            self.apply(peer, self.cores[peer].on_timer(timer, self.now))
            return True
        return False

    def run(self, steps_max: int = 20_000) -> None:
        for _ in range(steps_max):
            if not self.step():
                return
        raise AssertionError("the network did not go quiet")

    def gossip(self, source: str, destination: str) -> None:
        version, digest = self.cores[source].gossip()
        effects = self.cores[destination].on_gossip(source, version, digest, self.now)
        self.apply(destination, effects)


def test_a_change_is_chosen_learned_by_every_member_then_finished() -> None:
    net = Net()
    net.propose("n1", "op-add", AddMember(id="n4", address="h4:1"))
    net.run()
    assert net.replies["op-add"].outcome is RingOutcome.CHANGED
    for peer in ALL[:4]:
        assert net.cores[peer].learned.version == 2
    assert net.cores["n5"].learned.version == 1  # not a member: not told
    net.propose("n4", "op-finish", FinishChange(version=2))  # the joining peer may propose
    net.run()
    assert net.replies["op-finish"].outcome is RingOutcome.CHANGED
    final = net.cores["n2"].learned
    assert final.version == 3 and final.stable and final.voters == ("n1", "n2", "n3", "n4")
    assert any(e.name == "ring_learned" for e in net.events)


def test_the_same_change_again_is_already_done_and_a_change_that_cannot_apply_is_refused() -> None:
    net = Net()
    net.propose("n1", "op-1", AddMember(id="n4", address="h4:1"))
    net.run()
    net.propose("n2", "op-2", AddMember(id="n4", address="h4:1"))
    assert net.replies["op-2"].outcome is RingOutcome.ALREADY
    net.propose("n2", "op-3", AddMember(id="n5", address="h5:1"))
    assert net.replies["op-3"].outcome is RingOutcome.REFUSED
    assert net.replies["op-3"].reason == "change_pending"
    net.propose("n3", "op-4", RemoveMember(id="n9"))
    assert net.replies["op-4"].outcome is RingOutcome.REFUSED
    assert net.replies["op-4"].reason == "unknown_member"
    assert not net.queue  # refused and done operations sent nothing


def test_concurrent_changes_one_wins_the_other_is_refused_on_the_joint_version() -> None:
    net = Net(seed=3)
    net.propose("n1", "op-a", AddMember(id="n4", address="h4:1"))
    net.propose("n2", "op-b", AddMember(id="n5", address="h5:1"))
    net.run()
    outcomes = {net.replies[o].outcome for o in ("op-a", "op-b")}
    assert RingOutcome.CHANGED in outcomes
    loser = next(o for o in ("op-a", "op-b") if net.replies[o].outcome is not RingOutcome.CHANGED)
    assert net.replies[loser].outcome is RingOutcome.REFUSED
    assert net.replies[loser].reason == "change_pending"
    assert len(net.decided) == 2


def test_an_acceptor_behind_is_sent_the_base_then_votes() -> None:
    net = Net()
    net.propose("n1", "op-1", AddMember(id="n4", address="h4:1"))
    # n3 never hears of version 2: drop everything addressed to it
    net.cut = {"n3"}
    net.run()
    net.cut = set()
    assert net.cores["n3"].learned.version == 1
    net.propose("n4", "op-2", FinishChange(version=2))
    net.run()
    assert net.replies["op-2"].outcome is RingOutcome.CHANGED
    assert net.cores["n3"].learned.version == 3


def test_prepare_for_a_version_not_following_the_learned_one_is_not_a_vote() -> None:
    net = Net()
    core = net.cores["n2"]
    ahead = core.on_message(
        "n1",
        RingPrepare(op_id="x", version=5, ballot=Ballot(round=1, peer="x"), base_digest="0" * 16),
        0.0,
    )
    (vote,) = [e.message for e in ahead.messages]
    assert isinstance(vote, RingVote) and vote.behind and not vote.granted
    assert vote.learned_version == 1 and not ahead.writes
    stale = core.on_message(
        "n1",
        RingPrepare(
            op_id="y", version=1 + 0 + 1, ballot=Ballot(round=1, peer="y"), base_digest="0" * 16
        ),
        0.0,
    )
    assert not stale.messages and not stale.writes  # another base: a disagreement, no vote
    assert [e.name for e in stale.events] == ["ring_disagreement"]


def test_an_accept_of_a_membership_that_is_no_successor_is_refused() -> None:
    net = Net()
    two_steps = apply_change(
        apply_change(BOOT, AddMember(id="n4", address="h4:1")), FinishChange(version=2)
    )
    skipping = Membership(
        version=2,
        replica_count=3,
        vnodes_per_peer=8,
        members=two_steps.members,
    )
    effects = net.cores["n1"].on_message(
        "n2",
        RingAccept(op_id="z", version=2, ballot=Ballot(round=1, peer="z"), value=skipping),
        0.0,
    )
    (vote,) = [e.message for e in effects.messages]
    assert isinstance(vote, RingVote) and not vote.granted and not effects.writes
    assert [e.name for e in effects.events] == ["ring_disagreement"]


def test_a_decide_with_another_value_for_a_learned_version_is_an_alarm_never_applied() -> None:
    net = Net()
    net.propose("n1", "op", AddMember(id="n4", address="h4:1"))
    net.run()
    other = apply_change(BOOT, AddMember(id="n5", address="h5:1"))
    effects = net.cores["n2"].on_message("n3", RingDecide(op_id="d", value=other), net.now)
    assert not effects.writes
    assert [e.name for e in effects.events] == ["ring_disagreement"]
    older = net.cores["n2"].on_message("n3", RingDecide(op_id="d", value=BOOT), net.now)
    assert older.writes == [] and older.events == []  # an older version: nothing to do


def test_gossip_of_a_higher_version_fetches_it_once_per_interval() -> None:
    net = Net()
    net.propose("n1", "op", AddMember(id="n4", address="h4:1"))
    net.run()
    late = MemoryStore()  # n5 as if it had been a member down all along: a fresh register
    net.stores["n5"] = late
    net.start("n5")
    net.gossip("n1", "n5")
    net.gossip("n2", "n5")  # within the interval: no second fetch
    fetches = [e for e in net.queue if isinstance(e.message, RingFetch)]
    assert len(fetches) == 1 and fetches[0].destination == "n1"
    net.run()
    assert net.cores["n5"].learned == net.cores["n1"].learned
    version, digest = net.cores["n1"].gossip()
    assert net.cores["n5"].on_gossip("n1", version, digest, net.now).messages == []


def test_gossip_of_the_same_version_with_another_digest_is_reported() -> None:
    net = Net()
    effects = net.cores["n1"].on_gossip("n2", 1, "f" * 16, 0.0)
    assert [e.name for e in effects.events] == ["ring_disagreement"] and not effects.messages


def test_a_majority_of_voters_down_times_out() -> None:
    net = Net()
    net.propose("n1", "op", AddMember(id="n4", address="h4:1"))
    net.cut = {"n2", "n3"}
    net.run()
    assert net.replies["op"].outcome is RingOutcome.TIMEOUT
    assert net.cores["n1"].learned.version == 1
    assert net.cores["n1"].operations_in_flight() == 0


def test_restart_keeps_the_learned_version_and_the_promise() -> None:
    net = Net()
    net.propose("n1", "op", AddMember(id="n4", address="h4:1"))
    net.run()
    promise = RingPrepare(
        op_id="p",
        version=3,
        ballot=Ballot(round=7, peer="p"),
        base_digest=net.cores["n2"].gossip()[1],
    )
    net.deliver(Envelope(source="n1", destination="n2", message=promise))
    net.start("n2")
    assert net.cores["n2"].learned.version == 2
    assert read_ring_slot(net.stores["n2"], 3).promised == Ballot(round=7, peer="p")
    lower = RingPrepare(
        op_id="q", version=3, ballot=Ballot(round=6, peer="q"), base_digest=promise.base_digest
    )
    effects = net.cores["n2"].on_message("n3", lower, net.now)
    (vote,) = [e.message for e in effects.messages]
    assert isinstance(vote, RingVote) and not vote.granted and vote.promised.round == 7


def test_learning_deletes_the_acceptor_records_of_versions_it_passed() -> None:
    net = Net()
    net.propose("n1", "op", AddMember(id="n4", address="h4:1"))
    net.run()
    for peer in ("n1", "n2", "n3"):
        assert net.stores[peer].get(LEARNED_KEY) is not None
        assert net.stores[peer].scan(RING_ACCEPTOR_PREFIX, limit=10) == []


def test_the_learner_refuses_to_go_back_even_if_asked_by_its_own_code() -> None:
    net = Net()
    net.propose("n1", "op", AddMember(id="n4", address="h4:1"))
    net.run()
    core = net.cores["n1"]
    with pytest.raises(InvariantViolation):
        core._write_learned(BOOT, Effects())  # the writer's own check, called directly


def test_a_replace_of_a_dead_peer_is_decided_by_the_survivors() -> None:
    net = Net()
    net.cut = {"n3"}  # dead for good
    net.propose("n1", "op", ReplaceMember(old="n3", new="n4", address="h4:1"))
    net.run()
    assert net.replies["op"].outcome is RingOutcome.CHANGED
    net.propose("n2", "finish", FinishChange(version=2))  # voters now n1, n2, n4 (n3 leaving)
    net.run()
    assert net.replies["finish"].outcome is RingOutcome.CHANGED
    assert [m.id for m in net.cores["n4"].learned.members] == ["n1", "n2", "n4"]


# -- a seeded chaotic network --------------------------------------------------------------------

CHANGES: list[MembershipChange] = [
    AddMember(id="n4", address="h4:1"),
    AddMember(id="n5", address="h5:1"),
    RemoveMember(id="n2"),
    ReplaceMember(old="n1", new="n5", address="h5:1"),
    *(FinishChange(version=version) for version in range(2, 6)),
]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_chaos_one_membership_per_version_versions_never_go_back_and_all_converge(
    seed: int,
) -> None:
    net = Net(seed=seed, drop=0.15, duplicate=0.1)
    rng = random.Random(seed)
    started = 0
    for _ in range(600):
        roll = rng.random()
        if roll < 0.03 and started < 12:
            started += 1
            peer = rng.choice(ALL)
            net.propose(peer, f"op-{started}", rng.choice(CHANGES))
        elif roll < 0.05:
            net.start(rng.choice(ALL))  # a restart: open operations are lost, records kept
        elif roll < 0.15:
            source, destination = rng.sample(ALL, 2)
            net.gossip(source, destination)
        elif not net.step():
            net.now += 0.1
    net.drop = net.duplicate = 0.0
    net.run()
    for _ in range(3):  # healed: gossip spreads the newest version to every peer
        net.now += RingLimits().fetch_interval_s  # a fetch lost to the chaos is asked again
        for source in ALL:
            for destination in ALL:
                if source != destination:
                    net.gossip(source, destination)
        net.run()
    assert not [e for e in net.events if e.name == "ring_disagreement"]  # honest peers agree
    newest = max(net.decided)
    final = net.decided[newest]
    for member in final.members:
        assert net.cores[member.id].learned == final
    assert set(net.decided) == set(range(1, newest + 1))  # no version skipped
    for reply in net.replies.values():
        if reply.outcome is RingOutcome.CHANGED:
            assert net.decided[reply.membership.version] == reply.membership


def test_ring_timers_of_a_finished_operation_do_nothing() -> None:
    net = Net()
    net.propose("n1", "op", AddMember(id="n4", address="h4:1"))
    net.run()
    for kind in TimerKind:
        assert net.cores["n1"].on_timer(Timer(kind=kind, op_id="op", due=0.0), 99.0) == Effects()
