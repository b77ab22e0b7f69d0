"""MemoryStore: reads through the staged overlay, sync/crash, and a model-based property test."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenvault.store.memory_store import MemoryStore
from tokenvault.store.storage import StagedOverlay, Storage, prefix_upper_bound


def test_is_a_storage() -> None:
    store: Storage = MemoryStore()
    store.close()


def test_stage_get_and_delete() -> None:
    store = MemoryStore()
    assert store.get(b"k") is None
    store.stage([(b"k", b"v1")])
    assert store.get(b"k") == b"v1"
    store.stage([(b"k", b"v2"), (b"k", b"v3")])
    assert store.get(b"k") == b"v3"
    store.stage([(b"k", None)])
    assert store.get(b"k") is None
    assert store.sync() == 4
    assert store.get(b"k") is None
    assert store.durable_items() == []


def test_overlay_wins_over_durable() -> None:
    store = MemoryStore()
    store.stage([(b"a", b"old"), (b"b", b"keep"), (b"c", b"gone")])
    store.sync()
    store.stage([(b"a", b"new"), (b"c", None), (b"d", b"added")])
    assert store.get(b"a") == b"new"
    assert store.get(b"c") is None
    assert store.scan(b"", limit=10) == [(b"a", b"new"), (b"b", b"keep"), (b"d", b"added")]
    assert store.durable_items() == [(b"a", b"old"), (b"b", b"keep"), (b"c", b"gone")]


def test_scan_prefix_limit_and_start_after() -> None:
    store = MemoryStore()
    store.stage([(b"t/" + bytes([i]), bytes([i])) for i in range(0, 10, 2)])
    store.sync()
    store.stage([(b"t/" + bytes([i]), bytes([i])) for i in range(1, 10, 2)])
    store.stage([(b"s", b"before"), (b"u", b"after"), (b"t", b"bare-prefix")])
    keys = [k for k, _ in store.scan(b"t/", limit=100)]
    assert keys == [b"t/" + bytes([i]) for i in range(10)]
    assert [k for k, _ in store.scan(b"t/", limit=3)] == keys[:3]
    assert [k for k, _ in store.scan(b"t/", start_after=keys[2], limit=3)] == keys[3:6]
    assert store.scan(b"t/", start_after=keys[-1], limit=3) == []
    # start_after before the prefix, or outside it entirely
    assert [k for k, _ in store.scan(b"t/", start_after=b"a", limit=2)] == keys[:2]
    assert store.scan(b"t/", start_after=b"z", limit=2) == []
    assert store.scan(b"t", limit=100)[0] == (b"t", b"bare-prefix")


def test_scan_tombstones_do_not_use_up_the_limit() -> None:
    store = MemoryStore()
    store.stage([(bytes([i]), b"v") for i in range(10)])
    store.sync()
    store.stage([(bytes([i]), None) for i in range(8)])
    assert store.scan(b"", limit=2) == [(bytes([8]), b"v"), (bytes([9]), b"v")]


def test_crash_loses_unsynced_but_keeps_synced() -> None:
    store = MemoryStore()
    store.stage([(b"a", b"1"), (b"b", b"2")])
    assert store.has_unsynced()
    assert store.sync() == 2
    assert not store.has_unsynced()
    store.stage([(b"a", b"changed"), (b"b", None), (b"c", b"3")])
    assert store.has_unsynced()
    assert store.crash() == 3
    assert not store.has_unsynced()
    assert store.get(b"a") == b"1"
    assert store.get(b"b") == b"2"
    assert store.get(b"c") is None
    assert store.scan(b"", limit=10) == [(b"a", b"1"), (b"b", b"2")]
    assert store.crash() == 0
    assert store.sync() == 0


def test_scan_rejects_limit_below_one() -> None:
    store = MemoryStore()
    try:
        store.scan(b"", limit=0)
    except ValueError:
        pass
    else:
        raise AssertionError("limit=0 accepted")


def test_prefix_upper_bound() -> None:
    assert prefix_upper_bound(b"") is None
    assert prefix_upper_bound(b"\xff\xff") is None
    assert prefix_upper_bound(b"ab") == b"ac"
    assert prefix_upper_bound(b"a\xff") == b"b"


def test_overlay_discard_flushed_keeps_newer_writes() -> None:
    overlay = StagedOverlay()
    overlay.put([(b"a", b"1"), (b"b", b"1"), (b"c", None)])
    flushed = [(b"a", b"1"), (b"b", b"1"), (b"c", None)]
    # staged while the flush ran: b changes, and the final value of c in the flush is what
    # the overlay holds even though an earlier write of the batch differs
    overlay.put([(b"b", b"2")])
    assert overlay.discard_flushed(flushed) == 2
    assert overlay.get(b"a") == (False, None)
    assert overlay.get(b"b") == (True, b"2")
    assert overlay.get(b"c") == (False, None)
    # only the last value of a key in the flushed batch is what reached the disk
    overlay = StagedOverlay()
    overlay.put([(b"k", b"1"), (b"k", b"2")])
    overlay.put([(b"k", b"1")])  # staged during the flush, equal to an *earlier* batch write
    assert overlay.discard_flushed([(b"k", b"1"), (b"k", b"2")]) == 0
    assert overlay.get(b"k") == (True, b"1")


# -- property test: MemoryStore against a dict model -------------------------------------

KEYS = st.binary(min_size=0, max_size=3).map(lambda b: bytes(x % 3 for x in b))
VALUES = st.none() | st.binary(min_size=0, max_size=2)
WRITES = st.lists(st.tuples(KEYS, VALUES), min_size=0, max_size=6)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("stage"), WRITES),
        st.tuples(st.just("sync"), st.none()),
        st.tuples(st.just("crash"), st.none()),
    ),
    max_size=25,
)
PREFIXES = st.binary(max_size=2).map(lambda b: bytes(x % 3 for x in b))


def _model_scan(
    model: dict[bytes, bytes], prefix: bytes, start_after: bytes | None, limit: int
) -> list[tuple[bytes, bytes]]:
    keys = sorted(
        k for k in model if k.startswith(prefix) and (start_after is None or k > start_after)
    )
    return [(k, model[k]) for k in keys[:limit]]


@settings(database=None, max_examples=300, deadline=None)
@given(
    ops=OPS,
    probes=st.lists(
        st.tuples(PREFIXES, st.none() | KEYS, st.integers(min_value=1, max_value=5)),
        min_size=1,
        max_size=4,
    ),
)
def test_agrees_with_dict_model(
    ops: list[tuple[str, list[tuple[bytes, bytes | None]] | None]],
    probes: list[tuple[bytes, bytes | None, int]],
) -> None:
    store = MemoryStore()
    durable: dict[bytes, bytes] = {}
    staged: list[tuple[bytes, bytes | None]] = []

    def visible() -> dict[bytes, bytes]:
        view = dict(durable)
        for key, value in staged:
            if value is None:
                view.pop(key, None)
            else:
                view[key] = value
        return view

    for op, writes in ops:
        if op == "stage":
            assert writes is not None
            store.stage(writes)
            staged.extend(writes)
        elif op == "sync":
            assert store.sync() == len(staged)
            durable = visible()
            staged.clear()
        else:
            assert store.crash() == len(staged)
            staged.clear()
        model = visible()
        assert store.has_unsynced() == bool(staged)
        assert store.durable_items() == sorted(durable.items())
        for key in {k for k, _ in staged} | set(durable) | {b"", b"\x00"}:
            assert store.get(key) == model.get(key)
        for prefix, start_after, limit in probes:
            assert store.scan(prefix, start_after=start_after, limit=limit) == _model_scan(
                model, prefix, start_after, limit
            )
