"""Stores for tests of one peer core: a store of a peer that has been serving (its identity
record says so), so the core under test serves at once instead of first asking its peers
whether they knew it (recovery.py)."""

from __future__ import annotations

from tokenvault.quorum.records import IDENTITY_KEY, StoreIdentity, encode_identity
from tokenvault.store.memory_store import MemoryStore

SERVING_STORE_ID = "5e" * 16


def serving_store(
    store_id: str = SERVING_STORE_ID, store: MemoryStore | None = None
) -> MemoryStore:
    """`store` (a new MemoryStore if None) with the identity record of a serving peer."""
    store = MemoryStore() if store is None else store
    identity = StoreIdentity(store_id=store_id, phase="serving")
    store.stage([(IDENTITY_KEY, encode_identity(identity))])
    store.sync()
    return store
