"""A peer that lost its store (recovery.py) through the peer core: identity, the undecided,
recovering and serving states, refusals, learning from a majority of the other replicas,
refill, and proposers that drop the answers of a replaced store."""

from __future__ import annotations

import json
import random

import pytest

from tests.quorum.test_peer_core import (
    EPOCH_2,
    EPOCH_3,
    OTHERS,
    OWNER,
    SECRET,
    A,
    Peer,
    insert,
    insert_reply,
    read,
    sent,
    tokenize,
)
from tokenvault.http.peer_codec import CodecError, decode_batch, encode_batch, encode_message
from tokenvault.quorum.client_operations import Detokenize, Tokenized
from tokenvault.quorum.effects import Failure, ReadDone, Timer, TimerKind
from tokenvault.quorum.epoch_coordinator import EpochCoordinator
from tokenvault.quorum.messages import (
    GENESIS,
    RECOVERY_DECIDED_MAX,
    ZERO_BALLOT,
    Accept,
    Accepted,
    AeSummary,
    AeSummaryReply,
    Ballot,
    Decide,
    EpochQuery,
    EpochReport,
    EpochValue,
    Heartbeat,
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Message,
    Prepare,
    Promise,
    ReadReply,
    ReadRequest,
    RecoveryQuery,
    RecoveryReport,
    SlotState,
)
from tokenvault.quorum.peer_core import Step
from tokenvault.quorum.placement import OwnerPlacement
from tokenvault.quorum.records import (
    IDENTITY_KEY,
    StoreIdentity,
    encode_identity,
    encode_mapping,
    mapping_key,
    read_acceptor_slot,
    read_epoch_meta,
    read_identity,
)
from tokenvault.quorum.recovery import needed_from_others
from tokenvault.quorum.sealing import Sealer
from tokenvault.store.memory_store import MemoryStore

OLD_ID = "0d" * 16
P2_ID = "22" * 16
P3_ID = "33" * 16


def heartbeat(sender: str, known: str, store: str | None = None) -> Heartbeat:
    own = {"p2": P2_ID, "p3": P3_ID}[sender] if store is None else store
    return Heartbeat(sender=sender, store=own, known=known)


def synced(peer: Peer) -> Step:
    return peer.settle(peer.core.advance(peer.now))


def recovering_peer() -> tuple[Peer, list[tuple[str, AeSummary]]]:
    """p1 on an empty store; p2 and p3 remember another store for it: p1 lost its disk. Also
    the anti-entropy summaries it sent so far (their passes wait for an answer; a pass starts
    only with a peer heard from since p1 started)."""
    peer = Peer(store=MemoryStore())
    first = synced(peer)
    step = peer.settle(peer.receive("p2", heartbeat("p2", OLD_ID)))
    assert peer.core.recovery.phase.value == "recovering"
    third = peer.settle(peer.receive("p3", heartbeat("p3", OLD_ID)))
    assert not summaries(first)  # nobody heard from yet: no pass started
    peer.now += 0.5  # the next tick: both heard, the refill's passes start
    ticked = synced(peer)
    return peer, summaries(step) + summaries(third) + summaries(ticked)


def summaries(step: Step) -> list[tuple[str, AeSummary]]:
    return [(p, m) for p, m in sent(step, AeSummary).items()]


def report(source_slot: int = 3, **kwargs: object) -> RecoveryReport:
    fields: dict[str, object] = {
        "op_id": "rq:p1",
        "owner": OWNER,
        "decided": (EPOCH_2,),
        "decided_slot": 2,
        "accepted_slot": source_slot,
        "slots": (),
    }
    fields.update(kwargs)
    return RecoveryReport(**fields)  # type: ignore[arg-type]


def test_a_fresh_store_gets_an_identity_and_is_recovering_until_its_peers_answer() -> None:
    store = MemoryStore()
    peer = Peer(store=store)
    identity = read_identity(store)
    assert identity is not None and identity.phase == "undecided"
    assert len(identity.store_id) == 32 and int(identity.store_id, 16) >= 0
    assert peer.core.state == "recovering"
    step = peer.core.advance(0.0)
    assert IDENTITY_KEY in dict(step.writes) and step.sync_ticket is not None
    # Undecided: its heartbeats carry no identity (an answer is never its own echo).
    assert all(h.store == "" for h in sent(step, Heartbeat).values())
    (answer,) = peer.start(tokenize()).answers
    assert isinstance(answer, Tokenized) and answer.failure is Failure.RECOVERING


def test_a_fresh_store_in_a_brand_new_cluster_serves_once_a_majority_answered() -> None:
    peer = Peer(store=MemoryStore())
    synced(peer)
    step = peer.settle(peer.receive("p2", heartbeat("p2", "")))  # 2 of 3, counting itself
    assert "store_new_cluster" in [e.name for e in step.events]
    assert peer.core.state == "serving"
    step = peer.core.advance(10.0)
    store_id = peer.core.recovery.store_id
    assert {h.store for h in sent(step, Heartbeat).values()} == {store_id}
    assert sent(step, Heartbeat)["p2"].known == P2_ID  # remembered, and durably
    assert sent(step, RecoveryQuery) == {}


def test_a_store_with_records_and_no_identity_is_an_older_version_and_serves() -> None:
    store = MemoryStore()
    store.stage([(mapping_key(OWNER, A.token), encode_mapping(Sealer(SECRET), A))])
    store.sync()
    peer = Peer(store=store)
    assert peer.core.state == "serving"
    synced(peer)
    identity = read_identity(store)
    assert identity is not None and identity.phase == "serving"


def test_a_peer_remembering_another_identity_makes_a_fresh_store_recover() -> None:
    peer = Peer(store=MemoryStore())
    synced(peer)
    step = peer.settle(peer.receive("p2", heartbeat("p2", OLD_ID)))
    assert "store_lost" in [e.name for e in step.events]
    assert peer.core.state == "recovering"
    queries = sent(step, RecoveryQuery)
    assert set(queries) == set(OTHERS)
    assert queries["p2"].store == peer.core.recovery.store_id
    # A heartbeat with "" from p3 later changes nothing: one peer that knew it is enough.
    peer.settle(peer.receive("p3", heartbeat("p3", "")))
    assert peer.core.state == "recovering"


def test_a_recovering_peer_casts_no_paxos_vote() -> None:
    peer, _ = recovering_peer()
    ballot = Ballot(round=5, peer="r-x")
    value = EpochValue(epoch=2, salt="ef" * 8, requested_by="r-x", requested_at_s=0.0)
    step = peer.settle(
        peer.receive(
            "p2",
            Prepare(op_id="r-x", owner=OWNER, slot=2, ballot=ballot),
            Accept(op_id="r-x", owner=OWNER, slot=2, ballot=ballot, value=value),
            EpochQuery(op_id="r-x", owner=OWNER),
        )
    )
    promise = sent(step, Promise)["p2"]
    accepted = sent(step, Accepted)["p2"]
    report_ = sent(step, EpochReport)["p2"]
    assert promise.unavailable and not promise.granted and promise.promised == ZERO_BALLOT
    assert accepted.unavailable and not accepted.granted
    assert report_.unavailable
    assert step.writes == []  # nothing promised nor accepted on disk
    assert read_acceptor_slot(peer.store, OWNER, 2).promised == ZERO_BALLOT


def test_a_recovering_peer_counts_toward_no_quorum_but_takes_repairs() -> None:
    peer, _ = recovering_peer()
    step = peer.settle(peer.receive("p2", insert("w1", A), read("r1", A.token)))
    (outcome,) = sent(step, InsertReply)["p2"].outcomes
    assert outcome is InsertOutcome.UNAVAILABLE
    reply = sent(step, ReadReply)["p2"]
    assert reply.unavailable and reply.mappings == (None,)
    repair = insert("h1", A)
    repair = type(repair)(op_id="h1", owner=OWNER, mappings=(A,), repair=True)
    step = peer.settle(peer.receive("p2", repair))
    assert sent(step, InsertReply)["p2"].outcomes == (InsertOutcome.STORED,)


def test_a_decide_is_learned_while_recovering() -> None:
    peer, _ = recovering_peer()
    peer.settle(peer.receive("p2", Decide(op_id="d", owner=OWNER, value=EPOCH_2)))
    assert peer.core.acceptor.active_epoch(OWNER) == EPOCH_2


def test_it_adopts_the_highest_promise_and_accepted_value_of_a_majority_of_the_others() -> None:
    peer, _ = recovering_peer()
    low, high = Ballot(round=3, peer="r-a"), Ballot(round=7, peer="r-b")
    value_low = EpochValue(epoch=3, salt="aa" * 8, requested_by="r-a", requested_at_s=0.0)
    value_high = EpochValue(epoch=3, salt="bb" * 8, requested_by="r-b", requested_at_s=0.0)
    from_p2 = report(
        slots=(
            SlotState(slot=3, promised=low, accepted_ballot=low, accepted_value=value_low),
            SlotState(
                slot=4,
                promised=Ballot(round=9, peer="r-c"),
                accepted_ballot=None,
                accepted_value=None,
            ),
        )
    )
    from_p3 = report(
        slots=(SlotState(slot=3, promised=high, accepted_ballot=high, accepted_value=value_high),)
    )
    peer.settle(peer.receive("p2", from_p2))
    assert read_epoch_meta(peer.store, OWNER).decided_slot == 1  # one report is not enough
    assert needed_from_others(3) == 2
    step = peer.settle(peer.receive("p3", from_p3))
    assert "recovery_owner_learned" in [e.name for e in step.events]
    slot_3 = read_acceptor_slot(peer.store, OWNER, 3)
    assert (slot_3.promised, slot_3.accepted_ballot, slot_3.accepted_value) == (
        high,
        high,
        value_high,
    )
    assert read_acceptor_slot(peer.store, OWNER, 4).promised == Ballot(round=9, peer="r-c")
    meta = read_epoch_meta(peer.store, OWNER)
    assert (meta.decided_slot, meta.accepted_slot) == (2, 3)
    assert peer.core.acceptor.active_epoch(OWNER) == EPOCH_2
    assert peer.core.known_epoch(OWNER) == EPOCH_2
    assert peer.core.recovery_progress().owners_learned == 1
    assert peer.core.state == "recovering"  # learned, not yet refilled


def test_a_serving_peer_answers_a_recovery_query_after_noting_the_new_store() -> None:
    peer = Peer()
    peer.settle(peer.receive("p2", heartbeat("p2", "")))  # p2's first store
    for value in (EPOCH_2, EPOCH_3):
        peer.settle(peer.receive("p3", Decide(op_id="d", owner=OWNER, value=value)))
    step = peer.settle(
        peer.receive("p2", RecoveryQuery(op_id="rq:p2", owner=OWNER, store="99" * 16))
    )
    assert [e for e in step.events if e.name == "peer_store_replaced"]
    answer = sent(step, RecoveryReport)["p2"]
    assert answer.decided == (EPOCH_2, EPOCH_3) and answer.decided_slot == 3
    beat = sent(peer.core.advance(10.0), Heartbeat)["p2"]
    assert beat.known == "99" * 16


def refill(peer: Peer, pending: list[tuple[str, AeSummary]]) -> None:
    """Anti-entropy passes with p2 and p3 that find nothing to copy: each pass that ends starts
    the next at once while recovering."""
    for _ in range(4):
        partner, summary = pending.pop(0)
        reply = AeSummaryReply(op_id=summary.op_id, owner=OWNER, differing=(), decided=GENESIS)
        pending.extend(summaries(peer.settle(peer.receive(partner, reply))))


def test_it_serves_only_after_learning_refilling_and_every_peer_echoing_its_identity() -> None:
    peer, pending = recovering_peer()
    store_id = peer.core.recovery.store_id
    refill(peer, pending)
    progress = peer.core.recovery_progress()
    assert progress.owners_refilled == 1 and progress.owners_learned == 0
    assert peer.core.state == "recovering"
    peer.settle(peer.receive("p2", report()))
    peer.settle(peer.receive("p3", report()))
    assert peer.core.state == "recovering"  # no peer has echoed its new identity yet
    peer.settle(peer.receive("p2", heartbeat("p2", store_id)))
    assert peer.core.state == "recovering"
    step = peer.settle(peer.receive("p3", heartbeat("p3", store_id)))
    assert "store_recovered" in [e.name for e in step.events]
    assert peer.core.state == "serving"
    identity = read_identity(peer.store)
    assert identity == StoreIdentity(store_id=store_id, phase="serving")


def test_recovery_ends_without_echoes_once_the_proposers_deadline_passed() -> None:
    peer, pending = recovering_peer()
    refill(peer, pending)
    peer.settle(peer.receive("p2", report()))
    peer.settle(peer.receive("p3", report()))
    assert peer.core.state == "recovering"
    peer.settle(peer.core.advance(peer.now + peer.core.limits.epoch.operation_timeout_s))
    assert peer.core.state == "serving"


def test_a_restart_while_recovering_recovers_again() -> None:
    store = MemoryStore()
    identity = StoreIdentity(store_id=OLD_ID, phase="recovering")
    store.stage([(IDENTITY_KEY, encode_identity(identity))])
    store.sync()
    peer = Peer(store=store)
    assert peer.core.state == "recovering"
    step = peer.core.advance(0.0)
    assert set(sent(step, RecoveryQuery)) == set(OTHERS)


# -- the proposer --------------------------------------------------------------------------------


def proposer() -> tuple[EpochCoordinator, str]:
    coordinator = EpochCoordinator(peer_id="p1", rng=random.Random(1))
    effects = coordinator.start_rotate(
        op_id="r-1",
        owner=OWNER,
        placement=OwnerPlacement.stable(("p1", "p2", "p3")),
        expected_epoch=1,
        requested_at_s=0.0,
        now=0.0,
    )
    assert effects.messages
    for source in ("p1", "p2"):
        report_ = EpochReport(op_id="r-1", owner=OWNER, decided=GENESIS, accepted_slot=1)
        effects = coordinator.on_message(source, report_, 0.0)
    (prepare,) = {e.message for e in effects.messages}
    assert isinstance(prepare, Prepare)
    return coordinator, "r-1"


def promise(source_store: str, ballot: Ballot, *, unavailable: bool = False) -> Promise:
    return Promise(
        op_id="r-1",
        owner=OWNER,
        slot=2,
        ballot=ballot,
        granted=not unavailable,
        promised=ZERO_BALLOT if unavailable else ballot,
        accepted_ballot=None,
        accepted_value=None,
        decided=None,
        store=source_store,
        unavailable=unavailable,
    )


def test_a_proposer_drops_a_promise_of_a_store_that_was_replaced() -> None:
    coordinator, _ = proposer()
    ballot = Ballot(round=1, peer="r-1")
    coordinator.note_store("p2", P2_ID, 0.0)
    assert not coordinator.on_message("p2", promise(P2_ID, ballot), 0.0).messages
    dropped = coordinator.note_store("p2", "77" * 16, 0.0)
    assert [e.name for e in dropped.events] == ["paxos_votes_dropped"]
    # p3's promise alone is no majority now: no Accept goes out.
    effects = coordinator.on_message("p3", promise(P3_ID, ballot), 0.0)
    assert not any(isinstance(e.message, Accept) for e in effects.messages)
    # A late promise from p2's old store is never counted.
    effects = coordinator.on_message("p2", promise(P2_ID, ballot), 0.0)
    assert not any(isinstance(e.message, Accept) for e in effects.messages)
    effects = coordinator.on_message("p2", promise("77" * 16, ballot), 0.0)
    assert any(isinstance(e.message, Accept) for e in effects.messages)


def test_a_round_in_accept_that_rests_on_a_replaced_store_prepares_again() -> None:
    coordinator, _ = proposer()
    ballot = Ballot(round=1, peer="r-1")
    coordinator.on_message("p2", promise(P2_ID, ballot), 0.0)
    effects = coordinator.on_message("p3", promise(P3_ID, ballot), 0.0)
    assert any(isinstance(e.message, Accept) for e in effects.messages)
    effects = coordinator.note_store("p2", "77" * 16, 0.0)
    prepares = {e.message for e in effects.messages if isinstance(e.message, Prepare)}
    (again,) = prepares
    assert again.ballot.round > ballot.round


def test_unavailable_answers_are_not_counted_and_fail_a_round_without_a_majority() -> None:
    coordinator, _ = proposer()
    ballot = Ballot(round=1, peer="r-1")
    refused = promise("", ballot, unavailable=True)
    assert not coordinator.on_message("p2", refused, 0.0).replies
    effects = coordinator.on_message("p3", refused, 0.0)
    (done,) = effects.replies
    assert done.failure is Failure.QUORUM_TIMEOUT  # at once, not at the deadline
    late = coordinator.on_timer(Timer(kind=TimerKind.DEADLINE, op_id="r-1", due=5.0), 5.0)
    assert not late.replies


# -- coordinators facing a recovering replica -----------------------------------------------------


def test_a_write_counts_no_unavailable_replica_and_fails_at_once_without_w() -> None:
    peer = Peer()
    step = peer.start(tokenize())
    request = sent(step, InsertRequest)["p2"]
    peer.settle(step)  # p1 stores and acknowledges to itself: 1 of W=2
    unavailable = insert_reply(request, InsertOutcome.UNAVAILABLE)
    assert peer.receive("p2", unavailable).answers == []  # p3 may still answer
    (done,) = peer.receive("p3", insert_reply(request, InsertOutcome.STORED)).answers
    assert isinstance(done, Tokenized) and done.failure is None

    step = peer.start(tokenize("c2", (("ssn", "bob"),)))
    request = sent(step, InsertRequest)["p2"]
    peer.settle(step)
    peer.receive("p2", insert_reply(request, InsertOutcome.UNAVAILABLE))
    (failed,) = peer.receive("p3", insert_reply(request, InsertOutcome.UNAVAILABLE)).answers
    assert isinstance(failed, Tokenized) and failed.failure is Failure.QUORUM_TIMEOUT


def test_a_read_counts_no_unavailable_replica() -> None:
    peer = Peer()
    step = peer.start(Detokenize(op_id="d1", owner=OWNER, tokens=(A.token,)))
    ((asked, request),) = sent(step, ReadRequest).items()  # R=2: itself and one other
    (other,) = set(OTHERS) - {asked}
    peer.settle(step)  # p1 answers itself: 1 of R=2
    refused = ReadReply(
        op_id=request.op_id, owner=OWNER, tokens=request.tokens, mappings=(None,), unavailable=True
    )
    step = peer.receive(asked, refused)
    assert step.answers == []
    assert set(sent(step, ReadRequest)) == {other}  # an answer that cannot count: ask the rest
    (done,) = peer.receive(other, refused).answers
    assert isinstance(done, ReadDone) and done.failure is Failure.QUORUM_TIMEOUT


def test_its_identity_and_queries_go_out_only_once_its_decision_is_durable() -> None:
    peer = Peer(store=MemoryStore())
    synced(peer)
    step = peer.receive("p2", heartbeat("p2", OLD_ID))  # recovering: the record is staged
    assert step.sync_ticket is not None and sent(step, RecoveryQuery) == {}
    beats = sent(peer.core.advance(1.0), Heartbeat)
    assert {b.store for b in beats.values()} == {""}  # not durable yet: says nothing
    released = peer.durable(peer.core.staged_ticket)
    queried = {e.destination for e in released.messages if isinstance(e.message, RecoveryQuery)}
    assert queried == set(OTHERS)
    beats = sent(peer.core.advance(2.0), Heartbeat)
    assert {b.store for b in beats.values()} == {peer.core.recovery.store_id}


# -- the wire --------------------------------------------------------------------------------------


def test_the_recovery_messages_cross_the_wire_and_old_shapes_still_decode() -> None:
    ballot = Ballot(round=2, peer="r-b")
    value = EpochValue(epoch=3, salt="bb" * 8, requested_by="r-b", requested_at_s=1.5)
    messages: list[Message] = [
        heartbeat("p2", OLD_ID),
        RecoveryQuery(op_id="rq:p1", owner=OWNER, store=OLD_ID),
        report(
            slots=(
                SlotState(slot=3, promised=ballot, accepted_ballot=ballot, accepted_value=value),
            )
        ),
        promise(P2_ID, ballot, unavailable=True),
    ]
    body = encode_batch("p2", [encode_message(m) for m in messages])
    assert decode_batch(body) == ("p2", messages)
    old = b'{"source":"p2","messages":[{"type":"heartbeat","sender":"p2"}]}'
    assert decode_batch(old) == ("p2", [Heartbeat(sender="p2")])
    too_many = json.loads(encode_message(report()))
    too_many["decided"] *= RECOVERY_DECIDED_MAX + 1
    with pytest.raises(CodecError):
        decode_batch(encode_batch("p2", [json.dumps(too_many).encode()]))


def test_a_recovering_peer_coordinates_a_detokenize_from_the_other_replicas() -> None:
    """Its own replica refuses (it counts toward no quorum), so the read is decided by the
    others' answers alone, as through any peer; a tokenize through it is still refused."""
    peer = Peer(store=MemoryStore())
    synced(peer)
    peer.settle(peer.receive("p2", heartbeat("p2", OLD_ID)))
    assert peer.core.state == "recovering"
    step = peer.start(Detokenize(op_id="d1", owner=OWNER, tokens=(A.token,)))
    requests = sent(step, ReadRequest)
    assert set(requests) >= {"p2", "p3"}
    peer.settle(step)  # its own read: refused as unavailable, not counted
    found = [
        ReadReply(op_id=requests[p].op_id, owner=OWNER, tokens=(A.token,), mappings=(A,))
        for p in ("p2", "p3")
    ]
    assert peer.receive("p2", found[0]).answers == []  # 1 of R=2: its own does not count
    (done,) = peer.receive("p3", found[1]).answers
    assert isinstance(done, ReadDone) and done.failure is None
    assert done.mappings == (A,)
    (refused,) = peer.start(tokenize("c9")).answers
    assert isinstance(refused, Tokenized) and refused.failure is Failure.RECOVERING


def test_its_own_refusal_goes_back_in_as_a_local_input() -> None:
    """The read a recovering peer coordinates reaches its own replica, which refuses: that
    refusal is for itself, so it comes back as a local input, never as a message on the wire."""
    peer = Peer(store=MemoryStore())
    synced(peer)
    peer.settle(peer.receive("p2", heartbeat("p2", OLD_ID)))
    assert peer.core.state == "recovering"
    step = peer.core.start(Detokenize(op_id="d2", owner=OWNER, tokens=(A.token,)), peer.now)
    assert not [m for m in step.local if isinstance(m, ReadRequest)]  # the others first
    hedged = peer.core.advance(peer.now + 0.3)  # undecided after read_hedge_s: ask the rest
    (own,) = [m for m in hedged.local if isinstance(m, ReadRequest)]
    answer = peer.core.receive(peer.core.peer_id, [own], peer.now)
    assert all(e.destination != peer.core.peer_id for e in answer.messages)
    assert [m.unavailable for m in answer.local if isinstance(m, ReadReply)] == [True]
