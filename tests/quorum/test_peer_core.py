"""The peer core driven by hand: inputs in (`receive`, `start`, `advance`, `on_durable`,
`on_durability_failed`), `Step`s out; no simulator, no trio. Peer p1 of a three-peer ring
(N=3, W=2, R=2: every peer replicates OWNER); the test plays the other peers and the driver."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import pytest

from tests.quorum.helpers import membership_of
from tests.stores import SERVING_STORE_ID, serving_store
from tokenvault.quorum import peer_core as peer_core_module
from tokenvault.quorum.client_operations import (
    ClientOperation,
    Detokenize,
    Inspected,
    InspectOwner,
    LearnEpoch,
    RotateEpoch,
    Tokenize,
    TokenizeAttempt,
    Tokenized,
    failed_answer,
)
from tokenvault.quorum.coordinator import Coordinator
from tokenvault.quorum.effects import Effects, Event, Failure, Timer, WriteDone
from tokenvault.quorum.failure_detector import DetectorLimits
from tokenvault.quorum.messages import (
    GENESIS,
    ZERO_BALLOT,
    AeSummary,
    Decide,
    EpochQuery,
    EpochReport,
    EpochValue,
    Heartbeat,
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
    OwnerInspect,
    OwnerView,
    ReadReply,
    ReadRequest,
)
from tokenvault.quorum.peer_core import PeerCore, PeerLimits, Step
from tokenvault.quorum.quorum_config import QuorumConfig
from tokenvault.quorum.records import mapping_key
from tokenvault.store.memory_store import MemoryStore
from tokenvault.store.storage import StorageError, Write
from tokenvault.tokens import TokenMaker, derive_epoch_key

OWNER = "acme"
PEERS = ("p1", "p2", "p3")
OTHERS = ("p2", "p3")
SECRET = b"peer-core-test-secret"
N3_W2_R2 = QuorumConfig(replica_count=3, write_quorum=2, read_quorum=2)
# A real token: replicas check it (sealing.py).
A = Mapping(
    owner=OWNER,
    token=TokenMaker(derive_epoch_key(SECRET, OWNER, 1)).token("ssn", "alice"),
    value="alice",
    field="ssn",
    epoch=1,
)
ITEMS = (("ssn", "alice"), ("email", "alice@example.com"), ("ssn", "alice"))
EPOCH_2 = EpochValue(epoch=2, salt="ab" * 8, requested_by="r-2", requested_at_s=0.0)
EPOCH_3 = EpochValue(epoch=3, salt="cd" * 8, requested_by="r-3", requested_at_s=0.0)
LEAKY_TEXT = "4111-1111-1111-1111"  # an exception's text: never part of an event
STEPS_MAX = 100

T = TypeVar("T")


class Peer:
    """Peer p1's core over a MemoryStore, with the driver's part done by hand."""

    def __init__(
        self,
        limits: PeerLimits = PeerLimits(),
        *,
        peers: tuple[str, ...] = PEERS,
        store: MemoryStore | None = None,
    ) -> None:
        self.store = store if store is not None else serving_store()
        self.core = PeerCore(
            peer_id="p1",
            bootstrap=membership_of(peers, vnodes_per_peer=8),
            quorum=N3_W2_R2,
            owners=(OWNER,),
            storage=self.store,
            secret=SECRET,
            rng=random.Random(7),
            now=0.0,
            limits=limits,
        )
        self.now = 0.0

    def receive(self, source: str, *messages: Message) -> Step:
        return self.core.receive(source, messages, self.now)

    def start(self, operation: ClientOperation) -> Step:
        return self.core.start(operation, self.now)

    def durable(self, ticket: int) -> Step:
        """The driver's sync succeeded: the store is durable up to `ticket`."""
        self.store.sync()
        return self.core.on_durable(ticket, self.now)

    def settle(self, step: Step) -> Step:
        """Acts on `step` as node.py does: local messages go back to `receive` and every sync
        asked for is made, until nothing is left; returns what all the steps produced."""
        pending = [step]
        seen: list[Step] = []
        while pending:
            assert len(seen) < STEPS_MAX, "the core does not settle"
            step = pending.pop(0)
            seen.append(step)
            if step.local:
                pending.append(self.receive("p1", *step.local))
            if step.sync_ticket is not None:
                pending.append(self.durable(step.sync_ticket))
        return merged(seen)

    def advance_to(self, until_s: float) -> Step:
        """Every due timer and tick up to `until_s`, at its own moment (the driver's clock)."""
        steps: list[Step] = []
        while self.core.next_due() <= until_s:
            assert len(steps) < STEPS_MAX, "timers keep firing"
            self.now = self.core.next_due()
            steps.append(self.core.advance(self.now))
        self.now = until_s
        return merged(steps)


def merged(steps: Iterable[Step]) -> Step:
    total = Step()
    for step in steps:
        total.messages += step.messages
        total.local += step.local
        total.answers += step.answers
        total.events += step.events
        total.finished += step.finished
        total.writes += step.writes
        total.attempts += step.attempts
        total.faults += step.faults
        total.ticked = total.ticked or step.ticked
        if step.sync_ticket is not None:
            total.sync_ticket = step.sync_ticket
    return total


def sent(step: Step, kind: type[T]) -> dict[str, T]:
    """The messages of one kind the step sends to other peers, by destination."""
    found: dict[str, T] = {}
    for envelope in step.messages:
        message = envelope.message
        if isinstance(message, kind):
            assert envelope.destination not in found, "one message of a kind per peer"
            found[envelope.destination] = message
    return found


def insert_reply(request: InsertRequest, outcome: InsertOutcome) -> InsertReply:
    tokens = tuple(m.token for m in request.mappings)
    return InsertReply(
        op_id=request.op_id, owner=request.owner, tokens=tokens, outcomes=(outcome,) * len(tokens)
    )


def answer_inserts(peer: Peer, step: Step, outcome: InsertOutcome) -> Step:
    """p2 and p3 answer the InsertRequests `step` sent them."""
    requests = sent(step, InsertRequest)
    return merged(peer.receive(s, insert_reply(requests[s], outcome)) for s in OTHERS)


def insert(op_id: str, *mappings: Mapping) -> InsertRequest:
    return InsertRequest(op_id=op_id, owner=OWNER, mappings=mappings)


def read(op_id: str, *tokens: str) -> ReadRequest:
    return ReadRequest(op_id=op_id, owner=OWNER, tokens=tokens)


def tokenize(op_id: str = "c1", items: tuple[tuple[str, str], ...] = ITEMS) -> Tokenize:
    return Tokenize(op_id=op_id, owner=OWNER, items=items)


def tokens_under(epoch: EpochValue, items: tuple[tuple[str, str], ...] = ITEMS) -> tuple[str, ...]:
    maker = TokenMaker(derive_epoch_key(SECRET, OWNER, epoch.epoch, bytes.fromhex(epoch.salt)))
    return tuple(maker.token(name, value) for name, value in items)


def owner_view(op_id: str, owner: str = OWNER) -> OwnerView:
    return OwnerView(
        op_id=op_id,
        owner=owner,
        token_count=0,
        digest="00" * 16,
        complete=True,
        decided=GENESIS,
        accepted_slot=1,
        next_slot_promised=ZERO_BALLOT,
        next_slot_accepted=None,
    )


def own_view(peer: Peer) -> OwnerView:
    """What p1's replica reports of OWNER (its answer to its own inspection)."""
    step = peer.settle(peer.receive("p1", OwnerInspect(op_id="i0", owner=OWNER)))
    (view,) = (m for m in step.local if isinstance(m, OwnerView))
    return view


def raise_leaky(*args: object, **kwargs: object) -> Effects:
    raise RuntimeError(LEAKY_TEXT)


# -- persist before send -----------------------------------------------------------------------


def test_a_replica_insert_is_staged_at_once_and_acknowledged_only_once_durable() -> None:
    peer = Peer()
    step = peer.receive("p2", insert("w1", A))
    key = mapping_key(OWNER, A.token)
    assert peer.store.get(key) is not None and peer.store.has_unsynced()
    assert [k for k, _ in step.writes] == [key]
    assert step.sync_ticket == 1
    assert step.messages == [] and step.local == []
    released = peer.durable(step.sync_ticket)
    assert [(e.destination, e.message) for e in released.messages] == [
        ("p2", insert_reply(insert("w1", A), InsertOutcome.STORED))
    ]
    assert released.sync_ticket is None and peer.core.statistics().held_outputs == 0


def test_a_replica_read_waits_for_what_is_staged_and_not_yet_durable() -> None:
    """The read wrote nothing, but it reports a mapping only staged: it leaves after the sync."""
    peer = Peer()
    inserted = peer.receive("p2", insert("w1", A))
    step = peer.receive("p3", read("r1", A.token))
    assert step.messages == [] and step.writes == []
    assert step.sync_ticket == inserted.sync_ticket == 1
    released = peer.durable(1)
    assert [(e.destination, type(e.message)) for e in released.messages] == [
        ("p2", InsertReply),
        ("p3", ReadReply),
    ]
    assert sent(released, ReadReply)["p3"].mappings == (A,)


def test_a_replica_read_answers_at_once_when_nothing_is_pending() -> None:
    peer = Peer()
    fresh = peer.receive("p3", read("r0", A.token))
    assert sent(fresh, ReadReply)["p3"].mappings == (None,) and fresh.sync_ticket is None
    peer.settle(peer.receive("p2", insert("w1", A)))  # staged, then durable
    step = peer.receive("p3", read("r1", A.token, "tok_" + "B" * 32))
    assert sent(step, ReadReply)["p3"].mappings == (A, None)
    assert step.sync_ticket is None


# -- sources and liveness ----------------------------------------------------------------------


def test_any_message_from_a_peer_marks_it_alive() -> None:
    peer = Peer()
    peer.advance_to(5.0)  # nobody heard from for longer than down_after_s
    assert peer.core.down_peers() == {"p2", "p3"}
    step = peer.receive("p2", read("r1", A.token))
    assert [e.details for e in step.events if e.name == "peer_up"] == [
        (("target", "p2"), ("was", "down"))
    ]
    assert peer.core.down_peers() == {"p3"}


def test_only_other_ring_peers_are_peers_and_a_batch_from_elsewhere_is_a_programmer_error() -> None:
    core = Peer().core
    assert [core.is_peer(p) for p in ("p2", "p3", "p1", "p9")] == [True, True, False, False]
    with pytest.raises(AssertionError):
        core.receive("p9", [OwnerInspect(op_id="x", owner=OWNER)], 0.0)
    # A peer that is no member yet may send what joining takes: heartbeats, ring fetches, a
    # join request (the node admits nothing else from it: node.py's BatchRules).
    core.receive("p9", [Heartbeat(sender="p9")], 0.0)


# -- tokenize ----------------------------------------------------------------------------------


def test_a_tokenize_writes_deterministic_tokens_to_w_replicas_and_answers_in_item_order() -> None:
    peer = Peer()
    step = peer.start(tokenize())
    tokens = tokens_under(GENESIS)
    assert len(set(tokens)) == 2 and tokens[0] == tokens[2]
    mappings = (
        Mapping(owner=OWNER, token=tokens[0], value="alice", field="ssn", epoch=1),
        Mapping(owner=OWNER, token=tokens[1], value="alice@example.com", field="email", epoch=1),
    )
    request = InsertRequest(op_id="c1/w1", owner=OWNER, mappings=mappings, ring=1)  # version 1
    assert sent(step, InsertRequest) == {"p2": request, "p3": request}
    assert step.local == [request]
    assert step.attempts == [
        TokenizeAttempt(
            client_op="c1", op_id="c1/w1", peer="p1", at_s=0.0, epoch=GENESIS, mappings=mappings
        )
    ]
    assert step.answers == [] and step.writes == []
    own_write = peer.settle(step)  # p1's replica stores, syncs, and acknowledges to itself
    assert own_write.answers == [] and own_write.writes
    done = peer.receive("p2", insert_reply(request, InsertOutcome.STORED))
    assert done.answers == [
        Tokenized(
            op_id="c1",
            owner=OWNER,
            epoch=GENESIS,
            tokens=tokens,
            mappings=mappings,
            failure=None,
            writes=1,
        )
    ]
    assert done.finished == [WriteDone(op_id="c1/w1", owner=OWNER, failure=None)]
    # The same items give the same tokens on another peer of the cluster (same secret).
    assert sent(Peer().start(tokenize("c2")), InsertRequest)["p2"].mappings == mappings


def test_a_tokenize_without_items_answers_at_once_under_the_known_epoch() -> None:
    peer = Peer()
    peer.settle(peer.receive("p2", Decide(op_id="r-2", owner=OWNER, value=EPOCH_2)))
    step = peer.start(tokenize(items=()))
    assert step.answers == [
        Tokenized(
            op_id="c1", owner=OWNER, epoch=EPOCH_2, tokens=(), mappings=(), failure=None, writes=0
        )
    ]
    assert (step.messages, step.local, step.writes, step.attempts) == ([], [], [], [])
    assert step.sync_ticket is None and peer.core.statistics().client_operations == 0


@pytest.mark.parametrize("second_outcome", [InsertOutcome.STORED, InsertOutcome.FENCED])
def test_a_fenced_tokenize_learns_the_epoch_and_writes_again_at_most_attempts_max_times(
    second_outcome: InsertOutcome,
) -> None:
    peer = Peer(PeerLimits(tokenize_attempts_max=2))
    fenced = answer_inserts(peer, peer.start(tokenize()), InsertOutcome.FENCED)
    assert fenced.finished == [WriteDone(op_id="c1/w1", owner=OWNER, failure=Failure.FENCED)]
    assert fenced.answers == []
    query = EpochQuery(op_id="c1/l1", owner=OWNER, ring=1)  # under the ring's version 1
    assert sent(fenced, EpochQuery) == {"p2": query, "p3": query} and fenced.local == [query]

    report = EpochReport(op_id="c1/l1", owner=OWNER, decided=EPOCH_2, accepted_slot=2)
    learned = merged(peer.receive(s, report) for s in OTHERS)
    assert peer.core.known_epoch(OWNER) == EPOCH_2
    assert [(a.op_id, a.epoch) for a in learned.attempts] == [("c1/w2", EPOCH_2)]
    requests = sent(learned, InsertRequest)
    assert {m.token for m in requests["p2"].mappings} == set(tokens_under(EPOCH_2))

    last = answer_inserts(peer, learned, second_outcome)
    (answer,) = last.answers
    assert isinstance(answer, Tokenized)
    assert (answer.op_id, answer.epoch, answer.writes) == ("c1", EPOCH_2, 2)
    if second_outcome is InsertOutcome.STORED:
        assert answer.failure is None and answer.tokens == tokens_under(EPOCH_2)
    else:
        assert answer.failure is Failure.FENCED and answer.tokens == ()
    assert peer.core.statistics().tokenize_relearned == 1
    assert peer.core.statistics().client_operations == 0


# -- the known epoch ---------------------------------------------------------------------------


def test_a_decide_raises_the_known_epoch_and_an_older_one_never_lowers_it() -> None:
    peer = Peer()
    assert peer.core.known_epoch(OWNER) == GENESIS
    later = peer.receive("p2", Decide(op_id="r-3", owner=OWNER, value=EPOCH_3))
    assert peer.core.known_epoch(OWNER) == EPOCH_3
    assert Event(name="epoch_known", owner=OWNER, epoch=3) in later.events
    older = peer.receive("p3", Decide(op_id="r-2", owner=OWNER, value=EPOCH_2))
    assert peer.core.known_epoch(OWNER) == EPOCH_3
    assert [e for e in older.events if e.name == "epoch_known"] == []
    assert peer.start(tokenize()).attempts[0].epoch == EPOCH_3


# -- containment -------------------------------------------------------------------------------


def test_an_exception_from_a_core_drops_only_its_input_and_never_logs_its_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    peer = Peer()
    replica = peer.core.replica
    serve = replica.on_message

    def broken(source: str, message: Message) -> Effects:
        if isinstance(message, InsertRequest):
            raise RuntimeError(LEAKY_TEXT)
        return serve(source, message)

    monkeypatch.setattr(replica, "on_message", broken)
    step = peer.receive("p2", insert("w1", A), read("r1", A.token))
    (fault,) = step.faults
    assert (fault.core, fault.input, fault.error_type, fault.storage) == (
        "replica",
        "InsertRequest",
        "RuntimeError",
        False,
    )
    (error,) = [e for e in step.events if e.name == "core_error"]
    assert [name for name, _ in error.details] == ["core", "input", "kind", "location"]
    assert LEAKY_TEXT not in repr(error)
    assert step.writes == [] and peer.store.get(mapping_key(OWNER, A.token)) is None
    assert sent(step, ReadReply)["p2"].mappings == (None,)  # the next input was served
    assert peer.core.statistics().core_errors == 1


@pytest.mark.parametrize(
    ("operation", "core", "method"),
    [
        (tokenize(), "coordinator", "start_write"),
        (Detokenize(op_id="c1", owner=OWNER, tokens=(A.token,)), "coordinator", "start_read"),
        (LearnEpoch(op_id="c1", owner=OWNER), "epoch_coordinator", "start_learn"),
        (
            RotateEpoch(op_id="c1", owner=OWNER, expected_epoch=1, requested_at_s=0.0),
            "epoch_coordinator",
            "start_rotate",
        ),
    ],
)
def test_a_core_start_that_raises_answers_internal_error(
    operation: ClientOperation, core: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = Peer()
    monkeypatch.setattr(getattr(peer.core, core), method, raise_leaky)
    step = peer.start(operation)
    (answer,) = step.answers
    assert (answer.op_id, answer.failure) == ("c1", Failure.INTERNAL_ERROR)
    assert [f.core for f in step.faults] == [core]
    assert step.messages == [] and peer.core.statistics().client_operations == 0


class FailingStore(MemoryStore):
    """A MemoryStore whose next `stage` calls raise, as a full or broken disk does."""

    __slots__ = ("failures",)

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0
        serving_store(store=self)

    def stage(self, writes: Sequence[Write]) -> None:
        if self.failures:
            self.failures -= 1
            raise StorageError(f"cannot stage {LEAKY_TEXT}")
        super().stage(writes)


def test_a_storage_error_while_staging_is_a_storage_fault() -> None:
    store = FailingStore()
    peer = Peer(store=store)
    store.failures = 1
    step = peer.receive("p2", insert("w1", A))
    (fault,) = step.faults
    assert (fault.core, fault.error_type, fault.storage) == ("replica", "StorageError", True)
    (error,) = [e for e in step.events if e.name in ("storage_error", "core_error")]
    assert error.name == "storage_error" and LEAKY_TEXT not in repr(error)
    assert [name for name, _ in error.details] == ["core", "input", "kind"]
    assert (step.writes, step.messages, step.sync_ticket) == ([], [], None)
    assert peer.core.statistics().storage_errors == 1
    retried = peer.settle(peer.receive("p2", insert("w2", A)))  # the store works again
    assert sent(retried, InsertReply)["p2"].outcomes == (InsertOutcome.STORED,)


def test_a_failed_stage_leaves_the_replica_digests_as_the_store_is() -> None:
    store = FailingStore()
    peer = Peer(store=store)
    store.failures = 1
    peer.receive("p2", insert("w1", A))
    peer.settle(peer.receive("p2", insert("w2", A)))
    restarted = Peer(store=store)  # digests rebuilt from what the store holds
    assert own_view(peer) == own_view(restarted)
    assert own_view(peer).token_count == 1


# -- a failed sync -----------------------------------------------------------------------------


def test_a_failed_sync_drops_the_held_replies_for_good() -> None:
    """In practice only replica, acceptor and anti-entropy outputs are held: peer messages,
    which their senders resend."""
    peer = Peer()
    staged = peer.receive("p2", insert("w1", A))
    assert staged.sync_ticket == 1
    failed = peer.core.on_durability_failed(1, peer.now)
    assert (failed.messages, failed.answers, failed.sync_ticket) == ([], [], None)
    assert peer.core.statistics().held_outputs == 0
    # The write stays staged and a later sync makes it durable; the reply stays dropped,
    # and a read of it still waits for that sync.
    waiting = peer.receive("p3", read("r1", A.token))
    assert waiting.messages == [] and waiting.sync_ticket == 1
    assert [type(e.message) for e in peer.durable(1).messages] == [ReadReply]


MARKER: Write = (b"test/marker", b"1")


class CoordinatorThatWrites(Coordinator):
    """Writes a marker with every output, so its outputs (timers, messages, client replies)
    wait for durability: the path a held client answer takes, which no real core takes."""

    def start_write(self, *args: Any, **kwargs: Any) -> Effects:
        return self._marked(super().start_write(*args, **kwargs))

    def on_timer(self, timer: Timer, now: float) -> Effects:
        return self._marked(super().on_timer(timer, now))

    @staticmethod
    def _marked(effects: Effects) -> Effects:
        effects.writes.append(MARKER)
        return effects


def test_a_failed_sync_arms_held_timers_and_fails_a_held_client_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(peer_core_module, "Coordinator", CoordinatorThatWrites)
    peer = Peer(PeerLimits(detector=DetectorLimits(heartbeat_interval_s=60.0)))
    peer.advance_to(0.0)  # the first heartbeat tick
    started = peer.start(tokenize())
    assert (started.messages, started.local, started.sync_ticket) == ([], [], 1)
    assert peer.core.statistics().timers_pending == 0
    failed = peer.core.on_durability_failed(1, peer.now)
    assert failed.messages == [] and failed.local == []
    assert peer.core.next_due() == 1.0  # the resend timer, armed though its output never left
    timed_out = peer.advance_to(2.5)  # the deadline: its WriteDone waits for a sync too
    assert timed_out.answers == [] and timed_out.messages == []
    assert timed_out.sync_ticket == peer.core.staged_ticket
    answered = peer.core.on_durability_failed(peer.core.staged_ticket, peer.now)
    assert answered.answers == [failed_answer(tokenize(), Failure.STORE_FAILED, None, 1)]


# -- timers ------------------------------------------------------------------------------------


def test_the_first_heartbeat_is_due_at_start_and_goes_to_every_other_peer() -> None:
    peer = Peer()
    assert peer.core.next_due() == 0.0
    step = peer.core.advance(0.0)
    assert step.ticked
    heartbeat = Heartbeat(
        sender="p1",
        store=SERVING_STORE_ID,
        ring_version=1,
        ring_digest=peer.core.membership.digest(),
        transfers_done=1,  # the stable bootstrap: nothing to transfer
    )
    assert sent(step, Heartbeat) == {p: heartbeat for p in OTHERS}
    assert peer.core.next_due() == PeerLimits().detector.heartbeat_interval_s
    quiet = peer.core.advance(0.1)
    assert not quiet.ticked and quiet.messages == []


def test_a_write_nobody_answers_times_out_through_advance() -> None:
    peer = Peer()
    peer.start(tokenize())
    timeout_s = PeerLimits().coordinator.operation_timeout_s
    before = peer.advance_to(timeout_s - 0.01)
    assert before.answers == []
    resent = {e.destination for e in before.messages if isinstance(e.message, InsertRequest)}
    assert resent == set(OTHERS)  # to the replicas that stay silent
    at = peer.advance_to(timeout_s)
    assert at.answers == [failed_answer(tokenize(), Failure.QUORUM_TIMEOUT, GENESIS, 1)]
    assert at.finished == [WriteDone(op_id="c1/w1", owner=OWNER, failure=Failure.QUORUM_TIMEOUT)]


def test_pending_timers_are_bounded_and_the_dropped_counted() -> None:
    peer = Peer(PeerLimits(timers_max=3))
    for op_id in ("c1", "c2", "c3"):  # each write arms a deadline and a resend
        peer.start(tokenize(op_id))
    statistics = peer.core.statistics()
    assert (statistics.timers_pending, statistics.timers_dropped) == (3, 3)


def test_a_client_operation_the_cores_never_end_is_answered_at_its_deadline() -> None:
    """With every timer dropped (timers_max=0) the write has no deadline of its own: the
    peer core's last-resort deadline answers the client anyway, and forgets the operation."""
    peer = Peer(PeerLimits(timers_max=0, client_deadline_s=10.0))
    started = peer.start(tokenize())
    assert peer.advance_to(9.9).answers == []
    expired = peer.advance_to(10.5)  # checked at each heartbeat tick (every 0.5 s)
    assert expired.answers == [failed_answer(tokenize(), Failure.INTERNAL_ERROR, None, 1)]
    (event,) = [e for e in expired.events if e.name == "client_operation_expired"]
    assert (event.owner, event.request_id) == (OWNER, "c1")
    assert peer.core.statistics().client_operations == 0
    late = answer_inserts(peer, started, InsertOutcome.STORED)  # nothing waits for them
    assert late.answers == []
    assert peer.start(tokenize("c2")).answers == []  # the peer goes on


# -- owner inspection --------------------------------------------------------------------------


def test_an_inspection_asks_every_replica_and_answers_with_all_their_views() -> None:
    peer = Peer()
    step = peer.settle(peer.start(InspectOwner(op_id="i1", owner=OWNER)))
    inspect = OwnerInspect(op_id="i1", owner=OWNER)
    assert sent(step, OwnerInspect) == {"p2": inspect, "p3": inspect}
    assert step.local[0] == inspect
    (own,) = (m for m in step.local if isinstance(m, OwnerView))
    assert peer.receive("p2", owner_view("i1")).answers == []
    done = peer.receive("p3", owner_view("i1"))
    assert done.answers == [
        Inspected(
            op_id="i1",
            owner=OWNER,
            views={"p1": own, "p2": owner_view("i1"), "p3": owner_view("i1")},
        )
    ]


def test_an_inspection_answers_with_the_views_it_has_at_its_timeout() -> None:
    peer = Peer()
    peer.settle(peer.start(InspectOwner(op_id="i1", owner=OWNER)))
    peer.receive("p2", owner_view("i1"))
    timeout_s = PeerLimits().inspect_timeout_s
    assert peer.advance_to(timeout_s - 0.01).answers == []
    (answer,) = peer.advance_to(timeout_s).answers
    assert isinstance(answer, Inspected)
    assert (answer.op_id, sorted(answer.views), answer.failure) == ("i1", ["p1", "p2"], None)


def test_an_inspection_ignores_views_of_strangers_other_operations_and_other_owners() -> None:
    peer = Peer(peers=("p1", "p2", "p3", "p4"))
    replicas = peer.core.preference_list(OWNER)
    (stranger,) = {m.id for m in peer.core.membership.members} - set(replicas)
    peer.start(InspectOwner(op_id="i1", owner=OWNER))
    *first, last = replicas
    strays = [
        (stranger, owner_view("i1")),
        (first[0], owner_view("i2")),
        (first[0], owner_view("i1", owner="other")),
    ]
    assert merged(peer.receive(source, view) for source, view in strays).answers == []
    assert merged(peer.receive(source, owner_view("i1")) for source in first).answers == []
    (answer,) = peer.receive(last, owner_view("i1")).answers
    assert isinstance(answer, Inspected)
    assert answer.views == {replica: owner_view("i1") for replica in replicas}


# -- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation",
    [
        tokenize("c2"),
        Detokenize(op_id="c2", owner=OWNER, tokens=(A.token,)),
        LearnEpoch(op_id="c2", owner=OWNER),
        RotateEpoch(op_id="c2", owner=OWNER, expected_epoch=None, requested_at_s=0.0),
        InspectOwner(op_id="c2", owner=OWNER),
    ],
)
def test_client_operations_beyond_the_limit_are_overloaded_at_once(
    operation: ClientOperation,
) -> None:
    peer = Peer(PeerLimits(client_operations_max=1))
    peer.start(InspectOwner(op_id="c1", owner=OWNER))
    step = peer.start(operation)
    assert step.answers == [failed_answer(operation, Failure.OVERLOADED)]
    assert (step.messages, step.local, step.attempts) == ([], [], [])


def test_a_client_operation_id_in_flight_cannot_be_reused() -> None:
    peer = Peer()
    peer.start(tokenize())
    with pytest.raises(ValueError, match="unique"):
        peer.start(LearnEpoch(op_id="c1", owner=OWNER))


@pytest.mark.parametrize("enabled", [True, False])
def test_anti_entropy_runs_only_when_enabled(enabled: bool) -> None:
    peer = Peer(PeerLimits(anti_entropy_enabled=enabled))
    ticks = []
    for tick in range(40):  # 20 s of ticks; the other peers stay up
        peer.now = tick * PeerLimits().detector.heartbeat_interval_s
        ticks.append(peer.core.advance(peer.now))
        peer.receive("p2", Heartbeat(sender="p2"))
        peer.receive("p3", Heartbeat(sender="p3"))
    assert all(step.ticked for step in ticks)
    summaries = [e for step in ticks for e in step.messages if isinstance(e.message, AeSummary)]
    assert bool(summaries) is enabled
    if enabled:
        assert {e.destination for e in summaries} == set(OTHERS)


def test_a_core_built_without_limits_takes_the_default_limits() -> None:
    store = MemoryStore()
    core = PeerCore(
        peer_id="p1",
        bootstrap=membership_of(PEERS, vnodes_per_peer=8),
        quorum=N3_W2_R2,
        owners=(OWNER,),
        storage=store,
        secret=SECRET,
        rng=random.Random(7),
        now=0.0,
    )
    assert core.limits == PeerLimits()
