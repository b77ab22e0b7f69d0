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
- open is O(1) in the number of keys: no pass over the store runs at open (it grew ~1 us per
  key, 5 s at 5 million; bench/scale_bench.py).
- reads of keys never held (every new mapping's insert-once check) are answered by an in-memory
  KeyFilter, without a LevelDB read, for the keys it covers: every key staged since open, and
  the durable keys up to a cursor that the first scrub moves (`verify_page`, from the start of
  the store on). A key past the cursor is a "maybe" and is read from LevelDB (whose own bloom
  filter answers most absent keys in a few us). An empty store's filter covers every key.
- damage is reported, never papered over: LevelDB opens with paranoid checks, every read
  verifies block checksums, and the scrub (node.py: its first pass starts at open) reads (and
  so verifies) every block; a corruption LevelDB reports raises StoreDamaged naming the file
  (damage.py) and marks the store damaged for good (`health()`): the owner replaces it.
- a failed flush (a full disk, an I/O error) is never written after: LevelDB may have left a
  part of that batch at the end of its log, and a later record behind it would be dropped on
  recovery (measured: docs/operations.md). The next flush first reopens the directory, without
  paranoid checks (the cut record is the failed batch, never acknowledged), which also clears
  LevelDB's sticky background error. Staged and pending writes are in memory and survive it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import plyvel
import trio

from tokenvault.store.damage import (
    Damage,
    LogTail,
    damage_from_error,
    file_named,
    inspect_before_open,
    move_aside,
    reason_of,
    status_text,
    tables_holding,
)
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


DISK_FULL_TEXT = "No space left on device"  # strerror(ENOSPC), as LevelDB's IO error says it


class StoreDamaged(StorageError):
    """LevelDB reported a corruption (or a missing file): the store cannot be trusted."""

    def __init__(self, damage: Damage) -> None:
        super().__init__(f"the store is damaged: {damage.file}: {damage.reason}")
        self.damage = damage


class StoreWriteFailed(StorageError):
    """A flush failed for a reason outside the data (`kind`: disk_full, io_error)."""

    def __init__(self, kind: str, file: str, reason: str) -> None:
        super().__init__(f"the durable write batch failed: {kind}: {file}: {reason}")
        self.kind, self.file, self.reason = kind, file, reason


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """Whether the store takes writes, and why not."""

    write_failure: str | None  # disk_full or io_error while the last flush failed, else None
    damage: Damage | None  # set once LevelDB reported a corruption; never cleared
    reopens: int  # reopens after a failed flush, so far

    @property
    def writable(self) -> bool:
        return self.write_failure is None and self.damage is None


@dataclass(frozen=True, slots=True)
class OpenedStore:
    """What `open_store` found: the store, and what it had to set aside or let go."""

    store: LevelDBStore
    damage: Damage | None  # the damage found at open (the store was then moved aside)
    moved_to: Path | None  # where the damaged directory went
    log_tails: list[LogTail]  # write-ahead log records LevelDB dropped (never synced)


def open_store(path: Path, *, pending_writes_max: int = PENDING_WRITES_MAX_DEFAULT) -> OpenedStore:
    """Open the store at `path`; when it is damaged, move it aside and open a new, empty one in
    its place. Raises StorageError only when even that fails (or for an error that is not
    damage, e.g. a full disk while LevelDB recovers its log)."""
    damage, tails = inspect_before_open(path)
    if damage is None:
        try:
            return OpenedStore(
                LevelDBStore(str(path), pending_writes_max=pending_writes_max), None, None, tails
            )
        except StoreDamaged as error:
            damage = error.damage
    moved_to = move_aside(path)
    try:
        store = LevelDBStore(str(path), pending_writes_max=pending_writes_max)
    except StorageError as error:
        raise StorageError(
            f"cannot create a new store after moving the damaged one aside: {error}"
        ) from None
    return OpenedStore(store, damage, moved_to, [])


def write_failure_of(error: BaseException) -> StoreWriteFailed:
    """A failed flush's plyvel error, named: disk_full (ENOSPC) or io_error, with its file."""
    text = status_text(error)
    kind = "disk_full" if DISK_FULL_TEXT in text else "io_error"
    return StoreWriteFailed(kind, file_named(text) or "unknown", reason_of(text))


def open_leveldb(path: str, *, paranoid: bool) -> plyvel.DB:
    return plyvel.DB(
        path,
        create_if_missing=True,
        paranoid_checks=paranoid,
        bloom_filter_bits=10,
        compression=None,
        write_buffer_size=MEMTABLE_BYTES,
        max_file_size=TABLE_FILE_BYTES,
    )


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
        self._path = Path(path)
        self._damage: Damage | None = None
        self._write_failure: StoreWriteFailed | None = None
        self._reopens = 0
        try:
            self._db = open_leveldb(path, paranoid=True)
        except plyvel.CorruptionError as exc:
            raise StoreDamaged(damage_from_error(self._path, exc, at_open=True)) from None
        except Exception as exc:
            raise StorageError(
                f"cannot open the LevelDB store: {reason_of(status_text(exc))}"
            ) from None
        self._db_open = True
        self._keys = KeyFilter()
        # The durable keys the filter covers: up to _keys_cursor, or all once _keys_complete.
        self._keys_cursor: bytes | None = None
        self._keys_complete = self._is_empty()
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

    def _is_empty(self) -> bool:
        """Whether the store holds no key at all (one step of an iterator)."""
        try:
            with self._db.iterator(include_value=False, verify_checksums=True) as keys:
                return next(keys, None) is None
        except plyvel.Error as exc:
            damaged = self._damaged(exc)
            self._db.close()
            raise damaged from None

    def _damaged(
        self, error: BaseException, *, after: bytes | None = None, key: bytes | None = None
    ) -> StoreDamaged:
        """Mark the store damaged for good; the error to raise. A message without a file
        name is matched to the tables that hold `key` (or the keys right after `after`)."""
        damage = damage_from_error(self._path, error)
        if damage.file == "unknown":
            try:
                sstables = self._db.get_property(b"leveldb.sstables") or b""
                names = tables_holding(sstables.decode("latin-1"), after, key)
            except plyvel.Error:
                names = []
            if names:
                damage = Damage(file=",".join(names), reason=damage.reason)
        if self._damage is None:
            self._damage = damage
        return StoreDamaged(damage)

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        hit, value = self._overlay.get(key)
        if hit:
            return value
        if not self._keys.might_contain(key) and (
            self._keys_complete or (self._keys_cursor is not None and key <= self._keys_cursor)
        ):
            return None
        self._require_open()
        try:
            durable: bytes | None = self._db.get(key, verify_checksums=True)
        except plyvel.Error as exc:
            raise self._damaged(exc, key=key) from None
        return durable

    def verify_page(self, start_after: bytes | None, keys_max: int) -> bytes | None:
        """Read (and so verify) the blocks of up to keys_max durable keys after start_after,
        without filling the block cache: one step of a scrub. The last key read, or None when
        the store ends here. Raises StoreDamaged when a block fails its checksum. A page that
        starts within what the KeyFilter covers adds its keys to it and moves its cursor."""
        self._require_open()
        page: list[bytes] = []
        try:
            with self._db.iterator(
                start=start_after,
                include_start=False,
                include_value=False,
                verify_checksums=True,
                fill_cache=False,
            ) as keys:
                for key in keys:
                    page.append(key)
                    if len(page) >= keys_max:
                        break
        except plyvel.Error as exc:
            raise self._damaged(exc, after=page[-1] if page else start_after) from None
        last = page[-1] if len(page) >= keys_max else None
        cursor = self._keys_cursor
        if not self._keys_complete and (
            start_after is None or (cursor is not None and start_after <= cursor)
        ):
            self._keys.add_many(page)
            if last is None:
                self._keys_complete = True
            elif cursor is None or last > cursor:
                self._keys_cursor = last
        return last

    @property
    def key_filter_complete(self) -> bool:
        """Whether the KeyFilter covers every key (the first scrub has passed the whole store)."""
        return self._keys_complete

    def _require_open(self) -> None:
        if not self._db_open:
            raise StorageError("the store is closed (a reopen after a failed flush failed)")

    def scan(
        self, prefix: bytes, *, start_after: bytes | None = None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        check_limit(limit)
        start, include_start = scan_start(prefix, start_after)
        stop = prefix_upper_bound(prefix)
        if stop is not None and start >= stop:
            return []
        self._require_open()
        try:
            with self._db.iterator(
                start=start, stop=stop, include_start=include_start, verify_checksums=True
            ) as durable:
                return self._overlay.merge(durable, prefix, start_after=start_after, limit=limit)
        except plyvel.Error as exc:
            raise self._damaged(exc, after=start_after or prefix) from None

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
            if self._damage is not None:
                raise StoreDamaged(self._damage)
            if self._write_failure is not None:
                self._reopen()
            await trio.to_thread.run_sync(self._write_batch, batch)
        except BaseException as exc:
            # The writes stay pending, ahead of anything staged meanwhile.
            self._pending = batch + self._pending
            flush.error = exc
            if isinstance(exc, StorageError):
                raise
            if isinstance(exc, plyvel.CorruptionError):
                raise self._damaged(exc) from None
            if isinstance(exc, Exception):
                self._write_failure = write_failure_of(exc)
                raise self._write_failure from exc
            raise
        else:
            self._write_failure = None
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

    def _reopen(self) -> None:
        """Close and open the directory again after a failed flush (in the event loop's
        thread: no read may run on a closed handle). Without paranoid checks: the only cut
        record LevelDB can find is the failed batch's. Raises StoreWriteFailed when it fails
        (the handle then stays closed and reads fail until a later flush reopens it)."""
        if self._db_open:
            self._db.close()
            self._db_open = False
        try:
            self._db = open_leveldb(str(self._path), paranoid=False)
        except plyvel.CorruptionError as exc:
            raise self._damaged(exc) from None
        except Exception as exc:
            self._write_failure = write_failure_of(exc)
            raise self._write_failure from None
        self._db_open = True
        self._reopens += 1

    # -- the rest ------------------------------------------------------------------------

    def health(self) -> StoreHealth:
        failure = self._write_failure
        return StoreHealth(
            write_failure=None if failure is None else failure.kind,
            damage=self._damage,
            reopens=self._reopens,
        )

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
            if self._db_open:
                self._db_open = False
                self._db.close()
