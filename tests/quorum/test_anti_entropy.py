"""Anti-entropy between replicas in a hand-driven network: digests, repair both ways, epochs,
bounds, and a quiet pass that reads nothing but the summary."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.quorum.helpers import SEALER
from tokenvault.quorum.acceptor import Acceptor
from tokenvault.quorum.anti_entropy import AntiEntropy, AntiEntropyLimits
from tokenvault.quorum.effects import Effects
from tokenvault.quorum.merkle import BUCKETS, OwnerDigests, bucket_of
from tokenvault.quorum.messages import (
    AeKeysReply,
    AeSummary,
    AeSummaryReply,
    Decide,
    EpochValue,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
    Origin,
)
from tokenvault.quorum.records import mapping_key
from tokenvault.quorum.replica import CORRUPT, Replica
from tokenvault.quorum.routing import Destination, route
from tokenvault.quorum.sealing import Sealer
from tokenvault.store.memory_store import MemoryStore
from tokenvault.tokens import derive_epoch_key, make_token

OWNER = "alice"
PEERS = ("a", "b", "c")
KEY = derive_epoch_key(b"s" * 32, OWNER, 1)
REAL_SEALER = Sealer(b"s" * 32)  # checks these tokens


def mapping(index: int) -> Mapping:
    value = f"value-{index}"
    return Mapping(
        owner=OWNER, token=make_token(KEY, "ssn", value), value=value, field="ssn", epoch=1
    )


class Peer:
    def __init__(self, name: str, limits: AntiEntropyLimits, sealer: Sealer) -> None:
        self.name = name
        self.store = MemoryStore()
        self.limits = limits
        self.sealer = sealer
        self.restart()

    def restart(self) -> None:
        self.replica = Replica(peer_id=self.name, storage=self.store, sealer=self.sealer)
        self.acceptor = Acceptor(peer_id=self.name, storage=self.store)
        self.ae = AntiEntropy(
            peer_id=self.name,
            storage=self.store,
            digests=self.replica.digests,
            records=self.replica,
            decided=self.acceptor,
            replicas_by_owner={OWNER: PEERS},
            limits=self.limits,
        )

    def hold(self, mappings: list[Mapping]) -> None:
        effects = self.replica.on_message(
            "x", InsertRequest(op_id="seed", owner=OWNER, mappings=tuple(mappings))
        )
        self.store.stage(effects.writes)
        self.store.sync()

    def tokens(self) -> set[str]:
        return {key.split(b"\x00")[-1].decode() for key, _ in self.store.durable_items(b"m\x00")}


class Net:
    def __init__(
        self, limits: AntiEntropyLimits = AntiEntropyLimits(), sealer: Sealer = SEALER
    ) -> None:
        self.peers = {name: Peer(name, limits, sealer) for name in PEERS}
        self.messages: list[tuple[str, str, Message]] = []
        self.delivered: list[Message] = []

    def apply(self, peer: Peer, effects: Effects) -> None:
        peer.store.stage(effects.writes)
        peer.store.sync()
        self.messages.extend((e.source, e.destination, e.message) for e in effects.messages)

    def tick(self, name: str, now: float) -> None:
        self.apply(self.peers[name], self.peers[name].ae.tick(now, frozenset()))

    def run(self, now: float) -> None:
        for _ in range(100_000):
            if not self.messages:
                return
            source, destination, message = self.messages.pop(0)
            self.delivered.append(message)
            peer = self.peers[destination]
            core = route(message)
            if core is Destination.REPLICA:
                effects = peer.replica.on_message(source, message)
            elif core is Destination.ACCEPTOR:
                effects = peer.acceptor.on_message(source, message)
            else:
                assert core is Destination.ANTI_ENTROPY, (core, message)
                effects = peer.ae.on_message(source, message, now)
            self.apply(peer, effects)
        raise AssertionError("the exchange did not settle")

    def converge(self, rounds: int = 20) -> int:
        now = 0.0
        for round_ in range(rounds):
            for name in PEERS:
                now += 10.0
                self.tick(name, now)
                self.run(now)
            roots = {p.replica.digests.root(OWNER) for p in self.peers.values()}
            if len(roots) == 1:
                return round_ + 1
        raise AssertionError("replicas did not converge")


def test_digests_are_order_free_and_rebuilt_identically() -> None:
    one, two = OwnerDigests(), OwnerDigests()
    items = [(m.token, f"k{m.token}".encode(), m.value.encode()) for m in map(mapping, range(50))]
    for token, key, record in items:
        one.add(OWNER, token, key, record)
    for token, key, record in reversed(items):
        two.add(OWNER, token, key, record)
    assert one.root(OWNER) == two.root(OWNER) and one.count(OWNER) == 50
    two.add(OWNER, mapping(99).token, b"k", b"v")
    assert one.root(OWNER) != two.root(OWNER)
    assert bucket_of("tok_A" + "x" * 31) == 0 and bucket_of("odd") is None


def test_missing_mappings_are_copied_both_ways() -> None:
    net = Net()
    a, b, c = (net.peers[p] for p in PEERS)
    a.hold([mapping(i) for i in range(0, 300)])
    b.hold([mapping(i) for i in range(200, 500)])
    c.hold([mapping(i) for i in range(450, 460)])
    net.converge()
    expected = {mapping(i).token for i in range(500)}
    assert a.tokens() == b.tokens() == c.tokens() == expected
    # pushes are anti-entropy repairs, and their replies were routed back here by that origin
    pushes = [m for m in net.delivered if isinstance(m, InsertRequest)]
    assert pushes and all(m.origin is Origin.ANTI_ENTROPY and m.repair for m in pushes)
    replies = [m for m in net.delivered if isinstance(m, InsertReply)]
    assert len(replies) == len(pushes)
    assert all(m.origin is Origin.ANTI_ENTROPY for m in replies)
    for peer in net.peers.values():
        peer.restart()  # rebuilt digests agree with what is on disk
    assert len({p.replica.digests.root(OWNER) for p in net.peers.values()}) == 1


def test_a_quiet_pass_is_one_summary_and_its_answer() -> None:
    net = Net()
    for peer in net.peers.values():
        peer.hold([mapping(i) for i in range(100)])
    net.tick("a", 100.0)
    assert [type(m).__name__ for _, _, m in net.messages] == ["AeSummary"]
    net.run(100.0)
    assert len(net.delivered) == 2
    stats = net.peers["a"].ae.statistics
    assert stats.passes == 1 and stats.passes_in_sync == 1 and stats.mappings_pushed == 0
    # throttled: no new pass before the interval
    net.tick("a", 100.5)
    assert net.messages == []


def test_pages_and_buckets_are_bounded_and_later_passes_finish_the_work() -> None:
    limits = AntiEntropyLimits(buckets_per_pass_max=2, keys_per_page_max=3, pages_per_pass_max=4)
    net = Net(limits)
    net.peers["a"].hold([mapping(i) for i in range(200)])
    net.tick("a", 10.0)
    net.run(10.0)
    pushed_first = net.peers["a"].ae.statistics.mappings_pushed
    assert 0 < pushed_first <= limits.pages_per_pass_max * limits.keys_per_page_max
    net.converge(rounds=400)
    assert net.peers["b"].tokens() == net.peers["a"].tokens()


def test_a_decided_epoch_travels_with_the_summary() -> None:
    net = Net()
    value = EpochValue(epoch=2, salt="ab" * 8, requested_by="r", requested_at_s=1.0)
    a = net.peers["a"]
    effects = a.acceptor.on_message("x", Decide(op_id="d", owner=OWNER, value=value))
    a.store.stage(effects.writes)
    a.store.sync()
    net.tick("a", 10.0)
    net.run(10.0)
    assert net.peers["b"].acceptor.active_epoch(OWNER) == value
    net.tick("c", 20.0)  # c starts with b or a, either way it learns
    net.run(20.0)
    net.tick("c", 30.0)
    net.run(30.0)
    assert net.peers["c"].acceptor.active_epoch(OWNER) == value


def test_a_conflicting_record_is_reported_never_overwritten() -> None:
    net = Net()
    good = mapping(1)
    bad = Mapping(owner=OWNER, token=good.token, value="forged", field="ssn", epoch=1)
    net.peers["a"].hold([good])
    net.peers["b"].hold([bad])
    net.tick("a", 10.0)
    events: list[str] = []
    while net.messages:
        source, destination, message = net.messages.pop(0)
        peer = net.peers[destination]
        effects = (
            peer.replica.on_message(source, message)
            if isinstance(message, InsertRequest)
            else peer.ae.on_message(source, message, 10.0)
        )
        events.extend(e.name for e in effects.events)
        net.apply(peer, effects)
    assert "anti_entropy_conflict" in events
    assert net.peers["b"].replica.read_mapping(OWNER, good.token) == bad
    assert net.peers["a"].replica.read_mapping(OWNER, good.token) == good


@pytest.mark.parametrize("corrupt_on", ["a", "b"])
def test_a_record_that_fails_verification_is_repaired_from_one_that_verifies(
    corrupt_on: str,
) -> None:
    """A bit flipped in a record nobody reads: its hash changes, so its bucket differs, and the
    key walk replaces it with the other side's verified record (on the initiator, "a", and on
    its partner alike); the digests then agree with what is on disk."""
    net = Net(sealer=REAL_SEALER)
    held = [mapping(i) for i in range(20)]
    for peer in net.peers.values():
        peer.hold(held)
    victim = net.peers[corrupt_on]
    key = mapping_key(OWNER, held[7].token)
    raw = bytearray(victim.store.get(key) or b"")
    raw[-5] ^= 0x20
    victim.store.stage([(key, bytes(raw))])
    victim.store.sync()
    victim.restart()  # digests rebuilt from the corrupt record, as after a restart
    assert victim.replica.held_mapping(OWNER, held[7].token) is CORRUPT
    net.converge()
    assert victim.replica.read_mapping(OWNER, held[7].token) == held[7]
    assert victim.replica.repaired == 1
    assert sum(p.replica.repaired for p in net.peers.values()) == 1
    for peer in net.peers.values():
        peer.restart()
    assert len({p.replica.digests.root(OWNER) for p in net.peers.values()}) == 1


@pytest.mark.parametrize("corrupt_on", ["a", "b"])
def test_a_corrupt_record_no_partner_holds_leaves_the_digests(corrupt_on: str) -> None:
    """The lone copy of a mapping (a write that failed everywhere else) then a flipped bit: no
    replica can supply it, so while it stayed counted the digests differed forever (found by
    the simulator, seed 49). Once a partner shows it lacks the token, the corrupt record leaves
    the digests, and the replicas converge; the record stays, answered corrupt (never "not
    held"), and a healthy record is never uncounted."""
    net = Net(sealer=REAL_SEALER)
    shared = [mapping(i) for i in range(10)]
    lone = mapping(99)
    for peer in net.peers.values():
        peer.hold(shared)
    victim = net.peers[corrupt_on]
    victim.hold([lone])
    key = mapping_key(OWNER, lone.token)
    raw = bytearray(victim.store.get(key) or b"")
    raw[-3] ^= 0x01
    victim.store.stage([(key, bytes(raw))])
    victim.store.sync()
    victim.restart()
    assert victim.replica.held_mapping(OWNER, lone.token) is CORRUPT
    net.converge()
    assert victim.store.get(key) == bytes(raw)
    assert victim.replica.held_mapping(OWNER, lone.token) is CORRUPT
    assert all(
        p.replica.read_mapping(OWNER, m.token) == m for p in net.peers.values() for m in shared
    )
    assert len({p.replica.digests.root(OWNER) for p in net.peers.values()}) == 1
    victim.restart()  # counted again at the rebuild, until anti-entropy meets it again
    net.converge()
    assert len({p.replica.digests.root(OWNER) for p in net.peers.values()}) == 1


def test_an_uncounted_corrupt_record_is_still_repaired_and_counted_once() -> None:
    """A corrupt record uncounted against a partner that lacks the token is still replaced by
    the mapping a third replica holds; the digests then count it once, like everyone's."""
    net = Net(sealer=REAL_SEALER)
    held = mapping(5)
    victim, holder, lacking = net.peers["a"], net.peers["b"], net.peers["c"]
    victim.hold([held])
    holder.hold([held])
    key = mapping_key(OWNER, held.token)
    raw = bytearray(victim.store.get(key) or b"")
    raw[-2] ^= 0x04
    victim.store.stage([(key, bytes(raw))])
    victim.store.sync()
    victim.restart()
    effects = victim.replica.uncount_corrupt(OWNER, held.token, lacking.name)
    assert [e.name for e in effects.events] == ["corrupt_record_uncounted"]
    assert victim.replica.uncount_corrupt(OWNER, held.token, lacking.name).is_empty()
    assert victim.replica.digests.count(OWNER) == 0
    net.converge()
    assert victim.replica.read_mapping(OWNER, held.token) == held
    assert victim.replica.digests.count(OWNER) == 1
    assert len({p.replica.digests.root(OWNER) for p in net.peers.values()}) == 1


def test_only_the_owners_replicas_take_part() -> None:
    net = Net()
    summary = AeSummary(
        op_id="ae:z:1",
        owner=OWNER,
        leaves=("0" * 32,) * BUCKETS,
        count=0,
        decided=net.peers["a"].acceptor.active_epoch(OWNER),
    )
    assert net.peers["a"].ae.on_message("zz", summary, 1.0).is_empty()


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.sets(st.integers(0, 150), max_size=80), min_size=3, max_size=3),
    st.integers(0, 2**16),
)
def test_any_start_converges_to_the_union(held: list[set[int]], seed: int) -> None:
    net = Net(AntiEntropyLimits(keys_per_page_max=random.Random(seed).choice([1, 7, 1000])))
    for peer, indices in zip(net.peers.values(), held, strict=True):
        if indices:
            peer.hold([mapping(i) for i in sorted(indices)])
    net.converge(rounds=500)
    union = {mapping(i).token for indices in held for i in indices}
    assert all(p.tokens() == union for p in net.peers.values())


def test_two_values_for_one_epoch_are_a_safety_alarm() -> None:
    net = Net()
    for name, salt in (("a", "ab" * 8), ("b", "cd" * 8)):
        value = EpochValue(epoch=2, salt=salt, requested_by=name, requested_at_s=1.0)
        peer = net.peers[name]
        effects = peer.acceptor.on_message("x", Decide(op_id="d", owner=OWNER, value=value))
        peer.store.stage(effects.writes)
        peer.store.sync()
    net.tick("a", 10.0)
    (source, destination, summary) = net.messages.pop(0)
    effects = net.peers[destination].ae.on_message(source, summary, 10.0)
    assert "paxos_disagreement" in [e.name for e in effects.events]


def _deliver_one(net: Net, now: float) -> None:
    """Deliver only the oldest pending message, at `now`."""
    source, destination, message = net.messages.pop(0)
    peer = net.peers[destination]
    if isinstance(message, InsertRequest):
        net.apply(peer, peer.replica.on_message(source, message))
    else:
        net.apply(peer, peer.ae.on_message(source, message, now))


def test_a_pass_whose_partner_is_silent_times_out() -> None:
    limits = AntiEntropyLimits(pass_timeout_s=5.0)
    net = Net(limits)
    net.peers["a"].hold([mapping(i) for i in range(10)])
    net.tick("a", 100.0)  # the summary is never delivered
    net.messages.clear()
    net.tick("a", 104.9)
    stats = net.peers["a"].ae.statistics
    assert stats.passes == 0  # still waiting
    net.tick("a", 105.0)
    assert stats.passes == 1 and stats.last_pass is not None
    assert stats.last_pass.outcome == "timed_out"


def test_a_pass_that_keeps_getting_answers_is_not_cut_short_however_slow() -> None:
    limits = AntiEntropyLimits(keys_per_page_max=5, pass_timeout_s=5.0)
    net = Net(limits)
    net.peers["a"].hold([mapping(i) for i in range(60)])
    now = 100.0
    net.tick("a", now)
    # every answer takes 4 s (under the timeout), the pass as a whole far longer than 5 s
    while net.peers["a"].ae.statistics.passes == 0:
        assert net.messages, "the pass stalled"
        now += 4.0 if isinstance(net.messages[0][2], AeSummaryReply | AeKeysReply) else 0.0
        net.tick("a", now)
        _deliver_one(net, now)
    report = net.peers["a"].ae.statistics.last_pass
    assert report is not None and report.outcome == "repaired"
    assert report.finished - report.started > 5.0


def test_a_busy_owner_is_compared_once_per_busy_interval_per_partner_a_quiet_one_each_pass() -> (
    None
):
    limits = AntiEntropyLimits(
        pass_interval_s=1.0, pass_timeout_s=0.5, busy_window_s=1.0, busy_pass_interval_s=10.0
    )
    net = Net(limits)
    peer = net.peers[PEERS[0]]
    written = iter(range(10_000))

    def summaries_sent(now: float, *, writes: bool) -> int:
        if writes:  # a write lands on this replica just before the tick
            peer.hold([mapping(next(written))])
        before = len(net.messages)
        net.tick(peer.name, now)
        sent = [m for _, _, m in net.messages[before:] if isinstance(m, AeSummary)]
        net.messages.clear()  # the partners never answer: each pass ends by its timeout
        return len(sent)

    # writes at every tick: the first sight of the owner is no change (a pass to b), then a pass
    # to c, then nothing until ten seconds after each partner's last pass
    busy = [summaries_sent(t * 2.0, writes=True) for t in range(1, 8)]
    assert busy == [1, 1, 0, 0, 0, 1, 1]
    # quiet (no write for more than busy_window_s): a pass every tick again
    assert [summaries_sent(100.0 + t * 2.0, writes=False) for t in range(4)] == [1, 1, 1, 1]
    # a refill never waits
    peer.ae.urgent = True
    assert [summaries_sent(200.0 + t * 2.0, writes=True) for t in range(4)] == [1, 1, 1, 1]
