"""How the cores' durable state is laid out as keys and values in a Storage.

Rules:
- One key space, split by a one-byte kind prefix and NUL separators; owner ids never contain NUL
  (they are validated), tokens are URL-safe ASCII.
- Mapping keys sort by owner then token, so an owner's mappings are one contiguous range (scans,
  digests and anti-entropy walk it in order).
- A mapping's value is binary and versioned: 1 byte format (1), 4 bytes epoch (big-endian),
  1 byte field length, the field, then the value, all UTF-8 (measured: a third of the cost of
  JSON on the replica's hot path). Decoding anything else is a StorageCorrupt error (an
  operating error, not a programmer error).
"""

from __future__ import annotations

from tokenvault.quorum.messages import Mapping

MAPPING_PREFIX = b"m\x00"
FIELD_BYTES_MAX = 255
_MAPPING_FORMAT_V1 = b"\x01"


class StorageCorrupt(Exception):
    """A stored record could not be decoded."""


def owner_mapping_prefix(owner: str) -> bytes:
    return MAPPING_PREFIX + owner.encode() + b"\x00"


def mapping_key(owner: str, token: str) -> bytes:
    return owner_mapping_prefix(owner) + token.encode()


def encode_mapping(mapping: Mapping) -> bytes:
    field = mapping.field.encode()
    assert len(field) <= FIELD_BYTES_MAX and 0 < mapping.epoch < 2**32
    header = _MAPPING_FORMAT_V1 + mapping.epoch.to_bytes(4, "big") + len(field).to_bytes(1, "big")
    return header + field + mapping.value.encode()


def decode_mapping(owner: str, token: str, raw: bytes) -> Mapping:
    if len(raw) < 6 or raw[:1] != _MAPPING_FORMAT_V1 or len(raw) < 6 + raw[5]:
        raise StorageCorrupt("a stored mapping is not in a known format")
    field_end = 6 + raw[5]
    try:
        field = raw[6:field_end].decode()
        value = raw[field_end:].decode()
        return Mapping(
            owner=owner, token=token, value=value, field=field, epoch=int.from_bytes(raw[1:5])
        )
    except ValueError as error:
        raise StorageCorrupt("a stored mapping does not decode") from error


def token_from_mapping_key(owner: str, key: bytes) -> str:
    prefix = owner_mapping_prefix(owner)
    assert key.startswith(prefix), "key outside the owner's mapping range"
    return key[len(prefix) :].decode()
