"""The typed answers of the API, as docs/api.md and docs/openapi.yaml give their shapes.

Rules:
- One frozen msgspec Struct per answer; `decode_answer` checks a peer's JSON against it and
  raises BadAnswer (never a KeyError or a TypeError) for anything else. Fields the API may add
  later are ignored; fields it documents are required unless marked optional here.
- Records are plain dicts: a record holds whatever fields the caller sent.
- `fields_left` (tokenize) names the fields of the request that the owner has not configured,
  which the peer sent back as given: empty when every field was tokenized. A peer that does not
  send it yet gives the empty tuple.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

from tokenvault.client.errors import BadAnswer

__all__ = [
    "Epoch",
    "Member",
    "Members",
    "MembersChanged",
    "OwnerPlacement",
    "PeerAddress",
    "Ring",
    "RingPeer",
    "Rotated",
    "TokenLookup",
    "TokenMapping",
    "Tokenized",
    "TokenizedMany",
    "decode_answer",
]


class Tokenized(msgspec.Struct, frozen=True, kw_only=True):
    """POST /v1/tokenize: the records in order, tokens in place of the configured fields."""

    epoch: int
    records: list[dict[str, Any]]
    fields_left: tuple[str, ...] = ()


class TokenizedMany(msgspec.Struct, frozen=True, kw_only=True):
    """tokenize_many: every record in order, over requests of at most 1,000 records each."""

    records: list[dict[str, Any]]
    epochs: tuple[int, ...]  # each request's epoch, in order (a rotate between them shows here)
    fields_left: tuple[str, ...]  # the union over the requests, sorted


class TokenLookup(msgspec.Struct, frozen=True, kw_only=True):
    """One result of POST /v1/detokenize; value, field and epoch are None when not found."""

    token: str
    found: bool
    value: str | None = None
    field: str | None = None
    epoch: int | None = None


class TokenMapping(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/tokens/{token}."""

    token: str
    value: str
    field: str
    epoch: int


class Epoch(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/epoch."""

    owner: str
    epoch: int


class Rotated(msgspec.Struct, frozen=True, kw_only=True):
    """POST /v1/epoch/rotate: `rotated` is False when expected_epoch was no longer active."""

    owner: str
    epoch: int
    rotated: bool


class RingPeer(msgspec.Struct, frozen=True, kw_only=True, rename={"is_self": "self"}):
    id: str
    address: str
    state: Literal["up", "suspect", "down"]
    for_s: float
    last_heard_s_ago: float | None = None
    is_self: bool = False  # "self" in the answer: the peer that answered


class Ring(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/ring, as the peer that answered (`peer`) sees it."""

    peer: str
    version: str
    replicas: int
    write_quorum: int
    read_quorum: int
    vnodes_per_peer: int
    peers: tuple[RingPeer, ...]


class PeerAddress(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    address: str


class OwnerPlacement(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/ring/owners/{owner}: the owner's ring position and its N replicas, in order."""

    owner: str
    position: int
    ring_version: str
    preference_list: tuple[PeerAddress, ...]


class Member(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    address: str
    state: Literal["active", "joining", "leaving"]


class Members(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/admin/members: the ring as the peer that answered learned it."""

    version: int
    stable: bool
    members: tuple[Member, ...]
    transfers: tuple[dict[str, Any], ...]
    drained: bool = True  # stable, and every peer of the last change learned it
    drops: tuple[dict[str, Any], ...] = ()  # owners this peer holds but no longer replicates


class MembersChanged(msgspec.Struct, frozen=True, kw_only=True):
    """POST /v1/admin/members: the version learned once the change was decided (its joint
    version), `outcome` "changed" or "already" (the change was in: a retry)."""

    version: int
    outcome: Literal["changed", "already"]
    stable: bool
    members: tuple[Member, ...]
    moved_owners: tuple[str, ...]


class _Detokenized(msgspec.Struct, frozen=True, kw_only=True):
    results: list[TokenLookup]


AnswerT = TypeVar("AnswerT")


def decode_answer(answer: Any, peer: str, kind: type[AnswerT]) -> AnswerT:
    """The JSON `answer` as `kind`; BadAnswer naming the peer when it does not fit."""
    try:
        return msgspec.convert(answer, kind, strict=True)
    except msgspec.ValidationError as error:
        raise BadAnswer(f"the answer does not fit {kind.__name__}: {error}", peer=peer) from None


def decode_lookups(answer: Any, peer: str) -> list[TokenLookup]:
    """POST /v1/detokenize's results."""
    return decode_answer(answer, peer, _Detokenized).results
