"""The ring as the peer core runs it (docs/membership.md): a few whole cores on a lossless
network played by the test, every sync done at once. Membership changes through a peer, a peer
that joins by itself, the gossip that brings a peer behind up to date, placements during a
change, and the ring fence."""

from __future__ import annotations

import random
from collections import deque

import pytest

from tests.quorum.helpers import membership_of
from tests.stores import serving_store
from tokenvault.quorum.client_operations import (
    ChangeMembership,
    ClientAnswer,
    Detokenize,
    LearnEpoch,
    Tokenize,
    Tokenized,
)
from tokenvault.quorum.effects import Failure, ReadDone, RingDone, RingOutcome
from tokenvault.quorum.messages import (
    Ballot,
    InsertRequest,
    Mapping,
    Message,
    ReadRequest,
    RingDecide,
    RingFetch,
    RingPrepare,
    RingVote,
    TransferPage,
)
from tokenvault.quorum.peer_core import PeerCore, PeerLimits, Step
from tokenvault.quorum.quorum_config import QuorumConfig
from tokenvault.quorum.records import TRANSFER_PREFIX, owner_mapping_prefix
from tokenvault.quorum.transfer import TransferLimits
from tokenvault.quorum.transfer_records import read_transfers
from tokenvault.ring.membership import JOINING, LEAVING, AddMember, RemoveMember, ReplaceMember
from tokenvault.store.memory_store import MemoryStore

OWNERS = tuple(f"owner-{i}" for i in range(12))
N3 = QuorumConfig(replica_count=3, write_quorum=2, read_quorum=2)
SECRET = b"ring-wiring-test-secret"
BOOT_DIGEST = membership_of(("p1", "p2", "p3"), vnodes_per_peer=8).digest()
STEPS_MAX = 20_000


class Cores:
    """Whole peer cores; messages delivered in order, syncs at once, time moved by the test."""

    def __init__(
        self, peers: tuple[str, ...] = ("p1", "p2", "p3"), limits: PeerLimits = PeerLimits()
    ) -> None:
        self.bootstrap = membership_of(peers, vnodes_per_peer=8)
        self.limits = limits
        self.now = 0.0
        self.cores: dict[str, PeerCore] = {}
        self.stores: dict[str, MemoryStore] = {}
        self.queue: deque[tuple[str, str, Message]] = deque()
        self.answers: dict[str, ClientAnswer] = {}
        self.cut: set[str] = set()  # peers whose messages are lost, both ways
        self.refused: list[tuple[str, str, Message]] = []  # batches a driver would drop
        for peer in peers:
            self.start(peer)

    def start(self, peer: str, *, join_address: str | None = None) -> None:
        store = self.stores.get(peer)
        if store is None:
            store = self.stores[peer] = serving_store(
                store_id=f"{peer:0<32}"[:32].replace("p", "a")
            )
        self.cores[peer] = PeerCore(
            peer_id=peer,
            bootstrap=self.bootstrap,
            quorum=N3,
            owners=OWNERS,
            storage=store,
            secret=SECRET,
            rng=random.Random(peer),
            now=self.now,
            join_address=join_address,
            limits=self.limits,
        )

    def act(self, peer: str, step: Step) -> None:
        pending = [step]
        while pending:
            step = pending.pop()
            for envelope in step.messages:
                self.queue.append((envelope.source, envelope.destination, envelope.message))
            for message in step.local:
                self.queue.append((peer, peer, message))
            for answer in step.answers:
                self.answers[answer.op_id] = answer
            if step.sync_ticket is not None:
                self.stores[peer].sync()
                pending.append(self.cores[peer].on_durable(step.sync_ticket, self.now))

    def run(self) -> None:
        steps = 0
        while self.queue:
            steps += 1
            assert steps < STEPS_MAX, "the cores do not settle"
            source, destination, message = self.queue.popleft()
            if source in self.cut or destination in self.cut or destination not in self.cores:
                continue
            if not self.cores[destination].admits(source, [message]):
                self.refused.append((source, destination, message))
                continue
            self.act(destination, self.cores[destination].receive(source, [message], self.now))

    def advance(self, seconds: float, step_s: float = 0.25) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step_s)
            for peer, core in self.cores.items():
                if peer not in self.cut and core.next_due() <= self.now:
                    self.act(peer, core.advance(self.now))
            self.run()

    def change(
        self, peer: str, op_id: str, change: AddMember | RemoveMember | ReplaceMember
    ) -> RingDone:
        self.act(
            peer, self.cores[peer].start(ChangeMembership(op_id=op_id, change=change), self.now)
        )
        self.run()
        for _ in range(40):
            if op_id in self.answers:
                break
            self.advance(0.25)
        answer = self.answers[op_id]
        assert isinstance(answer, RingDone)
        return answer


def test_an_add_through_any_member_is_learned_by_every_member_and_the_new_peer() -> None:
    cores = Cores()
    done = cores.change("p2", "add", AddMember(id="p4", address="p4.test:7000"))
    assert done.outcome is RingOutcome.CHANGED and done.membership.version == 2
    cores.start("p4", join_address="p4.test:7000")
    cores.advance(3.0)  # heartbeats: p4 hears of version 2 and fetches it
    for peer, core in cores.cores.items():
        # version 2, or already its finish: with nothing to transfer it comes within seconds
        assert core.membership.version >= done.membership.version, peer
        assert core.membership.member("p4") is not None
    joining = done.membership.member("p4")
    assert joining is not None and joining.state == JOINING


def test_the_same_add_again_is_already_in_and_a_conflicting_one_is_refused() -> None:
    cores = Cores()
    cores.change("p1", "a1", AddMember(id="p4", address="p4.test:7000"))
    again = cores.change("p3", "a2", AddMember(id="p4", address="p4.test:7000"))
    assert again.outcome is RingOutcome.ALREADY and again.membership.version == 2
    other = cores.change("p3", "a3", AddMember(id="p5", address="p5.test:7000"))
    assert (other.outcome, other.reason) == (RingOutcome.REFUSED, "change_pending")
    unknown = Cores().change("p1", "r", RemoveMember(id="p9"))
    assert (unknown.outcome, unknown.reason) == (RingOutcome.REFUSED, "unknown_member")


def test_a_peer_started_with_join_asks_to_be_added_and_learns_it_is_a_member() -> None:
    cores = Cores()
    cores.start("p4", join_address="p4.test:7000")
    assert not cores.cores["p4"].is_member()
    cores.advance(4.0)
    for core in cores.cores.values():
        assert core.membership.version >= 2  # the add, or already its finish
        member = core.membership.member("p4")
        assert member is not None and member.address == "p4.test:7000"
    assert cores.cores["p4"].is_member()


def test_a_peer_that_is_no_member_coordinates_nothing() -> None:
    cores = Cores()
    cores.start("p4", join_address="p4.test:7000")
    step = cores.cores["p4"].start(Tokenize(op_id="t", owner=OWNERS[0], items=(("ssn", "x"),)), 0.0)
    (answer,) = step.answers
    assert answer.failure is Failure.NOT_A_MEMBER


def test_during_a_change_moved_owners_have_two_sets_and_reads_stay_on_the_old_one() -> None:
    cores = Cores()
    done = cores.change("p1", "add", AddMember(id="p4", address="p4.test:7000"))
    core = cores.cores["p1"]
    moved = [o for o in OWNERS if core.placement(o).joint]
    assert moved, "with 12 owners some move to p4"
    for owner in OWNERS:
        placement = core.placement(owner)
        old = done.membership.old_ring().preference_list(owner, 3)
        new = done.membership.new_ring().preference_list(owner, 3)
        assert (placement.old, placement.new, placement.read_set) == (old, new, old)
        assert placement.version == 2
        assert ("p4" in placement.replicas) == (owner in moved)


def test_a_removed_member_is_leaving_and_a_replaced_one_hands_its_vnodes_over() -> None:
    cores = Cores(("p1", "p2", "p3", "p4"))
    removed = cores.change("p1", "rm", RemoveMember(id="p4"))
    leaving = removed.membership.member("p4")
    assert leaving is not None and leaving.state == LEAVING
    cores = Cores(("p1", "p2", "p3"))
    replaced = cores.change("p1", "rp", ReplaceMember(old="p3", new="p5", address="p5.test:7000"))
    core = cores.cores["p1"]
    for owner in OWNERS:  # every list is the old one with p5 in p3's place
        placement = core.placement(owner)
        assert placement.new == tuple("p5" if p == "p3" else p for p in placement.old)
    assert replaced.membership.member("p5") is not None


def test_a_request_made_under_an_older_ring_is_not_answered_and_its_sender_learns_the_ring() -> (
    None
):
    cores = Cores()
    cores.cut.add("p3")  # p3 misses the change
    done = cores.change("p1", "add", AddMember(id="p4", address="p4.test:7000"))
    assert cores.cores["p3"].membership.version == 1
    cores.cut.clear()
    mapping = Mapping(owner=OWNERS[0], token="t" * 20, value="v", field="ssn", epoch=1)
    stale = InsertRequest(op_id="w", owner=OWNERS[0], mappings=(mapping,), ring=1)
    step = cores.cores["p1"].receive("p3", [stale], cores.now)
    assert not step.writes, "the stale write is not taken"
    (back,) = [e for e in step.messages if e.destination == "p3"]
    assert back.message.value == done.membership  # type: ignore[union-attr]
    assert any(e.name == "ring_fenced" for e in step.events)
    cores.act("p1", step)
    cores.run()
    assert cores.cores["p3"].membership == done.membership
    current = ReadRequest(op_id="r", owner=OWNERS[0], tokens=("t" * 20,), ring=2)
    answered = cores.cores["p1"].receive("p3", [current], cores.now)
    assert not any(e.name == "ring_fenced" for e in answered.events)


def test_a_member_that_was_down_learns_the_ring_from_heartbeats_after_a_restart() -> None:
    cores = Cores()
    cores.cut.add("p2")
    done = cores.change("p1", "add", AddMember(id="p4", address="p4.test:7000"))
    cores.start("p2")  # restarted from its store: version 1
    cores.cut.clear()
    cores.advance(3.0)
    assert cores.cores["p2"].membership == done.membership


def test_a_peer_behind_learns_the_ring_from_a_joining_peer_it_alone_hears() -> None:
    cores = Cores()
    cores.cut.add("p3")  # p3 misses the add
    done = cores.change("p1", "add", AddMember(id="p4", address="p4.test:7000"))
    cores.start("p4", join_address="p4.test:7000")
    cores.advance(3.0)
    assert cores.cores["p4"].membership == done.membership
    cores.cut = {"p1", "p2"}  # p3 back, hearing only from p4, a stranger to its ring
    assert not cores.cores["p3"].is_peer("p4")
    cores.advance(3.0)
    assert cores.cores["p3"].membership == done.membership
    assert not [m for s, d, m in cores.refused if d == "p3" and s == "p4"], "nothing dropped"


@pytest.mark.parametrize("peer", ["p1", "p2", "p3"])
def test_the_learned_ring_survives_a_restart(peer: str) -> None:
    cores = Cores()
    done = cores.change("p1", "add", AddMember(id="p4", address="p4.test:7000"))
    cores.start(peer)
    assert cores.cores[peer].membership == done.membership


def test_a_peer_that_is_not_serving_casts_no_ring_vote() -> None:
    cores = Cores()
    cores.stores["p3"] = MemoryStore()  # its disk was wiped: it restarts undecided
    cores.start("p3")
    assert cores.cores["p3"].state != "serving"
    prepare = RingPrepare(
        op_id="x", version=2, ballot=Ballot(round=1, peer="x"), base_digest=BOOT_DIGEST
    )
    step = cores.cores["p3"].receive("p1", [prepare], 0.0)
    assert not [e for e in step.messages if isinstance(e.message, RingVote)]


def test_a_tokenize_of_a_moved_owner_needs_w_of_both_sets() -> None:
    """The coordinator runs under the owner's placement (joint quorums): with the new set short
    of W the write is not acknowledged, though W of the old set took it."""
    cores = Cores()
    cores.change("p1", "add", AddMember(id="p4", address="p4.test:7000"))  # p4 never runs:
    owner = next(o for o in OWNERS if cores.cores["p1"].placement(o).joint)  # no finish
    placement = cores.cores["p1"].placement(owner)
    assert placement.version == 2
    (old_only,) = set(placement.old) - set(placement.new)
    common = sorted(set(placement.old) & set(placement.new))
    assert len(common) == 2 and set(placement.new) - set(placement.old) == {"p4"}
    cores.cut.update({"p4", common[0]})  # the old set keeps W (old_only, common[1]), the new not
    coordinator = cores.cores[old_only]
    step = coordinator.start(Tokenize(op_id="t1", owner=owner, items=(("ssn", "x"),)), cores.now)
    inserts = [e for e in step.messages if isinstance(e.message, InsertRequest)]
    assert sorted(e.destination for e in inserts) == sorted(set(placement.replicas) - {old_only})
    assert {e.message.ring for e in inserts if isinstance(e.message, InsertRequest)} == {2}
    cores.act(old_only, step)
    cores.run()
    cores.advance(3.0)
    failed = cores.answers["t1"]
    assert failed.failure is Failure.QUORUM_TIMEOUT
    cores.cut.clear()
    step = coordinator.start(Tokenize(op_id="t2", owner=owner, items=(("ssn", "x"),)), cores.now)
    cores.act(old_only, step)
    cores.run()
    assert cores.answers["t2"].failure is None


# -- transfers (transfer.py): a change finishes once its new replicas are filled -----------------


def tokenize_everywhere(
    cores: Cores, peer: str, per_owner: int, tag: str = ""
) -> dict[str, list[Mapping]]:
    """`per_owner` tokenizes of each owner through `peer`: the mappings acknowledged."""
    written: dict[str, list[Mapping]] = {}
    for owner in OWNERS:
        for i in range(per_owner):
            op_id = f"tok-{owner}-{tag}{i}"
            value = f"v-{owner}-{tag}{i}"
            operation = Tokenize(op_id=op_id, owner=owner, items=(("ssn", value),))
            cores.act(peer, cores.cores[peer].start(operation, cores.now))
            cores.run()
            answer = cores.answers[op_id]
            assert isinstance(answer, Tokenized) and answer.failure is None, answer
            written.setdefault(owner, []).extend(answer.mappings)
    return written


def advance_until_stable(cores: Cores, version: int, seconds_max: float = 60.0) -> None:
    end = cores.now + seconds_max
    while cores.now < end:
        cores.advance(0.5)
        live = [c for p, c in cores.cores.items() if p not in cores.cut]
        if all(c.membership.version >= version for c in live):
            return
    raise AssertionError(
        f"no finish in {seconds_max}s: "
        + str({p: c.membership.version for p, c in cores.cores.items()})
        + str([v for c in cores.cores.values() for v in c.transfer_views()])
    )


def assert_final_replicas_hold(cores: Cores, written: dict[str, list[Mapping]]) -> None:
    for peer, core in cores.cores.items():
        if peer in cores.cut or not core.is_member():
            continue
        for owner, mappings in written.items():
            if peer not in core.placement(owner).new:
                continue
            for mapping in mappings:
                assert core.replica.read_mapping(owner, mapping.token) == mapping, (peer, owner)


# Transfers slow enough (500 B/s) that a finish not waiting for them would come first, and no
# anti-entropy: what the new replicas hold, only transfers brought.
SLOW_TRANSFERS = PeerLimits(
    transfer=TransferLimits(rate_bytes_s=500.0, burst_bytes=200, page_mappings_max=4),
    anti_entropy_enabled=False,
)


def test_an_add_finishes_once_the_new_peer_holds_every_mapping_of_the_owners_it_got() -> None:
    cores = Cores(limits=SLOW_TRANSFERS)
    written = tokenize_everywhere(cores, "p1", 5)
    done = cores.change("p2", "add", AddMember(id="p4", address="p4.test:7000"))
    cores.start("p4", join_address="p4.test:7000")
    advance_until_stable(cores, done.membership.version + 1)
    finish = cores.cores["p4"].membership
    assert finish.stable and finish.member("p4") is not None
    moved = [o for o in OWNERS if "p4" in cores.cores["p4"].placement(o).new]
    assert moved, "with 12 owners some move to p4"
    assert_final_replicas_hold(cores, written)
    views = cores.cores["p4"].transfer_views()
    assert {v.owner for v in views} == set(moved) and {v.state for v in views} == {"committed"}
    cores.advance(1.0)
    assert cores.cores["p4"].transfer_views() == [], "forgotten once the finish is learned"
    assert not cores.stores["p4"].scan(TRANSFER_PREFIX, limit=1)


def test_once_drained_former_replicas_hand_over_and_drop_what_they_no_longer_replicate() -> None:
    cores = Cores()
    written = tokenize_everywhere(cores, "p1", 5)
    done = cores.change("p2", "add", AddMember(id="p4", address="p4.test:7000"))
    cores.start("p4", join_address="p4.test:7000")
    advance_until_stable(cores, done.membership.version + 1)
    cores.advance(3.0)  # the drain is gossiped, then the hand-over runs
    dropped = 0
    for peer, core in cores.cores.items():
        assert core.ring_drained and core.drop_views() == [], peer
        for owner in OWNERS:
            held = cores.stores[peer].scan(owner_mapping_prefix(owner), limit=1000)
            if peer in core.placement(owner).replicas:
                assert len(held) == len(written[owner]), (peer, owner)
            else:
                assert held == [], (peer, owner)
        dropped += core.dropping.mappings_dropped
    assert dropped == 5 * len([o for o in OWNERS if "p4" in cores.cores["p4"].placement(o).new])
    assert_final_replicas_hold(cores, written)


def test_a_remove_finishes_and_the_owners_of_the_removed_peer_are_on_the_others() -> None:
    cores = Cores(("p1", "p2", "p3", "p4"), limits=SLOW_TRANSFERS)
    written = tokenize_everywhere(cores, "p1", 20)  # a pass of a moved owner takes seconds
    done = cores.change("p1", "rm", RemoveMember(id="p4"))
    advance_until_stable(cores, done.membership.version + 1)
    assert cores.cores["p1"].membership.member("p4") is None
    assert_final_replicas_hold(cores, written)


def test_a_replace_of_a_dead_peer_finishes_filled_from_the_survivors() -> None:
    cores = Cores()
    written = tokenize_everywhere(cores, "p1", 5)
    cores.cut.add("p3")  # dead for good
    done = cores.change("p1", "rp", ReplaceMember(old="p3", new="p5", address="p5.test:7000"))
    cores.start("p5", join_address="p5.test:7000")
    advance_until_stable(cores, done.membership.version + 1)
    core = cores.cores["p5"]
    assert core.membership.member("p3") is None
    for owner, mappings in written.items():
        assert "p5" in core.placement(owner).new
        for mapping in mappings:
            assert core.replica.read_mapping(owner, mapping.token) == mapping


def test_a_member_dead_mid_change_stalls_it_until_replaced_over_it_then_both_finish() -> None:
    cores = Cores(("p1", "p2", "p3", "p4"))
    written = tokenize_everywhere(cores, "p1", 5)
    cores.cut.add("p4")  # dead for good, unnoticed by the operator who adds p5
    added = cores.change("p2", "add", AddMember(id="p5", address="p5.test:7000"))
    cores.start("p5", join_address="p5.test:7000")
    joint = added.membership.version
    cores.advance(20.0)
    # The owners that p5 takes from p4's lists are never fenced: p4 never reports the version.
    assert {c.membership.version for p, c in cores.cores.items() if p != "p4"} == {joint}
    refused = cores.change("p1", "rm", RemoveMember(id="p4"))
    assert refused.reason == "change_pending"
    replaced = cores.change("p3", "rp", ReplaceMember(old="p4", new="p6", address="p6.test:7000"))
    assert replaced.outcome is RingOutcome.CHANGED and replaced.membership.version == joint + 1
    cores.start("p6", join_address="p6.test:7000")
    advance_until_stable(cores, joint + 2)
    final = cores.cores["p1"].membership
    assert [m.id for m in final.members] == ["p1", "p2", "p3", "p5", "p6"] and final.stable
    assert_final_replicas_hold(cores, written)


@pytest.mark.parametrize("way", ["replace", "remove"])
def test_a_joining_peer_dead_before_the_finish_is_replaced_or_its_add_aborted(way: str) -> None:
    cores = Cores()
    written = tokenize_everywhere(cores, "p1", 5)
    added = cores.change("p2", "add", AddMember(id="p4", address="p4.test:7000"))
    cores.cut.add("p4")  # never comes up
    cores.advance(5.0)
    if way == "remove":
        aborted = cores.change("p1", "rm", RemoveMember(id="p4"))
        assert aborted.outcome is RingOutcome.CHANGED and aborted.membership.stable
        advance_until_stable(cores, added.membership.version + 1)
        expected = ["p1", "p2", "p3"]
    else:
        cores.change("p1", "rp", ReplaceMember(old="p4", new="p5", address="p5.test:7000"))
        cores.start("p5", join_address="p5.test:7000")
        advance_until_stable(cores, added.membership.version + 2)
        expected = ["p1", "p2", "p3", "p5"]
    final = cores.cores["p1"].membership
    assert final.stable and [m.id for m in final.members] == expected
    assert_final_replicas_hold(cores, written)
    more = tokenize_everywhere(cores, "p2", 1, "after")
    assert_final_replicas_hold(cores, more)


def test_writes_during_the_change_are_on_w_of_the_final_replicas_at_the_finish() -> None:
    cores = Cores()
    before = tokenize_everywhere(cores, "p1", 3)
    done = cores.change("p3", "add", AddMember(id="p4", address="p4.test:7000"))
    cores.start("p4", join_address="p4.test:7000")
    during: dict[str, list[Mapping]] = {}
    for round_ in range(3):  # while the change is pending (or just finished)
        for owner, mappings in tokenize_everywhere(cores, "p2", 1, f"r{round_}").items():
            during.setdefault(owner, []).extend(mappings)
        cores.advance(0.5)
    advance_until_stable(cores, done.membership.version + 1)
    core = cores.cores["p1"]
    for written in (before, during):
        for owner, mappings in written.items():
            final = core.placement(owner).new
            for mapping in mappings:
                holders = [
                    p for p in final if cores.cores[p].replica.read_mapping(owner, mapping.token)
                ]
                assert len(holders) >= N3.write_quorum, (owner, holders)


def test_a_target_restarted_half_way_resumes_its_transfers_from_their_cursors() -> None:
    cores = Cores(limits=SLOW_TRANSFERS)
    written = tokenize_everywhere(cores, "p1", 20)
    done = cores.change("p2", "add", AddMember(id="p4", address="p4.test:7000"))
    cores.start("p4", join_address="p4.test:7000")
    cursors: dict[str, str] = {}
    for _ in range(40):
        cores.advance(0.25)
        cursors = {
            r.owner: r.cursor
            for r in read_transfers(cores.stores["p4"], 100)
            if r.cursor is not None and r.step == "copying"
        }
        if cursors:
            break
    assert cursors, "a transfer half-way through its first pass"
    cores.start("p4", join_address="p4.test:7000")  # the process restarts on its store
    asked: list[TransferPage] = []
    act = cores.act

    def watch(peer: str, step: Step) -> None:
        asked.extend(e.message for e in step.messages if isinstance(e.message, TransferPage))
        act(peer, step)

    cores.act = watch  # type: ignore[method-assign]
    advance_until_stable(cores, done.membership.version + 1)
    for owner, cursor in cursors.items():
        first = next(page for page in asked if page.owner == owner)
        assert first.after == cursor, "asked from its cursor, not from zero"
    assert_final_replicas_hold(cores, written)


@pytest.mark.parametrize("kind", ["tokenize", "detokenize", "learn"])
def test_an_operation_refused_by_the_ring_fence_starts_again_under_the_new_ring(kind: str) -> None:
    cores = Cores()
    written = tokenize_everywhere(cores, "p1", 1)
    cores.cut.add("p3")  # p3 misses the change: it coordinates under version 1
    cores.change("p1", "add", AddMember(id="p4", address="p4.test:7000"))  # p4 never runs
    cores.cut.clear()
    owner = OWNERS[0]
    coordinator = cores.cores["p3"]
    assert coordinator.membership.version == 1
    operation: Tokenize | Detokenize | LearnEpoch
    if kind == "tokenize":
        operation = Tokenize(op_id="op", owner=owner, items=(("ssn", "new value"),))
    elif kind == "learn":
        operation = LearnEpoch(op_id="op", owner=owner)
    else:
        operation = Detokenize(op_id="op", owner=owner, tokens=(written[owner][0].token,))
    step = coordinator.start(operation, cores.now)
    cores.act("p3", step)
    cores.run()  # no time passes: the answer comes from the restart, not after a deadline
    answer = cores.answers["op"]
    assert answer.failure is None, answer
    assert coordinator.membership.version == 2
    if isinstance(answer, ReadDone):
        assert answer.mappings == (written[owner][0],)


def test_a_peer_that_joined_by_itself_and_was_removed_stays_out_across_a_restart() -> None:
    cores = Cores()
    cores.start("p4", join_address="p4.test:7000")
    advance_until_stable(cores, 3)  # joined, transferred, finished
    assert cores.cores["p4"].is_member()
    removed = cores.change("p1", "rm", RemoveMember(id="p4"))
    assert removed.outcome is RingOutcome.CHANGED
    advance_until_stable(cores, removed.membership.version + 1)
    for restart in (False, True):
        if restart:
            cores.start("p4", join_address="p4.test:7000")  # the same command again
        cores.advance(5.0)
        for peer, core in cores.cores.items():
            assert core.membership.member("p4") is None, (peer, restart)
        assert not cores.cores["p4"].is_member()


def test_a_peer_wiped_after_a_change_finished_recovers_under_the_learned_ring() -> None:
    """Its ring records went with its store: it restarts on the bootstrap ring, learns the
    finished one from gossip, and recovers from its replicas there, not the bootstrap's.
    (p4, removed, stays up: a peer that restarts only drains a remove once it heard the
    removed peer at the finish version.)"""
    cores = Cores(("p1", "p2", "p3", "p4"))
    done = cores.change("p1", "rm", RemoveMember(id="p4"))
    advance_until_stable(cores, done.membership.version + 1)
    written = tokenize_everywhere(cores, "p2", 5)
    cores.stores["p1"] = MemoryStore()  # its disk was wiped
    cores.start("p1")
    core = cores.cores["p1"]
    assert core.membership.version == 1 and core.state != "serving"
    for _ in range(120):
        cores.advance(0.5)
        if core.state == "serving":
            break
    assert core.membership == cores.cores["p2"].membership
    assert core.state == "serving", core.recovery_progress()
    assert core.recovery_progress().owners_total == len(OWNERS)  # every owner on 3 peers
    for owner, mappings in written.items():
        for mapping in mappings:
            assert core.replica.read_mapping(owner, mapping.token) == mapping, owner


class _LossyQueue(deque[tuple[str, str, Message]]):
    deaf = ""  # the ring messages to it are lost

    def append(self, item: tuple[str, str, Message]) -> None:
        if not (item[1] == self.deaf and isinstance(item[2], RingDecide | RingFetch)):
            super().append(item)


class RingDeaf(Cores):
    """Cores where the ring messages to `queue.deaf` are lost: it hears of later versions
    from heartbeats, but cannot fetch them."""

    def __init__(self, peers: tuple[str, ...]) -> None:
        super().__init__(peers)
        self.lossy = _LossyQueue()
        self.queue = self.lossy


def test_a_wiped_peer_does_not_serve_before_it_learned_the_ring_its_peers_gossip() -> None:
    """Deaf to ring messages, the wiped p1 stays on the bootstrap ring, where p4 replicates
    nothing: it must not serve past the proposers' deadline, and recovers once it can fetch
    the ring its peers gossip."""
    cores = RingDeaf(("p1", "p2", "p3"))
    done = cores.change("p1", "add", AddMember(id="p4", address="p4.test:7000"))
    cores.start("p4", join_address="p4.test:7000")
    advance_until_stable(cores, done.membership.version + 1)
    cores.stores["p1"] = MemoryStore()
    cores.lossy.deaf = "p1"
    cores.start("p1")
    core = cores.cores["p1"]
    cores.advance(15.0)  # past the proposers' deadline: ready under the bootstrap ring
    assert core.membership.version == 1 and core.state != "serving"
    cores.lossy.deaf = ""
    for _ in range(60):
        cores.advance(0.5)
        if core.state == "serving":
            break
    assert core.membership == cores.cores["p2"].membership and core.state == "serving"


def test_a_peer_restarted_after_a_drained_remove_learns_the_drain_from_the_others() -> None:
    """The removed peer is stopped, as the operator is told to: a restarted member can no longer
    hear it report the finish, so it learns the drain from the members that saw it."""
    cores = Cores(("p1", "p2", "p3", "p4"))
    done = cores.change("p1", "rm", RemoveMember(id="p4"))
    advance_until_stable(cores, done.membership.version + 1)
    cores.advance(2.0)
    assert cores.cores["p1"]._ring.drained
    cores.cut.add("p4")  # stopped for good
    cores.start("p2")  # an ordinary restart
    cores.advance(3.0)
    restarted = cores.cores["p2"]
    assert restarted._ring.drained
    assert not [o for o in OWNERS if restarted.placement(o).joint]
