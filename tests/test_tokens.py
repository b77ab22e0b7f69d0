"""Deterministic tokens: same inputs same token, any input changed another token, fixed format."""

from __future__ import annotations

import base64
import hashlib
import hmac
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenvault.tokens import (
    TOKEN_LENGTH,
    TOKEN_PREFIX,
    derive_epoch_key,
    derive_peer_key,
    hash_api_key,
    is_well_formed_token,
    make_token,
)

SECRET = b"cluster-secret-0123456789abcdef"
URLSAFE = frozenset(string.ascii_letters + string.digits + "-_")


def token(
    *,
    secret: bytes = SECRET,
    owner: str = "acme",
    epoch: int = 1,
    salt: bytes = b"",
    field: str = "card",
    value: str = "4111111111111111",
) -> str:
    return make_token(derive_epoch_key(secret, owner, epoch, salt), field, value)


def test_same_inputs_same_token() -> None:
    assert token() == token()
    assert derive_epoch_key(SECRET, "acme", 3, b"s") == derive_epoch_key(SECRET, "acme", 3, b"s")


def test_known_answer() -> None:
    """An independent statement of the derivation: a change to it breaks every stored token."""
    key = hmac.new(SECRET, b"tokenvault/epoch-key/v1\x00acme\x001\x00", hashlib.sha256).digest()
    digest = hmac.new(key, b"card\x004111111111111111", hashlib.sha256).digest()
    expected = "tok_" + base64.urlsafe_b64encode(digest[:24]).decode()
    assert token() == expected


@pytest.mark.parametrize(
    "changed",
    [
        {"owner": "acme2"},
        {"owner": "acm"},
        {"epoch": 2},
        {"epoch": 11},
        {"field": "iban"},
        {"field": "card "},
        {"value": "4111111111111112"},
        {"value": "4111111111111111 "},
        {"value": ""},
        {"salt": b"\x00"},
        {"salt": b"epoch-salt"},
        {"secret": b"another-secret"},
    ],
    ids=lambda changed: next(iter(changed)) + "=" + repr(next(iter(changed.values()))),
)
def test_any_changed_input_gives_another_token(changed: dict[str, object]) -> None:
    assert token(**changed) != token()  # type: ignore[arg-type]


def test_epoch_and_owner_boundaries_do_not_run_together() -> None:
    # owner "a1" epoch 1 vs owner "a" epoch 11: the separators keep them apart
    assert token(owner="a1", epoch=1) != token(owner="a", epoch=11)
    assert token(owner="a", epoch=1, salt=b"1") != token(owner="a", epoch=11)


def test_field_and_value_swap_gives_another_token() -> None:
    assert token(field="abc", value="def") != token(field="def", value="abc")
    assert token(field="ab", value="cdef") != token(field="abcd", value="ef")


@pytest.mark.parametrize("value", ["", "x", "4111111111111111", "ü" * 1000, "a\nb\x00c"])
def test_format(value: str) -> None:
    t = token(value=value)
    assert t.startswith(TOKEN_PREFIX) and t.startswith("tok_")
    body = t[len("tok_") :]
    assert len(body) == 32
    assert set(body) <= URLSAFE
    assert len(t) == TOKEN_LENGTH == 36 <= 64
    assert is_well_formed_token(t)


@settings(max_examples=200, deadline=None)
@given(
    owner=st.text(alphabet=string.ascii_letters + string.digits + "_-.", min_size=1, max_size=64),
    epoch=st.integers(min_value=1, max_value=10**6),
    field=st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=20),
    value=st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=200),
    salt=st.binary(max_size=16),
)
def test_format_and_secrecy_property(
    owner: str, epoch: int, field: str, value: str, salt: bytes
) -> None:
    t = token(owner=owner, epoch=epoch, field=field, value=value, salt=salt)
    assert is_well_formed_token(t)
    assert t == token(owner=owner, epoch=epoch, field=field, value=value, salt=salt)
    if len(value) >= 8:  # shorter strings may turn up in 32 random characters by chance
        assert value not in t[len(TOKEN_PREFIX) :]
    assert t != token(owner=owner, epoch=epoch, field=field, value=value + "x", salt=salt)


def test_token_does_not_contain_the_value() -> None:
    for value in ["4111111111111111", "tok_", "secret", "AAAAAAAA", "john.doe@example.com"]:
        t = token(value=value)
        assert value not in t[len(TOKEN_PREFIX) :]
    value = "4111111111111111"
    t = token(value=value)
    for start in range(len(value) - 5):
        assert value[start : start + 6] not in t


def test_tokens_do_not_collide_on_many_values() -> None:
    tokens = {token(value=str(n)) for n in range(5000)}
    assert len(tokens) == 5000


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "tok_",
        "tok_" + "A" * 31,
        "tok_" + "A" * 33,
        "tok_" + "A" * 31 + "=",
        "tok_" + "A" * 31 + "+",
        "tok_" + "A" * 31 + "/",
        "tok_" + "A" * 31 + " ",
        "tok_" + "A" * 31 + "\n",
        "TOK_" + "A" * 32,
        "tk_" + "A" * 33,
        "xok_" + "A" * 32,
        " tok_" + "A" * 31,
        "tok_" + "A" * 32 + "\n",
        "tok_" + "Ä" * 32,
        "tok_" + "٣" * 32,  # Unicode digits are not URL-safe base64
        "A" * 36,
    ],
)
def test_malformed_strings_are_not_tokens(candidate: str) -> None:
    assert not is_well_formed_token(candidate)


@pytest.mark.parametrize("body", ["A" * 32, "-" * 32, "_" * 32, "aZ09-_" * 5 + "xy"])
def test_well_formed_bodies(body: str) -> None:
    assert is_well_formed_token("tok_" + body)


@given(st.text(max_size=80))
def test_well_formed_agrees_with_a_reference(candidate: str) -> None:
    reference = (
        len(candidate) == 36
        and candidate.startswith("tok_")
        and all(c in URLSAFE for c in candidate[4:])
    )
    assert is_well_formed_token(candidate) == reference


def test_each_peer_has_its_own_key_from_the_secret_and_its_id() -> None:
    n1 = derive_peer_key(SECRET, "n1")
    assert n1 == derive_peer_key(SECRET, "n1") and len(n1) == 32
    assert n1 != derive_peer_key(SECRET, "n2") != derive_peer_key(SECRET, "n11")
    assert n1 != derive_peer_key(b"other", "n1")
    # labelled: neither the secret itself nor another key the secret derives
    assert n1 not in (
        SECRET,
        derive_epoch_key(SECRET, "acme", 1),
        derive_epoch_key(SECRET, "n1", 1),
    )
    expected = hmac.new(SECRET, b"tokenvault/peer-key/v2\x00n1", hashlib.sha256).digest()
    assert n1 == expected


def test_api_key_hash() -> None:
    assert hash_api_key("k") == hashlib.sha256(b"k").hexdigest() != hash_api_key("k2")
