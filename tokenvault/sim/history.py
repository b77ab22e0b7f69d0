"""The history of a run: every client attempt, from invocation to its outcome, on virtual time.

Rules:
- One `Operation` per attempt: a retry is a new operation that names the attempt it repeats.
- An operation is invoked once and completed at most once: ok, fail (the peer said it failed,
  or refused it) or indeterminate (a timeout or a reset: it may or may not have happened).
- When a client receives a successful answer, the runner notes how many replicas durably held
  each mapping the answer shows (`copies_at_answer`): the checker holds that to W.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from tokenvault.quorum.messages import Mapping
from tokenvault.sim.network import short_token


class OperationKind(enum.Enum):
    TOKENIZE = "tokenize"
    DETOKENIZE = "detokenize"
    CHECK = "check"  # the liveness phase's detokenize of every acknowledged token


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
    mappings: tuple[Mapping, ...] = ()  # a tokenize's input
    tokens: tuple[str, ...] = ()  # a detokenize's input
    complete_s: float | None = None
    outcome: Outcome = Outcome.PENDING
    reason: str = ""  # why it failed or is indeterminate
    found: tuple[Mapping | None, ...] = ()  # a detokenize's answer, in the order of tokens
    copies_at_answer: tuple[int, ...] = field(default=())  # durable copies per shown mapping

    @property
    def is_read(self) -> bool:
        return self.kind is not OperationKind.TOKENIZE

    def describe(self) -> str:
        end = "..." if self.complete_s is None else f"{self.complete_s:.6f}"
        head = (
            f"op {self.op_id} {self.kind.value} {self.owner} via {self.peer}"
            f" attempt {self.attempt} [{self.invoke_s:.6f} -> {end}] {self.outcome.value}"
        )
        if self.reason:
            head += f" ({self.reason})"
        if self.kind is OperationKind.TOKENIZE:
            body = ",".join(f"{short_token(m.token)}={m.value}" for m in self.mappings)
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
    ) -> Operation:
        operation = self._operations[op_id]
        assert operation.outcome is Outcome.PENDING, "an operation completes once"
        assert outcome is not Outcome.PENDING
        operation.complete_s = at_s
        operation.outcome = outcome
        operation.reason = reason
        operation.found = found
        operation.copies_at_answer = copies_at_answer
        return operation

    def pending(self) -> list[Operation]:
        return [op for op in self._operations.values() if op.outcome is Outcome.PENDING]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for op in self._operations.values() if op.outcome is outcome)
