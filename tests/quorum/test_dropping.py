"""The dropping core (dropping.py) on a former replica and the owner's replicas, whose messages
the test plays: a page is deleted only once W replicas hold it durably, a conflict keeps it,
a silent replica is asked again, a ring that makes the peer a replica again stops it, and the
digests follow the deletes (and a delete the store refused)."""

from __future__ import annotations

from collections import deque

import pytest

from tests.quorum.helpers import SEALER
from tests.stores import serving_store
from tokenvault.quorum.dropping import DropLimits, Dropping
from tokenvault.quorum.effects import Effects
from tokenvault.quorum.invariants import InvariantViolation
from tokenvault.quorum.messages import InsertRequest, Mapping, Message, Origin
from tokenvault.quorum.records import mapping_key, owner_mapping_prefix
from tokenvault.quorum.replica import Replica
from tokenvault.store.memory_store import MemoryStore

OWNER = "alice"
READ_SET = ("r1", "r2", "r3")
LIMITS = DropLimits(page_mappings_max=10, pages_in_flight_max=2, resend_after_s=5.0)


def mapping(i: int, value: str = "") -> Mapping:
    return Mapping(
        owner=OWNER, token=f"tok_{i:05d}", value=value or f"value-{i}", field="ssn", epoch=1
    )


class Peer:
    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.store: MemoryStore = serving_store(store_id=peer_id * 8)
        self.replica = Replica(peer_id=peer_id, storage=self.store, sealer=SEALER)

    def apply(self, effects: Effects) -> None:
        if effects.writes:
            self.store.stage(effects.writes)
            self.store.sync()

    def fill(self, mappings: list[Mapping]) -> None:
        request = InsertRequest(op_id="w", owner=OWNER, mappings=tuple(mappings))
        self.apply(self.replica.on_message("client", request))

    def held(self) -> int:
        return len(self.store.scan(owner_mapping_prefix(OWNER), limit=100_000))


class Cluster:
    """The former replica `f` and the read set; messages delivered in order; `silent` peers
    never answer."""

    def __init__(self) -> None:
        self.now = 0.0
        self.former = Peer("f")
        self.replicas = {p: Peer(p) for p in READ_SET}
        self.replicating = False  # the ring names f a replica again
        self.dropping = Dropping(
            peer_id="f",
            storage=self.former.store,
            replica=self.former.replica,
            write_quorum=2,
            is_replica=lambda owner: self.replicating,
            limits=LIMITS,
        )
        self.queue: deque[tuple[str, str, Message]] = deque()
        self.silent: set[str] = set()
        self.events: list[str] = []
        self.sent: list[tuple[str, InsertRequest]] = []

    def apply(self, effects: Effects) -> None:
        self.former.apply(effects)
        self.events.extend(event.name for event in effects.events)
        for envelope in effects.messages:
            self.queue.append((envelope.source, envelope.destination, envelope.message))

    def run(self) -> None:
        while self.queue:
            source, destination, message = self.queue.popleft()
            if source in self.silent or destination in self.silent:
                continue
            if destination == "f":
                self.apply(self.dropping.on_message(source, message, self.now))
                continue
            assert isinstance(message, InsertRequest)
            assert message.repair and message.origin is Origin.DROP
            self.sent.append((destination, message))
            replica = self.replicas[destination]
            effects = replica.replica.on_message(source, message)
            replica.apply(effects)  # replies leave after the fsync
            for envelope in effects.messages:
                self.queue.append((envelope.source, envelope.destination, envelope.message))

    def start(self) -> None:
        self.apply(self.dropping.set_owners({OWNER: READ_SET}, self.now))
        self.run()

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.dropping.tick(self.now))
        self.run()


def test_a_former_replica_hands_every_page_over_then_deletes_it() -> None:
    cluster = Cluster()
    mappings = [mapping(i) for i in range(35)]
    cluster.former.fill(mappings)
    cluster.replicas["r1"].fill(mappings[:20])  # the others lack some: the hand-over fills them
    cluster.start()
    assert cluster.former.held() == 0
    assert cluster.former.replica.digests.count(OWNER) == 0
    for replica in cluster.replicas.values():
        assert replica.held() == 35
    assert cluster.events.count("transfer_dropped") == 1 and "drop_started" in cluster.events
    assert cluster.dropping.mappings_dropped == 35
    assert cluster.dropping.views() == []


def test_a_page_is_deleted_only_once_w_replicas_hold_it() -> None:
    cluster = Cluster()
    cluster.former.fill([mapping(i) for i in range(5)])
    cluster.silent = {"r2", "r3"}
    cluster.start()
    assert cluster.former.held() == 5  # r1 alone is not W
    cluster.silent = {"r3"}
    cluster.tick(1.0)
    assert cluster.former.held() == 5  # not asked again before resend_after_s
    cluster.tick(5.0)
    assert cluster.former.held() == 0
    assert cluster.replicas["r2"].held() == 5 and cluster.replicas["r3"].held() == 0
    assert [d for d, _ in cluster.sent] == ["r1", "r2"]  # r1 acknowledged: not asked again


def test_a_conflict_keeps_its_page_and_the_owner_goes_on_after_it() -> None:
    cluster = Cluster()
    cluster.former.fill([mapping(i) for i in range(25)])
    other = mapping(3, value="another value")
    for replica in cluster.replicas.values():
        replica.fill([other])
    cluster.start()
    assert "drop_conflict" in cluster.events and cluster.dropping.conflicts >= 1
    assert cluster.former.held() == 10  # the first page (tokens 0..9) stays, the rest went
    assert cluster.former.replica.read_mapping(OWNER, mapping(3).token) == mapping(3)
    assert cluster.events.count("transfer_dropped") == 1
    assert [(v.owner, v.state, v.mappings_held) for v in cluster.dropping.views()] == [
        (OWNER, "kept", 10)
    ]
    cluster.tick(60.0)  # kept records are not handed over again while their count is the same
    assert cluster.events.count("drop_started") == 1


def test_a_ring_that_makes_the_peer_a_replica_again_stops_the_drop() -> None:
    cluster = Cluster()
    cluster.former.fill([mapping(i) for i in range(5)])
    cluster.silent = {"r1", "r2", "r3"}
    cluster.start()
    cluster.replicating = True
    cluster.apply(cluster.dropping.set_owners({}, cluster.now))
    cluster.silent = set()
    cluster.tick(10.0)
    assert cluster.former.held() == 5 and cluster.dropping.mappings_dropped == 0


def test_the_delete_itself_refuses_an_owner_this_peer_replicates() -> None:
    cluster = Cluster()
    cluster.former.fill([mapping(i) for i in range(5)])
    cluster.replicating = True  # a bug: named to drop while the ring names it a replica
    with pytest.raises(InvariantViolation):
        cluster.start()


def test_records_that_arrive_later_are_dropped_at_the_next_tick() -> None:
    cluster = Cluster()
    cluster.former.fill([mapping(i) for i in range(3)])
    cluster.start()
    assert cluster.former.held() == 0
    cluster.former.fill([mapping(7)])  # a late hint delivered here
    cluster.tick(1.0)
    assert cluster.former.held() == 0 and cluster.events.count("transfer_dropped") == 2


def test_digests_count_again_a_drop_the_store_refused() -> None:
    peer = Peer("f")
    peer.fill([mapping(i) for i in range(4)])
    before = peer.replica.digests.leaves(OWNER)
    effects = peer.replica.drop(OWNER, [mapping(1).token, mapping(2).token, "tok_absent"])
    assert effects.writes == [
        (mapping_key(OWNER, mapping(1).token), None),
        (mapping_key(OWNER, mapping(2).token), None),
    ]
    assert peer.replica.digests.count(OWNER) == 2
    peer.replica.forget_unstaged(effects.writes)  # the store refused the deletes
    assert peer.replica.digests.count(OWNER) == 4
    assert peer.replica.digests.leaves(OWNER) == before


def test_records_that_arrive_behind_the_pages_start_the_owner_again() -> None:
    cluster = Cluster()
    cluster.former.fill([mapping(i) for i in range(2, 30)])
    cluster.silent = {"r1", "r2", "r3"}
    cluster.start()  # the first pages wait for answers
    cluster.former.fill([mapping(0), mapping(1)])  # behind the first page: no later page reads them
    cluster.silent = set()
    cluster.tick(5.0)
    cluster.tick(1.0)
    assert cluster.former.held() == 0
    assert cluster.events.count("transfer_dropped") == 2
