"""The routing table both drivers use: every message type has one destination."""

from __future__ import annotations

from tokenvault.quorum.messages import (
    GENESIS,
    AeSummary,
    Ballot,
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
    Origin,
    OwnerInspect,
    OwnerView,
    Promise,
    ReadReply,
    ReadRequest,
    TransferPage,
    TransferPageReply,
)
from tokenvault.quorum.routing import Destination, route

M = Mapping(owner="alice", token="tok_A", value="v", field="ssn", epoch=1)


def reply(op_id: str, origin: Origin = Origin.COORDINATOR) -> InsertReply:
    return InsertReply(
        op_id=op_id,
        owner="alice",
        tokens=("tok_A",),
        outcomes=(InsertOutcome.STORED,),
        origin=origin,
    )


def test_each_message_goes_to_one_core() -> None:
    value = EpochValue(epoch=2, salt="ab", requested_by="r", requested_at_s=0.0)
    cases: list[tuple[Message, Destination]] = [
        (Heartbeat(sender="n2"), Destination.NONE),
        (InsertRequest(op_id="o", owner="alice", mappings=(M,)), Destination.REPLICA),
        (ReadRequest(op_id="o", owner="alice", tokens=("tok_A",)), Destination.REPLICA),
        (OwnerInspect(op_id="o", owner="alice"), Destination.REPLICA),
        (EpochQuery(op_id="o", owner="alice"), Destination.ACCEPTOR),
        (Decide(op_id="o", owner="alice", value=value), Destination.ACCEPTOR),
        (
            AeSummary(op_id="ae:n1:1", owner="alice", leaves=(), count=0, decided=GENESIS),
            Destination.ANTI_ENTROPY,
        ),
        (reply("ae:n1:2", Origin.ANTI_ENTROPY), Destination.ANTI_ENTROPY),
        (reply("hint:n1:3", Origin.HINTS), Destination.HINTS),
        (reply("n1-abc-4"), Destination.COORDINATOR),
        (
            ReadReply(op_id="o", owner="alice", tokens=("tok_A",), mappings=(None,)),
            Destination.COORDINATOR,
        ),
        (
            EpochReport(op_id="o", owner="alice", decided=GENESIS, accepted_slot=1),
            Destination.EPOCH_COORDINATOR,
        ),
        (
            Promise(
                op_id="o",
                owner="alice",
                slot=2,
                ballot=Ballot(round=1, peer="o"),
                granted=True,
                promised=Ballot(round=1, peer="o"),
                accepted_ballot=None,
                accepted_value=None,
                decided=None,
            ),
            Destination.EPOCH_COORDINATOR,
        ),
        (
            OwnerView(
                op_id="o",
                owner="alice",
                token_count=0,
                digest="",
                complete=True,
                decided=GENESIS,
                accepted_slot=1,
                next_slot_promised=Ballot(),
                next_slot_accepted=None,
            ),
            Destination.INSPECTION,
        ),
        (
            TransferPage(op_id="o", owner="alice", after=None, limit=10, request=1),
            Destination.TRANSFER,
        ),
        (TransferPageReply(op_id="o", owner="alice", after=None, request=1), Destination.TRANSFER),
    ]
    for message, expected in cases:
        assert route(message) is expected, type(message).__name__


def test_only_cores_that_read_the_store_make_replies_wait_for_durability() -> None:
    waiting = {d for d in Destination if d.answers_from_storage}
    assert waiting == {
        Destination.REPLICA,
        Destination.ACCEPTOR,
        Destination.ANTI_ENTROPY,
        Destination.RING,  # votes and memberships are read from the store
        Destination.TRANSFER,  # pages are read from the store
    }


def test_an_insert_reply_goes_back_by_its_origin_never_by_its_op_id() -> None:
    expected = {
        Origin.COORDINATOR: Destination.COORDINATOR,
        Origin.HINTS: Destination.HINTS,
        Origin.ANTI_ENTROPY: Destination.ANTI_ENTROPY,
        Origin.TRANSFER: Destination.TRANSFER,
        Origin.DROP: Destination.DROPPING,
    }
    assert set(expected) == set(Origin)
    for origin, destination in expected.items():
        for op_id in ("ae:n1:2", "hint:n1:3", "n1-abc-4", ""):
            assert route(reply(op_id, origin)) is destination, (origin, op_id)
