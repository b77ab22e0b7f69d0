"""The client operations a peer coordinates, and their answers: what the public API (and the
simulator's clients) ask of a `PeerCore`, and what comes back.

Rules: an operation names its owner and carries an `op_id` unique among the operations in flight
on its peer; its answer carries the same `op_id`. A failed operation's answer names a `Failure`
and claims nothing (no tokens, no value). Values travel inside operations and answers but are
never part of their text: nothing here is logged.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenvault.quorum.effects import EpochDone, Failure, ReadDone, RingDone
from tokenvault.quorum.messages import EpochValue, Mapping, OwnerView
from tokenvault.ring.membership import AddMember, RemoveMember, ReplaceMember


@dataclass(frozen=True, slots=True, kw_only=True)
class Tokenize:
    """Tokens for (field, value) items of one owner, written to W replicas."""

    op_id: str
    owner: str
    items: tuple[tuple[str, str], ...]  # (field, value); may be empty: nothing to write


@dataclass(frozen=True, slots=True, kw_only=True)
class Detokenize:
    op_id: str
    owner: str
    tokens: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class LearnEpoch:
    """The owner's active epoch per a majority of its replicas (finishing half-done rounds)."""

    op_id: str
    owner: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RotateEpoch:
    op_id: str
    owner: str
    expected_epoch: int | None
    requested_at_s: float  # wall-clock seconds, recorded in the epoch's agreed value


@dataclass(frozen=True, slots=True, kw_only=True)
class InspectOwner:
    """Every replica's own view of the owner that answers within `inspect_timeout_s`; the
    answer comes as soon as every replica not held down answered."""

    op_id: str
    owner: str


ClientOperation = Tokenize | Detokenize | LearnEpoch | RotateEpoch | InspectOwner


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeMembership:
    """An operator's change of the ring (docs/membership.md): proposed through this peer's ring
    register, answered by a `RingDone` (changed, already, refused, timeout, contended). Not an
    owner's operation: it has no owner."""

    op_id: str
    change: AddMember | RemoveMember | ReplaceMember


@dataclass(frozen=True, slots=True, kw_only=True)
class Tokenized:
    """A tokenize's answer: the epoch its tokens were computed under, the token of each item
    (in order) and the distinct mappings written; or the failure of its last attempt."""

    op_id: str
    owner: str
    epoch: EpochValue | None
    tokens: tuple[str, ...]
    mappings: tuple[Mapping, ...]
    failure: Failure | None
    writes: int  # write attempts it took


@dataclass(frozen=True, slots=True, kw_only=True)
class Inspected:
    op_id: str
    owner: str
    views: dict[str, OwnerView]  # by replica; replicas that did not answer are missing
    failure: Failure | None = None


ClientAnswer = Tokenized | ReadDone | EpochDone | Inspected | RingDone


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenizeAttempt:
    """One write a tokenize attempted (observable: which tokens it may have stored)."""

    client_op: str
    op_id: str  # the coordinator's operation
    peer: str
    at_s: float
    epoch: EpochValue
    mappings: tuple[Mapping, ...]


def failed_answer(
    operation: ClientOperation,
    failure: Failure,
    epoch: EpochValue | None = None,
    writes: int = 0,
) -> ClientAnswer:
    """The answer of a client operation that failed."""
    op_id, owner = operation.op_id, operation.owner
    if isinstance(operation, Tokenize):
        return Tokenized(
            op_id=op_id,
            owner=owner,
            epoch=epoch,
            tokens=(),
            mappings=(),
            failure=failure,
            writes=writes,
        )
    if isinstance(operation, Detokenize):
        return ReadDone(op_id=op_id, owner=owner, mappings=(), failure=failure)
    if isinstance(operation, InspectOwner):
        return Inspected(op_id=op_id, owner=owner, views={}, failure=failure)
    return EpochDone(op_id=op_id, owner=owner, value=None, rotated=False, failure=failure)
