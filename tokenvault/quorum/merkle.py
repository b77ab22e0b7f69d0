"""Per-owner digests of the mappings a replica holds: a two-level hash tree, kept incrementally.

Rules:
- An owner's key range is cut into `BUCKETS` buckets by the token's first character after
  "tok_" (tokens are uniform URL-safe base64, so buckets are even and each is one key range).
  A token of another shape cannot come from the API; it is left out of the digests.
- A leaf is the XOR of a 128-bit BLAKE2b hash of (key, record) over the bucket's mappings:
  order-free, so a new mapping updates its leaf in O(1), and equal sets give equal leaves.
  Mappings are insert-once, so no hash is ever added twice or removed.
- The root is a hash of the leaves and the count: comparing two replicas costs one digest when
  they agree, which is what makes a quiet cluster's anti-entropy almost free.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from tokenvault.quorum.records import MAPPING_PREFIX, StorageView, owner_mapping_prefix

BUCKETS = 64
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
BUCKET_CHARS = tuple(_ALPHABET)
_BUCKET_OF_CHAR = {c: i for i, c in enumerate(_ALPHABET)}
_TOKEN_BODY_OFFSET = len("tok_")
REBUILD_SCAN_BATCH = 4_096


def bucket_of(token: str) -> int | None:
    """The bucket of a token; None for a token not of the vault's shape (never digested)."""
    if not token.startswith("tok_") or len(token) <= _TOKEN_BODY_OFFSET:
        return None
    return _BUCKET_OF_CHAR.get(token[_TOKEN_BODY_OFFSET])


def bucket_prefix(owner: str, bucket: int) -> bytes:
    """The key prefix of a bucket: each bucket is one contiguous key range."""
    return owner_mapping_prefix(owner) + b"tok_" + BUCKET_CHARS[bucket].encode()


def mapping_hash(key: bytes, record: bytes) -> int:
    # One C call per mapping: this runs for every stored mapping, on the insert hot path.
    data = len(key).to_bytes(4, "big") + key + record
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")


class OwnerDigests:
    def __init__(self) -> None:
        self._leaves: dict[str, list[int]] = {}
        self._counts: dict[str, int] = {}

    def add(self, owner: str, token: str, key: bytes, record: bytes) -> None:
        self.add_many(owner, ((token, key, record),))

    def add_many(self, owner: str, mappings: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Adds newly held (token, key, record) mappings of one owner."""
        leaves = self._leaves.get(owner)
        if leaves is None:
            leaves = self._leaves[owner] = [0] * BUCKETS
        added = 0
        for token, key, record in mappings:
            bucket = bucket_of(token)
            if bucket is not None:
                leaves[bucket] ^= mapping_hash(key, record)
                added += 1
        self._counts[owner] = self._counts.get(owner, 0) + added

    def remove_many(self, owner: str, mappings: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Forgets (token, key, record) mappings added but never held (their write was lost)."""
        leaves = self._leaves.get(owner)
        if leaves is None:
            return
        removed = 0
        for token, key, record in mappings:
            bucket = bucket_of(token)
            if bucket is not None:
                leaves[bucket] ^= mapping_hash(key, record)  # XOR: adding twice removes
                removed += 1
        self._counts[owner] = self._counts.get(owner, 0) - removed

    def count(self, owner: str) -> int:
        return self._counts.get(owner, 0)

    def leaves(self, owner: str) -> tuple[int, ...]:
        return tuple(self._leaves.get(owner, (0,) * BUCKETS))

    def root(self, owner: str) -> str:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(self.count(owner).to_bytes(8, "big"))
        for leaf in self.leaves(owner):
            digest.update(leaf.to_bytes(16, "big"))
        return digest.hexdigest()

    def rebuild(self, storage: StorageView) -> int:
        """Recompute every owner's digests from the stored mappings; returns how many."""
        self._leaves.clear()
        self._counts.clear()
        after: bytes | None = None
        total = 0
        while True:
            batch = storage.scan(MAPPING_PREFIX, start_after=after, limit=REBUILD_SCAN_BATCH)
            for key, record in batch:
                owner_bytes, _, token_bytes = key[len(MAPPING_PREFIX) :].partition(b"\x00")
                self.add(owner_bytes.decode(), token_bytes.decode(), key, record)
            total += len(batch)
            if len(batch) < REBUILD_SCAN_BATCH:
                return total
            after = batch[-1][0]
