"""The wire format of peer messages: a batch of messages from one peer to another, as JSON.

Rules:
- One HTTP request carries every message pending for a peer link: {"source": id, "messages": [...]}.
- Decoding validates every type and shape; anything else is a `CodecError` (the peer endpoint
  answers 400), never an exception inside a core.
- Mappings travel as [token, value, field, epoch] under their message's owner.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tokenvault.quorum.messages import (
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
    ReadReply,
    ReadRequest,
)


class CodecError(Exception):
    """A peer batch that is not valid."""


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_message(message: Message) -> bytes:
    return _ENCODER.encode(_encode(message)).encode()


def encode_batch(source: str, encoded_messages: Sequence[bytes]) -> bytes:
    """A batch from already encoded messages (the peer link encodes each as it is queued)."""
    return (
        b'{"source":'
        + json.dumps(source).encode()
        + b',"messages":['
        + b",".join(encoded_messages)
        + b"]}"
    )


def decode_batch(body: bytes) -> tuple[str, list[Message]]:
    try:
        payload = json.loads(body)
        source = _text(payload["source"])
        raw_messages = payload["messages"]
        if not isinstance(raw_messages, list):
            raise CodecError("batch messages of the wrong type")
        return source, [_decode(raw) for raw in raw_messages]
    except CodecError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise CodecError(f"malformed peer batch ({type(error).__name__})") from None


def _mapping_row(mapping: Mapping) -> list[Any]:
    return [mapping.token, mapping.value, mapping.field, mapping.epoch]


def _text(raw: Any) -> str:
    """A string that UTF-8 can carry (JSON escapes may smuggle in lone surrogates)."""
    if type(raw) is not str:
        raise CodecError("expected a string")
    if not raw.isascii():
        raw.encode()  # UnicodeEncodeError is a ValueError: the batch is refused
    return raw


def _mapping(owner: str, row: Any) -> Mapping:
    token, value, field, epoch = row
    if type(epoch) is not int:
        raise CodecError("mapping epoch must be an integer")
    return Mapping(
        owner=owner, token=_text(token), value=_text(value), field=_text(field), epoch=epoch
    )


def _encode(message: Message) -> dict[str, Any]:
    if isinstance(message, InsertRequest):
        return {
            "type": "insert",
            "op": message.op_id,
            "owner": message.owner,
            "mappings": [_mapping_row(m) for m in message.mappings],
        }
    if isinstance(message, InsertReply):
        return {
            "type": "insert_reply",
            "op": message.op_id,
            "owner": message.owner,
            "tokens": list(message.tokens),
            "outcomes": [o.value for o in message.outcomes],
        }
    if isinstance(message, ReadRequest):
        return {
            "type": "read",
            "op": message.op_id,
            "owner": message.owner,
            "tokens": list(message.tokens),
        }
    return {
        "type": "read_reply",
        "op": message.op_id,
        "owner": message.owner,
        "tokens": list(message.tokens),
        "mappings": [None if m is None else _mapping_row(m) for m in message.mappings],
    }


def _strings(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise CodecError("expected a list of strings")
    return tuple(_text(item) for item in raw)


def _decode(raw: Any) -> Message:
    kind, op_id, owner = raw["type"], _text(raw["op"]), _text(raw["owner"])
    if kind == "insert":
        mappings = tuple(_mapping(owner, row) for row in raw["mappings"])
        return InsertRequest(op_id=op_id, owner=owner, mappings=mappings)
    if kind == "insert_reply":
        outcomes = tuple(InsertOutcome(o) for o in raw["outcomes"])
        return InsertReply(
            op_id=op_id, owner=owner, tokens=_strings(raw["tokens"]), outcomes=outcomes
        )
    if kind == "read":
        return ReadRequest(op_id=op_id, owner=owner, tokens=_strings(raw["tokens"]))
    if kind == "read_reply":
        held = tuple(None if row is None else _mapping(owner, row) for row in raw["mappings"])
        return ReadReply(op_id=op_id, owner=owner, tokens=_strings(raw["tokens"]), mappings=held)
    raise CodecError("unknown message type")
