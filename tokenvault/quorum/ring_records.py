"""How the ring register's durable state is laid out in a Storage.

Rules:
- Its own one-byte prefix, `r\\0`, beside records.py's: `r\\0c` holds the learned membership (the
  highest version learned here), `r\\0a\\0<version, 8 bytes big-endian>` the acceptor's state in
  one version's instance, `r\\0n` (empty) once a membership learned here named this peer (a
  peer started with --join asks to be added until then, never after: a removed one stays out).
  The first two are small JSON records (msgspec), rare (a few per change).
- Decoding anything else is StorageCorrupt (records.py's operating error), never a crash.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from tokenvault.quorum.messages import ZERO_BALLOT, Ballot
from tokenvault.quorum.records import RING_PREFIX, StorageCorrupt, StorageReader
from tokenvault.ring.membership import Membership

_T = TypeVar("_T")

LEARNED_KEY = RING_PREFIX + b"c"
NAMED_KEY = RING_PREFIX + b"n"  # present once a learned membership named this peer
RING_ACCEPTOR_PREFIX = RING_PREFIX + b"a\x00"


class RingSlot(msgspec.Struct, frozen=True, kw_only=True):
    """An acceptor's state in one version's instance."""

    promised: Ballot = ZERO_BALLOT
    accepted_ballot: Ballot | None = None
    accepted_value: Membership | None = None


def ring_slot_key(version: int) -> bytes:
    return RING_ACCEPTOR_PREFIX + version.to_bytes(8, "big")


def version_of_slot_key(key: bytes) -> int:
    assert key.startswith(RING_ACCEPTOR_PREFIX)
    return int.from_bytes(key[len(RING_ACCEPTOR_PREFIX) :], "big")


def read_learned(storage: StorageReader) -> Membership | None:
    raw = storage.get(LEARNED_KEY)
    return None if raw is None else _decode(raw, Membership)


def encode_learned(membership: Membership) -> bytes:
    return msgspec.json.encode(membership)


def read_ring_slot(storage: StorageReader, version: int) -> RingSlot:
    raw = storage.get(ring_slot_key(version))
    return RingSlot() if raw is None else _decode(raw, RingSlot)


def encode_ring_slot(slot: RingSlot) -> bytes:
    return msgspec.json.encode(slot)


def _decode(raw: bytes, kind: type[_T]) -> _T:
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, ValueError) as error:
        raise StorageCorrupt("a ring record does not decode") from error
