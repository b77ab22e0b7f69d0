"""Concurrent client reads and writes of one owner, merged into fewer core operations.

Under load, most of a peer's work is per operation, not per mapping: a message to each replica
and back, a core call at each end, a held output, a log line. A peer that answers many small
concurrent requests for one owner does them as one operation each only while few are in flight.

Rules:
- A lane per (kind, owner), kind Tokenize or Detokenize; nothing else is merged (epochs, rotations
  and inspections go straight through).
- An operation starts at once, alone, while its lane has fewer than `in_flight_max` operations in
  flight and nobody waits in it: a lightly loaded peer adds no latency and merges nothing.
- Otherwise it waits in the lane. When an operation of the lane ends, the operations waiting in
  it start together as one (in arrival order, at most `items_max` items, but always at least the
  first): their items (a tokenize's (field, value) pairs, a detokenize's tokens, repeated ones
  once) under one new op_id. The first of the group performs it in its own task and hands each
  of the others its share; no task is spawned.
- Each one's answer is exactly what it would have got alone: a tokenize its own tokens in its
  own order (tokens are deterministic: the same value gives the same token, merged or not) and
  the mappings written for them; a detokenize its own tokens' mappings in its order. A failure
  of the merged operation is the failure of each: it claims nothing for any of them.
- A merged tokenize is safe: mappings are insert-once, and each request's mappings are written to
  W replicas before any of its tokens is answered, as alone. Isolation holds: a lane is one owner.
- If the task performing a merged operation is cancelled before its answer, the others of its
  group fail (Failure.INTERNAL_ERROR) instead of waiting forever; a waiting one that is cancelled
  leaves its items in the group (harmless: writes are idempotent, reads have no effect).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import trio

from tokenvault.quorum.client_operations import (
    ClientAnswer,
    ClientOperation,
    Detokenize,
    Tokenize,
    Tokenized,
    failed_answer,
)
from tokenvault.quorum.effects import Failure, ReadDone
from tokenvault.quorum.messages import Mapping

IN_FLIGHT_MAX = 2  # operations of one lane in flight before requests start to be merged
ITEMS_MAX = 1_000  # items of a merged operation (a single larger request still goes alone)

Mergeable = Tokenize | Detokenize


@dataclass(eq=False)
class _Waiting:
    operation: Mergeable
    woken: trio.Event = field(default_factory=trio.Event)
    group: list[_Waiting] | None = None  # set on the one that performs its group
    answer: ClientAnswer | None = None


@dataclass
class _Lane:
    in_flight: int = 0
    waiting: list[_Waiting] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CoalescingStatistics:
    operations: int  # core operations performed for mergeable requests
    merged_requests: int  # requests that went in an operation with others


class Coalescer:
    def __init__(
        self,
        perform: Callable[[ClientOperation], Awaitable[ClientAnswer]],
        new_op_id: Callable[[], str],
        *,
        in_flight_max: int = IN_FLIGHT_MAX,
        items_max: int = ITEMS_MAX,
    ) -> None:
        if in_flight_max < 1 or items_max < 1:
            raise ValueError("in_flight_max and items_max must be at least 1")
        self._perform = perform
        self._new_op_id = new_op_id
        self._in_flight_max = in_flight_max
        self._items_max = items_max
        self._lanes: dict[tuple[type, str], _Lane] = {}
        self._operations = 0
        self._merged_requests = 0

    def statistics(self) -> CoalescingStatistics:
        return CoalescingStatistics(self._operations, self._merged_requests)

    async def perform(self, operation: ClientOperation) -> ClientAnswer:
        """The operation's answer; a tokenize or detokenize possibly merged with others."""
        if not isinstance(operation, Tokenize | Detokenize):
            return await self._perform(operation)
        key = (type(operation), operation.owner)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if lane.in_flight < self._in_flight_max and not lane.waiting:
            lane.in_flight += 1
            try:
                self._operations += 1
                return await self._perform(operation)
            finally:
                self._operation_ended(key, lane)
        waiting = _Waiting(operation)
        lane.waiting.append(waiting)
        await waiting.woken.wait()
        if waiting.group is None:
            assert waiting.answer is not None
            return waiting.answer
        try:
            return await self._perform_group(waiting.group)
        finally:
            self._operation_ended(key, lane)

    def _operation_ended(self, key: tuple[type, str], lane: _Lane) -> None:
        lane.in_flight -= 1
        if lane.waiting:
            group = self._take_group(lane)
            lane.in_flight += 1
            group[0].group = group
            group[0].woken.set()
        elif lane.in_flight == 0:
            del self._lanes[key]  # no lane outlives its last operation

    def _take_group(self, lane: _Lane) -> list[_Waiting]:
        taken, items = 0, 0
        for waiting in lane.waiting:
            size = _items_of(waiting.operation)
            if taken and items + size > self._items_max:
                break
            taken += 1
            items += size
        group, lane.waiting = lane.waiting[:taken], lane.waiting[taken:]
        return group

    async def _perform_group(self, group: list[_Waiting]) -> ClientAnswer:
        """Performs a group's operation (the caller is its first); answers the others."""
        self._operations += 1
        first = group[0].operation
        if len(group) == 1:
            return await self._perform(first)
        self._merged_requests += len(group)
        answered = False
        try:
            merged = self._merge([w.operation for w in group])
            answer = await self._perform(merged)
            offset = 0
            shares: list[ClientAnswer] = []
            for waiting in group:
                shares.append(_share(answer, waiting.operation, offset))
                offset += _items_of(waiting.operation)
            for waiting, share in zip(group[1:], shares[1:], strict=True):
                waiting.answer = share
                waiting.woken.set()
            answered = True
            return shares[0]
        finally:
            if not answered:  # cancelled or failed: the others must not wait forever
                for waiting in group[1:]:
                    if not waiting.woken.is_set():
                        waiting.answer = failed_answer(waiting.operation, Failure.INTERNAL_ERROR)
                        waiting.woken.set()

    def _merge(self, operations: list[Mergeable]) -> Mergeable:
        """One operation of a group's (a lane holds one kind and one owner)."""
        first = operations[0]
        op_id = self._new_op_id()
        if isinstance(first, Tokenize):
            tokenizes = [o for o in operations if isinstance(o, Tokenize)]
            assert len(tokenizes) == len(operations), "a lane holds one kind"
            items = tuple(item for o in tokenizes for item in o.items)
            return Tokenize(op_id=op_id, owner=first.owner, items=items)
        reads = [o for o in operations if isinstance(o, Detokenize)]
        assert len(reads) == len(operations), "a lane holds one kind"
        tokens = tuple(dict.fromkeys(t for o in reads for t in o.tokens))
        return Detokenize(op_id=op_id, owner=first.owner, tokens=tokens)


def _share(answer: ClientAnswer, operation: Mergeable, offset: int) -> ClientAnswer:
    """One request's share of its merged operation's answer (module rules); a tokenize's items
    are the merged items from `offset` on."""
    if isinstance(operation, Tokenize):
        assert isinstance(answer, Tokenized)
        if answer.failure is not None:
            return failed_answer(operation, answer.failure, answer.epoch, answer.writes)
        tokens = answer.tokens[offset : offset + len(operation.items)]
        wanted = set(tokens)
        return replace(
            answer,
            op_id=operation.op_id,
            tokens=tokens,
            mappings=tuple(m for m in answer.mappings if m.token in wanted),
        )
    assert isinstance(answer, ReadDone)
    if answer.failure is not None:
        return failed_answer(operation, answer.failure)
    found: dict[str, Mapping] = {m.token: m for m in answer.mappings if m is not None}
    return replace(
        answer, op_id=operation.op_id, mappings=tuple(found.get(t) for t in operation.tokens)
    )


def _items_of(operation: Mergeable) -> int:
    return len(operation.items) if isinstance(operation, Tokenize) else len(operation.tokens)
