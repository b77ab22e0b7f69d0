"""LevelDBStore: durability across reopen, reads through the overlay, group commit, bounds."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenvault.store.leveldb_store import LevelDBStore
from tokenvault.store.storage import Storage, StorageError, StorageFull, Write

GATE_TIMEOUT_S = 30.0  # only a safety net against a hung test; never reached when passing


def _reopen(store: LevelDBStore, path: Path) -> LevelDBStore:
    store.close()
    return LevelDBStore(str(path))


class _GatedWrites:
    """Replaces a store's batch writer: each batch waits for the test to open the gate."""

    def __init__(self, store: LevelDBStore, *, fail: bool = False) -> None:
        self._write_batch = store._write_batch
        self._fail = fail
        self.entered = trio.Event()
        self.gate = threading.Event()
        self.batches: list[list[Write]] = []

    def __call__(self, batch: Sequence[Write]) -> None:
        self.batches.append(list(batch))
        trio.from_thread.run_sync(self.entered.set)
        if not self.gate.wait(GATE_TIMEOUT_S):
            raise RuntimeError("gate never opened")
        if self._fail:
            raise OSError("disk on fire")
        self._write_batch(batch)


def test_is_a_storage(tmp_path: Path) -> None:
    store: Storage = LevelDBStore(str(tmp_path / "db"))
    store.close()


async def test_wait_durable_then_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = LevelDBStore(str(path))
    store.stage([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    store.stage([(b"b", None), (b"a", b"1b")])
    await store.wait_durable()
    stats = store.statistics()
    assert stats.flushes == 1
    assert stats.writes_flushed == 5
    assert stats.largest_flush_writes == 5
    assert stats.pending_writes == 0
    store = _reopen(store, path)
    try:
        assert store.get(b"a") == b"1b"
        assert store.get(b"b") is None
        assert store.scan(b"", limit=10) == [(b"a", b"1b"), (b"c", b"3")]
    finally:
        store.close()


async def test_wait_durable_with_nothing_pending_returns_at_once(tmp_path: Path) -> None:
    store = LevelDBStore(str(tmp_path / "db"))
    try:
        await store.wait_durable()
        assert store.statistics().flushes == 0
    finally:
        store.close()


def test_staged_but_not_flushed_is_visible_and_lost_on_close(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = LevelDBStore(str(path))
    store.stage([(b"k1", b"v1"), (b"k2", b"v2")])
    assert store.get(b"k1") == b"v1"
    assert store.scan(b"k", limit=10) == [(b"k1", b"v1"), (b"k2", b"v2")]
    assert store.statistics().pending_writes == 2
    store = _reopen(store, path)
    try:
        assert store.get(b"k1") is None
    finally:
        store.close()


async def test_group_commit(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = LevelDBStore(str(path))
    tasks_n = 200

    async def one(i: int) -> None:
        store.stage([(b"g/%04d" % i, b"v%d" % i)])
        await store.wait_durable()

    async with trio.open_nursery() as nursery:
        for i in range(tasks_n):
            nursery.start_soon(one, i)
    stats = store.statistics()
    assert stats.flushes < 50
    assert stats.writes_flushed == tasks_n
    assert stats.pending_writes == 0
    store = _reopen(store, path)
    try:
        rows = store.scan(b"g/", limit=1000)
        assert rows == [(b"g/%04d" % i, b"v%d" % i) for i in range(tasks_n)]
    finally:
        store.close()


async def test_later_write_during_flush_survives_in_overlay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db"
    store = LevelDBStore(str(path))
    gated = _GatedWrites(store)
    monkeypatch.setattr(store, "_write_batch", gated)
    store.stage([(b"k", b"v1"), (b"other", b"x")])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.wait_durable)
        await gated.entered.wait()
        # the first flush is on its way to disk; stage a newer value of the same key
        store.stage([(b"k", b"v2")])
        assert store.get(b"k") == b"v2"
        gated.gate.set()
    # the first flush is done: v1 is on disk, v2 still staged and still what reads see
    assert gated.batches == [[(b"k", b"v1"), (b"other", b"x")]]
    assert store.statistics().pending_writes == 1
    assert store.get(b"k") == b"v2"
    assert store.scan(b"", limit=10) == [(b"k", b"v2"), (b"other", b"x")]
    await store.wait_durable()
    assert gated.batches[1] == [(b"k", b"v2")]
    store = _reopen(store, path)
    try:
        assert store.get(b"k") == b"v2"
    finally:
        store.close()


async def test_callers_arriving_during_a_flush_ride_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LevelDBStore(str(tmp_path / "db"))
    gated = _GatedWrites(store)
    monkeypatch.setattr(store, "_write_batch", gated)
    store.stage([(b"a", b"1")])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.wait_durable)
        await gated.entered.wait()
        for i in range(5):
            store.stage([(b"b%d" % i, b"2")])
            nursery.start_soon(store.wait_durable)
        await trio.testing.wait_all_tasks_blocked()
        gated.gate.set()
    assert len(gated.batches) == 2
    assert len(gated.batches[1]) == 5
    assert store.statistics().flushes == 2
    store.close()


async def test_failed_flush_raises_for_its_waiters_and_keeps_writes_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db"
    store = LevelDBStore(str(path))
    gated = _GatedWrites(store, fail=True)
    monkeypatch.setattr(store, "_write_batch", gated)
    store.stage([(b"secret-key", b"secret-value")])
    errors: list[StorageError] = []

    async def waiter() -> None:
        try:
            await store.wait_durable()
        except StorageError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        gated.gate.set()
    assert len(errors) == 3
    for exc in errors:
        assert b"secret" not in str(exc).encode()
        assert "secret" not in str(exc)
    stats = store.statistics()
    assert stats.flushes == 0
    assert stats.pending_writes == 1
    assert store.get(b"secret-key") == b"secret-value"
    # the disk recovers: the writes that stayed pending go out with the next flush
    monkeypatch.undo()
    await store.wait_durable()
    assert store.statistics().pending_writes == 0
    store = _reopen(store, path)
    try:
        assert store.get(b"secret-key") == b"secret-value"
    finally:
        store.close()


def test_storage_full_past_the_bound(tmp_path: Path) -> None:
    store = LevelDBStore(str(tmp_path / "db"), pending_writes_max=3)
    try:
        store.stage([(b"a", b"1"), (b"b", b"2")])
        with pytest.raises(StorageFull):
            store.stage([(b"c", b"3"), (b"d", b"4")])
        # a refused stage changes nothing
        assert store.get(b"c") is None
        assert store.statistics().pending_writes == 2
        store.stage([(b"c", b"3")])
        with pytest.raises(StorageFull):
            store.stage([(b"d", b"4")])
    finally:
        store.close()


async def test_bound_frees_up_once_durable(tmp_path: Path) -> None:
    store = LevelDBStore(str(tmp_path / "db"), pending_writes_max=2)
    try:
        store.stage([(b"a", b"1"), (b"b", b"2")])
        with pytest.raises(StorageFull):
            store.stage([(b"c", b"3")])
        await store.wait_durable()
        store.stage([(b"c", b"3"), (b"d", b"4")])
        assert store.statistics().pending_writes == 2
    finally:
        store.close()


async def test_scan_merges_db_and_overlay_with_tombstones(tmp_path: Path) -> None:
    store = LevelDBStore(str(tmp_path / "db"))
    try:
        store.stage([(b"p/%d" % i, b"disk%d" % i) for i in range(10)])
        store.stage([(b"o", b"before"), (b"q", b"after"), (b"p", b"bare")])
        await store.wait_durable()
        store.stage(
            [
                (b"p/1", None),
                (b"p/2", None),
                (b"p/3", None),
                (b"p/4", b"new4"),
                (b"p/45", b"staged45"),
                (b"p/9", None),
                (b"p/91", None),  # tombstone for a key that never existed
            ]
        )
        assert store.get(b"p/1") is None
        assert store.get(b"p/4") == b"new4"
        expected = [
            (b"p/0", b"disk0"),
            (b"p/4", b"new4"),
            (b"p/45", b"staged45"),
            (b"p/5", b"disk5"),
            (b"p/6", b"disk6"),
            (b"p/7", b"disk7"),
            (b"p/8", b"disk8"),
        ]
        assert store.scan(b"p/", limit=100) == expected
        assert store.scan(b"p/", limit=2) == expected[:2]
        assert store.scan(b"p/", start_after=b"p/0", limit=3) == expected[1:4]
        assert store.scan(b"p/", start_after=b"p/4", limit=100) == expected[2:]
        assert store.scan(b"p/", start_after=b"p/8", limit=100) == []
        assert store.scan(b"p/", start_after=b"a", limit=1) == expected[:1]
        assert store.scan(b"p/", start_after=b"z", limit=1) == []
        assert store.scan(b"", limit=100)[0] == (b"o", b"before")
        assert store.scan(b"", limit=100)[-1] == (b"q", b"after")
        assert store.scan(b"\xff", limit=5) == []
    finally:
        store.close()


class _CountingDB:
    """Stands in front of the plyvel DB and counts the point reads that reach it."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.gets = 0

    def get(self, key: bytes, **options: Any) -> bytes | None:
        self.gets += 1
        value: bytes | None = self._db.get(key, **options)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


async def test_reads_of_keys_never_held_skip_leveldb(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = LevelDBStore(str(path))
    store.stage([(b"m/%d" % i, b"v%d" % i) for i in range(1_000)])
    await store.wait_durable()
    store = _reopen(store, path)  # the filter covers nothing durable until a scrub passed
    counting = _CountingDB(store._db)
    store._db = counting
    try:
        assert not store.key_filter_complete
        assert all(store.get(b"absent/%d" % i) is None for i in range(100))
        assert counting.gets == 100  # not covered yet: a "maybe", read from LevelDB
        cursor = store.verify_page(None, 300)  # covers the keys up to the cursor
        assert cursor is not None and not store.key_filter_complete
        while cursor is not None:
            cursor = store.verify_page(cursor, 300)
        assert store.key_filter_complete
        counting.gets = 0
        assert all(store.get(b"m/%d" % i) == b"v%d" % i for i in range(1_000))
        assert counting.gets == 1_000
        assert all(store.get(b"absent/%d" % i) is None for i in range(10_000))
        assert counting.gets < 1_000 + 300  # only the filter's false positives read
    finally:
        store._db = counting._db
        store.close()


async def test_a_partly_filled_filter_never_hides_a_held_key(tmp_path: Path) -> None:
    """Keys past the filter's cursor, durable before open or staged after, are always found."""
    path = tmp_path / "db"
    store = LevelDBStore(str(path))
    store.stage([(b"k/%04d" % i, b"v") for i in range(0, 2_000, 2)])
    await store.wait_durable()
    store = _reopen(store, path)
    try:
        cursor = store.verify_page(None, 250)  # covers k/0000 .. k/0498
        assert cursor == b"k/0498"
        store.stage([(b"k/%04d" % i, b"w") for i in range(1, 2_000, 2)])
        await store.wait_durable()
        assert all(store.get(b"k/%04d" % i) is not None for i in range(2_000))
        assert store.verify_page(b"k/1500", 10) is not None  # not contiguous: covers nothing
        assert not store.key_filter_complete
        while cursor is not None:
            cursor = store.verify_page(cursor, 250)
        assert store.key_filter_complete
        assert all(store.get(b"k/%04d" % i) is not None for i in range(2_000))
    finally:
        store.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.one_of(
            st.lists(
                st.tuples(st.binary(max_size=3), st.none() | st.binary(max_size=3)), max_size=6
            ),
            st.just("durable"),
            st.just("reopen"),
        ),
        max_size=16,
    )
)
def test_reads_agree_with_a_dict_model_across_reopens(
    tmp_path: Path, steps: list[list[tuple[bytes, bytes | None]] | str]
) -> None:
    path = tmp_path / f"db-{uuid.uuid4().hex}"
    model: dict[bytes, bytes] = {}

    async def run() -> None:
        store = LevelDBStore(str(path))
        try:
            for step in steps:
                if step == "durable":
                    await store.wait_durable()
                elif step == "reopen":
                    await store.wait_durable()
                    store = _reopen(store, path)
                else:
                    assert not isinstance(step, str)
                    store.stage(step)
                    for key, value in step:
                        if value is None:
                            model.pop(key, None)
                        else:
                            model[key] = value
                for key in (
                    {bytes([b]) for b in range(4)}
                    | set(model)
                    | {k for s in steps if not isinstance(s, str) for k, _ in s}
                ):
                    assert store.get(key) == model.get(key)
        finally:
            store.close()

    trio.run(run)
