"""KeyFilter: never a false negative, a bounded false-positive rate, growth by layers."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenvault.store.key_filter import KeyFilter

KEYS = st.binary(min_size=0, max_size=48)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=64),
    batches=st.lists(st.lists(KEYS, max_size=40), max_size=12),
)
def test_every_added_key_might_be_contained(capacity: int, batches: list[list[bytes]]) -> None:
    keys = KeyFilter(capacity)
    added: list[bytes] = []
    for index, batch in enumerate(batches):
        if index % 2:
            keys.add_many(batch)
        else:
            for key in batch:
                keys.add(key)
        added.extend(batch)
        assert all(keys.might_contain(key) for key in added)
    assert keys.keys_added == len(added)


def _false_positive_rate(keys: KeyFilter, probes: int = 100_000) -> float:
    absent = (b"absent-" + os.urandom(16) for _ in range(probes))
    return sum(keys.might_contain(key) for key in absent) / probes


def test_false_positive_rate_at_capacity() -> None:
    keys = KeyFilter(10_000)
    keys.add_many(os.urandom(20) for _ in range(10_000))
    assert _false_positive_rate(keys) < 0.03


def test_grows_by_layers_and_keeps_the_rate_bounded() -> None:
    keys = KeyFilter(1_000)
    keys.add_many(os.urandom(20) for _ in range(15_000))  # 1k + 2k + 4k + 8k layers
    assert keys.keys_added == 15_000
    assert keys.layers == 4
    assert keys.bytes_used >= 15_000 * 10 // 8
    assert _false_positive_rate(keys) < 0.06


def test_an_empty_filter_contains_nothing() -> None:
    assert _false_positive_rate(KeyFilter(), probes=10_000) == 0.0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        KeyFilter(0)
