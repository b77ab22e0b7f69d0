"""Messages between peers and the records they carry.

Rules:
- Every message is one-way: a reply is a message of its own, matched to its request by `op_id`.
- Messages are frozen, slotted, keyword-only dataclasses that validate themselves on creation, so a
  core never sees a malformed one (the wire codec builds them and turns ValueError into a refusal).
- A `Mapping` is the unit of insert-once storage: (owner, token) -> (value, field, epoch). It is
  written once and never changed; two mappings are identical when all their fields are equal.
  It is a validated named tuple (keyword-only like the messages), built faster than a dataclass.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

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


class _MappingFields(NamedTuple):
    owner: str
    token: str
    value: str
    field: str
    epoch: int


class Mapping(_MappingFields):
    """(owner, token) -> (value, field, epoch), validated on creation, immutable, equal and
    hashed by its fields (so also equal to a plain tuple of them). A named tuple, not a frozen
    dataclass: a replica builds one per mapping of every peer batch, and this builds in two
    thirds of the time (measured)."""

    __slots__ = ()

    def __new__(cls, *, owner: str, token: str, value: str, field: str, epoch: int) -> Mapping:
        _check_owner(owner)
        if not 0 < len(token) <= TOKEN_LENGTH_MAX:
            raise ValueError("mapping token must be 1-64 characters")
        if not 0 < len(field) <= FIELD_NAME_LENGTH_MAX or not field.isascii():
            raise ValueError("mapping field must be 1-64 ASCII characters")
        if not 1 <= epoch <= EPOCH_MAX:
            raise ValueError("mapping epoch out of range")
        return tuple.__new__(cls, (owner, token, value, field, epoch))


def highest_epoch(mappings: Iterable[Mapping]) -> int:
    """The epoch a log line about these mappings names; 0 for none."""
    return max((m.epoch for m in mappings), default=0)


class InsertOutcome(enum.Enum):
    """A replica's durable answer to one insert."""

    STORED = "stored"  # newly written and fsync'd
    IDENTICAL = "identical"  # already held, identical: an idempotent retry
    CONFLICT = "conflict"  # a different mapping under the same token: integrity alarm
    FENCED = "fenced"  # refused: this replica accepted or learned a later epoch for the owner

    @property
    def is_durable_ack(self) -> bool:
        return self is InsertOutcome.STORED or self is InsertOutcome.IDENTICAL


@dataclass(frozen=True, slots=True, kw_only=True)
class InsertRequest:
    """Coordinator -> replica: store these mappings of one owner, insert-once.

    A tokenize is fenced by the owner's epoch; a repair (read repair, later hints and
    anti-entropy) copies mappings that already exist and is never fenced."""

    op_id: str
    owner: str
    mappings: tuple[Mapping, ...]
    repair: bool = False

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

    @property
    def epoch(self) -> int:
        """The highest epoch of its mappings (one for a tokenize; a repair may mix epochs)."""
        return highest_epoch(self.mappings)


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


# -- epochs: single-decree Paxos per (owner, slot); slot e decides epoch e ---------------------

GENESIS_EPOCH = 1


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Ballot:
    """Unique and totally ordered: (round, proposer). The proposer is the id of the operation
    that prepares (unique across peers, operations and restarts). Ballot() is below all."""

    round: int = 0
    peer: str = ""

    def __post_init__(self) -> None:
        if self.round < 0 or (self.round > 0) != bool(self.peer):
            raise ValueError("a ballot has a round >= 1 and a peer, or is the zero ballot")


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochValue:
    """What one Paxos instance decides: an epoch and the parameters its token key derives from."""

    epoch: int
    salt: str  # hex, chosen by the proposer; "" for the genesis epoch
    requested_by: str  # the request id of the rotate that proposed it
    requested_at_s: float  # the proposer's wall clock (UNIX seconds) when it proposed

    def __post_init__(self) -> None:
        if not GENESIS_EPOCH <= self.epoch <= EPOCH_MAX:
            raise ValueError("epoch out of range")
        if len(self.salt) > 64 or not all(c in "0123456789abcdef" for c in self.salt):
            raise ValueError("epoch salt must be at most 64 lowercase hex characters")
        if (self.epoch == GENESIS_EPOCH) != (not self.salt):
            raise ValueError("only the genesis epoch has no salt")


ZERO_BALLOT = Ballot()
GENESIS = EpochValue(epoch=GENESIS_EPOCH, salt="", requested_by="", requested_at_s=0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochQuery:
    """Learner -> acceptor: what have you decided and accepted for this owner? Changes nothing."""

    op_id: str
    owner: str

    def __post_init__(self) -> None:
        _check_owner(self.owner)


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochReport:
    """Acceptor -> learner: its highest decided epoch and highest slot with an accepted value."""

    op_id: str
    owner: str
    decided: EpochValue
    accepted_slot: int

    def __post_init__(self) -> None:
        _check_owner(self.owner)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare:
    op_id: str
    owner: str
    slot: int
    ballot: Ballot

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if not GENESIS_EPOCH < self.slot <= EPOCH_MAX or self.ballot.round < 1:
            raise ValueError("prepare needs a slot above genesis and a real ballot")


@dataclass(frozen=True, slots=True, kw_only=True)
class Promise:
    """Acceptor -> proposer. `granted` false means `promised` outranks the ballot asked, or the
    slot is already decided here (`decided` then carries the value)."""

    op_id: str
    owner: str
    slot: int
    ballot: Ballot
    granted: bool
    promised: Ballot
    accepted_ballot: Ballot | None
    accepted_value: EpochValue | None
    decided: EpochValue | None

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if (self.accepted_ballot is None) != (self.accepted_value is None):
            raise ValueError("an accepted value comes with its ballot")


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    op_id: str
    owner: str
    slot: int
    ballot: Ballot
    value: EpochValue

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if self.value.epoch != self.slot or self.ballot.round < 1:
            raise ValueError("accept: the value's epoch is its slot, with a real ballot")


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted:
    op_id: str
    owner: str
    slot: int
    ballot: Ballot
    granted: bool
    promised: Ballot
    decided: EpochValue | None

    def __post_init__(self) -> None:
        _check_owner(self.owner)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decide:
    """Proposer -> every replica: this value was chosen for its slot (a majority accepted it)."""

    op_id: str
    owner: str
    value: EpochValue

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if self.value.epoch <= GENESIS_EPOCH:
            raise ValueError("the genesis epoch is never decided by a round")


# -- inspection ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerInspect:
    """Admin view: a replica's own state for one owner. Changes nothing."""

    op_id: str
    owner: str

    def __post_init__(self) -> None:
        _check_owner(self.owner)


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerView:
    op_id: str
    owner: str
    token_count: int
    digest: str  # hex root of the owner's digest tree (merkle.py: 128-bit BLAKE2b)
    complete: bool  # False when the scan stopped at its bound: count and digest are partial
    decided: EpochValue  # the highest epoch decided here: the active one
    accepted_slot: int
    next_slot_promised: Ballot
    next_slot_accepted: Ballot | None

    def __post_init__(self) -> None:
        _check_owner(self.owner)


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """Peer -> peer, every heartbeat interval: a sign of life for the failure detector."""

    sender: str

    @property
    def op_id(self) -> str:
        return ""


# -- anti-entropy ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AeSummary:
    """Initiator -> partner: my digest leaves and decided epoch for one owner."""

    op_id: str
    owner: str
    leaves: tuple[str, ...]  # hex, one per bucket
    count: int
    decided: EpochValue

    def __post_init__(self) -> None:
        _check_owner(self.owner)


@dataclass(frozen=True, slots=True, kw_only=True)
class AeSummaryReply:
    """Partner -> initiator: the buckets whose leaves differ, and the partner's decided epoch."""

    op_id: str
    owner: str
    differing: tuple[int, ...]
    decided: EpochValue

    def __post_init__(self) -> None:
        _check_owner(self.owner)


@dataclass(frozen=True, slots=True, kw_only=True)
class AeKeys:
    """Initiator -> partner: my tokens (with record hashes) in one window of one bucket:
    after `start_after` (or the bucket's start) up to `last` inclusive (or the bucket's end)."""

    op_id: str
    owner: str
    bucket: int
    start_after: str | None
    last: str | None
    entries: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        _check_owner(self.owner)


@dataclass(frozen=True, slots=True, kw_only=True)
class AeKeysReply:
    """Partner -> initiator: the tokens of the window the partner lacks (the initiator pushes
    them); the partner pushes what the initiator lacks on its own."""

    op_id: str
    owner: str
    bucket: int
    missing: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_owner(self.owner)


AntiEntropyMessage = AeSummary | AeSummaryReply | AeKeys | AeKeysReply
AcceptorMessage = EpochQuery | Prepare | Accept | Decide
ProposerMessage = EpochReport | Promise | Accepted
Message = (
    InsertRequest
    | InsertReply
    | ReadRequest
    | ReadReply
    | AcceptorMessage
    | ProposerMessage
    | OwnerInspect
    | OwnerView
    | Heartbeat
    | AntiEntropyMessage
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A message on its way from one peer to another (source may equal destination)."""

    source: str
    destination: str
    message: Message
