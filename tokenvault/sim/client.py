"""What a simulated client sends to a peer and receives back, and the secret of the simulated
cluster (so the checker and the workload can compute the tokens a tokenize must give).

Rules: a request is well-formed on creation; an answer is one of the peer core's answers, or
`Refused` (the peer was down: nothing happened) or `Reset` (the peer crashed with the operation
in flight: it may or may not have happened). `describe_answer` is a canonical text of an answer.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass

from tokenvault.quorum.client_operations import (
    ClientOperation,
    Detokenize,
    LearnEpoch,
    RotateEpoch,
    Tokenize,
    Tokenized,
)
from tokenvault.quorum.effects import EpochDone, ReadDone
from tokenvault.sim.network import describe_value, short_token
from tokenvault.tokens import derive_epoch_key

SIM_SECRET = b"tokenvault-simulator-secret"  # the cluster secret of every simulated peer


@functools.lru_cache(maxsize=4096)
def epoch_key(owner: str, epoch: int, salt: str) -> bytes:
    """The token key of one epoch of an owner, as every simulated peer derives it."""
    return derive_epoch_key(SIM_SECRET, owner, epoch, bytes.fromhex(salt))


class RequestKind(enum.Enum):
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"
    EPOCH = "epoch"  # GET the owner's epoch: a learn
    ROTATE = "rotate"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRequest:
    """A request of the public API as a peer receives it: a tokenize of (field, value) items, a
    detokenize of tokens, an epoch read, or a rotate (with or without an expected epoch)."""

    op_id: str
    owner: str
    kind: RequestKind
    items: tuple[tuple[str, str], ...] = ()  # (field, value)
    tokens: tuple[str, ...] = ()
    expected_epoch: int | None = None

    def __post_init__(self) -> None:
        if bool(self.items) != (self.kind is RequestKind.TOKENIZE):
            raise ValueError("a tokenize, and only a tokenize, carries items")
        if bool(self.tokens) != (self.kind is RequestKind.DETOKENIZE):
            raise ValueError("a detokenize, and only a detokenize, carries tokens")
        if self.expected_epoch is not None and self.kind is not RequestKind.ROTATE:
            raise ValueError("only a rotate expects an epoch")


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """The peer was down: nothing happened."""

    op_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reset:
    """The peer crashed with the operation in flight: it may or may not have happened."""

    op_id: str


ClientAnswer = Tokenized | ReadDone | EpochDone | Refused | Reset
AnswerSink = Callable[[ClientAnswer], None]


def operation_of(request: ClientRequest, now_s: float) -> ClientOperation:
    """The peer core's operation for a client's request (a rotate is requested at `now_s`)."""
    op_id, owner = request.op_id, request.owner
    if request.kind is RequestKind.TOKENIZE:
        return Tokenize(op_id=op_id, owner=owner, items=request.items)
    if request.kind is RequestKind.DETOKENIZE:
        return Detokenize(op_id=op_id, owner=owner, tokens=request.tokens)
    if request.kind is RequestKind.EPOCH:
        return LearnEpoch(op_id=op_id, owner=owner)
    return RotateEpoch(
        op_id=op_id, owner=owner, expected_epoch=request.expected_epoch, requested_at_s=now_s
    )


def describe_answer(answer: ClientAnswer) -> str:
    """A canonical text of what a client received."""
    if isinstance(answer, Refused):
        return f"refused op={answer.op_id}"
    if isinstance(answer, Reset):
        return f"reset op={answer.op_id}"
    outcome = "ok" if answer.failure is None else answer.failure.value
    if isinstance(answer, Tokenized):
        epoch = "-" if answer.epoch is None else str(answer.epoch.epoch)
        tokens = ",".join(f"{short_token(m.token)}:{m.value}" for m in answer.mappings)
        return (
            f"tokenized op={answer.op_id} {outcome} epoch={epoch} writes={answer.writes} [{tokens}]"
        )
    if isinstance(answer, EpochDone):
        return (
            f"epoch-done op={answer.op_id} {outcome} value={describe_value(answer.value)}"
            f" rotated={int(answer.rotated)}"
        )
    found = ",".join(
        "-" if m is None else f"{short_token(m.token)}:{m.value}" for m in answer.mappings
    )
    return f"read-done op={answer.op_id} {outcome} [{found}]"
