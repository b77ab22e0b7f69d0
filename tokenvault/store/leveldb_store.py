"""The on-disk Storage of a vault node: LevelDB (plyvel) with group commit under trio.

Rules it keeps:
- persist-before-send: stage() only makes writes visible to reads; a caller may acknowledge
  only after wait_durable() returned, which means the writes are in a synced (fsync'd) batch.
- group commit: one flusher at a time takes every pending write into one synced write batch,
  run in a worker thread so the event loop keeps staging; callers arriving meanwhile ride the
  next flush. Sequence numbers and events, never sleeps or polling.
- bounded: at most pending_writes_max writes wait to become durable; past it stage() raises
  StorageFull so the caller can push back.
- keys and values never appear in log lines or exception messages.
- tuned for insert-once mappings under random tokens (measured with bench/tokenize_bench.py):
  no block compression (random tokens do not compress; snappy only burnt compaction CPU),
  a 32 MiB memtable and 16 MiB tables (fewer level-0 files per read, fewer compactions).
- reads of keys never held (every new mapping's insert-once check) are answered by an in-memory
  KeyFilter of every key, built at open and fed by stage(), without a LevelDB read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import plyvel
import trio

from tokenvault.store.key_filter import KeyFilter
from tokenvault.store.storage import (
    StagedOverlay,
    StorageError,
    StorageFull,
    StoreStatistics,
    Write,
    check_limit,
    prefix_upper_bound,
    scan_start,
)

PENDING_WRITES_MAX_DEFAULT = 100_000
MEMTABLE_BYTES = 32 << 20
TABLE_FILE_BYTES = 16 << 20


@dataclass(slots=True, eq=False)
class _Flush:
    """One synced write batch in progress; end_seq is the staged_seq it makes durable."""

    end_seq: int
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


class LevelDBStore:
    """Storage on a LevelDB directory, with staged writes made durable by group commit."""

    def __init__(self, path: str, *, pending_writes_max: int = PENDING_WRITES_MAX_DEFAULT) -> None:
        if pending_writes_max < 1:
            raise ValueError("pending_writes_max must be at least 1")
        try:
            self._db = plyvel.DB(
                path,
                create_if_missing=True,
                bloom_filter_bits=10,
                compression=None,
                write_buffer_size=MEMTABLE_BYTES,
                max_file_size=TABLE_FILE_BYTES,
            )
        except Exception as exc:
            raise StorageError("cannot open the LevelDB store") from exc
        self._keys = KeyFilter()
        with self._db.iterator(include_value=False) as every_key:
            self._keys.add_many(every_key)
        self._pending_writes_max = pending_writes_max
        self._overlay = StagedOverlay()
        self._pending: list[Write] = []
        # Writes are numbered as staged; writes 1..durable_seq are on disk, the ones of a
        # running flush are durable_seq+1..flush.end_seq, the rest are in _pending.
        self._staged_seq = 0
        self._durable_seq = 0
        self._flush: _Flush | None = None
        self._flushes = 0
        self._writes_flushed = 0
        self._largest_flush_writes = 0
        self._closed = False

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        hit, value = self._overlay.get(key)
        if hit:
            return value
        if not self._keys.might_contain(key):
            return None
        durable: bytes | None = self._db.get(key)
        return durable

    def scan(
        self, prefix: bytes, *, start_after: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        check_limit(limit)
        start, include_start = scan_start(prefix, start_after)
        stop = prefix_upper_bound(prefix)
        if stop is not None and start >= stop:
            return []
        with self._db.iterator(start=start, stop=stop, include_start=include_start) as durable:
            return self._overlay.merge(durable, prefix, start_after=start_after, limit=limit)

    # -- writes --------------------------------------------------------------------------

    def stage(self, writes: Sequence[Write]) -> None:
        """Make writes visible to reads at once and queue them for the next flush; no I/O.
        Raises StorageFull when more than pending_writes_max writes would be not durable."""
        if self._closed:
            raise StorageError("the store is closed")
        if not writes:
            return
        if self._staged_seq - self._durable_seq + len(writes) > self._pending_writes_max:
            raise StorageFull("too many writes wait to become durable")
        self._keys.add_many(key for key, value in writes if value is not None)
        self._overlay.put(writes)
        self._pending.extend(writes)
        self._staged_seq += len(writes)

    async def wait_durable(self) -> None:
        """Return once every write staged before the call is on disk in a synced batch.

        Returns at once when nothing is pending. Raises StorageError when the flush that was
        to carry those writes failed; the writes then stay pending for a later flush.
        """
        target = self._staged_seq
        while self._durable_seq < target:
            flush = self._flush
            if flush is None:
                await self._run_flush()
                continue
            await flush.done.wait()
            if flush.error is not None and flush.end_seq >= target:
                raise StorageError("the durable write batch failed") from flush.error

    async def _run_flush(self) -> None:
        """Take every pending write into one synced batch, written from a worker thread."""
        batch = self._pending
        self._pending = []
        flush = _Flush(end_seq=self._staged_seq)
        self._flush = flush
        try:
            await trio.to_thread.run_sync(self._write_batch, batch)
        except BaseException as exc:
            # The writes stay pending, ahead of anything staged meanwhile.
            self._pending = batch + self._pending
            flush.error = exc
            if isinstance(exc, Exception):
                raise StorageError("the durable write batch failed") from exc
            raise
        else:
            self._durable_seq = flush.end_seq
            self._overlay.discard_flushed(batch)
            self._flushes += 1
            self._writes_flushed += len(batch)
            self._largest_flush_writes = max(self._largest_flush_writes, len(batch))
        finally:
            self._flush = None
            flush.done.set()

    def _write_batch(self, batch: Sequence[Write]) -> None:
        """Write batch to disk as one synced batch (runs in a worker thread)."""
        with self._db.write_batch(transaction=True, sync=True) as wb:
            for key, value in batch:
                if value is None:
                    wb.delete(key)
                else:
                    wb.put(key, value)

    # -- the rest ------------------------------------------------------------------------

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            flushes=self._flushes,
            writes_flushed=self._writes_flushed,
            largest_flush_writes=self._largest_flush_writes,
            pending_writes=self._staged_seq - self._durable_seq,
        )

    def close(self) -> None:
        """Close the database; staged writes not yet durable are lost. Not while a flush runs."""
        if self._flush is not None:
            raise RuntimeError("close() while a flush runs")
        if not self._closed:
            self._closed = True
            self._db.close()
