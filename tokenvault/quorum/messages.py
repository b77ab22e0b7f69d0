"""Messages between peers and the records they carry.

Rules:
- Every message is one-way: a reply is a message of its own, matched to its request by `op_id`.
- Messages are frozen, slotted, keyword-only dataclasses that validate themselves on creation, so a
  core never sees a malformed one (the wire codec builds them and turns ValueError into a refusal).
- A `Mapping` is the unit of insert-once storage: (owner, token) -> (value, field, epoch). It is
  written once and never changed; two mappings are identical when all their fields are equal.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

OWNER_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
OWNER_ID_LENGTH_MAX = 64
TOKEN_LENGTH_MAX = 64
FIELD_NAME_LENGTH_MAX = 64
EPOCH_MAX = 2**32 - 1


@functools.lru_cache(maxsize=4096)
def is_valid_owner_id(owner: str) -> bool:
    return 0 < len(owner) <= OWNER_ID_LENGTH_MAX and all(c in OWNER_ID_CHARS for c in owner)


def _check_owner(owner: str) -> None:
    if not is_valid_owner_id(owner):
        raise ValueError("not a valid owner id")


@dataclass(frozen=True, slots=True, kw_only=True)
class Mapping:
    owner: str
    token: str
    value: str
    field: str
    epoch: int

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if not 0 < len(self.token) <= TOKEN_LENGTH_MAX:
            raise ValueError("mapping token must be 1-64 characters")
        if not 0 < len(self.field) <= FIELD_NAME_LENGTH_MAX or not self.field.isascii():
            raise ValueError("mapping field must be 1-64 ASCII characters")
        if not 1 <= self.epoch <= EPOCH_MAX:
            raise ValueError("mapping epoch out of range")


class InsertOutcome(enum.Enum):
    """A replica's durable answer to one insert."""

    STORED = "stored"  # newly written and fsync'd
    IDENTICAL = "identical"  # already held, identical: an idempotent retry
    CONFLICT = "conflict"  # a different mapping under the same token: integrity alarm

    @property
    def is_durable_ack(self) -> bool:
        return self is not InsertOutcome.CONFLICT


@dataclass(frozen=True, slots=True, kw_only=True)
class InsertRequest:
    """Coordinator -> replica: store these mappings of one owner, insert-once."""

    op_id: str
    owner: str
    mappings: tuple[Mapping, ...]

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if not self.mappings:
            raise ValueError("insert request carries no mapping")
        tokens = set()
        for mapping in self.mappings:
            if mapping.owner != self.owner:
                raise ValueError("insert request mixes owners")
            tokens.add(mapping.token)
        if len(tokens) != len(self.mappings):
            raise ValueError("insert request repeats a token")


@dataclass(frozen=True, slots=True, kw_only=True)
class InsertReply:
    """Replica -> coordinator: one outcome per mapping of the request, in its order."""

    op_id: str
    owner: str
    tokens: tuple[str, ...]
    outcomes: tuple[InsertOutcome, ...]

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if len(self.tokens) != len(self.outcomes):
            raise ValueError("insert reply: tokens and outcomes differ in length")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadRequest:
    """Coordinator -> replica: what do you hold for these tokens of one owner?"""

    op_id: str
    owner: str
    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if not self.tokens:
            raise ValueError("read request carries no token")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadReply:
    """Replica -> coordinator: the durable mapping for each token asked, or None."""

    op_id: str
    owner: str
    tokens: tuple[str, ...]
    mappings: tuple[Mapping | None, ...]

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if len(self.tokens) != len(self.mappings):
            raise ValueError("read reply: tokens and mappings differ in length")
        for token, mapping in zip(self.tokens, self.mappings, strict=True):
            if mapping is not None and (mapping.token != token or mapping.owner != self.owner):
                raise ValueError("read reply: a mapping does not match its token")


Message = InsertRequest | InsertReply | ReadRequest | ReadReply


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A message on its way from one peer to another (source may equal destination)."""

    source: str
    destination: str
    message: Message
