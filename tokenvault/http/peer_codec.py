"""The wire format of peer messages: a batch of messages from one peer to another, as JSON.

Rules:
- One HTTP request carries every message pending for a peer link: {"source": id, "messages": [...]}.
- Decoding validates every type and shape; anything else is a `CodecError` (the peer endpoint
  answers 400), never an exception inside a core.
- Mappings travel as [token, value, field, epoch] under their message's owner.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from tokenvault.quorum.messages import (
    Accept,
    Accepted,
    AeKeys,
    AeKeysReply,
    AeSummary,
    AeSummaryReply,
    Decide,
    EpochQuery,
    EpochReport,
    Heartbeat,
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
    OwnerInspect,
    OwnerView,
    Prepare,
    Promise,
    ReadReply,
    ReadRequest,
)
from tokenvault.quorum.records import (
    StorageCorrupt,
    ballot_from_json,
    ballot_to_json,
    epoch_value_from_json,
    epoch_value_to_json,
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
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        RecursionError,
        StorageCorrupt,
    ) as error:
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
    # The hot path of every peer batch (measured): the type checks of _text, inline.
    token, value, field, epoch = row
    if type(token) is not str or type(value) is not str or type(field) is not str:
        raise CodecError("expected a string")
    if type(epoch) is not int:
        raise CodecError("mapping epoch must be an integer")
    if not (token.isascii() and value.isascii() and field.isascii()):
        for text in (token, value, field):
            _text(text)  # refuses lone surrogates
    return Mapping(owner=owner, token=token, value=value, field=field, epoch=epoch)


def _encode(message: Message) -> dict[str, Any]:
    if isinstance(message, Heartbeat):
        return {"type": "heartbeat", "sender": message.sender}
    if isinstance(message, InsertRequest):
        return {
            "type": "insert",
            "op": message.op_id,
            "owner": message.owner,
            "mappings": [_mapping_row(m) for m in message.mappings],
            "repair": message.repair,
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
    if isinstance(message, ReadReply):
        return {
            "type": "read_reply",
            "op": message.op_id,
            "owner": message.owner,
            "tokens": list(message.tokens),
            "mappings": [None if m is None else _mapping_row(m) for m in message.mappings],
        }
    return _encode_epoch_message(message)


def _encode_epoch_message(message: Message) -> dict[str, Any]:
    assert not isinstance(message, Heartbeat)
    head: dict[str, Any] = {"op": message.op_id, "owner": message.owner}
    if isinstance(message, EpochQuery):
        return {"type": "epoch_query", **head}
    if isinstance(message, EpochReport):
        return {
            "type": "epoch_report",
            **head,
            "decided": epoch_value_to_json(message.decided),
            "accepted_slot": message.accepted_slot,
        }
    if isinstance(message, Prepare):
        return {
            "type": "prepare",
            **head,
            "slot": message.slot,
            "ballot": ballot_to_json(message.ballot),
        }
    if isinstance(message, Promise):
        return {
            "type": "promise",
            **head,
            "slot": message.slot,
            "ballot": ballot_to_json(message.ballot),
            "granted": message.granted,
            "promised": ballot_to_json(message.promised),
            "accepted_ballot": _optional(message.accepted_ballot, ballot_to_json),
            "accepted_value": _optional(message.accepted_value, epoch_value_to_json),
            "decided": _optional(message.decided, epoch_value_to_json),
        }
    if isinstance(message, Accept):
        return {
            "type": "accept",
            **head,
            "slot": message.slot,
            "ballot": ballot_to_json(message.ballot),
            "value": epoch_value_to_json(message.value),
        }
    if isinstance(message, Accepted):
        return {
            "type": "accepted",
            **head,
            "slot": message.slot,
            "ballot": ballot_to_json(message.ballot),
            "granted": message.granted,
            "promised": ballot_to_json(message.promised),
            "decided": _optional(message.decided, epoch_value_to_json),
        }
    if isinstance(message, AeSummary):
        return {
            "type": "ae_summary",
            **head,
            "leaves": list(message.leaves),
            "count": message.count,
            "decided": epoch_value_to_json(message.decided),
        }
    if isinstance(message, AeSummaryReply):
        return {
            "type": "ae_summary_reply",
            **head,
            "differing": list(message.differing),
            "decided": epoch_value_to_json(message.decided),
        }
    if isinstance(message, AeKeys):
        return {
            "type": "ae_keys",
            **head,
            "bucket": message.bucket,
            "start_after": message.start_after,
            "last": message.last,
            "entries": [list(entry) for entry in message.entries],
        }
    if isinstance(message, AeKeysReply):
        return {
            "type": "ae_keys_reply",
            **head,
            "bucket": message.bucket,
            "missing": list(message.missing),
        }
    if isinstance(message, OwnerInspect):
        return {"type": "owner_inspect", **head}
    if isinstance(message, OwnerView):
        return {
            "type": "owner_view",
            **head,
            "token_count": message.token_count,
            "digest": message.digest,
            "complete": message.complete,
            "decided": epoch_value_to_json(message.decided),
            "accepted_slot": message.accepted_slot,
            "next_slot_promised": ballot_to_json(message.next_slot_promised),
            "next_slot_accepted": _optional(message.next_slot_accepted, ballot_to_json),
        }
    assert isinstance(message, Decide), type(message).__name__
    return {"type": "decide", **head, "value": epoch_value_to_json(message.value)}


def _optional(value: Any, encode: Callable[[Any], Any]) -> Any:
    return None if value is None else encode(value)


def _int(raw: Any) -> int:
    if type(raw) is not int:
        raise CodecError("expected an integer")
    return raw


def _bool(raw: Any) -> bool:
    if type(raw) is not bool:
        raise CodecError("expected a boolean")
    return raw


def _decode_epoch_message(kind: Any, op_id: str, owner: str, raw: Any) -> Message:
    if kind == "epoch_query":
        return EpochQuery(op_id=op_id, owner=owner)
    if kind == "epoch_report":
        return EpochReport(
            op_id=op_id,
            owner=owner,
            decided=epoch_value_from_json(raw["decided"]),
            accepted_slot=_int(raw["accepted_slot"]),
        )
    if kind == "prepare":
        return Prepare(
            op_id=op_id, owner=owner, slot=_int(raw["slot"]), ballot=ballot_from_json(raw["ballot"])
        )
    if kind == "promise":
        return Promise(
            op_id=op_id,
            owner=owner,
            slot=_int(raw["slot"]),
            ballot=ballot_from_json(raw["ballot"]),
            granted=_bool(raw["granted"]),
            promised=ballot_from_json(raw["promised"]),
            accepted_ballot=_optional(raw["accepted_ballot"], ballot_from_json),
            accepted_value=_optional(raw["accepted_value"], epoch_value_from_json),
            decided=_optional(raw["decided"], epoch_value_from_json),
        )
    if kind == "accept":
        return Accept(
            op_id=op_id,
            owner=owner,
            slot=_int(raw["slot"]),
            ballot=ballot_from_json(raw["ballot"]),
            value=epoch_value_from_json(raw["value"]),
        )
    if kind == "accepted":
        return Accepted(
            op_id=op_id,
            owner=owner,
            slot=_int(raw["slot"]),
            ballot=ballot_from_json(raw["ballot"]),
            granted=_bool(raw["granted"]),
            promised=ballot_from_json(raw["promised"]),
            decided=_optional(raw["decided"], epoch_value_from_json),
        )
    if kind == "decide":
        return Decide(op_id=op_id, owner=owner, value=epoch_value_from_json(raw["value"]))
    if kind == "owner_inspect":
        return OwnerInspect(op_id=op_id, owner=owner)
    if kind == "ae_summary":
        return AeSummary(
            op_id=op_id,
            owner=owner,
            leaves=_strings(raw["leaves"]),
            count=_int(raw["count"]),
            decided=epoch_value_from_json(raw["decided"]),
        )
    if kind == "ae_summary_reply":
        return AeSummaryReply(
            op_id=op_id,
            owner=owner,
            differing=tuple(_int(b) for b in raw["differing"]),
            decided=epoch_value_from_json(raw["decided"]),
        )
    if kind == "ae_keys":
        entries = tuple((_text(token), _text(digest)) for token, digest in raw["entries"])
        return AeKeys(
            op_id=op_id,
            owner=owner,
            bucket=_int(raw["bucket"]),
            start_after=_optional(raw["start_after"], _text),
            last=_optional(raw["last"], _text),
            entries=entries,
        )
    if kind == "ae_keys_reply":
        return AeKeysReply(
            op_id=op_id, owner=owner, bucket=_int(raw["bucket"]), missing=_strings(raw["missing"])
        )
    if kind == "owner_view":
        return OwnerView(
            op_id=op_id,
            owner=owner,
            token_count=_int(raw["token_count"]),
            digest=_text(raw["digest"]),
            complete=_bool(raw["complete"]),
            decided=epoch_value_from_json(raw["decided"]),
            accepted_slot=_int(raw["accepted_slot"]),
            next_slot_promised=ballot_from_json(raw["next_slot_promised"]),
            next_slot_accepted=_optional(raw["next_slot_accepted"], ballot_from_json),
        )
    raise CodecError("unknown message type")


def _strings(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise CodecError("expected a list of strings")
    return tuple(_text(item) for item in raw)


def _decode(raw: Any) -> Message:
    kind = raw["type"]
    if kind == "heartbeat":
        return Heartbeat(sender=_text(raw["sender"]))
    op_id, owner = _text(raw["op"]), _text(raw["owner"])
    if kind == "insert":
        mappings = tuple(_mapping(owner, row) for row in raw["mappings"])
        repair = _bool(raw.get("repair", False))
        return InsertRequest(op_id=op_id, owner=owner, mappings=mappings, repair=repair)
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
    return _decode_epoch_message(kind, op_id, owner, raw)
