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
- Built from the store, never trusted from it: the digests hash what the records hold now, so a
  record a flipped bit changed differs from its partners' and anti-entropy reaches it. A build
  runs at once (`rebuild`, what the simulator and the unit tests use) or page by page
  (`rebuild_page`, what a peer does after it starts, so that it serves at once whatever the
  size of its store: about 2 us per mapping, 10 s of CPU at 5 million, spread out). During a
  paged build the digests cover the mapping keys up to a cursor: a change to a key past it is
  not counted now (the build reads it later, staged writes included); an owner is `ready`
  once the cursor passed its whole range, and only then compared by anti-entropy.
- Why not persisted: digests kept in the store (updated in the write batch of their mappings)
  would be loaded in O(owners), but would go on counting a record as it was written after a
  bit flipped in it, hiding it from anti-entropy; a scan that hashes every record is needed
  anyway, and once it runs in the background nothing is left to persist (measured in
  bench/scale_bench.py: start-up flat in the number of mappings).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from tokenvault.quorum.records import MAPPING_PREFIX, StorageView, owner_mapping_prefix
from tokenvault.store.storage import prefix_upper_bound

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
        # A build in progress covers the mapping keys up to _cursor (None: none yet); when
        # _complete, every key. New digests are those of no mapping, complete.
        self._cursor: bytes | None = None
        self._complete = True

    @property
    def complete(self) -> bool:
        """Whether the digests cover every mapping key (the build has ended)."""
        return self._complete

    def covers(self, key: bytes) -> bool:
        """Whether a change to the mapping at key is counted now (else the build reads it)."""
        return self._complete or (self._cursor is not None and key <= self._cursor)

    def ready(self, owner: str) -> bool:
        """Whether the digests of owner are whole: the build passed its whole key range."""
        if self._complete:
            return True
        end = prefix_upper_bound(owner_mapping_prefix(owner))
        return self._cursor is not None and end is not None and self._cursor >= end

    def add(self, owner: str, token: str, key: bytes, record: bytes) -> None:
        self.add_many(owner, ((token, key, record),))

    def add_many(self, owner: str, mappings: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Adds newly held (token, key, record) mappings of one owner (those the digests cover:
        a build in progress reads the others later)."""
        self._apply(owner, mappings, 1)

    def remove_many(self, owner: str, mappings: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Forgets (token, key, record) mappings added but no longer counted (their write was
        lost, or the record was replaced or left out)."""
        self._apply(owner, mappings, -1)

    def _apply(self, owner: str, mappings: Iterable[tuple[str, bytes, bytes]], sign: int) -> None:
        leaves = self._leaves.get(owner)
        if leaves is None:
            if sign < 0:
                return  # nothing of owner was ever counted
            leaves = self._leaves[owner] = [0] * BUCKETS
        changed = 0
        complete, cursor = self._complete, self._cursor
        for token, key, record in mappings:
            if not complete and (cursor is None or key > cursor):
                continue
            bucket = bucket_of(token)
            if bucket is not None:
                leaves[bucket] ^= mapping_hash(key, record)  # XOR: adding twice removes
                changed += 1
        if changed:
            self._counts[owner] = self._counts.get(owner, 0) + sign * changed

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

    def begin_build(self) -> None:
        """Forget everything: the digests cover no key until `rebuild_page` steps pass it."""
        self._leaves.clear()
        self._counts.clear()
        self._cursor, self._complete = None, False

    def rebuild(self, storage: StorageView) -> int:
        """Recompute every owner's digests from the stored mappings at once; returns how many."""
        self.begin_build()
        total = 0
        while True:
            read = self.rebuild_page(storage, REBUILD_SCAN_BATCH)
            total += read
            if self._complete:
                return total

    def rebuild_page(self, storage: StorageView, keys_max: int) -> int:
        """One step of a build: count the next keys_max mappings past the cursor (staged ones
        included) and move the cursor past them; the build is complete once a page comes back
        short. Returns how many mappings it read (0 once complete)."""
        if self._complete:
            return 0
        batch = storage.scan(MAPPING_PREFIX, start_after=self._cursor, limit=keys_max)
        # Grouped per owner, counted as covered: the cursor moves first, then they are added.
        self._cursor = batch[-1][0] if batch else self._cursor
        by_owner: dict[bytes, list[tuple[str, bytes, bytes]]] = {}
        for key, record in batch:
            owner_bytes, _, token_bytes = key[len(MAPPING_PREFIX) :].partition(b"\x00")
            by_owner.setdefault(owner_bytes, []).append((token_bytes.decode(), key, record))
        for owner_bytes, mappings in by_owner.items():
            self.add_many(owner_bytes.decode(), mappings)
        if len(batch) < keys_max:
            self._complete = True
        return len(batch)
