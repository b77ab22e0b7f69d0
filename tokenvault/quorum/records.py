"""How the cores' durable state is laid out as keys and values in a Storage.

Rules:
- One key space, split by a one-byte kind prefix and NUL separators; owner ids never contain NUL
  (they are validated), tokens are URL-safe ASCII.
- Mapping keys sort by owner then token, so an owner's mappings are one contiguous range (scans,
  digests and anti-entropy walk it in order).
- Values are compact JSON; decoding a stored value that is not what we wrote is a StorageCorrupt
  error (an operating error, not a programmer error).
"""

from __future__ import annotations

import json

from tokenvault.quorum.messages import Mapping

MAPPING_PREFIX = b"m\x00"
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class StorageCorrupt(Exception):
    """A stored record could not be decoded."""


def owner_mapping_prefix(owner: str) -> bytes:
    return MAPPING_PREFIX + owner.encode() + b"\x00"


def mapping_key(owner: str, token: str) -> bytes:
    return owner_mapping_prefix(owner) + token.encode()


def encode_mapping(mapping: Mapping) -> bytes:
    record = {"v": mapping.value, "f": mapping.field, "e": mapping.epoch}
    return _ENCODER.encode(record).encode()


def decode_mapping(owner: str, token: str, raw: bytes) -> Mapping:
    try:
        record = json.loads(raw)
        value, field, epoch = record["v"], record["f"], record["e"]
    except (ValueError, KeyError, TypeError) as error:
        raise StorageCorrupt("a stored mapping is not valid JSON of the expected shape") from error
    if not (isinstance(value, str) and isinstance(field, str) and isinstance(epoch, int)):
        raise StorageCorrupt("a stored mapping has fields of the wrong type")
    return Mapping(owner=owner, token=token, value=value, field=field, epoch=epoch)


def token_from_mapping_key(owner: str, key: bytes) -> str:
    prefix = owner_mapping_prefix(owner)
    assert key.startswith(prefix), "key outside the owner's mapping range"
    return key[len(prefix) :].decode()
