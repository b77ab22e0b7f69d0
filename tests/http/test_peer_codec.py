"""The peer wire codec: every message type round-trips; every malformed batch is a CodecError."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tokenvault.http.peer_codec import CodecError, decode_batch, encode_batch, encode_message
from tokenvault.quorum.messages import (
    BALLOT_ROUND_MAX,
    EPOCH_MAX,
    GENESIS,
    OP_ID_LENGTH_MAX,
    OWNER_ID_CHARS,
    VALUE_LENGTH_MAX,
    WIRE_INT_MAX,
    Accept,
    Accepted,
    AeKeys,
    AeKeysReply,
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
    Mapping,
    Message,
    Origin,
    OwnerInspect,
    OwnerView,
    Prepare,
    Promise,
    ReadReply,
    ReadRequest,
)

OWNER = "acme"


def mapping(token: str = "tok_A", value: str = "4111 1111", **changes: Any) -> Mapping:
    fields: dict[str, Any] = {
        "owner": OWNER,
        "token": token,
        "value": value,
        "field": "card",
        "epoch": 1,
    }
    fields.update(changes)
    return Mapping(**fields)


EXAMPLES: list[Message] = [
    InsertRequest(op_id="op-1", owner=OWNER, mappings=(mapping(),)),
    InsertRequest(
        op_id="op-2",
        owner=OWNER,
        mappings=(mapping("tok_A", 'ä€😀"\\\n'), mapping("tok_B", "", epoch=7)),
    ),
    InsertReply(
        op_id="op-1",
        owner=OWNER,
        tokens=("tok_A", "tok_B", "tok_C"),
        outcomes=(InsertOutcome.STORED, InsertOutcome.IDENTICAL, InsertOutcome.CONFLICT),
    ),
    InsertReply(op_id="op-1", owner=OWNER, tokens=(), outcomes=()),
    ReadRequest(op_id="op-3", owner=OWNER, tokens=("tok_A", "tok_B")),
    ReadReply(
        op_id="op-3",
        owner=OWNER,
        tokens=("tok_A", "tok_B"),
        mappings=(mapping(), None),
    ),
    ReadReply(op_id="op-3", owner=OWNER, tokens=("tok_X",), mappings=(None,)),
]


def batch(messages: list[Any], source: Any = "peer-1") -> bytes:
    return json.dumps({"source": source, "messages": messages}).encode()


def roundtrip(source: str, messages: list[Message]) -> tuple[str, list[Message]]:
    return decode_batch(encode_batch(source, [encode_message(m) for m in messages]))


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(message: Message) -> None:
    source, decoded = roundtrip("peer-1", [message])
    assert source == "peer-1"
    assert decoded == [message]
    assert type(decoded[0]) is type(message)


def test_a_batch_of_everything_round_trips_in_order() -> None:
    assert roundtrip('péer "2"', EXAMPLES) == ('péer "2"', EXAMPLES)


def test_empty_batch() -> None:
    assert roundtrip("peer-1", []) == ("peer-1", [])
    assert json.loads(encode_batch("peer-1", [])) == {"source": "peer-1", "messages": []}


def test_encoded_message_is_compact_json_of_the_documented_shape() -> None:
    raw = encode_message(InsertRequest(op_id="o", owner=OWNER, mappings=(mapping(),), ring=3))
    assert b" " not in raw.replace(b"4111 1111", b"")
    assert json.loads(raw) == {
        "type": "insert",
        "op": "o",
        "owner": OWNER,
        "mappings": [[OWNER, "tok_A", "4111 1111", "card", 1]],
        "repair": False,
        "origin": "coordinator",
        "ring": 3,  # the ring version of the coordinator's placement (the ring fence)
    }


owners = st.text(alphabet=sorted(OWNER_ID_CHARS), min_size=1, max_size=64)
plain_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)
tokens = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20)
field_names = st.text(alphabet=sorted(OWNER_ID_CHARS), min_size=1, max_size=64)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    owner = draw(owners)
    op_id = draw(plain_text)
    kind = draw(st.sampled_from(["insert", "insert_reply", "read", "read_reply"]))
    token_list = draw(st.lists(tokens, min_size=1, max_size=5, unique=True))

    def build(token: str) -> Mapping:
        return Mapping(
            owner=owner,
            token=token,
            value=draw(plain_text),
            field=draw(field_names),
            epoch=draw(st.integers(min_value=1, max_value=EPOCH_MAX)),
        )

    if kind == "insert":
        return InsertRequest(op_id=op_id, owner=owner, mappings=tuple(build(t) for t in token_list))
    if kind == "insert_reply":
        outcomes = draw(
            st.lists(
                st.sampled_from(InsertOutcome),
                min_size=len(token_list),
                max_size=len(token_list),
            )
        )
        return InsertReply(
            op_id=op_id, owner=owner, tokens=tuple(token_list), outcomes=tuple(outcomes)
        )
    if kind == "read":
        return ReadRequest(op_id=op_id, owner=owner, tokens=tuple(token_list))
    held = tuple(build(t) if draw(st.booleans()) else None for t in token_list)
    return ReadReply(op_id=op_id, owner=owner, tokens=tuple(token_list), mappings=held)


@settings(max_examples=300, deadline=None)
@given(source=plain_text, batch_messages=st.lists(messages(), max_size=5))
def test_generated_messages_round_trip(source: str, batch_messages: list[Message]) -> None:
    assert roundtrip(source, batch_messages) == (source, batch_messages)


# -- malformed batches -------------------------------------------------------------------------

GOOD_INSERT: dict[str, Any] = {
    "type": "insert",
    "op": "o",
    "owner": OWNER,
    "mappings": [[OWNER, "tok_A", "v", "card", 1]],
}
GOOD_READ: dict[str, Any] = {"type": "read", "op": "o", "owner": OWNER, "tokens": ["tok_A"]}
GOOD_INSERT_REPLY: dict[str, Any] = {
    "type": "insert_reply",
    "op": "o",
    "owner": OWNER,
    "tokens": ["tok_A"],
    "outcomes": ["stored"],
}
GOOD_READ_REPLY: dict[str, Any] = {
    "type": "read_reply",
    "op": "o",
    "owner": OWNER,
    "tokens": ["tok_A", "tok_B"],
    "mappings": [[OWNER, "tok_A", "v", "card", 1], None],
}
GOOD = [GOOD_INSERT, GOOD_READ, GOOD_INSERT_REPLY, GOOD_READ_REPLY]


def test_the_good_examples_decode() -> None:
    source, decoded = decode_batch(batch(GOOD))
    assert source == "peer-1"
    assert [type(m) for m in decoded] == [InsertRequest, ReadRequest, InsertReply, ReadReply]


def changed(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if value is DELETE:
            del out[key]
        else:
            out[key] = value
    return out


DELETE = object()

MALFORMED_BODIES: dict[str, bytes] = {
    "not json": b"this is not json",
    "empty body": b"",
    "truncated": b'{"source": "p", "messages": [',
    "not utf-8": b'{"source": "\xff\xfe", "messages": []}',
    "json list": b"[]",
    "json string": b'"source"',
    "json number": b"17",
    "json null": b"null",
    "no source": json.dumps({"messages": []}).encode(),
    "no messages": json.dumps({"source": "p"}).encode(),
    "source int": batch([], source=1),
    "source null": batch([], source=None),
    "source list": batch([], source=["p"]),
    "messages object": json.dumps({"source": "p", "messages": {}}).encode(),
    "messages string": json.dumps({"source": "p", "messages": "abc"}).encode(),
    "messages null": json.dumps({"source": "p", "messages": None}).encode(),
    "message int": batch([1]),
    "message string": batch(["insert"]),
    "message list": batch([["insert", "o", OWNER]]),
    "message null": batch([None]),
    "no type": batch([changed(GOOD_READ, type=DELETE)]),
    "no op": batch([changed(GOOD_READ, op=DELETE)]),
    "no owner": batch([changed(GOOD_READ, owner=DELETE)]),
    "op int": batch([changed(GOOD_READ, op=5)]),
    "op null": batch([changed(GOOD_READ, op=None)]),
    "owner int": batch([changed(GOOD_READ, owner=5)]),
    "owner list": batch([changed(GOOD_INSERT, owner=[OWNER])]),
    "unknown type": batch([changed(GOOD_READ, type="delete")]),
    "type int": batch([changed(GOOD_READ, type=1)]),
    "type list": batch([changed(GOOD_READ, type=["read"])]),
    "type null": batch([changed(GOOD_READ, type=None)]),
    # insert
    "insert no mappings": batch([changed(GOOD_INSERT, mappings=DELETE)]),
    "insert empty mappings": batch([changed(GOOD_INSERT, mappings=[])]),
    "insert mappings null": batch([changed(GOOD_INSERT, mappings=None)]),
    "insert mappings int": batch([changed(GOOD_INSERT, mappings=3)]),
    "insert mappings string": batch([changed(GOOD_INSERT, mappings="abcd")]),
    "insert mappings object": batch([changed(GOOD_INSERT, mappings={"a": 1})]),
    "mapping row too short": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v", "card"]])]
    ),
    "mapping row too long": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v", "card", 1, "x"]])]
    ),
    "mapping row object": batch(
        [changed(GOOD_INSERT, mappings=[{"t": 1, "v": 2, "f": 3, "e": 4}])]
    ),
    "mapping row 4-char string": batch([changed(GOOD_INSERT, mappings=["abcd"])]),
    "mapping row 5-char string": batch([changed(GOOD_INSERT, mappings=["abcde"])]),
    "mapping row without its owner": batch(
        [changed(GOOD_INSERT, mappings=[["tok_A", "v", "card", 1]])]
    ),
    "mapping of another owner": batch(
        [changed(GOOD_INSERT, mappings=[["acme2", "tok_A", "v", "card", 1]])]
    ),
    "mapping owner int": batch([changed(GOOD_INSERT, mappings=[[7, "tok_A", "v", "card", 1]])]),
    "mapping owner null": batch([changed(GOOD_INSERT, mappings=[[None, "tok_A", "v", "card", 1]])]),
    "mapping owner invalid like its message's": batch(
        [changed(GOOD_INSERT, owner="a b", mappings=[["a b", "tok_A", "v", "card", 1]])]
    ),
    "mapping row null": batch([changed(GOOD_INSERT, mappings=[None])]),
    "mapping row int": batch([changed(GOOD_INSERT, mappings=[7])]),
    "mapping token int": batch([changed(GOOD_INSERT, mappings=[[OWNER, 1, "v", "card", 1]])]),
    "mapping value null": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", None, "card", 1]])]
    ),
    "mapping value int": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", 4111, "card", 1]])]
    ),
    "mapping field list": batch([changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v", ["c"], 1]])]),
    "mapping epoch string": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v", "card", "1"]])]
    ),
    "mapping epoch float": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v", "card", 1.5]])]
    ),
    "mapping epoch zero": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v", "card", 0]])]
    ),
    "mapping epoch negative": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v", "card", -3]])]
    ),
    "mapping epoch huge": (
        b'{"source":"p","messages":[{"type":"insert","op":"o","owner":"acme",'
        b'"mappings":[["acme","tok_A","v","card",' + b"9" * 5000 + b"]]}]}"
    ),
    "mapping epoch bool": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v", "card", True]])]
    ),
    "mapping epoch NaN": (
        b'{"source":"p","messages":[{"type":"insert","op":"o","owner":"acme",'
        b'"mappings":[["acme","tok_A","v","card",NaN]]}]}'
    ),
    "mapping empty token": batch([changed(GOOD_INSERT, mappings=[[OWNER, "", "v", "card", 1]])]),
    "mapping empty field": batch([changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v", "", 1]])]),
    "mapping token too long": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "t" * 65, "v", "card", 1]])]
    ),
    "mapping field too long": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v", "f" * 65, 1]])]
    ),
    "mapping field not ASCII": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v", "cärd", 1]])]
    ),
    "mapping epoch past the last": batch(
        [changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v", "card", EPOCH_MAX + 1]])]
    ),
    "insert repeats a token": batch(
        [
            changed(
                GOOD_INSERT,
                mappings=[[OWNER, "tok_A", "v", "card", 1], [OWNER, "tok_A", "w", "card", 1]],
            )
        ]
    ),
    "insert owner empty": batch([changed(GOOD_INSERT, owner="")]),
    "insert owner with space": batch([changed(GOOD_INSERT, owner="ac me")]),
    "insert owner with NUL": batch([changed(GOOD_INSERT, owner="acme\x00x")]),
    "insert owner too long": batch([changed(GOOD_INSERT, owner="a" * 65)]),
    "insert owner slash": batch([changed(GOOD_INSERT, owner="../acme")]),
    "insert repair int": batch([changed(GOOD_INSERT, repair=1)]),
    "insert repair string": batch([changed(GOOD_INSERT, repair="true")]),
    "insert repair null": batch([changed(GOOD_INSERT, repair=None)]),
    "insert origin unknown": batch([changed(GOOD_INSERT, origin="elsewhere")]),
    "insert origin upper case": batch([changed(GOOD_INSERT, origin="HINTS")]),
    "insert origin int": batch([changed(GOOD_INSERT, origin=1)]),
    "insert origin null": batch([changed(GOOD_INSERT, origin=None)]),
    "insert from hints that is not a repair": batch([changed(GOOD_INSERT, origin="hints")]),
    "insert from anti-entropy that is not a repair": batch(
        [changed(GOOD_INSERT, origin="anti_entropy", repair=False)]
    ),
    # insert_reply
    "reply bad outcome": batch([changed(GOOD_INSERT_REPLY, outcomes=["maybe"])]),
    "reply outcome upper case": batch([changed(GOOD_INSERT_REPLY, outcomes=["STORED"])]),
    "reply outcome int": batch([changed(GOOD_INSERT_REPLY, outcomes=[1])]),
    "reply outcome null": batch([changed(GOOD_INSERT_REPLY, outcomes=[None])]),
    "reply outcome list": batch([changed(GOOD_INSERT_REPLY, outcomes=[["stored"]])]),
    "reply outcomes int": batch([changed(GOOD_INSERT_REPLY, outcomes=5)]),
    "reply outcomes null": batch([changed(GOOD_INSERT_REPLY, outcomes=None)]),
    "reply no outcomes": batch([changed(GOOD_INSERT_REPLY, outcomes=DELETE)]),
    "reply tokens string": batch([changed(GOOD_INSERT_REPLY, tokens="tok_A")]),
    "reply tokens ints": batch([changed(GOOD_INSERT_REPLY, tokens=[1])]),
    "reply lengths differ": batch([changed(GOOD_INSERT_REPLY, outcomes=["stored", "identical"])]),
    "reply lengths differ 2": batch([changed(GOOD_INSERT_REPLY, tokens=["a", "b"])]),
    "reply origin unknown": batch([changed(GOOD_INSERT_REPLY, origin="replica")]),
    "reply origin list": batch([changed(GOOD_INSERT_REPLY, origin=["hints"])]),
    # read
    "read no tokens": batch([changed(GOOD_READ, tokens=DELETE)]),
    "read empty tokens": batch([changed(GOOD_READ, tokens=[])]),
    "read tokens string": batch([changed(GOOD_READ, tokens="tok_A")]),
    "read tokens mixed": batch([changed(GOOD_READ, tokens=["tok_A", None])]),
    "read tokens object": batch([changed(GOOD_READ, tokens={"tok_A": 1})]),
    # read_reply
    "read reply lengths differ": batch([changed(GOOD_READ_REPLY, mappings=[None])]),
    "read reply lengths differ 2": batch([changed(GOOD_READ_REPLY, tokens=["tok_A"])]),
    "read reply mapping of another token": batch(
        [changed(GOOD_READ_REPLY, mappings=[None, [OWNER, "tok_A", "v", "card", 1]])]
    ),
    "read reply bad row": batch([changed(GOOD_READ_REPLY, mappings=[[OWNER, "tok_A", "v"], None])]),
    "read reply row false": batch([changed(GOOD_READ_REPLY, mappings=[False, None])]),
    "read reply mapping of another owner": batch(
        [changed(GOOD_READ_REPLY, mappings=[["acme2", "tok_A", "v", "card", 1], None])]
    ),
    "read reply mapping field not ASCII": batch(
        [changed(GOOD_READ_REPLY, mappings=[[OWNER, "tok_A", "v", "cärd", 1], None])]
    ),
    "read reply mappings null": batch([changed(GOOD_READ_REPLY, mappings=None)]),
    "read reply owner invalid with a mapping": batch([changed(GOOD_READ_REPLY, owner="a b")]),
    # one bad message spoils the batch
    "good then bad": batch([GOOD_READ, changed(GOOD_READ, type="nope")]),
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_batches_raise_codec_error(body: bytes) -> None:
    with pytest.raises(CodecError):
        decode_batch(body)


def test_codec_error_messages_never_echo_the_payload() -> None:
    secret = "4111-1111-SECRET"
    bodies = [
        batch([changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", secret, "card", "1"]])]),
        batch([changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", secret, "card", 0]])]),
        batch([changed(GOOD_INSERT_REPLY, outcomes=[secret])]),
        batch([changed(GOOD_INSERT, origin=secret)]),
        batch([changed(GOOD_INSERT, mappings=[[secret, "tok_A", "v", "card", 1]])]),
        batch([changed(GOOD_INSERT, type=secret)]),
        b"{" + secret.encode(),
    ]
    for body in bodies:
        with pytest.raises(CodecError) as raised:
            decode_batch(body)
        assert secret not in str(raised.value)
        assert raised.value.__cause__ is None or secret not in str(raised.value.__cause__)


INVALID_OWNERS = ["", "a b", "acme\x00x", "a" * 65, "../acme", "ünï"]


@pytest.mark.parametrize("owner", INVALID_OWNERS, ids=repr)
def test_messages_refuse_an_invalid_owner_id(owner: str) -> None:
    with pytest.raises(ValueError):
        ReadRequest(op_id="o", owner=owner, tokens=("t",))
    with pytest.raises(ValueError):
        InsertReply(op_id="o", owner=owner, tokens=(), outcomes=())
    with pytest.raises(ValueError):
        ReadReply(op_id="o", owner=owner, tokens=("t",), mappings=(None,))


@pytest.mark.parametrize("owner", INVALID_OWNERS, ids=repr)
@pytest.mark.parametrize(
    "good",
    [GOOD_READ, GOOD_INSERT_REPLY, changed(GOOD_READ_REPLY, mappings=[None, None])],
    ids=["read", "insert_reply", "read_reply"],
)
def test_invalid_owner_id_is_refused_on_every_message_type(
    good: dict[str, Any], owner: str
) -> None:
    """Regression: read, insert_reply and mapping-less read_reply once passed any owner."""
    with pytest.raises(CodecError):
        decode_batch(batch([changed(good, owner=owner)]))


def test_an_insert_without_repair_or_origin_is_a_client_write() -> None:
    (insert,) = decode_batch(batch([GOOD_INSERT]))[1]
    assert isinstance(insert, InsertRequest)
    assert insert.repair is False and insert.origin is Origin.COORDINATOR


@pytest.mark.parametrize("origin", list(Origin), ids=lambda o: o.value)
def test_the_origin_of_an_insert_and_its_reply_travels(origin: Origin) -> None:
    insert = InsertRequest(
        op_id="o", owner=OWNER, mappings=(mapping(),), repair=True, origin=origin
    )
    reply = InsertReply(
        op_id="o", owner=OWNER, tokens=("tok_A",), outcomes=(InsertOutcome.STORED,), origin=origin
    )
    assert json.loads(encode_message(insert))["origin"] == origin.value
    assert roundtrip("p", [insert, reply]) == ("p", [insert, reply])


any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=70)
ascii_text = st.text(alphabet=st.characters(max_codepoint=127), max_size=70)


@settings(max_examples=500, deadline=None)
@given(
    owner=owners | st.sampled_from(INVALID_OWNERS),
    token=any_text,
    value=any_text,
    field=ascii_text | any_text,
    epoch=st.integers(-2, EPOCH_MAX + 2) | st.sampled_from([0, 1, EPOCH_MAX, EPOCH_MAX + 1]),
)
@example(owner=OWNER, token="t" * 64, value="", field="f" * 64, epoch=EPOCH_MAX)
@example(owner=OWNER, token="t" * 65, value="", field="f", epoch=1)
@example(owner=OWNER, token="t", value="", field="f" * 65, epoch=1)
@example(owner=OWNER, token="t", value="", field="é", epoch=1)
@example(owner=OWNER, token="t", value="v" * VALUE_LENGTH_MAX, field="f", epoch=1)
@example(owner=OWNER, token="t", value="v" * (VALUE_LENGTH_MAX + 1), field="f", epoch=1)
def test_the_decoder_and_the_constructor_agree_on_every_mapping(
    owner: str, token: str, value: str, field: str, epoch: int
) -> None:
    """A decoded mapping is checked by the annotations of its fields and by its message, a
    constructed one by Mapping.__new__: the two must refuse exactly the same mappings."""
    try:
        built: Mapping | None = Mapping(
            owner=owner, token=token, value=value, field=field, epoch=epoch
        )
    except ValueError:
        built = None
    insert = changed(GOOD_INSERT, owner=owner, mappings=[[owner, token, value, field, epoch]])
    try:
        _, decoded = decode_batch(batch([insert]))
    except CodecError:
        assert built is None
    else:
        assert built is not None and decoded == [
            InsertRequest(op_id="o", owner=owner, mappings=(built,))
        ]


@settings(max_examples=300, deadline=None)
@given(round_=st.integers(-3, 3) | st.integers(-(2**63), 2**63 - 1), peer=any_text)
@example(round_=0, peer="")
@example(round_=0, peer="n1")
@example(round_=1, peer="")
@example(round_=BALLOT_ROUND_MAX, peer="p" * OP_ID_LENGTH_MAX)
@example(round_=BALLOT_ROUND_MAX + 1, peer="p")
@example(round_=1, peer="p" * (OP_ID_LENGTH_MAX + 1))
def test_the_decoder_and_the_constructor_agree_on_every_ballot(round_: int, peer: str) -> None:
    try:
        built: Ballot | None = Ballot(round=round_, peer=peer)
    except ValueError:
        built = None
    try:
        _, decoded = decode_batch(batch([changed(GOOD_PROMISE, promised=[round_, peer])]))
    except CodecError:
        assert built is None
    else:
        (promise,) = decoded
        assert built is not None and isinstance(promise, Promise)
        assert promise.promised == built


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deeply_nested_json_is_a_codec_error(depth: int) -> None:
    """Regression: json.loads raises RecursionError on a ~10 kB body; it must not escape."""
    body = b'{"source":"p","messages":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(CodecError):
        decode_batch(body)


@pytest.mark.parametrize(
    "message",
    [
        changed(GOOD_INSERT, mappings=[[OWNER, "tok_\ud800", "v", "card", 1]]),
        changed(GOOD_INSERT, mappings=[[OWNER, "tok_A", "v\udfff", "card", 1]]),
        changed(GOOD_READ, tokens=["\ud800"]),
        changed(GOOD_READ, op="op\ud800"),
    ],
    ids=["token", "value", "read token", "op id"],
)
def test_lone_surrogates_are_a_codec_error(message: dict[str, Any]) -> None:
    """Regression: a JSON \\ud800 escape decodes to a lone surrogate that UTF-8 cannot carry;
    accepted, it made the replica core raise UnicodeEncodeError in records.mapping_key."""
    body = batch([message])  # json.dumps escapes the surrogate as \ud800: valid JSON text
    with pytest.raises(CodecError):
        decode_batch(body)


# -- junk: CodecError and nothing else ---------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.sampled_from(["insert", "insert_reply", "read", "read_reply"])
    | st.sampled_from(["stored", "identical", "conflict", "tok_A", OWNER, "", "a b"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["source", "messages", "type", "op", "owner", "mappings", "tokens"])
            | st.sampled_from(["outcomes"])
            | st.text(max_size=5),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)
message_keys = ["type", "op", "owner", "mappings", "tokens", "outcomes"]
mapping_rows = st.lists(
    st.one_of(st.none(), st.just(OWNER), st.text(max_size=4), st.integers(-2, 3), st.booleans()),
    min_size=4,
    max_size=6,
)
message_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["insert", "insert_reply", "read", "read_reply"]) | json_scalars,
        "op": st.text(max_size=5) | json_scalars,
        "owner": st.sampled_from([OWNER, "", "a b"]) | json_scalars,
        "mappings": st.lists(mapping_rows | st.none() | json_values, max_size=3) | json_values,
        "tokens": st.lists(st.sampled_from(["tok_A", "tok_B"]) | json_scalars, max_size=3)
        | json_values,
        "outcomes": st.lists(
            st.sampled_from(["stored", "identical", "conflict"]) | json_scalars, max_size=3
        )
        | json_values,
    },
)
batch_like = st.fixed_dictionaries(
    {},
    optional={
        "source": st.text(max_size=5) | json_values,
        "messages": st.lists(message_like | json_values, max_size=3) | json_values,
    },
)


def check_decode_contract(body: bytes) -> None:
    try:
        source, decoded = decode_batch(body)
    except CodecError:
        return
    assert isinstance(source, str)
    assert isinstance(decoded, list)
    for message in decoded:
        assert isinstance(message, InsertRequest | InsertReply | ReadRequest | ReadReply)
    # whatever is accepted can be sent on again unchanged
    assert roundtrip(source, decoded) == (source, decoded)


@settings(max_examples=500, deadline=None)
@given(value=json_values)
def test_junk_json_values_decode_or_raise_codec_error(value: Any) -> None:
    check_decode_contract(json.dumps(value).encode())


@settings(max_examples=1000, deadline=None)
@given(value=batch_like)
def test_junk_batches_decode_or_raise_codec_error(value: Any) -> None:
    check_decode_contract(json.dumps(value).encode())


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=60))
def test_junk_bytes_decode_or_raise_codec_error(body: bytes) -> None:
    check_decode_contract(body)


@settings(max_examples=300, deadline=None)
@given(good=st.sampled_from(GOOD), cut=st.integers(min_value=0, max_value=200))
def test_truncated_good_batches_raise_codec_error(good: dict[str, Any], cut: int) -> None:
    body = batch([good])
    if cut < len(body):
        with pytest.raises(CodecError):
            decode_batch(body[:cut])


# -- epoch messages (Paxos per owner and slot) --------------------------------------------------

EPOCH_2 = EpochValue(
    epoch=2, salt="0123456789abcdef" * 2, requested_by="n1-a1b2-17", requested_at_s=1.7e9 + 0.25
)
EPOCH_3 = EpochValue(epoch=3, salt="ff", requested_by='ä€😀"\\', requested_at_s=0.0)
EPOCH_LAST = EpochValue(epoch=EPOCH_MAX, salt="f" * 64, requested_by="", requested_at_s=1e12)
B1 = Ballot(round=1, peer="n1")
B7 = Ballot(round=7, peer="péer-😀")

EPOCH_EXAMPLES: list[Message] = [
    EpochQuery(op_id="op-q", owner=OWNER),
    EpochReport(op_id="op-q", owner=OWNER, decided=GENESIS, accepted_slot=1),
    EpochReport(op_id="op-q", owner=OWNER, decided=EPOCH_2, accepted_slot=3),
    Prepare(op_id="op-p", owner=OWNER, slot=2, ballot=B1),
    Prepare(op_id="op-p", owner=OWNER, slot=EPOCH_MAX, ballot=B7),
    Promise(
        op_id="op-p",
        owner=OWNER,
        slot=2,
        ballot=B1,
        granted=True,
        promised=B1,
        accepted_ballot=None,
        accepted_value=None,
        decided=None,
    ),
    Promise(
        op_id="op-p",
        owner=OWNER,
        slot=3,
        ballot=B7,
        granted=True,
        promised=B7,
        accepted_ballot=B1,
        accepted_value=EPOCH_3,
        decided=None,
    ),
    Promise(
        op_id="op-p",
        owner=OWNER,
        slot=2,
        ballot=B1,
        granted=False,
        promised=Ballot(),
        accepted_ballot=None,
        accepted_value=None,
        decided=EPOCH_2,
    ),
    Accept(op_id="op-a", owner=OWNER, slot=2, ballot=B1, value=EPOCH_2),
    Accept(op_id="op-a", owner=OWNER, slot=EPOCH_MAX, ballot=B7, value=EPOCH_LAST),
    Accepted(op_id="op-a", owner=OWNER, slot=2, ballot=B1, granted=True, promised=B1, decided=None),
    Accepted(
        op_id="op-a", owner=OWNER, slot=2, ballot=B1, granted=False, promised=B7, decided=EPOCH_2
    ),
    Decide(op_id="op-d", owner=OWNER, value=EPOCH_2),
    Decide(op_id="op-d", owner=OWNER, value=EPOCH_3),
    OwnerInspect(op_id="op-i", owner=OWNER),
    OwnerView(
        op_id="op-i",
        owner=OWNER,
        token_count=12,
        digest="ab" * 16,
        complete=True,
        decided=EPOCH_3,
        accepted_slot=4,
        next_slot_promised=B7,
        next_slot_accepted=B1,
    ),
    OwnerView(
        op_id="op-i",
        owner=OWNER,
        token_count=0,
        digest="",
        complete=False,
        decided=GENESIS,
        accepted_slot=1,
        next_slot_promised=Ballot(),
        next_slot_accepted=None,
    ),
]


@pytest.mark.parametrize("message", EPOCH_EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_epoch_message_round_trips(message: Message) -> None:
    source, decoded = roundtrip("n2", [message])
    assert source == "n2"
    assert decoded == [message]
    assert type(decoded[0]) is type(message)


def test_epoch_messages_round_trip_in_one_batch_with_the_others() -> None:
    mixed = [m for pair in zip(EPOCH_EXAMPLES, EXAMPLES * 2, strict=False) for m in pair]
    assert roundtrip("n3", mixed) == ("n3", mixed)


def test_epoch_messages_have_the_documented_shape() -> None:
    assert json.loads(encode_message(Prepare(op_id="o", owner=OWNER, slot=2, ballot=B1))) == {
        "type": "prepare",
        "op": "o",
        "owner": OWNER,
        "slot": 2,
        "ballot": [1, "n1"],
        "ring": 0,  # sent under no placement's version
    }
    assert json.loads(encode_message(Decide(op_id="o", owner=OWNER, value=EPOCH_2))) == {
        "type": "decide",
        "op": "o",
        "owner": OWNER,
        "value": {
            "epoch": 2,
            "salt": EPOCH_2.salt,
            "requested_by": "n1-a1b2-17",
            "requested_at_s": 1.7e9 + 0.25,
        },
        "ring": 0,
    }


hex_salts = st.text(alphabet="0123456789abcdef", min_size=1, max_size=64)
ballots = st.builds(
    Ballot, round=st.integers(1, 2**40), peer=st.text(alphabet=sorted(OWNER_ID_CHARS), min_size=1)
)
finite_seconds = st.floats(allow_nan=False, allow_infinity=False, min_value=0.0, max_value=4e9)


@st.composite
def epoch_values(draw: st.DrawFn, epoch: int | None = None) -> EpochValue:
    epoch = epoch if epoch is not None else draw(st.integers(2, EPOCH_MAX))
    return EpochValue(
        epoch=epoch,
        salt=draw(hex_salts),
        requested_by=draw(plain_text),
        requested_at_s=draw(finite_seconds),
    )


@st.composite
def epoch_messages(draw: st.DrawFn) -> Message:
    owner, op_id = draw(owners), draw(plain_text)
    slot = draw(st.integers(2, EPOCH_MAX))
    ballot, promised = draw(ballots), draw(ballots)
    decided = draw(st.none() | epoch_values())
    kind = draw(st.sampled_from(["query", "report", "prepare", "promise", "accept", "accepted"]))
    if kind == "query":
        return EpochQuery(op_id=op_id, owner=owner)
    if kind == "report":
        report_value = draw(st.just(GENESIS) | epoch_values())
        slot_seen = draw(st.integers(1, EPOCH_MAX))
        return EpochReport(op_id=op_id, owner=owner, decided=report_value, accepted_slot=slot_seen)
    if kind == "prepare":
        return Prepare(op_id=op_id, owner=owner, slot=slot, ballot=ballot)
    if kind == "accept":
        value = draw(epoch_values(slot))
        return Accept(op_id=op_id, owner=owner, slot=slot, ballot=ballot, value=value)
    granted = draw(st.booleans())
    if kind == "accepted":
        return Accepted(
            op_id=op_id,
            owner=owner,
            slot=slot,
            ballot=ballot,
            granted=granted,
            promised=promised,
            decided=decided,
        )
    accepted = draw(st.none() | st.tuples(ballots, epoch_values(slot)))
    return Promise(
        op_id=op_id,
        owner=owner,
        slot=slot,
        ballot=ballot,
        granted=granted,
        promised=promised,
        accepted_ballot=None if accepted is None else accepted[0],
        accepted_value=None if accepted is None else accepted[1],
        decided=decided,
    )


@settings(max_examples=300, deadline=None)
@given(source=plain_text, batch_messages=st.lists(epoch_messages() | messages(), max_size=5))
def test_generated_epoch_messages_round_trip(source: str, batch_messages: list[Message]) -> None:
    assert roundtrip(source, batch_messages) == (source, batch_messages)


@settings(max_examples=100, deadline=None)
@given(value=epoch_values())
def test_generated_decides_round_trip(value: EpochValue) -> None:
    decide = Decide(op_id="d", owner=OWNER, value=value)
    assert roundtrip("p", [decide]) == ("p", [decide])


GOOD_VALUE: dict[str, Any] = {
    "epoch": 2,
    "salt": "ab",
    "requested_by": "n1-1",
    "requested_at_s": 1.5,
}
GOOD_QUERY: dict[str, Any] = {"type": "epoch_query", "op": "o", "owner": OWNER}
GOOD_REPORT: dict[str, Any] = {
    "type": "epoch_report",
    "op": "o",
    "owner": OWNER,
    "decided": GOOD_VALUE,
    "accepted_slot": 2,
}
GOOD_PREPARE: dict[str, Any] = {
    "type": "prepare",
    "op": "o",
    "owner": OWNER,
    "slot": 2,
    "ballot": [1, "n1"],
}
GOOD_PROMISE: dict[str, Any] = {
    "type": "promise",
    "op": "o",
    "owner": OWNER,
    "slot": 2,
    "ballot": [1, "n1"],
    "granted": True,
    "promised": [1, "n1"],
    "accepted_ballot": [1, "n0"],
    "accepted_value": GOOD_VALUE,
    "decided": None,
}
GOOD_ACCEPT: dict[str, Any] = {
    "type": "accept",
    "op": "o",
    "owner": OWNER,
    "slot": 2,
    "ballot": [1, "n1"],
    "value": GOOD_VALUE,
}
GOOD_ACCEPTED: dict[str, Any] = {
    "type": "accepted",
    "op": "o",
    "owner": OWNER,
    "slot": 2,
    "ballot": [1, "n1"],
    "granted": False,
    "promised": [2, "n2"],
    "decided": GOOD_VALUE,
}
GOOD_DECIDE: dict[str, Any] = {"type": "decide", "op": "o", "owner": OWNER, "value": GOOD_VALUE}
GOOD_EPOCH = [
    GOOD_QUERY,
    GOOD_REPORT,
    GOOD_PREPARE,
    GOOD_PROMISE,
    GOOD_ACCEPT,
    GOOD_ACCEPTED,
    GOOD_DECIDE,
]


def test_the_good_epoch_examples_decode() -> None:
    source, decoded = decode_batch(batch(GOOD_EPOCH))
    assert source == "peer-1"
    assert [type(m) for m in decoded] == [
        EpochQuery,
        EpochReport,
        Prepare,
        Promise,
        Accept,
        Accepted,
        Decide,
    ]
    value = EpochValue(epoch=2, salt="ab", requested_by="n1-1", requested_at_s=1.5)
    promise = decoded[3]
    assert isinstance(promise, Promise)
    assert promise.accepted_ballot == Ballot(round=1, peer="n0")
    assert promise.accepted_value == value and promise.decided is None
    assert decoded[6] == Decide(op_id="o", owner=OWNER, value=value)


def value_with(**changes: Any) -> dict[str, Any]:
    return changed(GOOD_VALUE, **changes)


MALFORMED_EPOCH_MESSAGES: dict[str, dict[str, Any]] = {
    # ballots
    "prepare zero ballot": changed(GOOD_PREPARE, ballot=[0, ""]),
    "prepare round without peer": changed(GOOD_PREPARE, ballot=[1, ""]),
    "prepare peer without round": changed(GOOD_PREPARE, ballot=[0, "n1"]),
    "prepare negative round": changed(GOOD_PREPARE, ballot=[-1, "n1"]),
    "prepare round bool": changed(GOOD_PREPARE, ballot=[True, "n1"]),
    "prepare round string": changed(GOOD_PREPARE, ballot=["1", "n1"]),
    "prepare round float": changed(GOOD_PREPARE, ballot=[1.0, "n1"]),
    "prepare peer int": changed(GOOD_PREPARE, ballot=[1, 1]),
    "prepare ballot short": changed(GOOD_PREPARE, ballot=[1]),
    "prepare ballot long": changed(GOOD_PREPARE, ballot=[1, "n1", "x"]),
    "prepare ballot object": changed(GOOD_PREPARE, ballot={"round": 1, "peer": "n1"}),
    "prepare ballot string": changed(GOOD_PREPARE, ballot="1n"),
    "prepare ballot null": changed(GOOD_PREPARE, ballot=None),
    "prepare no ballot": changed(GOOD_PREPARE, ballot=DELETE),
    # slots
    "prepare genesis slot": changed(GOOD_PREPARE, slot=1),
    "prepare slot zero": changed(GOOD_PREPARE, slot=0),
    "prepare slot negative": changed(GOOD_PREPARE, slot=-2),
    "prepare slot past the last epoch": changed(GOOD_PREPARE, slot=EPOCH_MAX + 1),
    "prepare slot string": changed(GOOD_PREPARE, slot="2"),
    "prepare slot float": changed(GOOD_PREPARE, slot=2.0),
    "prepare slot bool": changed(GOOD_PREPARE, slot=True),
    "prepare no slot": changed(GOOD_PREPARE, slot=DELETE),
    # epoch values
    "accept value for another slot": changed(GOOD_ACCEPT, slot=3),
    "accept zero ballot": changed(GOOD_ACCEPT, ballot=[0, ""]),
    "accept no value": changed(GOOD_ACCEPT, value=DELETE),
    "accept value null": changed(GOOD_ACCEPT, value=None),
    "accept value list": changed(GOOD_ACCEPT, value=[2, "ab", "n1-1", 1.5]),
    "accept value string": changed(GOOD_ACCEPT, value="2"),
    "value epoch string": changed(GOOD_ACCEPT, value=value_with(epoch="2")),
    "value epoch float": changed(GOOD_ACCEPT, value=value_with(epoch=2.0)),
    "value epoch bool": changed(GOOD_DECIDE, value=value_with(epoch=True)),
    "value epoch zero": changed(GOOD_DECIDE, value=value_with(epoch=0)),
    "value epoch past the last": changed(GOOD_DECIDE, value=value_with(epoch=EPOCH_MAX + 1)),
    "value no epoch": changed(GOOD_DECIDE, value=value_with(epoch=DELETE)),
    "value salt upper case": changed(GOOD_ACCEPT, value=value_with(salt="AB")),
    "value salt not hex": changed(GOOD_ACCEPT, value=value_with(salt="zz")),
    "value salt too long": changed(GOOD_ACCEPT, value=value_with(salt="a" * 65)),
    "value salt empty after genesis": changed(GOOD_ACCEPT, value=value_with(salt="")),
    "value salt int": changed(GOOD_ACCEPT, value=value_with(salt=171)),
    "value salt null": changed(GOOD_ACCEPT, value=value_with(salt=None)),
    "value no salt": changed(GOOD_ACCEPT, value=value_with(salt=DELETE)),
    "value requested_by int": changed(GOOD_ACCEPT, value=value_with(requested_by=1)),
    "value requested_by null": changed(GOOD_ACCEPT, value=value_with(requested_by=None)),
    "value no requested_by": changed(GOOD_ACCEPT, value=value_with(requested_by=DELETE)),
    "value requested_at_s string": changed(GOOD_ACCEPT, value=value_with(requested_at_s="1")),
    "value requested_at_s bool": changed(GOOD_ACCEPT, value=value_with(requested_at_s=True)),
    "value requested_at_s null": changed(GOOD_ACCEPT, value=value_with(requested_at_s=None)),
    "value no requested_at_s": changed(GOOD_ACCEPT, value=value_with(requested_at_s=DELETE)),
    "decide of the genesis epoch": changed(
        GOOD_DECIDE, value={"epoch": 1, "salt": "", "requested_by": "", "requested_at_s": 0.0}
    ),
    "genesis epoch with a salt": changed(GOOD_REPORT, decided=value_with(epoch=1)),
    "decide no value": changed(GOOD_DECIDE, value=DELETE),
    "decide value null": changed(GOOD_DECIDE, value=None),
    # promises and acceptances
    "promise granted string": changed(GOOD_PROMISE, granted="true"),
    "promise granted int": changed(GOOD_PROMISE, granted=1),
    "promise granted null": changed(GOOD_PROMISE, granted=None),
    "promise no granted": changed(GOOD_PROMISE, granted=DELETE),
    "promise ballot without its value": changed(GOOD_PROMISE, accepted_value=None),
    "promise value without its ballot": changed(GOOD_PROMISE, accepted_ballot=None),
    "promise no accepted_ballot": changed(GOOD_PROMISE, accepted_ballot=DELETE),
    "promise no decided": changed(GOOD_PROMISE, decided=DELETE),
    "promise promised null": changed(GOOD_PROMISE, promised=None),
    "promise promised short": changed(GOOD_PROMISE, promised=[1]),
    "promise promised empty": changed(GOOD_PROMISE, promised=[]),
    "promise promised zero round only": changed(GOOD_PROMISE, promised=[0]),
    "promise decided wrong shape": changed(GOOD_PROMISE, decided={"epoch": 2}),
    "promise decided list": changed(GOOD_PROMISE, decided=[2]),
    "promise slot string": changed(GOOD_PROMISE, slot="2"),
    "accepted granted string": changed(GOOD_ACCEPTED, granted="no"),
    "accepted no promised": changed(GOOD_ACCEPTED, promised=DELETE),
    "accepted promised string": changed(GOOD_ACCEPTED, promised="2.n2"),
    "accepted decided int": changed(GOOD_ACCEPTED, decided=2),
    "accepted slot bool": changed(GOOD_ACCEPTED, slot=False),
    # reports and queries
    "report accepted_slot string": changed(GOOD_REPORT, accepted_slot="2"),
    "report accepted_slot float": changed(GOOD_REPORT, accepted_slot=2.5),
    "report accepted_slot bool": changed(GOOD_REPORT, accepted_slot=True),
    "report accepted_slot null": changed(GOOD_REPORT, accepted_slot=None),
    "report no accepted_slot": changed(GOOD_REPORT, accepted_slot=DELETE),
    "report decided null": changed(GOOD_REPORT, decided=None),
    "report no decided": changed(GOOD_REPORT, decided=DELETE),
    "query op int": changed(GOOD_QUERY, op=3),
    "query no owner": changed(GOOD_QUERY, owner=DELETE),
    "query owner with space": changed(GOOD_QUERY, owner="ac me"),
    "decide owner too long": changed(GOOD_DECIDE, owner="a" * 65),
    "epoch type misspelt": changed(GOOD_PREPARE, type="Prepare"),
}


@pytest.mark.parametrize(
    "message", MALFORMED_EPOCH_MESSAGES.values(), ids=MALFORMED_EPOCH_MESSAGES.keys()
)
def test_malformed_epoch_messages_raise_codec_error(message: dict[str, Any]) -> None:
    with pytest.raises(CodecError):
        decode_batch(batch([message]))
    with pytest.raises(CodecError):  # one bad message spoils a batch of good ones
        decode_batch(batch([*GOOD_EPOCH, message]))


@pytest.mark.parametrize("owner", INVALID_OWNERS, ids=repr)
@pytest.mark.parametrize("good", GOOD_EPOCH, ids=lambda m: m["type"])
def test_invalid_owner_id_is_refused_on_every_epoch_message(
    good: dict[str, Any], owner: str
) -> None:
    with pytest.raises(CodecError):
        decode_batch(batch([changed(good, owner=owner)]))


@pytest.mark.parametrize(
    "message",
    [
        changed(GOOD_DECIDE, value=value_with(requested_by="n1-\ud800")),
        changed(GOOD_PREPARE, ballot=[1, "n\udfff"]),
        changed(GOOD_PROMISE, promised=[3, "\ud800"]),
    ],
    ids=["requested_by", "prepare ballot peer", "promised ballot peer"],
)
def test_lone_surrogates_in_epoch_messages_are_a_codec_error(message: dict[str, Any]) -> None:
    body = batch([message])  # json.dumps escapes the surrogate: valid JSON text
    with pytest.raises(CodecError):
        decode_batch(body)


# -- bounds: nothing a peer sends can make a core build an invalid message later, or persist a
# -- record it cannot read back ---------------------------------------------------------------

GOOD_HEARTBEAT: dict[str, Any] = {"type": "heartbeat", "sender": "n1"}
GOOD_INSPECT: dict[str, Any] = {"type": "owner_inspect", "op": "o", "owner": OWNER}
GOOD_VIEW: dict[str, Any] = {
    "type": "owner_view",
    "op": "o",
    "owner": OWNER,
    "token_count": 3,
    "digest": "0" * 32,
    "complete": True,
    "decided": GOOD_VALUE,
    "accepted_slot": 2,
    "next_slot_promised": [0, ""],
    "next_slot_accepted": None,
}
GOOD_SUMMARY: dict[str, Any] = {
    "type": "ae_summary",
    "op": "o",
    "owner": OWNER,
    "leaves": ["0" * 32] * 64,
    "count": 3,
    "decided": GOOD_VALUE,
}
GOOD_SUMMARY_REPLY: dict[str, Any] = {
    "type": "ae_summary_reply",
    "op": "o",
    "owner": OWNER,
    "differing": [0, 63],
    "decided": GOOD_VALUE,
}
GOOD_KEYS: dict[str, Any] = {
    "type": "ae_keys",
    "op": "o",
    "owner": OWNER,
    "bucket": 5,
    "start_after": "tok_A",
    "last": None,
    "entries": [["tok_B", "f" * 32]],
}
GOOD_KEYS_REPLY: dict[str, Any] = {
    "type": "ae_keys_reply",
    "op": "o",
    "owner": OWNER,
    "bucket": 5,
    "missing": ["tok_B"],
}
GOOD_OTHERS = [
    GOOD_HEARTBEAT,
    GOOD_INSPECT,
    GOOD_VIEW,
    GOOD_SUMMARY,
    GOOD_SUMMARY_REPLY,
    GOOD_KEYS,
    GOOD_KEYS_REPLY,
]
LONG_OP = "o" * (OP_ID_LENGTH_MAX + 1)
AT_THE_LIMITS: dict[str, dict[str, Any]] = {
    "mapping value of the longest": changed(
        GOOD_INSERT, mappings=[[OWNER, "tok_A", "v" * VALUE_LENGTH_MAX, "card", 1]]
    ),
    "op of the longest": changed(GOOD_READ, op="o" * OP_ID_LENGTH_MAX),
    "prepare at the last slot and round": changed(
        GOOD_PREPARE, slot=EPOCH_MAX, ballot=[BALLOT_ROUND_MAX, "p" * OP_ID_LENGTH_MAX]
    ),
    "decide of the last epoch": changed(GOOD_DECIDE, value=value_with(epoch=EPOCH_MAX)),
    "report of the last accepted slot": changed(GOOD_REPORT, accepted_slot=EPOCH_MAX),
    "view of the largest count": changed(GOOD_VIEW, token_count=WIRE_INT_MAX),
    "requested_by of the longest": changed(
        GOOD_DECIDE, value=value_with(requested_by="r" * OP_ID_LENGTH_MAX)
    ),
}
OUT_OF_BOUNDS: dict[str, dict[str, Any]] = {
    # sizes
    "mapping value too long": changed(
        GOOD_INSERT, mappings=[[OWNER, "tok_A", "v" * (VALUE_LENGTH_MAX + 1), "card", 1]]
    ),
    "read reply value too long": changed(
        GOOD_READ_REPLY, mappings=[[OWNER, "tok_A", "v" * (VALUE_LENGTH_MAX + 1), "card", 1], None]
    ),
    "op too long": changed(GOOD_READ, op=LONG_OP),
    "decide op too long": changed(GOOD_DECIDE, op=LONG_OP),
    "read token empty": changed(GOOD_READ, tokens=[""]),
    "read token too long": changed(GOOD_READ, tokens=["t" * 65]),
    "reply token too long": changed(GOOD_INSERT_REPLY, tokens=["t" * 65]),
    "ballot proposer too long": changed(GOOD_PREPARE, ballot=[1, LONG_OP]),
    "promised proposer too long": changed(GOOD_PROMISE, promised=[1, LONG_OP]),
    "requested_by too long": changed(GOOD_DECIDE, value=value_with(requested_by=LONG_OP)),
    "heartbeat sender too long": changed(GOOD_HEARTBEAT, sender=LONG_OP),
    "view digest too long": changed(GOOD_VIEW, digest="0" * 65),
    "summary leaf too long": changed(GOOD_SUMMARY, leaves=["0" * 65]),
    "keys entry token too long": changed(GOOD_KEYS, entries=[["t" * 65, "f" * 32]]),
    "keys entry hash too long": changed(GOOD_KEYS, entries=[["tok_B", "f" * 65]]),
    "keys start_after empty": changed(GOOD_KEYS, start_after=""),
    "keys reply token too long": changed(GOOD_KEYS_REPLY, missing=["t" * 65]),
    # ballots and slots
    "prepare round past the last": changed(GOOD_PREPARE, ballot=[BALLOT_ROUND_MAX + 1, "n1"]),
    "promised round past the last": changed(GOOD_PROMISE, promised=[BALLOT_ROUND_MAX + 1, "n"]),
    "accepted round huge": changed(GOOD_ACCEPTED, ballot=[2**64, "n1"]),
    "promise genesis slot": changed(GOOD_PROMISE, slot=1),
    "promise slot past the last": changed(GOOD_PROMISE, slot=EPOCH_MAX + 1),
    "accepted slot zero": changed(GOOD_ACCEPTED, slot=0),
    "accepted slot negative": changed(GOOD_ACCEPTED, slot=-5),
    "accept genesis slot": changed(
        GOOD_ACCEPT, slot=1, value={"epoch": 1, "salt": "", "requested_by": "", "requested_at_s": 0}
    ),
    "report accepted_slot zero": changed(GOOD_REPORT, accepted_slot=0),
    "report accepted_slot past the last": changed(GOOD_REPORT, accepted_slot=EPOCH_MAX + 1),
    "view accepted_slot past the last": changed(GOOD_VIEW, accepted_slot=EPOCH_MAX + 1),
    # counts and buckets
    "view token_count negative": changed(GOOD_VIEW, token_count=-1),
    "view token_count huge": changed(GOOD_VIEW, token_count=WIRE_INT_MAX + 1),
    "summary count negative": changed(GOOD_SUMMARY, count=-1),
    "summary reply bucket negative": changed(GOOD_SUMMARY_REPLY, differing=[-1]),
    "summary reply bucket huge": changed(GOOD_SUMMARY_REPLY, differing=[2**70]),
    "keys bucket negative": changed(GOOD_KEYS, bucket=-1),
    "keys reply bucket huge": changed(GOOD_KEYS_REPLY, bucket=WIRE_INT_MAX + 1),
    # types
    "heartbeat sender int": changed(GOOD_HEARTBEAT, sender=1),
    "view complete string": changed(GOOD_VIEW, complete="yes"),
    "summary leaves string": changed(GOOD_SUMMARY, leaves="00"),
    "keys entries flat": changed(GOOD_KEYS, entries=["tok_B", "f"]),
}


def test_the_other_good_examples_decode() -> None:
    _, decoded = decode_batch(batch(GOOD_OTHERS))
    assert [type(m) for m in decoded] == [
        Heartbeat,
        OwnerInspect,
        OwnerView,
        AeSummary,
        AeSummaryReply,
        AeKeys,
        AeKeysReply,
    ]


@pytest.mark.parametrize("message", AT_THE_LIMITS.values(), ids=AT_THE_LIMITS.keys())
def test_messages_at_their_limits_decode(message: dict[str, Any]) -> None:
    (_, [decoded]) = decode_batch(batch([message]))
    encoded = json.loads(encode_message(decoded))  # with the defaults the example leaves out
    assert {key: encoded[key] for key in message} == json.loads(json.dumps(message))


@pytest.mark.parametrize("message", OUT_OF_BOUNDS.values(), ids=OUT_OF_BOUNDS.keys())
def test_messages_out_of_their_bounds_raise_codec_error(message: dict[str, Any]) -> None:
    with pytest.raises(CodecError):
        decode_batch(batch([message]))
    with pytest.raises(CodecError):  # one bad message spoils a batch of good ones
        decode_batch(batch([*GOOD_OTHERS, message]))


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1e999999"])
def test_a_time_that_is_not_finite_is_a_codec_error(number: bytes) -> None:
    """JSON has no infinity, and 1e400 must not become one: a record must never hold it (msgspec
    refuses it itself; EpochValue refuses it when built)."""
    body = batch([GOOD_DECIDE]).replace(b'"requested_at_s": 1.5', b'"requested_at_s": ' + number)
    assert number in body
    with pytest.raises(CodecError):
        decode_batch(body)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Ballot(round=BALLOT_ROUND_MAX + 1, peer="n1"),
        lambda: Ballot(round=1, peer=LONG_OP),
        lambda: mapping(value="v" * (VALUE_LENGTH_MAX + 1)),
        lambda: EpochValue(epoch=2, salt="ab", requested_by=LONG_OP, requested_at_s=0.0),
        lambda: EpochValue(epoch=2, salt="ab", requested_by="r", requested_at_s=float("inf")),
        lambda: EpochValue(epoch=2, salt="ab", requested_by="r", requested_at_s=float("nan")),
        lambda: Prepare(
            op_id="o", owner=OWNER, slot=EPOCH_MAX + 1, ballot=Ballot(round=1, peer="p")
        ),
        lambda: Accepted(
            op_id="o",
            owner=OWNER,
            slot=1,
            ballot=Ballot(round=1, peer="p"),
            granted=True,
            promised=Ballot(round=1, peer="p"),
            decided=None,
        ),
    ],
    ids=[
        "round",
        "proposer",
        "value",
        "requested_by",
        "infinite time",
        "NaN time",
        "prepare slot",
        "accepted slot",
    ],
)
def test_a_core_cannot_build_what_the_decoder_refuses(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()


def test_a_read_reply_names_its_corrupt_tokens_and_an_older_peers_reply_has_none() -> None:
    reply = ReadReply(
        op_id="o",
        owner=OWNER,
        tokens=("tok_A", "tok_B"),
        mappings=(mapping(), None),
        corrupt=("tok_B",),
    )
    assert roundtrip("p", [reply]) == ("p", [reply])
    older = {
        "type": "read_reply",
        "op": "o",
        "owner": OWNER,
        "tokens": ["tok_A"],
        "mappings": [None],
    }
    (decoded,) = decode_batch(batch([older]))[1]
    assert isinstance(decoded, ReadReply) and decoded.corrupt == ()
    for corrupt in (["tok_C"], ["tok_A"], ["tok_B", "tok_B"]):  # not asked, held, repeated
        bad = {
            **older,
            "tokens": ["tok_A", "tok_B"],
            "mappings": [[OWNER, "tok_A", "v", "card", 1], None],
            "corrupt": corrupt,
        }
        with pytest.raises(CodecError):
            decode_batch(batch([bad]))
