"""The transfer core (transfer.py) on a few peers whose messages the test plays: pages,
the cursor after a crash, a corrupt page, a silent source, conflicts, the commit condition and
the throttle."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import pytest

from tests.quorum.helpers import SEALER
from tests.stores import serving_store
from tokenvault.quorum.acceptor import Acceptor
from tokenvault.quorum.effects import Effects, Timer
from tokenvault.quorum.messages import (
    InsertRequest,
    Mapping,
    Message,
    RecoveryQuery,
    RecoveryReport,
    TransferPage,
    TransferPageReply,
)
from tokenvault.quorum.quorum_config import QuorumConfig
from tokenvault.quorum.records import owner_mapping_prefix
from tokenvault.quorum.replica import Replica
from tokenvault.quorum.throttle import TokenBucket
from tokenvault.quorum.transfer import TransferLimits, Transfers, page_checksum
from tokenvault.quorum.transfer_records import read_transfers
from tokenvault.store.memory_store import MemoryStore

OWNER = "alice"
N3 = QuorumConfig(replica_count=3, write_quorum=2, read_quorum=2)
OLD = ("s1", "s2", "s3")
SMALL_PAGES = TransferLimits(page_mappings_max=10)


def mapping(i: int, value: str = "") -> Mapping:
    return Mapping(
        owner=OWNER, token=f"tok_{i:05d}", value=value or f"value-{i}", field="ssn", epoch=1
    )


class Peer:
    def __init__(self, peer_id: str, store: MemoryStore, limits: TransferLimits, now: float):
        self.peer_id = peer_id
        self.store = store
        self.replica = Replica(peer_id=peer_id, storage=store, sealer=SEALER)
        self.acceptor = Acceptor(peer_id=peer_id, storage=store, store_id=peer_id * 8)
        self.transfers = Transfers(
            peer_id=peer_id,
            storage=store,
            replica=self.replica,
            acceptor=self.acceptor,
            quorum=N3,
            store_id=peer_id * 8,
            holds=lambda owner: True,
            now=now,
            limits=limits,
        )


class Network:
    """Peers, messages delivered in order, every write synced at once; `silent` peers never
    answer; `tamper` may change a message on its way."""

    def __init__(self, limits: TransferLimits = SMALL_PAGES) -> None:
        self.now = 0.0
        self.limits = limits
        self.peers: dict[str, Peer] = {}
        self.queue: deque[tuple[str, str, Message]] = deque()
        self.timers: list[tuple[str, Timer]] = []
        self.silent: set[str] = set()
        self.tamper: Callable[[str, str, Message], Message] = lambda s, d, m: m
        self.events: list[str] = []
        self.delivered: list[tuple[str, str, Message]] = []
        self.committed_at: float | None = None
        for peer in (*OLD, "t"):
            self.add(peer, serving_store(store_id=peer * 8))

    def add(self, peer_id: str, store: MemoryStore) -> Peer:
        peer = self.peers[peer_id] = Peer(peer_id, store, self.limits, self.now)
        return peer

    def fill(self, peer_id: str, mappings: list[Mapping]) -> None:
        peer = self.peers[peer_id]
        for start in range(0, len(mappings), 500):
            chunk = tuple(mappings[start : start + 500])
            request = InsertRequest(op_id="w", owner=OWNER, mappings=chunk)
            self.apply(peer_id, peer.replica.on_message("client", request), deliver=False)

    def apply(self, peer_id: str, effects: Effects, *, deliver: bool = True) -> None:
        if effects.writes:
            self.peers[peer_id].store.stage(effects.writes)
            self.peers[peer_id].store.sync()
        self.timers.extend((peer_id, timer) for timer in effects.timers)
        self.events.extend(event.name for event in effects.events)
        if any(event.name == "transfer_committed" for event in effects.events):
            self.committed_at = self.now
        if deliver:
            for envelope in effects.messages:
                self.queue.append((envelope.source, envelope.destination, envelope.message))

    def run(self, steps_max: int = 100_000) -> None:
        for _ in range(steps_max):
            if not self.queue:
                return
            source, destination, message = self.queue.popleft()
            if source in self.silent or destination in self.silent:
                continue
            message = self.tamper(source, destination, message)
            if source in self.silent or destination in self.silent:
                continue
            self.delivered.append((source, destination, message))
            peer = self.peers[destination]
            if isinstance(message, RecoveryQuery):
                effects = peer.acceptor.on_message(source, message)
            elif isinstance(message, RecoveryReport):
                effects = peer.transfers.on_recovery_report(source, message, self.now)
            else:
                effects = peer.transfers.on_message(source, message, self.now)
            self.apply(destination, effects)
        raise AssertionError("the network does not settle")

    def advance(self, seconds: float) -> None:
        """Time passes: due timers fire, in order."""
        end = self.now + seconds
        while True:
            due = [item for item in self.timers if item[1].due <= end]
            if not due:
                break
            peer_id, timer = min(due, key=lambda item: item[1].due)
            self.timers.remove((peer_id, timer))
            self.now = max(self.now, timer.due)
            self.apply(peer_id, self.peers[peer_id].transfers.on_timer(timer, self.now))
            self.run()
        self.now = end

    def start(self, old: tuple[str, ...] = OLD) -> None:
        self.apply("t", self.peers["t"].transfers.start(2, OWNER, old, self.now))
        self.run()

    def held(self, peer_id: str) -> list[bytes]:
        return [
            key
            for key, _ in self.peers[peer_id].store.scan(owner_mapping_prefix(OWNER), limit=10**6)
        ]

    def state(self) -> str:
        (view,) = self.peers["t"].transfers.views(self.now)
        return view.state


def dies_after_one_page(network: Network, peer: str) -> Callable[[str, str, Message], Message]:
    """A tamper: `peer`'s first page arrives, then it dies (its second page is lost)."""
    replies = 0

    def tamper(source: str, destination: str, message: Message) -> Message:
        nonlocal replies
        if isinstance(message, TransferPageReply) and source == peer:
            replies += 1
            if replies == 2:
                network.silent.add(peer)
        return message

    return tamper


def pages_from(network: Network, source: str) -> list[TransferPage]:
    return [m for s, d, m in network.delivered if isinstance(m, TransferPage) and d == source]


def test_a_transfer_copies_every_mapping_in_pages_and_commits_after_two_whole_passes() -> None:
    network = Network()
    everything = [mapping(i) for i in range(35)]
    for source in OLD:
        network.fill(source, everything)
    network.start()
    target = network.peers["t"]
    assert network.state() == "committed"
    assert target.transfers.committed(2, [OWNER])
    for m in everything:
        assert target.replica.read_mapping(OWNER, m.token) == m
    # N - W + 1 = 2 whole passes, from the first two old replicas, 4 pages each (10 a page)
    assert len(pages_from(network, "s1")) == 4 and len(pages_from(network, "s2")) == 4
    assert not pages_from(network, "s3")
    (view,) = target.transfers.views(network.now)
    assert (view.mappings_moved, view.verified, view.conflicts) == (35, 2, 0)
    assert "transfer_committed" in network.events
    (record,) = read_transfers(target.store, 10)
    assert record.step == "committed", "the commit is durable"


def test_a_mapping_the_first_source_lacks_is_brought_by_the_verifying_pass() -> None:
    network = Network()
    everything = [mapping(i) for i in range(20)]
    network.fill("s1", everything[:-1])  # s1 missed the last write, acknowledged by s2, s3
    network.fill("s2", everything)
    network.fill("s3", everything)
    network.start()
    assert network.state() == "committed"
    last = everything[-1]
    assert network.peers["t"].replica.read_mapping(OWNER, last.token) == last


def test_commit_waits_for_the_epochs_of_a_majority_of_the_old_set() -> None:
    network = Network()
    network.fill("s1", [mapping(0)])
    network.silent |= {"s2", "s3"}
    network.start()
    assert network.state() == "epochs"
    assert not [m for _, _, m in network.delivered if isinstance(m, TransferPage)]
    network.silent.discard("s2")
    network.advance(1.0)  # the query goes again to those that did not answer
    assert network.state() != "epochs"


def test_a_crashed_target_resumes_from_its_durable_cursor() -> None:
    network = Network()
    everything = [mapping(i) for i in range(50)]
    for source in OLD:
        network.fill(source, everything)
    pages_seen = 0

    def crash_after_two_pages(source: str, destination: str, message: Message) -> Message:
        nonlocal pages_seen
        if isinstance(message, TransferPageReply):
            pages_seen += 1
            if pages_seen > 2:
                network.silent.add("t")  # the target dies: nothing more reaches it
        return message

    network.tamper = crash_after_two_pages
    network.start()
    store = network.peers["t"].store
    store.crash()  # whatever was not synced is lost (here: nothing)
    (record,) = read_transfers(store, 10)
    assert record.cursor == everything[19].token and record.step == "copying"
    assert len(network.held("t")) == 20
    network.silent.clear()
    network.tamper = lambda s, d, m: m
    network.delivered.clear()
    network.timers.clear()
    restarted = network.add("t", store)
    network.apply("t", restarted.transfers.resume(network.now))
    network.run()
    first = pages_from(network, "s1")[0]
    assert first.after == everything[19].token, "asks from its cursor, not from zero"
    assert network.state() == "committed"
    assert len(network.held("t")) == 50


def test_a_corrupt_page_is_dropped_and_asked_again() -> None:
    network = Network()
    everything = [mapping(i) for i in range(15)]
    for source in OLD:
        network.fill(source, everything)
    corrupted = False

    def flip_one_record(source: str, destination: str, message: Message) -> Message:
        nonlocal corrupted
        if isinstance(message, TransferPageReply) and message.entries and not corrupted:
            corrupted = True
            token, raw = message.entries[0]
            flipped = bytes([raw[0]]) + bytes([raw[1] ^ 1]) + raw[2:]
            entries = ((token, flipped), *message.entries[1:])
            return TransferPageReply(
                op_id=message.op_id,
                owner=message.owner,
                after=message.after,
                request=message.request,
                entries=entries,
                checksum=message.checksum,
                done=message.done,
                held=message.held,
            )
        return message

    network.tamper = flip_one_record
    network.start()
    assert "transfer_page_corrupt" in network.events
    assert network.state() == "committed"
    for m in everything:
        assert network.peers["t"].replica.read_mapping(OWNER, m.token) == m
    assert page_checksum(()) != page_checksum((("a", b""),))


def test_a_silent_source_is_replaced_from_the_same_cursor_and_its_pass_counts_for_none() -> None:
    network = Network()
    everything = [mapping(i) for i in range(30)]
    for source in OLD:
        network.fill(source, everything)
    network.tamper = dies_after_one_page(network, "s1")
    network.start()
    assert network.state() == "copying"
    network.advance(5.0)
    assert "transfer_source_replaced" in network.events
    (replacement, *_) = pages_from(network, "s2")
    assert replacement.after == everything[9].token
    network.advance(1.0)
    # the mixed pass verified no one: whole passes from s2 and then s3 (s1 stays dead)
    assert network.state() == "committed"
    (view,) = network.peers["t"].transfers.views(network.now)
    assert view.verified == 2
    assert any(m.after is None for m in pages_from(network, "s3"))


def test_a_replace_with_a_dead_old_replica_still_commits_from_the_survivors() -> None:
    network = Network()
    everything = [mapping(i) for i in range(12)]
    for source in ("s2", "s3"):
        network.fill(source, everything)
    network.silent.add("s1")
    network.start()
    network.advance(12.0)
    assert network.state() == "committed"
    assert len(network.held("t")) == 12


def test_no_commit_while_fewer_than_n_minus_w_plus_one_old_replicas_were_read_whole() -> None:
    network = Network()
    everything = [mapping(i) for i in range(12)]
    for source in OLD:
        network.fill(source, everything)
    network.silent.add("s3")

    def no_pages_from_s2(source: str, destination: str, message: Message) -> Message:
        if isinstance(message, TransferPageReply) and source == "s2":
            network.silent.add("s2")  # answered the epochs query, dies before any page
        return message

    network.tamper = no_pages_from_s2
    network.start()
    network.advance(30.0)
    assert len(network.held("t")) == 12, "one whole pass, from s1"
    assert network.state() != "committed"
    assert not network.peers["t"].transfers.committed(2, [OWNER])


def test_a_different_mapping_under_a_held_token_is_a_conflict_never_an_overwrite() -> None:
    network = Network()
    everything = [mapping(i) for i in range(5)]
    for source in OLD:
        network.fill(source, everything)
    mine = mapping(2, value="another value")
    network.fill("t", [mine])
    network.start()
    assert "transfer_conflict" in network.events
    assert network.peers["t"].replica.read_mapping(OWNER, mine.token) == mine
    (view,) = network.peers["t"].transfers.views(network.now)
    assert view.conflicts >= 1


def test_start_is_idempotent_and_old_changes_are_forgotten() -> None:
    network = Network()
    network.fill("s1", [mapping(0)])
    network.start()
    transfers = network.peers["t"].transfers
    assert transfers.start(2, OWNER, OLD, network.now).is_empty()
    forgotten = transfers.forget_before(3)
    assert forgotten.writes and all(record is None for _, record in forgotten.writes)
    assert transfers.views(network.now) == [] and transfers.pending() == 0


def test_a_source_that_does_not_hold_the_owner_answers_unavailable() -> None:
    store = serving_store()
    peer = Peer("s1", store, SMALL_PAGES, 0.0)
    peer.transfers = Transfers(
        peer_id="s1",
        storage=store,
        replica=peer.replica,
        acceptor=peer.acceptor,
        quorum=N3,
        store_id="x",
        holds=lambda owner: False,
        now=0.0,
    )
    page = TransferPage(op_id="tr:2:alice", owner=OWNER, after=None, limit=10, request=1)
    (envelope,) = peer.transfers.on_message("t", page, 0.0).messages
    assert isinstance(envelope.message, TransferPageReply) and envelope.message.unavailable


def test_pages_stop_at_the_byte_limit() -> None:
    network = Network(TransferLimits(page_mappings_max=1000, page_bytes_max=400))
    network.fill("s1", [mapping(i, value="x" * 100) for i in range(10)])
    page = TransferPage(op_id="tr:2:alice", owner=OWNER, after=None, limit=1000, request=1)
    (envelope,) = network.peers["s1"].transfers.on_message("t", page, 0.0).messages
    reply = envelope.message
    assert isinstance(reply, TransferPageReply)
    assert 1 <= len(reply.entries) < 10 and not reply.done
    assert sum(len(raw) for _, raw in reply.entries) <= 400


@pytest.mark.parametrize("rate_bytes_s", [20_000.0, 50_000.0])
def test_the_throttle_holds_the_rate(rate_bytes_s: float) -> None:
    limits = TransferLimits(page_mappings_max=50, rate_bytes_s=rate_bytes_s, burst_bytes=10_000)
    network = Network(limits)
    everything = [mapping(i, value="v" * 200) for i in range(400)]
    for source in OLD:
        network.fill(source, everything)
    network.start()
    network.advance(60.0)
    (view,) = network.peers["t"].transfers.views(network.now)
    assert view.state == "committed"
    received = [
        (m, sum(len(raw) for _, raw in m.entries))
        for _, _, m in network.delivered
        if isinstance(m, TransferPageReply)
    ]
    total = sum(size for _, size in received)
    assert total == view.bytes_moved > 0
    # at most the rate (beyond the burst and a page in flight), and not much slower
    page_max = max(size for _, size in received)
    assert network.committed_at is not None
    assert network.committed_at >= (total - 10_000 - page_max) / rate_bytes_s
    assert network.committed_at <= total / rate_bytes_s + 1.0


def test_the_token_bucket_owes_what_was_charged_beyond_its_level() -> None:
    bucket = TokenBucket(rate_bytes_s=100.0, burst_bytes=50, now=0.0)
    assert bucket.ready_at(0.0) == 0.0
    bucket.charge(250, 0.0)
    assert bucket.ready_at(0.0) == pytest.approx(2.0)
    assert bucket.level(10.0) == 50.0, "never above the burst"


def test_a_pass_read_from_two_sources_verifies_neither() -> None:
    network = Network()
    everything = [mapping(i) for i in range(30)]
    network.fill("s1", [m for m in everything if m.token != everything[3].token])
    network.fill("s2", everything)  # mapping 3 was acknowledged by s2 and s3 only
    network.fill("s3", everything)
    network.silent.add("s3")
    network.tamper = dies_after_one_page(network, "s1")
    network.start()
    network.advance(6.0)  # s2 goes on after s1's first page: a pass of two sources
    network.tamper = lambda s, d, m: m
    network.silent.discard("s1")
    network.advance(30.0)
    assert network.state() == "committed"
    held = network.peers["t"].replica.read_mapping(OWNER, everything[3].token)
    assert held == everything[3], "s2's part of the range was read whole"


def test_a_reply_to_another_request_or_from_another_peer_is_ignored() -> None:
    network = Network()
    network.fill("s1", [mapping(i) for i in range(5)])
    pages: list[TransferPage] = []

    def hold_pages(source: str, destination: str, message: Message) -> Message:
        if isinstance(message, TransferPage):
            pages.append(message)
            network.silent.add(destination)  # the page is lost: the request stays open
        return message

    network.tamper = hold_pages
    network.start()
    (asked,) = pages
    transfers = network.peers["t"].transfers
    entries = ((mapping(0).token, b"\x02junk"),)
    for source, request in (("s1", asked.request + 1), ("s2", asked.request)):
        stray = TransferPageReply(
            op_id=asked.op_id,
            owner=OWNER,
            after=None,
            request=request,
            entries=entries,
            checksum=page_checksum(entries),
            done=True,
        )
        assert transfers.on_message(source, stray, network.now).is_empty()
    (view,) = transfers.views(network.now)
    assert (view.state, view.mappings_moved, view.bytes_moved) == ("copying", 0, 0)


# When seed 11 of `sim --membership 3` asked its second pass's page (virtual seconds): here
# `asked + 5.0 - asked` rounds below 5.0.
ASKED_AT = 14.343827801565434


def test_a_lost_page_is_replaced_when_its_deadline_fires_whatever_the_rounding() -> None:
    assert (ASKED_AT + 5.0) - ASKED_AT < 5.0, "the premise: the difference rounds down"
    network = Network()
    everything = [mapping(i) for i in range(5)]
    for source in OLD:
        network.fill(source, everything)

    def lose_the_second_pass(source: str, destination: str, message: Message) -> Message:
        if isinstance(message, TransferPage) and destination == "s2":
            network.silent.add("s2")  # its reply is lost: the request stays outstanding
        return message

    network.tamper = lose_the_second_pass
    network.now = ASKED_AT
    network.start()  # s1's pass is whole in one page; s2 is asked at once, and never answers
    assert network.state() == "verifying"
    assert len(pages_from(network, "s1")) == 1 and not pages_from(network, "s2")
    network.advance(5.0)  # the DEADLINE fires at its due, exactly: s2 is replaced by s3
    assert any(m.after is None for m in pages_from(network, "s3"))
    assert network.state() == "committed"


def test_the_tick_goes_on_where_a_lost_timer_would_have() -> None:
    limits = TransferLimits(page_mappings_max=10, rate_bytes_s=2_000.0, burst_bytes=1_000)
    network = Network(limits)
    everything = [mapping(i, value="v" * 100) for i in range(40)]
    for source in OLD:
        network.fill(source, everything)
    network.start()
    assert network.state() != "committed", "the throttle holds it back"
    network.timers.clear()  # every timer lost (the driver dropped them)
    for _ in range(60):
        network.now += 1.0
        network.apply("t", network.peers["t"].transfers.tick(network.now))
        network.run()
        network.timers.clear()
    assert network.state() == "committed"


def test_the_tick_replaces_a_silent_source_whose_deadline_timer_was_lost() -> None:
    network = Network()
    for source in OLD:
        network.fill(source, [mapping(i) for i in range(5)])
    network.silent.add("s1")  # the first page is lost: the request stays outstanding
    network.start()
    network.timers.clear()  # its DEADLINE too (the driver dropped it)
    transfers = network.peers["t"].transfers
    network.now += SMALL_PAGES.source_silence_s - 0.5
    network.apply("t", transfers.tick(network.now))
    network.run()
    assert not pages_from(network, "s2"), "not silent yet: the page is still awaited"
    network.now += 0.5
    network.apply("t", transfers.tick(network.now))
    network.run()
    assert pages_from(network, "s2") and pages_from(network, "s3")
    assert network.state() == "committed"


def test_statistics_count_pages_on_both_sides() -> None:
    network = Network()
    for source in OLD:
        network.fill(source, [mapping(i) for i in range(25)])
    network.start()
    target = network.peers["t"].transfers.statistics()
    assert (target.started, target.committed, target.pending) == (1, 1, 0)
    assert (target.pages, target.mappings_moved) == (6, 25)  # 3 pages a pass, two passes
    answered = sum(network.peers[s].transfers.statistics().pages_answered for s in OLD)
    assert answered == 6
