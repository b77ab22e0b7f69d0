"""Damaged and full LevelDB stores, on real directories: each kind of damage LevelDB reports (or
would hide) is found at open and named by its file, the store is moved aside whole and a new one
opens in its place; damage found by a read later marks the store; a full disk (a real tmpfs)
fails a flush by name, and the store reopens and takes the same pending writes once space
returns, losing nothing it acknowledged."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import plyvel
import pytest

from tests.store.disk_faults import flip, grow_tmpfs, tmpfs
from tokenvault.store.damage import (
    Damage,
    file_named,
    inspect_before_open,
    reason_of,
    scan_log,
    tables_holding,
)
from tokenvault.store.leveldb_store import (
    LevelDBStore,
    StoreDamaged,
    StoreWriteFailed,
    open_store,
)

SECRET = b"SECRET-VALUE-7f3a"  # in every value: must never appear in a message
RECORDS = 2_000
LATE_RECORDS = 100


def _key(index: int) -> bytes:
    return b"m\x00alice\x00tok_%08d" % index


def _value(index: int) -> bytes:
    return SECRET + b"%08d" % index * 4


def _make_store(path: Path) -> None:
    """RECORDS records in a table (compacted), LATE_RECORDS more in the write-ahead log."""
    db = plyvel.DB(str(path), create_if_missing=True, compression=None)
    for index in range(RECORDS):
        db.put(_key(index), _value(index), sync=True)
    db.compact_range()
    for index in range(RECORDS, RECORDS + LATE_RECORDS):
        db.put(_key(index), _value(index), sync=True)
    db.close()


def _only(path: Path, pattern: str) -> Path:
    found = sorted(path.glob(pattern))
    assert found, pattern
    return found[-1]


def _cut(file: Path, count: int) -> None:
    os.truncate(file, file.stat().st_size - count)


Damager = Callable[[Path], None]
DAMAGES: dict[str, tuple[Damager, str, str]] = {
    # name: (damage, file pattern named, reason LevelDB or the inspection gives)
    "log_bad_header": (
        lambda p: flip(_only(p, "*.log"), 0, 8),
        r"\d{6}\.log",
        "bad record header",
    ),
    "log_checksum": (
        lambda p: flip(_only(p, "*.log"), 40, 8),
        r"\d{6}\.log",
        "checksum mismatch",
    ),
    "table_footer": (
        lambda p: flip(_only(p, "*.ldb"), _only(p, "*.ldb").stat().st_size - 8),
        r"\d{6}\.ldb",
        "not an sstable (bad magic number)",
    ),
    "table_missing": (lambda p: _only(p, "*.ldb").unlink(), r"\d{6}\.ldb", "missing files"),
    "manifest_record": (
        lambda p: flip(_only(p, "MANIFEST-*"), 60, 4),
        r"MANIFEST-\d{6}",
        "checksum mismatch",
    ),
    "manifest_cut": (
        lambda p: _cut(_only(p, "MANIFEST-*"), 10),
        r"MANIFEST-\d{6}",
        "last record cut",
    ),
    "current_missing": (lambda p: (p / "CURRENT").unlink(), "CURRENT", "missing"),
}


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_damage_at_open_is_named_moved_aside_and_replaced(tmp_path: Path, name: str) -> None:
    damage, file_pattern, reason = DAMAGES[name]
    path = tmp_path / "leveldb"
    _make_store(path)
    damage(path)
    files_before = sorted(os.listdir(path))
    opened = open_store(path)
    try:
        assert opened.damage is not None
        assert opened.damage.reason == reason
        assert re.fullmatch(file_pattern, opened.damage.file), opened.damage
        assert SECRET.decode() not in repr(opened.damage)
        # Moved aside whole, nothing deleted; a new, empty store in its place.
        assert opened.moved_to is not None
        assert opened.moved_to.parent == tmp_path
        assert opened.moved_to.name.startswith("leveldb.damaged-")
        # (an open that succeeded before a read found the damage has turned its log into a
        # table, as every open does; every table is still there)
        moved = set(os.listdir(opened.moved_to))
        assert {f for f in files_before if f.endswith(".ldb")} <= moved
        assert opened.damage.file in moved or name.endswith("missing")
        assert opened.store.scan(b"", limit=10) == []
        assert opened.store.health().writable
    finally:
        opened.store.close()


def test_a_damaged_table_block_is_found_by_the_first_scrub_and_named(tmp_path: Path) -> None:
    """No pass over the blocks runs at open (start-up stays O(1) in the keys); the first scrub
    (node.py starts it soon after open) reads every block and names the damaged table, and the
    store stays damaged for good: the node then replaces it (tests/test_node_store.py)."""
    path = tmp_path / "leveldb"
    _make_store(path)
    table = _only(path, "*.ldb")
    flip(table, table.stat().st_size // 3)
    opened = open_store(path)
    store = opened.store
    try:
        assert opened.damage is None  # the open reads no data block
        cursor: bytes | None = None
        with pytest.raises(StoreDamaged) as caught:
            for _ in range(RECORDS + LATE_RECORDS):
                cursor = store.verify_page(cursor, 100)
                if cursor is None:
                    break
        damage = caught.value.damage
        assert (damage.file, damage.reason) == (table.name, "block checksum mismatch")
        assert SECRET.decode() not in str(caught.value)
        assert store.health().damage == damage and not store.health().writable
        assert not store.key_filter_complete  # the filter never covers past the damage
    finally:
        store.close()


def test_an_undamaged_store_opens_with_everything(tmp_path: Path) -> None:
    path = tmp_path / "leveldb"
    _make_store(path)
    opened = open_store(path)
    try:
        assert (opened.damage, opened.moved_to, opened.log_tails) == (None, None, [])
        assert opened.store.get(_key(0)) == _value(0)
        assert len(opened.store.scan(b"m", limit=10_000)) == RECORDS + LATE_RECORDS
    finally:
        opened.store.close()
    assert [p.name for p in tmp_path.iterdir()] == ["leveldb"]


def test_a_cut_log_tail_is_a_notice_and_the_store_is_kept(tmp_path: Path) -> None:
    """A record cut at the end of the log is what a crash mid-write leaves (never synced):
    LevelDB drops it; the store is kept and the drop reported."""
    path = tmp_path / "leveldb"
    _make_store(path)
    log = _only(path, "*.log")
    _cut(log, 30)
    opened = open_store(path)
    try:
        assert opened.damage is None
        assert [(t.file, t.bytes_dropped > 0) for t in opened.log_tails] == [(log.name, True)]
        held = opened.store.scan(b"m", limit=10_000)
        assert len(held) == RECORDS + LATE_RECORDS - 1  # the last record only
    finally:
        opened.store.close()


def test_a_new_store_opens_in_a_missing_or_empty_directory(tmp_path: Path) -> None:
    assert inspect_before_open(tmp_path / "absent") == (None, [])
    (tmp_path / "empty").mkdir()
    opened = open_store(tmp_path / "empty")
    opened.store.close()
    assert opened.damage is None


async def test_damage_found_by_a_read_marks_the_store(tmp_path: Path) -> None:
    path = tmp_path / "leveldb"
    _make_store(path)
    store = LevelDBStore(str(path))  # the open pass reads every block, without caching it
    try:
        table = sorted(path.glob("*.ldb"))[0]  # the compacted table: the first RECORDS keys
        flip(table, 100)  # its first data block
        with pytest.raises(StoreDamaged) as raised:
            store.get(_key(0))
        assert raised.value.damage == Damage(file=table.name, reason="block checksum mismatch")
        assert SECRET.decode() not in str(raised.value)
        assert "tok_" not in str(raised.value)
        health = store.health()
        assert health.damage == raised.value.damage and not health.writable
        store.stage([(b"x", b"y")])
        with pytest.raises(StoreDamaged):  # never written to again
            await store.wait_durable()
    finally:
        store.close()


def test_a_scan_that_meets_damage_raises_it_too(tmp_path: Path) -> None:
    path = tmp_path / "leveldb"
    _make_store(path)
    store = LevelDBStore(str(path))
    try:
        flip(sorted(path.glob("*.ldb"))[0], 100)
        with pytest.raises(StoreDamaged):
            store.scan(b"m", limit=10)
    finally:
        store.close()


def test_messages_are_reduced_to_file_and_reason() -> None:
    assert reason_of("Corruption: bad record length") == "bad record length"
    assert reason_of("IO error: /d/000003.log: No space left on device") == (
        "No space left on device"
    )
    assert reason_of("Corruption: CURRENT points to a non-existent file: NotFound: /x") == (
        "CURRENT points to a non-existent file"
    )
    assert reason_of("Corruption: 1 missing files; e.g.: /d/000005.ldb") == "missing files"
    # Anything else is the kind of status alone: no text LevelDB quoted goes on.
    assert reason_of("Corruption: something new about m\x00alice\x00tok_1") == "corruption"
    assert reason_of("IO error: /d/000003.log: Disk quota exceeded") == "io error"
    assert file_named("Corruption: 1 missing files; e.g.: /d/000005.ldb") == "000005.ldb"
    assert file_named("/d/000003.log: dropping 12 bytes; Corruption: x") == "000003.log"
    assert file_named("Corruption: checksum mismatch") is None


def test_tables_are_found_by_key_range_without_naming_a_key() -> None:
    sstables = (
        "--- level 0 --- version# 1 ---\n"
        " 7:3860['m\\x00a\\x00tok_5' @ 9 : 1 .. 'm\\x00a\\x00tok_7' @ 11 : 1]\n"
        "--- level 1 --- version# 1 ---\n"
        " 5:146968['m\\x00a\\x00tok_0' @ 1 : 1 .. 'm\\x00a\\x00tok_4' @ 5 : 1]\n"
    )
    assert tables_holding(sstables, None, b"m\x00a\x00tok_2") == ["000005.ldb"]
    assert tables_holding(sstables, b"m\x00a\x00tok_4", None) == ["000007.ldb"]
    assert tables_holding(sstables, None, None) == ["000005.ldb"]
    assert tables_holding(sstables, b"m\x00a\x00tok_1", None) == ["000005.ldb"]


def test_the_log_scan_tells_a_cut_tail_from_a_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "leveldb"
    _make_store(path)
    log = _only(path, "*.log")
    whole = scan_log(log)
    assert (whole.bytes_cut, whole.bad_record) == (0, False)
    _cut(log, 5)
    cut = scan_log(log)
    assert cut.bytes_cut > 5 and not cut.bad_record
    flip(log, 4, 2)  # the first record's length
    assert scan_log(log).bad_record


# -- a full disk: a real tmpfs --------------------------------------------------------------


async def test_a_full_disk_is_named_and_the_store_resumes_with_its_pending_writes(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        store = LevelDBStore(str(disk / "leveldb"))
        try:
            acknowledged: list[int] = []
            batch = 0
            failure: StoreWriteFailed | None = None
            while failure is None:
                keys = range(batch * 50, batch * 50 + 50)
                store.stage([(_key(i), _value(i)) for i in keys])
                try:
                    await store.wait_durable()
                except StoreWriteFailed as error:
                    failure = error
                else:
                    acknowledged.extend(keys)
                batch += 1
                assert batch < 10_000, "the tmpfs never filled"
            assert (failure.kind, failure.reason) == ("disk_full", "No space left on device")
            assert file_named(failure.file) == failure.file
            assert SECRET.decode() not in str(failure)
            assert store.health().write_failure == "disk_full"
            unacknowledged = range(batch * 50 - 50, batch * 50)
            # Still full: the retry reopens, fails again, keeps the writes pending.
            store.stage([(b"after", b"the failure")])
            with pytest.raises(StoreWriteFailed):
                await store.wait_durable()
            assert store.get(b"after") == b"the failure"  # staged: readable meanwhile
            assert store.statistics().pending_writes == 51
            grow_tmpfs(disk, "16m")
            await store.wait_durable()
            health = store.health()
            assert health.writable and health.reopens >= 1
            assert store.statistics().pending_writes == 0
        finally:
            store.close()
        # Everything acknowledged, and what became durable after the reopen, is on disk.
        reopened = LevelDBStore(str(disk / "leveldb"))
        try:
            for index in [*acknowledged, *unacknowledged]:
                assert reopened.get(_key(index)) == _value(index), index
            assert reopened.get(b"after") == b"the failure"
        finally:
            reopened.close()


async def test_a_corruption_reported_by_a_flush_marks_the_store(tmp_path: Path) -> None:
    """LevelDB's sticky background error after a compaction met a damaged table comes back
    from the next write as a corruption: the store is damaged, the writes stay pending."""
    store = LevelDBStore(str(tmp_path / "leveldb"))
    try:

        def corrupt_compaction(batch: object) -> None:
            raise plyvel.CorruptionError(b"Corruption: block checksum mismatch")

        store._write_batch = corrupt_compaction  # type: ignore[method-assign]
        store.stage([(b"k", b"v")])
        with pytest.raises(StoreDamaged) as raised:
            await store.wait_durable()
        assert raised.value.damage.reason == "block checksum mismatch"
        assert store.health().damage == raised.value.damage
        assert store.statistics().pending_writes == 1 and store.get(b"k") == b"v"
    finally:
        store.close()


async def test_an_io_error_is_named_and_the_next_flush_reopens_first(tmp_path: Path) -> None:
    path = tmp_path / "leveldb"
    store = LevelDBStore(str(path))
    try:
        write_batch = store._write_batch

        def failing(batch: object) -> None:
            raise plyvel.IOError(
                b"IO error: " + str(path).encode() + b"/000003.log: Input/output error"
            )

        store._write_batch = failing  # type: ignore[method-assign]
        store.stage([(b"k", b"v")])
        with pytest.raises(StoreWriteFailed) as raised:
            await store.wait_durable()
        failure = raised.value
        assert (failure.kind, failure.file, failure.reason) == (
            "io_error",
            "000003.log",
            "Input/output error",
        )
        assert str(path) not in str(failure)
        assert store.health().write_failure == "io_error" and not store.health().writable
        store._write_batch = write_batch  # type: ignore[method-assign]
        await store.wait_durable()
        health = store.health()
        assert (health.write_failure, health.reopens, health.writable) == (None, 1, True)
    finally:
        store.close()
    reopened = LevelDBStore(str(path))
    try:
        assert reopened.get(b"k") == b"v"
    finally:
        reopened.close()


def test_a_scrub_reads_every_block_a_page_at_a_time_and_finds_damage(tmp_path: Path) -> None:
    path = tmp_path / "leveldb"
    _make_store(path)
    store = LevelDBStore(str(path))
    try:
        pages, cursor = 0, store.verify_page(None, 300)
        while cursor is not None:
            pages += 1
            cursor = store.verify_page(cursor, 300)
        assert pages == (RECORDS + LATE_RECORDS) // 300  # every key, in pages
        assert store.health().damage is None
        table = sorted(path.glob("*.ldb"))[0]
        flip(table, table.stat().st_size // 2)  # a block in the middle: some pages in
        with pytest.raises(StoreDamaged) as raised:
            cursor = None
            for _ in range(100):
                cursor = store.verify_page(cursor, 300)
        assert raised.value.damage == Damage(file=table.name, reason="block checksum mismatch")
        assert store.health().damage is not None
    finally:
        store.close()
