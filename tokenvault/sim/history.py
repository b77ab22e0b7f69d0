"""The history of a run: every client attempt, from invocation to its outcome, on virtual time.

Rules:
- One `Operation` per attempt: a retry is a new operation that names the attempt it repeats.
- An operation is invoked once and completed at most once: ok, fail (the peer said it failed,
  or refused it) or indeterminate (a timeout or a reset: it may or may not have happened).
- When a client receives a successful answer, the runner notes how many replicas durably held
  each mapping the answer shows (`copies_at_answer`): the checker holds that to W.
- A tokenize names its (field, value) items; the peer computes the tokens, so `mappings` holds
  what an ok answer showed (the tokens of failed attempts are the observer's to know). Its
  answered epoch, an epoch read's and a rotate's (with `rotated`) are `epoch_value`. A rotate
  names the epoch it expects (or none), and the burst of concurrent rotates it was part of.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from tokenvault.quorum.messages import EpochValue, Mapping
from tokenvault.sim.network import describe_value, short_token


class OperationKind(enum.Enum):
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"
    CHECK = "check"  # the liveness phase's detokenize of every acknowledged token
    EPOCH = "epoch"  # an epoch read (a learn)
    ROTATE = "rotate"


class Outcome(enum.Enum):
    PENDING = "pending"
    OK = "ok"
    FAIL = "fail"
    INDETERMINATE = "indeterminate"


@dataclass(slots=True, kw_only=True)
class Operation:
    op_id: str
    client: str
    kind: OperationKind
    owner: str
    peer: str
    attempt: int  # 1 for the first attempt
    invoke_s: float
    items: tuple[tuple[str, str], ...] = ()  # a tokenize's input: (field, value)
    mappings: tuple[Mapping, ...] = ()  # what a tokenize's ok answer showed
    tokens: tuple[str, ...] = ()  # a detokenize's input
    expected_epoch: int | None = None  # a rotate's
    group: str = ""  # the burst of concurrent rotates this one belongs to
    complete_s: float | None = None
    outcome: Outcome = Outcome.PENDING
    reason: str = ""  # why it failed or is indeterminate
    found: tuple[Mapping | None, ...] = ()  # a detokenize's answer, in the order of tokens
    copies_at_answer: tuple[int, ...] = field(default=())  # durable copies per shown mapping
    epoch_value: EpochValue | None = None  # the epoch an ok tokenize, epoch read or rotate gave
    rotated: bool = False  # a rotate's answer: its own value was chosen

    @property
    def is_read(self) -> bool:
        return self.kind in (OperationKind.DETOKENIZE, OperationKind.CHECK)

    @property
    def epoch(self) -> int | None:
        return None if self.epoch_value is None else self.epoch_value.epoch

    def describe(self) -> str:
        end = "..." if self.complete_s is None else f"{self.complete_s:.6f}"
        head = (
            f"op {self.op_id} {self.kind.value} {self.owner} via {self.peer}"
            f" attempt {self.attempt} [{self.invoke_s:.6f} -> {end}] {self.outcome.value}"
        )
        if self.reason:
            head += f" ({self.reason})"
        if self.kind is OperationKind.TOKENIZE:
            if self.mappings:
                body = ",".join(f"{short_token(m.token)}={m.value}" for m in self.mappings)
            else:
                body = ",".join(f"{f}:{v}" for f, v in self.items)
            if self.epoch_value is not None:
                body += f" epoch {self.epoch}"
        elif self.kind in (OperationKind.EPOCH, OperationKind.ROTATE):
            body = "" if self.kind is OperationKind.EPOCH else f"expected={self.expected_epoch}"
            if self.group:
                body += f" burst={self.group}"
            if self.epoch_value is not None:
                body += f" -> {describe_value(self.epoch_value)}"
                if self.kind is OperationKind.ROTATE:
                    body += " rotated" if self.rotated else " not-rotated"
            body = body.strip()
        elif self.outcome is Outcome.OK:
            body = ",".join(
                f"{short_token(t)}={'-' if m is None else m.value}"
                for t, m in zip(self.tokens, self.found, strict=True)
            )
        else:
            body = ",".join(short_token(t) for t in self.tokens)
        return f"{head} [{body}]"


class History:
    def __init__(self) -> None:
        self._operations: dict[str, Operation] = {}

    def __iter__(self) -> Iterator[Operation]:
        return iter(self._operations.values())

    def __len__(self) -> int:
        return len(self._operations)

    def get(self, op_id: str) -> Operation:
        return self._operations[op_id]

    def invoke(self, operation: Operation) -> Operation:
        assert operation.op_id not in self._operations, "operation ids are unique"
        assert operation.outcome is Outcome.PENDING
        self._operations[operation.op_id] = operation
        return operation

    def complete(
        self,
        op_id: str,
        *,
        at_s: float,
        outcome: Outcome,
        reason: str = "",
        found: tuple[Mapping | None, ...] = (),
        copies_at_answer: tuple[int, ...] = (),
        mappings: tuple[Mapping, ...] | None = None,
        epoch_value: EpochValue | None = None,
        rotated: bool = False,
    ) -> Operation:
        operation = self._operations[op_id]
        assert operation.outcome is Outcome.PENDING, "an operation completes once"
        assert outcome is not Outcome.PENDING
        operation.complete_s = at_s
        operation.outcome = outcome
        operation.reason = reason
        operation.found = found
        operation.copies_at_answer = copies_at_answer
        if mappings is not None:
            operation.mappings = mappings
        operation.epoch_value = epoch_value
        operation.rotated = rotated
        return operation

    def pending(self) -> list[Operation]:
        return [op for op in self._operations.values() if op.outcome is Outcome.PENDING]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for op in self._operations.values() if op.outcome is outcome)
