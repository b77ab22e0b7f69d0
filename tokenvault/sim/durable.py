"""What a simulated peer holds on its disk: the durable records of its MemoryStore, decoded
through the same records helpers the cores use. What the checker and the observer judge.

Rules: read-only, durable state only (staged writes are not on the disk yet). A mapping record
that does not open (a flipped bit: its tag fails) is not held: `corrupt()` names those.
"""

from __future__ import annotations

from tokenvault.quorum.messages import EpochValue, Mapping
from tokenvault.quorum.records import (
    ACCEPTOR_PREFIX,
    DECIDED_PREFIX,
    MAPPING_PREFIX,
    AcceptorSlot,
    StorageCorrupt,
    decode_mapping,
    mapping_key,
    owner_mapping_prefix,
    read_acceptor_slot,
    read_decided,
)
from tokenvault.quorum.sealing import Sealer
from tokenvault.sim.client import SIM_SECRET
from tokenvault.store.memory_store import MemoryStore

SIM_SEALER = Sealer(SIM_SECRET)  # the simulated peers' keys: records open as a peer's would


def _opened(owner: str, token: str, raw: bytes) -> Mapping | None:
    try:
        return decode_mapping(SIM_SEALER, owner, token, raw)
    except StorageCorrupt:
        return None


class DurableView:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def mapping(self, owner: str, token: str) -> Mapping | None:
        key = mapping_key(owner, token)
        for found_key, raw in self._store.durable_items(key):
            if found_key == key:
                return _opened(owner, token, raw)
        return None

    def holds(self, mapping: Mapping) -> bool:
        return self.mapping(mapping.owner, mapping.token) == mapping

    def mappings(self) -> dict[tuple[str, str], Mapping]:
        """Every mapping this peer holds durably, by (owner, token)."""
        held: dict[tuple[str, str], Mapping] = {}
        for key, raw in self._store.durable_items(MAPPING_PREFIX):
            owner_raw, _, token_raw = key[len(MAPPING_PREFIX) :].partition(b"\x00")
            owner, token = owner_raw.decode(), token_raw.decode()
            mapping = _opened(owner, token, raw)
            if mapping is not None:
                held[(owner, token)] = mapping
        return held

    def owner_mappings(self, owner: str) -> dict[str, Mapping]:
        """Every mapping of `owner` this peer holds durably, by token."""
        prefix = owner_mapping_prefix(owner)
        held: dict[str, Mapping] = {}
        for key, raw in self._store.durable_items(prefix):
            token = key[len(prefix) :].decode()
            mapping = _opened(owner, token, raw)
            if mapping is not None:
                held[token] = mapping
        return held

    def corrupt(self) -> list[tuple[str, str]]:
        """The (owner, token) of every durable mapping record that does not open."""
        found = []
        for key, raw in self._store.durable_items(MAPPING_PREFIX):
            owner_raw, _, token_raw = key[len(MAPPING_PREFIX) :].partition(b"\x00")
            owner, token = owner_raw.decode(), token_raw.decode()
            if _opened(owner, token, raw) is None:
                found.append((owner, token))
        return found

    def decided(self) -> dict[tuple[str, int], EpochValue]:
        """Every value this peer durably decided, by (owner, slot), via the records helpers."""
        found: dict[tuple[str, int], EpochValue] = {}
        for key, raw in self._store.durable_items(DECIDED_PREFIX):
            owner, slot = key[2:-9].decode(), int.from_bytes(key[-8:], "big")
            value = read_decided(OneRecord(key, raw), owner, slot)
            assert value is not None
            found[(owner, slot)] = value
        return found

    def acceptor_slots(self) -> dict[tuple[str, int], AcceptorSlot]:
        found: dict[tuple[str, int], AcceptorSlot] = {}
        for key, raw in self._store.durable_items(ACCEPTOR_PREFIX):
            owner, slot = key[2:-9].decode(), int.from_bytes(key[-8:], "big")
            found[(owner, slot)] = read_acceptor_slot(OneRecord(key, raw), owner, slot)
        return found


class OneRecord:
    """A StorageReader holding one record (to decode it with the records helpers); `raw` None
    is a deleted record."""

    __slots__ = ("_key", "_raw")

    def __init__(self, key: bytes, raw: bytes | None) -> None:
        self._key, self._raw = key, raw

    def get(self, key: bytes) -> bytes | None:
        return self._raw if key == self._key else None
