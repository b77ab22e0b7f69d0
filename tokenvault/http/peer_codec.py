"""The wire format of peer messages: a batch of messages from one peer to another, as JSON.

Rules:
- One HTTP request carries every message pending for a peer link: {"source": id, "messages": [...]}.
- The messages are declared once, in quorum/messages.py; this module holds no per-field code.
  msgspec encodes them and decodes a whole batch into them in one pass, checking every type and
  shape while it parses (strictly: no bool for an int, no float for an int, no string that
  UTF-8 cannot carry) and running each message's own `__post_init__` checks.
- Anything that does not decode is a `CodecError` (the peer endpoint answers 400), never an
  exception inside a core, and its text never echoes the payload: only where it failed.
- Mappings travel as rows, [owner, token, value, field, epoch]; ballots as [round, peer].
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from tokenvault.quorum.messages import Message


class CodecError(Exception):
    """A peer batch that is not valid."""


class _Batch(msgspec.Struct, frozen=True):
    source: str
    messages: list[Message]


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(_Batch)


def encode_message(message: Message) -> bytes:
    return _ENCODER.encode(message)


def encode_batch(source: str, encoded_messages: Sequence[bytes]) -> bytes:
    """A batch from already encoded messages (the peer link encodes each as it is queued)."""
    return (
        b'{"source":'
        + _ENCODER.encode(source)
        + b',"messages":['
        + b",".join(encoded_messages)
        + b"]}"
    )


def decode_batch(body: bytes) -> tuple[str, list[Message]]:
    try:
        batch = _DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError) as error:
        # msgspec's text may quote the value it refused: keep only where it failed.
        _, at, where = str(error).rpartition(" - at ")
        place = f" at {where}" if at else ""
        raise CodecError(f"malformed peer batch ({type(error).__name__}{place})") from None
    return batch.source, batch.messages
