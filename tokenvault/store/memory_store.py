"""An in-memory Storage for tests and the deterministic simulator.

Rules it keeps:
- persist-before-send: staged writes are visible to reads but are not durable until sync();
  crash() throws away whatever was staged and not synced, as a process crash would, so a
  caller that acknowledged before syncing is caught out.
- group commit: one sync() makes every staged write durable at once.
- sync code only: no trio, no I/O, no clock; the simulator decides when sync and crash happen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sortedcontainers import SortedDict

from tokenvault.store.storage import StagedOverlay, Write, check_limit, sorted_range


class MemoryStore:
    """Durable state in a SortedDict plus a StagedOverlay of not-yet-synced writes."""

    __slots__ = ("_durable", "_overlay", "_unsynced_writes")

    def __init__(self) -> None:
        self._durable: Any = SortedDict()
        self._overlay = StagedOverlay()
        self._unsynced_writes = 0

    def get(self, key: bytes) -> bytes | None:
        hit, value = self._overlay.get(key)
        if hit:
            return value
        durable: bytes | None = self._durable.get(key)
        return durable

    def scan(
        self, prefix: bytes, *, start_after: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        check_limit(limit)
        durable = sorted_range(self._durable, prefix, start_after)
        return self._overlay.merge(durable, prefix, start_after=start_after, limit=limit)

    def stage(self, writes: Sequence[Write]) -> None:
        self._overlay.put(writes)
        self._unsynced_writes += len(writes)

    def close(self) -> None:
        """Nothing to release; the state stays readable."""

    def sync(self) -> int:
        """Make every staged write durable; returns how many writes were staged since the
        last sync or crash (several writes to one key count separately)."""
        durable = self._durable
        for key, value in self._overlay.items():
            if value is None:
                durable.pop(key, None)
            else:
                durable[key] = value
        self._overlay.clear()
        applied = self._unsynced_writes
        self._unsynced_writes = 0
        return applied

    def crash(self) -> int:
        """Drop every staged-but-not-synced write, as a process crash would; returns how many
        writes were lost (counted like sync())."""
        self._overlay.clear()
        lost = self._unsynced_writes
        self._unsynced_writes = 0
        return lost

    def flip_bit(self, key: bytes, bit: int) -> None:
        """A simulated disk fault: one bit of a durable record flips in place."""
        raw = bytearray(self._durable[key])
        raw[bit // 8] ^= 1 << (bit % 8)
        self._durable[key] = bytes(raw)

    def durable_items(self, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Every durable (key, value) whose key starts with prefix, ascending; staged writes
        are not included."""
        return list(sorted_range(self._durable, prefix, None))

    def has_unsynced(self) -> bool:
        """Whether any staged write is not durable yet."""
        return self._unsynced_writes > 0
