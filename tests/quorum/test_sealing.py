"""Sealing at rest: round trips, tampering refused, the associated data bound, determinism, and
the token check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenvault.quorum.messages import EpochValue, Mapping
from tokenvault.quorum.sealing import NONCE_BYTES, TAG_BYTES, SealBroken, Sealer, associated_data
from tokenvault.tokens import TokenMaker, derive_data_key, derive_epoch_key, derive_nonce_key

SECRET = b"k" * 32
SEALER = Sealer(SECRET)
PLACE = ("alice", "tok_abc", 3, "ssn")


def test_a_sealed_value_opens_where_it_was_sealed() -> None:
    sealed = SEALER.seal(*PLACE, "123-45-6789")
    assert len(sealed) == NONCE_BYTES + len("123-45-6789") + TAG_BYTES
    assert b"123-45-6789" not in sealed
    assert SEALER.open(*PLACE, sealed) == "123-45-6789"
    assert Sealer(SECRET).open(*PLACE, sealed) == "123-45-6789"  # keys come from the secret


@given(value=st.text(max_size=300))
def test_round_trip_and_determinism(value: str) -> None:
    sealed = SEALER.seal(*PLACE, value)
    assert SEALER.seal(*PLACE, value) == sealed
    assert SEALER.open(*PLACE, sealed) == value


def test_every_changed_byte_is_refused() -> None:
    sealed = SEALER.seal(*PLACE, "4111-1111-1111-1111")
    for index in range(len(sealed)):
        for flip in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[index] ^= flip
            with pytest.raises(SealBroken):
                SEALER.open(*PLACE, bytes(tampered))
    for cut in (sealed[:-1], sealed[: NONCE_BYTES + TAG_BYTES - 1], b""):
        with pytest.raises(SealBroken):
            SEALER.open(*PLACE, cut)


@pytest.mark.parametrize(
    "elsewhere",
    [
        ("bob", "tok_abc", 3, "ssn"),
        ("alice", "tok_abd", 3, "ssn"),
        ("alice", "tok_abc", 4, "ssn"),
        ("alice", "tok_abc", 3, "email"),
    ],
)
def test_a_sealed_value_moved_to_another_owner_token_epoch_or_field_is_refused(
    elsewhere: tuple[str, str, int, str],
) -> None:
    sealed = SEALER.seal(*PLACE, "123-45-6789")
    with pytest.raises(SealBroken):
        SEALER.open(*elsewhere, sealed)


def test_another_secret_opens_nothing() -> None:
    sealed = SEALER.seal(*PLACE, "123-45-6789")
    with pytest.raises(SealBroken):
        Sealer(b"j" * 32).open(*PLACE, sealed)


def test_the_associated_data_is_unambiguous() -> None:
    """Length prefixes: moving a character between owner, token and field changes it."""
    assert associated_data("ab", "c", 1, "d") != associated_data("a", "bc", 1, "d")
    assert associated_data("a", "bc", 1, "d") != associated_data("a", "b", 1, "cd")


def test_nonces_differ_per_input_and_keys_per_owner_and_purpose() -> None:
    nonces = {SEALER.seal(*PLACE, v)[:NONCE_BYTES] for v in ("a", "b", "c", "")}
    assert len(nonces) == 4
    assert derive_data_key(SECRET, "alice") != derive_data_key(SECRET, "bob")
    assert derive_data_key(SECRET, "alice") != derive_nonce_key(SECRET, "alice")
    assert len(derive_data_key(SECRET, "alice")) == 32


def test_the_token_check() -> None:
    epoch = EpochValue(epoch=2, salt="0a0b", requested_by="c", requested_at_s=1.0)
    maker = TokenMaker(derive_epoch_key(SECRET, "alice", 2, bytes.fromhex("0a0b")))
    good = Mapping(owner="alice", token=maker.token("ssn", "v1"), value="v1", field="ssn", epoch=2)
    assert SEALER.token_matches(good, epoch)
    assert SEALER.token_maker("alice", epoch) is SEALER.token_maker("alice", epoch)  # cached
    assert not SEALER.token_matches(good._replace(value="v2"), epoch)
    assert not SEALER.token_matches(good._replace(field="email"), epoch)
    other_salt = EpochValue(epoch=2, salt="0a0c", requested_by="c", requested_at_s=1.0)
    assert not SEALER.token_matches(good, other_salt)


def test_the_caches_are_bounded() -> None:
    sealer = Sealer(SECRET, cached_max=2)
    sealed = {owner: sealer.seal(owner, "t", 1, "f", "v") for owner in ("a", "b", "c", "d")}
    assert all(sealer.open(owner, "t", 1, "f", s) == "v" for owner, s in sealed.items())


def test_a_decided_epoch_value_is_read_once_for_all_the_records_it_verifies() -> None:
    """Verifying a record of epoch 2 needs that epoch's value; once known it is kept (a decided
    value never changes), so later reads do not fetch and parse its record again."""
    from tokenvault.quorum.messages import EpochValue, Mapping
    from tokenvault.quorum.records import decided_key, encode_decided
    from tokenvault.quorum.replica import Replica
    from tokenvault.store.memory_store import MemoryStore

    sealer = Sealer(b"k" * 32)

    store = MemoryStore()
    value = EpochValue(epoch=2, salt="ab" * 16, requested_by="r1", requested_at_s=1.0)
    store.stage([(decided_key("acme", 2), encode_decided(value))])
    store.sync()
    replica = Replica(peer_id="r1", storage=store, sealer=sealer)
    maker = sealer.token_maker("acme", value)
    good = Mapping(owner="acme", token=maker.token("ssn", "1"), value="1", field="ssn", epoch=2)
    assert replica.verifies(good)
    store.stage([(decided_key("acme", 2), None)])  # gone from the store: the cache answers
    store.sync()
    assert replica.verifies(good)
    assert not replica.verifies(good._replace(value="2"))  # still checked against epoch 2
