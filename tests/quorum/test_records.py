"""The stored layout of mappings: round trips, ordering, and corrupt records refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.quorum.helpers import SEALER
from tokenvault.quorum import records
from tokenvault.quorum.messages import EPOCH_MAX, OWNER_ID_CHARS, Mapping
from tokenvault.quorum.records import (
    StorageCorrupt,
    decode_mapping,
    encode_mapping,
    mapping_key,
    owner_mapping_prefix,
    token_from_mapping_key,
)
from tokenvault.store.memory_store import MemoryStore

names = st.text(alphabet=sorted(OWNER_ID_CHARS), min_size=1, max_size=64)
values = st.text(alphabet=st.characters(codec="utf-8"), max_size=200)


@given(owner=names, token=names, field=names, value=values, epoch=st.integers(1, EPOCH_MAX))
def test_mapping_round_trips(owner: str, token: str, field: str, value: str, epoch: int) -> None:
    mapping = Mapping(owner=owner, token=token, value=value, field=field, epoch=epoch)
    assert decode_mapping(SEALER, owner, token, encode_mapping(SEALER, mapping)) == mapping
    key = mapping_key(owner, token)
    assert key.startswith(owner_mapping_prefix(owner))
    assert token_from_mapping_key(owner, key) == token


def test_an_owners_keys_are_one_contiguous_range() -> None:
    keys = sorted(mapping_key(o, t) for o in ("a", "a-b", "ab", "b") for t in ("x", "y", "zz"))
    owners = [k.split(b"\x00")[1] for k in keys]
    assert owners == sorted(owners)
    assert not mapping_key("ab", "x").startswith(owner_mapping_prefix("a"))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x01",
        b"\x02\x00\x00\x00\x01\x03ssnvalue",
        b"\x01\x00\x00\x00\x01\x09ssn",
        b"\x01\x00\x00\x00\x01\x03ss\xffvalue",
        b"\x01\x00\x00\x00\x01\x03ssn\xff",
        b'{"v":"x"}',
    ],
)
def test_corrupt_records_are_refused(raw: bytes) -> None:
    with pytest.raises(StorageCorrupt):
        decode_mapping(SEALER, "alice", "tok_x", raw)


def test_epoch_zero_on_disk_is_corrupt() -> None:
    with pytest.raises(StorageCorrupt):
        decode_mapping(SEALER, "alice", "tok_x", b"\x01\x00\x00\x00\x00\x03ssnvalue")


def test_format_2_holds_the_value_sealed_and_is_laid_out_as_documented() -> None:
    mapping = Mapping(owner="alice", token="tok_x", value="123-45-6789", field="ssn", epoch=7)
    raw = encode_mapping(SEALER, mapping)
    assert raw[:1] == b"\x02" and int.from_bytes(raw[1:5]) == 7 and raw[5:9] == b"\x03ssn"
    assert len(raw) == 9 + 12 + len(mapping.value) + 16  # nonce, ciphertext, tag
    assert b"123-45-6789" not in raw
    assert encode_mapping(SEALER, mapping) == raw  # deterministic: replicas agree on bytes


def test_format_1_records_of_older_versions_are_still_read() -> None:
    raw = b"\x01\x00\x00\x00\x02\x03ssn123-45-6789"
    assert decode_mapping(SEALER, "alice", "tok_x", raw) == Mapping(
        owner="alice", token="tok_x", value="123-45-6789", field="ssn", epoch=2
    )


def test_any_flipped_bit_of_a_format_2_record_is_refused() -> None:
    mapping = Mapping(owner="alice", token="tok_x", value="v" * 20, field="ssn", epoch=3)
    raw = encode_mapping(SEALER, mapping)
    for bit in range(8 * len(raw)):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(StorageCorrupt):
            decode_mapping(SEALER, "alice", "tok_x", bytes(flipped))


def test_a_store_holding_only_ring_and_transfer_records_is_empty() -> None:
    store = MemoryStore()
    assert records.is_empty_store(store)
    store.stage([(records.RING_PREFIX + b"c", b"{}")])
    store.stage([(records.TRANSFER_PREFIX + bytes([i]), b"{}") for i in range(100)])
    assert records.is_empty_store(store), "a joining peer's fetched ring says nothing of votes"
    store.stage([(records.ACCEPTOR_PREFIX + b"alice", b"{}")])
    assert not records.is_empty_store(store)
    store.stage([(records.ACCEPTOR_PREFIX + b"alice", None), (b"z\x00", b"")])
    assert not records.is_empty_store(store), "a record after the transfers' counts too"
