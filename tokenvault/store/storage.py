"""The storage contract of a vault node, and the staged-write overlay its implementations share.

Rules kept by every implementation:
- persist-before-send: a write is *staged* first (visible to reads at once) and only
  acknowledged to anyone once it is durable (fsync'd); staged is never the same as durable.
- group commit: staged writes are made durable together, many writes per synced batch.
- keys and values are secrets: they never appear in log lines or exception messages.

This module is pure: it imports neither trio nor plyvel.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Write = tuple[bytes, bytes | None]
"""(key, value); a value of None deletes the key."""


class StorageError(Exception):
    """The storage could not do what was asked. Messages never carry keys or values."""


class StorageFull(StorageError):
    """Too many writes wait to become durable; the caller should apply backpressure."""


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """Counters of a store's group commit."""

    flushes: int
    """Synced write batches that succeeded."""
    writes_flushed: int
    """Writes made durable by those batches, in total."""
    largest_flush_writes: int
    """Writes in the largest batch so far."""
    pending_writes: int
    """Writes staged but not yet durable (including those of a flush in progress)."""


class Storage(Protocol):
    """An ordered byte-key store whose reads see staged (not yet durable) writes."""

    def get(self, key: bytes) -> bytes | None:
        """The value of key, staged writes included; None when absent or deleted."""
        ...

    def scan(
        self, prefix: bytes, *, start_after: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to limit (>= 1) pairs whose keys start with prefix, ascending by key,
        strictly after start_after when given; staged writes and deletes included."""
        ...

    def stage(self, writes: Sequence[Write]) -> None:
        """Make writes visible to get/scan at once, applied in order (later wins)."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...


def prefix_upper_bound(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with prefix (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def scan_start(prefix: bytes, start_after: bytes | None) -> tuple[bytes, bool]:
    """Where an ascending scan begins: (first key, whether that key itself is included)."""
    if start_after is not None and start_after >= prefix:
        return start_after, False
    return prefix, True


def sorted_range(
    mapping: Any, prefix: bytes, start_after: bytes | None
) -> Iterator[tuple[bytes, Any]]:
    """Lazily yield (key, value) of a SortedDict with keys starting with prefix, ascending,
    strictly after start_after when given."""
    start, include_start = scan_start(prefix, start_after)
    for key in mapping.irange(minimum=start, inclusive=(include_start, True)):
        if not key.startswith(prefix):
            return
        yield key, mapping[key]


def check_limit(limit: int) -> None:
    """Reject a scan limit below one."""
    if limit < 1:
        raise ValueError("scan limit must be at least 1")


class StagedOverlay:
    """Writes staged but not yet durable: key -> value, or None as a tombstone.

    Reads consult the overlay first; it shadows the durable state entirely for its keys.
    A plain dict: staging and discarding are on the hot path (every insert), while ordered
    access is needed only by scans, which sort the few staged keys in their range.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[bytes, bytes | None] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, writes: Iterable[Write]) -> None:
        """Stage writes in order; a later write to the same key wins."""
        entries = self._entries
        for key, value in writes:
            entries[key] = value

    def get(self, key: bytes) -> tuple[bool, bytes | None]:
        """(hit, value): hit tells whether the overlay decides key; value None is a tombstone."""
        entries = self._entries
        if key in entries:
            value: bytes | None = entries[key]
            return True, value
        return False, None

    def items(self) -> Iterator[tuple[bytes, bytes | None]]:
        """Every staged (key, value-or-tombstone), ascending by key."""
        yield from sorted(self._entries.items())

    def merge(
        self,
        durable: Iterable[tuple[bytes, bytes]],
        prefix: bytes,
        *,
        start_after: bytes | None,
        limit: int,
    ) -> list[tuple[bytes, bytes]]:
        """Merge an ascending iterator of durable pairs with the overlay for a scan.

        The overlay wins on equal keys and its tombstones hide durable pairs. Durable pairs
        outside the scan's range are skipped, so the iterator may start early or run long;
        it is consumed lazily and no further than the limit needs.
        """
        check_limit(limit)
        start, include_start = scan_start(prefix, start_after)
        staged = iter(
            sorted(
                (key, value)
                for key, value in self._entries.items()
                if key.startswith(prefix) and (key > start or (include_start and key == start))
            )
        )
        durable_it = iter(durable)

        def next_durable() -> tuple[bytes, bytes] | None:
            for key, value in durable_it:
                if key < start or (key == start and not include_start):
                    continue
                if not key.startswith(prefix):
                    return None
                return key, value
            return None

        out: list[tuple[bytes, bytes]] = []
        d = next_durable()
        s: tuple[bytes, bytes | None] | None = next(staged, None)
        while len(out) < limit and (d is not None or s is not None):
            if s is None or (d is not None and d[0] < s[0]):
                assert d is not None
                out.append(d)
                d = next_durable()
                continue
            if d is not None and d[0] == s[0]:
                d = next_durable()
            if s[1] is not None:
                out.append((s[0], s[1]))
            s = next(staged, None)
        return out

    def discard_flushed(self, flushed: Sequence[Write]) -> int:
        """Drop entries made durable by flushed (applied in order), but only where the overlay
        still holds the value that reached the disk: a newer staged write must survive.
        Returns how many entries were dropped."""
        final: dict[bytes, bytes | None] = {}
        for key, value in flushed:
            final[key] = value
        entries = self._entries
        dropped = 0
        for key, value in final.items():
            if key in entries and entries[key] == value:
                del entries[key]
                dropped += 1
        return dropped

    def clear(self) -> int:
        """Drop every entry; returns how many there were."""
        count = len(self._entries)
        self._entries.clear()
        return count
