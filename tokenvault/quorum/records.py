"""How the cores' durable state is laid out as keys and values in a Storage.

Rules:
- One key space, split by a one-byte kind prefix and NUL separators; owner ids never contain NUL
  (they are validated), tokens are URL-safe ASCII.
- Mapping keys sort by owner then token, so an owner's mappings are one contiguous range (scans,
  digests and anti-entropy walk it in order).
- A mapping's value is binary and versioned. Format 2 (what is written): 1 byte format (2),
  4 bytes epoch (big-endian), 1 byte field length, the field (UTF-8), then the sealed value:
  12 bytes nonce, the ciphertext and its 16-byte tag (sealing.py: AES-256-GCM under the
  owner's data key, bound to owner, token, epoch and field). The value is never on disk in
  clear. Binary, not JSON: measured, a third of JSON's cost on the replica's hot path.
- Format 1 (written by versions before sealing: the same header, then the value in clear) is
  still read, so a store of an older version keeps working; it is never written again and never
  rewritten in place (mappings are insert-once). Its only check is the token's (replica.py).
- Decoding anything else, or a value whose tag fails, is a StorageCorrupt error (an operating
  error, not a programmer error): the replica reports the record corrupt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from tokenvault.quorum.messages import (
    GENESIS,
    GENESIS_EPOCH,
    ZERO_BALLOT,
    Ballot,
    EpochValue,
    Mapping,
)
from tokenvault.quorum.sealing import SealBroken, Sealer

MAPPING_PREFIX = b"m\x00"
ACCEPTOR_PREFIX = b"a\x00"
DECIDED_PREFIX = b"d\x00"
EPOCH_META_PREFIX = b"e\x00"
RING_PREFIX = b"r\x00"  # the ring register's records (ring_records.py)
TRANSFER_PREFIX = b"t\x00"  # transfers' progress (transfer_records.py)
FIELD_BYTES_MAX = 255
_MAPPING_FORMAT_V1 = b"\x01"
_MAPPING_FORMAT_V2 = b"\x02"
_MAPPING_HEADER_BYTES = 6  # format, epoch, field length


class StorageCorrupt(Exception):
    """A stored record could not be decoded."""


def owner_mapping_prefix(owner: str) -> bytes:
    return MAPPING_PREFIX + owner.encode() + b"\x00"


def mapping_key(owner: str, token: str) -> bytes:
    return owner_mapping_prefix(owner) + token.encode()


def encode_mapping(sealer: Sealer, mapping: Mapping) -> bytes:
    """The format-2 record of a mapping: identical bytes on every replica (sealing.py)."""
    field = mapping.field.encode()
    assert len(field) <= FIELD_BYTES_MAX and 0 < mapping.epoch < 2**32
    header = _MAPPING_FORMAT_V2 + mapping.epoch.to_bytes(4, "big") + len(field).to_bytes(1, "big")
    sealed = sealer.seal(mapping.owner, mapping.token, mapping.epoch, mapping.field, mapping.value)
    return header + field + sealed


def decode_mapping(sealer: Sealer, owner: str, token: str, raw: bytes) -> Mapping:
    """The mapping a record holds (format 2 opened and its tag checked, or legacy format 1)."""
    if (
        len(raw) < _MAPPING_HEADER_BYTES
        or raw[:1] not in (_MAPPING_FORMAT_V1, _MAPPING_FORMAT_V2)
        or len(raw) < _MAPPING_HEADER_BYTES + raw[5]
    ):
        raise StorageCorrupt("a stored mapping is not in a known format")
    field_end = _MAPPING_HEADER_BYTES + raw[5]
    epoch = int.from_bytes(raw[1:5])
    try:
        field = raw[_MAPPING_HEADER_BYTES:field_end].decode()
        if raw[:1] == _MAPPING_FORMAT_V2:
            value = sealer.open(owner, token, epoch, field, raw[field_end:])
        else:
            value = raw[field_end:].decode()
        return Mapping(owner=owner, token=token, value=value, field=field, epoch=epoch)
    except (ValueError, SealBroken) as error:
        raise StorageCorrupt("a stored mapping does not decode") from error


def token_from_mapping_key(owner: str, key: bytes) -> str:
    prefix = owner_mapping_prefix(owner)
    assert key.startswith(prefix), "key outside the owner's mapping range"
    return key[len(prefix) :].decode()


# -- epochs -------------------------------------------------------------------------------------
# Acceptor state and decided values are rare, small records: JSON, for readability on disk.


class StorageReader(Protocol):
    def get(self, key: bytes) -> bytes | None: ...


class StorageView(StorageReader, Protocol):
    """What the cores read: keys, and ordered scans, both showing staged writes."""

    def scan(
        self, prefix: bytes, *, start_after: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochMeta:
    """Per owner: the highest slot decided here and the highest slot this replica accepted a
    value in. The fence is the higher of the two: mappings of epochs below it are refused."""

    decided_slot: int = GENESIS_EPOCH
    accepted_slot: int = GENESIS_EPOCH

    @property
    def fence_slot(self) -> int:
        return max(self.decided_slot, self.accepted_slot)


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptorSlot:
    promised: Ballot = ZERO_BALLOT
    accepted_ballot: Ballot | None = None
    accepted_value: EpochValue | None = None


def _slot_bytes(slot: int) -> bytes:
    return slot.to_bytes(8, "big")


def acceptor_key(owner: str, slot: int) -> bytes:
    return ACCEPTOR_PREFIX + owner.encode() + b"\x00" + _slot_bytes(slot)


def decided_key(owner: str, slot: int) -> bytes:
    return DECIDED_PREFIX + owner.encode() + b"\x00" + _slot_bytes(slot)


def epoch_meta_key(owner: str) -> bytes:
    return EPOCH_META_PREFIX + owner.encode()


def _load_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as error:
        raise StorageCorrupt("an epoch record is not valid JSON") from error


def _dump_json(record: object) -> bytes:
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


def epoch_value_to_json(value: EpochValue) -> dict[str, Any]:
    return {
        "epoch": value.epoch,
        "salt": value.salt,
        "requested_by": value.requested_by,
        "requested_at_s": value.requested_at_s,
    }


def _utf8_text(raw: Any) -> bool:
    """A str that UTF-8 can carry (JSON escapes may smuggle in lone surrogates)."""
    if not isinstance(raw, str):
        return False
    try:
        raw.encode()
    except UnicodeEncodeError:
        return False
    return True


def epoch_value_from_json(raw: Any) -> EpochValue:
    try:
        epoch, salt, by, at = raw["epoch"], raw["salt"], raw["requested_by"], raw["requested_at_s"]
        if not (
            _utf8_text(salt)
            and _utf8_text(by)
            and type(epoch) is int
            and isinstance(salt, str)
            and isinstance(by, str)
            and type(at) in (int, float)
        ):
            raise TypeError("epoch value fields of the wrong type")
        return EpochValue(epoch=epoch, salt=salt, requested_by=by, requested_at_s=float(at))
    except (KeyError, TypeError, ValueError) as error:
        raise StorageCorrupt("an epoch value has the wrong shape") from error


def ballot_to_json(ballot: Ballot) -> list[Any]:
    return [ballot.round, ballot.peer]


def ballot_from_json(raw: Any) -> Ballot:
    try:
        round_, peer = raw
        if type(round_) is not int or not _utf8_text(peer):
            raise TypeError("ballot fields of the wrong type")
        return Ballot(round=round_, peer=peer)
    except (TypeError, ValueError) as error:
        raise StorageCorrupt("a ballot has the wrong shape") from error


def read_epoch_meta(storage: StorageReader, owner: str) -> EpochMeta:
    raw = storage.get(epoch_meta_key(owner))
    if raw is None:
        return EpochMeta()
    record = _load_json(raw)
    try:
        return EpochMeta(decided_slot=int(record["decided"]), accepted_slot=int(record["accepted"]))
    except (KeyError, TypeError, ValueError) as error:
        raise StorageCorrupt("an epoch meta record has the wrong shape") from error


def encode_epoch_meta(meta: EpochMeta) -> bytes:
    return _dump_json({"decided": meta.decided_slot, "accepted": meta.accepted_slot})


def read_acceptor_slot(storage: StorageReader, owner: str, slot: int) -> AcceptorSlot:
    raw = storage.get(acceptor_key(owner, slot))
    if raw is None:
        return AcceptorSlot()
    record = _load_json(raw)
    try:
        accepted = record["accepted"]
        return AcceptorSlot(
            promised=ballot_from_json(record["promised"]),
            accepted_ballot=None if accepted is None else ballot_from_json(accepted["ballot"]),
            accepted_value=None if accepted is None else epoch_value_from_json(accepted["value"]),
        )
    except (KeyError, TypeError) as error:
        raise StorageCorrupt("an acceptor record has the wrong shape") from error


def encode_acceptor_slot(state: AcceptorSlot) -> bytes:
    accepted = None
    if state.accepted_ballot is not None and state.accepted_value is not None:
        accepted = {
            "ballot": ballot_to_json(state.accepted_ballot),
            "value": epoch_value_to_json(state.accepted_value),
        }
    return _dump_json({"promised": ballot_to_json(state.promised), "accepted": accepted})


def read_decided(storage: StorageReader, owner: str, slot: int) -> EpochValue | None:
    if slot == GENESIS_EPOCH:
        return GENESIS
    raw = storage.get(decided_key(owner, slot))
    return None if raw is None else epoch_value_from_json(_load_json(raw))


def read_active_epoch(storage: StorageReader, owner: str) -> EpochValue:
    """The highest epoch decided here for the owner (the genesis epoch when none was)."""
    value = read_decided(storage, owner, read_epoch_meta(storage, owner).decided_slot)
    assert value is not None, "the meta record names a decided slot that is stored"
    return value


def encode_decided(value: EpochValue) -> bytes:
    return _dump_json(epoch_value_to_json(value))


# -- store identity and the peers' identities (recovery.py) -------------------------------------
# Two small JSON records: this store's identity and recovery phase, and per peer the identity
# this peer last saw from it.

IDENTITY_KEY = b"i\x00"
PEER_IDENTITY_PREFIX = b"p\x00"
STORE_PHASES = ("undecided", "recovering", "serving")


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreIdentity:
    """This store's identity, made when the store was, and how far its recovery went:
    "undecided" (a fresh store that has not yet heard whether its peers knew it before),
    "recovering" (it lost its state) or "serving"."""

    store_id: str
    phase: str

    def __post_init__(self) -> None:
        if self.phase not in STORE_PHASES:
            raise ValueError("unknown store phase")


def read_identity(storage: StorageReader) -> StoreIdentity | None:
    raw = storage.get(IDENTITY_KEY)
    if raw is None:
        return None
    record = _load_json(raw)
    try:
        store_id, phase = record["id"], record["phase"]
        if not _utf8_text(store_id) or not isinstance(phase, str):
            raise TypeError("identity fields of the wrong type")
        return StoreIdentity(store_id=store_id, phase=phase)
    except (KeyError, TypeError, ValueError) as error:
        raise StorageCorrupt("the identity record has the wrong shape") from error


def encode_identity(identity: StoreIdentity) -> bytes:
    return _dump_json({"id": identity.store_id, "phase": identity.phase})


def peer_identity_key(peer: str) -> bytes:
    return PEER_IDENTITY_PREFIX + peer.encode()


def read_peer_identities(storage: StorageView, limit: int) -> dict[str, str]:
    """The identity last seen from each peer (at most `limit` peers)."""
    found: dict[str, str] = {}
    for key, raw in storage.scan(PEER_IDENTITY_PREFIX, limit=limit):
        try:
            found[key[len(PEER_IDENTITY_PREFIX) :].decode()] = raw.decode("ascii")
        except UnicodeDecodeError as error:
            raise StorageCorrupt("a peer identity record is not ASCII") from error
    return found


def encode_peer_identity(store_id: str) -> bytes:
    return store_id.encode("ascii")


# Records a fresh store may hold before it held anything of an owner: the ring it learned (a
# joining peer fetches it first) and transfers into it. They say nothing of what it voted.
_NOT_STATE_PREFIXES = (RING_PREFIX, TRANSFER_PREFIX)
_EMPTY_SCAN_PAGE = 64


def is_empty_store(storage: StorageView) -> bool:
    """No record but ring and transfer records: a store made just now (a new peer, or one
    that lost its disk). Keys sort by prefix, and the owners' records (a, d, e, m) come before
    the ring's and transfers' (r, t): a store that holds any says so on the first page."""
    after: bytes | None = None
    while True:
        page = storage.scan(b"", start_after=after, limit=_EMPTY_SCAN_PAGE)
        if any(not key.startswith(_NOT_STATE_PREFIXES) for key, _ in page):
            return False
        if len(page) < _EMPTY_SCAN_PAGE:
            return True
        after = page[-1][0]
