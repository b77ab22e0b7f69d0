"""node.BatchRules: what a decoded peer batch must fit beyond the codec, the configuration.
Every owner message type is refused for an owner that is not configured; a mapping is refused
for a field its owner lacks when it is a new write (a held mapping, repaired or read, stays
readable after its field left the configuration); a heartbeat speaks only for its sender, and so
does a join request (what a peer outside the ring may send at all is PeerCore.admits's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenvault.cluster_init import init_cluster
from tokenvault.config import load_config
from tokenvault.node import BatchRules, NotConfigured
from tokenvault.quorum.messages import (
    GENESIS,
    Ballot,
    EpochQuery,
    EpochReport,
    Heartbeat,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
    OwnerInspect,
    Prepare,
    ReadReply,
    ReadRequest,
    RingJoin,
)

TOKEN = "tok_" + "A" * 32


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> BatchRules:
    directory = Path(tmp_path_factory.mktemp("node")) / "cluster"
    init = init_cluster(directory, nodes=3, base_port=1, owners=("alice", "bob"))
    return BatchRules(load_config(init.config_path))


def mapping(owner: str = "alice", field: str = "ssn", token: str = TOKEN) -> Mapping:
    return Mapping(owner=owner, token=token, value="v", field=field, epoch=1)


def owner_messages(owner: str) -> list[Message]:
    return [
        InsertRequest(op_id="o", owner=owner, mappings=(mapping(owner),)),
        InsertReply(op_id="o", owner=owner, tokens=(), outcomes=()),
        ReadRequest(op_id="o", owner=owner, tokens=(TOKEN,)),
        ReadReply(op_id="o", owner=owner, tokens=(TOKEN,), mappings=(None,)),
        EpochQuery(op_id="o", owner=owner),
        EpochReport(op_id="o", owner=owner, decided=GENESIS, accepted_slot=1),
        Prepare(op_id="o", owner=owner, slot=2, ballot=Ballot(round=1, peer="p")),
        OwnerInspect(op_id="o", owner=owner),
    ]


def test_a_batch_that_fits_passes(rules: BatchRules) -> None:
    rules.check("n2", [Heartbeat(sender="n2"), *owner_messages("alice"), *owner_messages("bob")])
    rules.check("n2", [ReadReply(op_id="o", owner="bob", tokens=(TOKEN,), mappings=(None,))])


@pytest.mark.parametrize("message", owner_messages("mallory"), ids=lambda m: type(m).__name__)
def test_every_message_for_an_owner_that_is_not_configured_is_refused(
    rules: BatchRules, message: Message
) -> None:
    with pytest.raises(NotConfigured, match=r"\$\.messages\[1\]\.owner"):
        rules.check("n2", [Heartbeat(sender="n2"), message])


def test_a_new_write_of_a_field_its_owner_lacks_is_refused(rules: BatchRules) -> None:
    message = InsertRequest(
        op_id="o", owner="alice", mappings=(mapping(), mapping(field="password", token="tok_B"))
    )
    with pytest.raises(NotConfigured, match=r"\$\.messages\[0\]\.mappings\[1\] has a field"):
        rules.check("n2", [message])


@pytest.mark.parametrize(
    "message",
    [
        InsertRequest(op_id="o", owner="alice", mappings=(mapping(field="pin"),), repair=True),
        ReadReply(op_id="o", owner="alice", tokens=(TOKEN,), mappings=(mapping(field="pin"),)),
    ],
    ids=["repair", "read_reply"],
)
def test_a_held_mapping_of_a_field_no_longer_configured_still_travels(
    rules: BatchRules, message: Message
) -> None:
    rules.check("n2", [message])  # no refusal: what is stored stays readable


def test_a_heartbeat_speaks_only_for_the_batch_source(rules: BatchRules) -> None:
    with pytest.raises(NotConfigured, match="sender"):
        rules.check("n2", [Heartbeat(sender="n3")])


def test_the_refusal_names_where_never_the_value(rules: BatchRules) -> None:
    secret_field = "field-holding-4111111111111111"
    message = InsertRequest(op_id="o", owner="alice", mappings=(mapping(field=secret_field),))
    with pytest.raises(NotConfigured) as caught:
        rules.check("n2", [message])
    assert secret_field not in str(caught.value) and "alice" not in str(caught.value)


def test_a_join_request_asks_only_for_its_sender(rules: BatchRules) -> None:
    rules.check("n4", [RingJoin(op_id="j", id="n4", address="127.0.0.1:7404")])
    other = RingJoin(op_id="j", id="n5", address="127.0.0.1:7405")
    with pytest.raises(NotConfigured, match=r"\.id is not the batch's source"):
        rules.check("n4", [other])
