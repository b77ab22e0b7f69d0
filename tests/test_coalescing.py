"""Coalescer: concurrent tokenizes and detokenizes of one owner merged, each answered its share."""

from __future__ import annotations

import itertools

import pytest
import trio

from tokenvault.coalescing import Coalescer
from tokenvault.quorum.client_operations import (
    ClientAnswer,
    ClientOperation,
    Detokenize,
    LearnEpoch,
    Tokenize,
    Tokenized,
)
from tokenvault.quorum.effects import EpochDone, Failure, ReadDone
from tokenvault.quorum.messages import GENESIS, Mapping

HELD = {"alice": {"tok_a": "1", "tok_b": "2", "tok_c": "3"}}


def _token(field: str, value: str) -> str:
    return f"tok_{field}{value}"


class FakeVault:
    """Answers like a peer would, and records what it was asked; each call waits for `gate`."""

    def __init__(self, failure: Failure | None = None) -> None:
        self.calls: list[ClientOperation] = []
        self.gate = trio.Event()
        self.failure = failure

    async def perform(self, operation: ClientOperation) -> ClientAnswer:
        self.calls.append(operation)
        await self.gate.wait()
        if isinstance(operation, Tokenize):
            tokens = tuple(_token(f, v) for f, v in operation.items)
            mappings = {
                t: Mapping(owner=operation.owner, token=t, value=v, field=f, epoch=1)
                for t, (f, v) in zip(tokens, operation.items, strict=True)
            }
            return Tokenized(
                op_id=operation.op_id,
                owner=operation.owner,
                epoch=GENESIS,
                tokens=() if self.failure else tokens,
                mappings=() if self.failure else tuple(mappings.values()),
                failure=self.failure,
                writes=1,
            )
        if isinstance(operation, Detokenize):
            held = HELD.get(operation.owner, {})
            return ReadDone(
                op_id=operation.op_id,
                owner=operation.owner,
                mappings=()
                if self.failure
                else tuple(
                    Mapping(owner=operation.owner, token=t, value=held[t], field="f", epoch=1)
                    if t in held
                    else None
                    for t in operation.tokens
                ),
                failure=self.failure,
            )
        return EpochDone(
            op_id=operation.op_id, owner=operation.owner, value=GENESIS, rotated=False, failure=None
        )


def _coalescer(vault: FakeVault, **limits: int) -> Coalescer:
    ids = itertools.count(1)
    return Coalescer(vault.perform, lambda: f"merged-{next(ids)}", **limits)


async def _run_all(
    coalescer: Coalescer, vault: FakeVault, operations: list[ClientOperation]
) -> dict[str, ClientAnswer]:
    """Starts the operations in order, one scheduling round apart, then opens the gate."""
    answers: dict[str, ClientAnswer] = {}

    async def one(operation: ClientOperation) -> None:
        answers[operation.op_id] = await coalescer.perform(operation)

    async with trio.open_nursery() as nursery:
        for operation in operations:
            nursery.start_soon(one, operation)
            await trio.testing.wait_all_tasks_blocked()
        vault.gate.set()
    return answers


def _tokenize(op_id: str, *values: str, owner: str = "alice") -> Tokenize:
    return Tokenize(op_id=op_id, owner=owner, items=tuple(("ssn", v) for v in values))


async def test_an_operation_alone_goes_straight_through_unchanged() -> None:
    vault = FakeVault()
    coalescer = _coalescer(vault)
    answers = await _run_all(coalescer, vault, [_tokenize("r1", "x", "y")])
    assert vault.calls == [_tokenize("r1", "x", "y")]
    answer = answers["r1"]
    assert isinstance(answer, Tokenized) and answer.tokens == ("tok_ssnx", "tok_ssny")
    assert coalescer.statistics().merged_requests == 0


async def test_tokenizes_waiting_behind_a_full_lane_go_as_one_and_get_their_own_tokens() -> None:
    vault = FakeVault()
    coalescer = _coalescer(vault, in_flight_max=1)
    operations: list[ClientOperation] = [
        _tokenize("r1", "a"),
        _tokenize("r2", "b", "c"),
        _tokenize("r3", "c", "a"),  # values another request of the group has too
        _tokenize("r4", "d"),
    ]
    answers = await _run_all(coalescer, vault, operations)
    assert [c.op_id for c in vault.calls] == ["r1", "merged-1"]
    merged = vault.calls[1]
    assert isinstance(merged, Tokenize)
    assert [v for _, v in merged.items] == ["b", "c", "c", "a", "d"]
    for operation in operations:
        assert isinstance(operation, Tokenize)
        answer = answers[operation.op_id]
        assert isinstance(answer, Tokenized) and answer.failure is None
        assert answer.op_id == operation.op_id
        assert answer.tokens == tuple(_token(f, v) for f, v in operation.items)
        assert {m.token for m in answer.mappings} == set(answer.tokens)
    assert coalescer.statistics().merged_requests == 3


async def test_detokenizes_merge_their_tokens_once_and_each_gets_its_own_order() -> None:
    vault = FakeVault()
    coalescer = _coalescer(vault, in_flight_max=1)
    operations: list[ClientOperation] = [
        Detokenize(op_id="r1", owner="alice", tokens=("tok_a",)),
        Detokenize(op_id="r2", owner="alice", tokens=("tok_c", "tok_zz")),
        Detokenize(op_id="r3", owner="alice", tokens=("tok_b", "tok_c")),
    ]
    answers = await _run_all(coalescer, vault, operations)
    merged = vault.calls[1]
    assert isinstance(merged, Detokenize) and merged.tokens == ("tok_c", "tok_zz", "tok_b")
    second, third = answers["r2"], answers["r3"]
    assert isinstance(second, ReadDone) and isinstance(third, ReadDone)
    assert [m and m.value for m in second.mappings] == ["3", None]
    assert [m and m.value for m in third.mappings] == ["2", "3"]
    assert second.op_id == "r2" and third.op_id == "r3"


async def test_owners_and_kinds_never_share_an_operation() -> None:
    vault = FakeVault()
    coalescer = _coalescer(vault, in_flight_max=1)
    operations: list[ClientOperation] = [
        _tokenize("a1", "x"),
        _tokenize("b1", "x", owner="bob"),
        Detokenize(op_id="d1", owner="alice", tokens=("tok_a",)),
        _tokenize("a2", "y"),
        _tokenize("b2", "y", owner="bob"),
        LearnEpoch(op_id="e1", owner="alice"),
    ]
    await _run_all(coalescer, vault, operations)
    # every lane had one in flight: the second of each lane waited, alone, then went alone
    assert sorted(c.op_id for c in vault.calls) == ["a1", "a2", "b1", "b2", "d1", "e1"]


async def test_a_group_holds_at_most_items_max_items_but_always_its_first() -> None:
    vault = FakeVault()
    coalescer = _coalescer(vault, in_flight_max=1, items_max=3)
    operations: list[ClientOperation] = [
        _tokenize("r0", "z"),
        _tokenize("r1", "a", "b", "c", "d"),  # over the bound alone: goes alone
        _tokenize("r2", "e"),
        _tokenize("r3", "f", "g"),
        _tokenize("r4", "h"),
    ]
    answers = await _run_all(coalescer, vault, operations)
    sizes = [len(c.items) for c in vault.calls if isinstance(c, Tokenize)]
    assert sizes == [1, 4, 3, 1]
    assert all(isinstance(a, Tokenized) and a.failure is None for a in answers.values())


async def test_a_failed_merged_operation_fails_each_request_claiming_nothing() -> None:
    vault = FakeVault(failure=Failure.QUORUM_TIMEOUT)
    coalescer = _coalescer(vault, in_flight_max=1)
    operations: list[ClientOperation] = [_tokenize(f"r{i}", str(i)) for i in range(4)]
    answers = await _run_all(coalescer, vault, operations)
    for operation in operations:
        answer = answers[operation.op_id]
        assert isinstance(answer, Tokenized) and answer.op_id == operation.op_id
        assert answer.failure is Failure.QUORUM_TIMEOUT
        assert answer.tokens == () and answer.mappings == ()


async def test_when_the_performer_of_a_group_is_cancelled_the_others_fail_not_wait() -> None:
    answers: dict[str, ClientAnswer] = {}

    async def one(operation: ClientOperation, scope_out: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scope_out.append(scope)
            answers[operation.op_id] = await coalescer.perform(operation)

    scopes: list[trio.CancelScope] = []
    vault2 = FakeVault()
    coalescer = _coalescer(vault2, in_flight_max=1)
    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(one, _tokenize(f"s{i}", str(i)), scopes)
            await trio.testing.wait_all_tasks_blocked()
        # s0 in flight; s1 and s2 wait. s0 ends: s1 performs the merged operation...
        vault2.gate.set()
        vault2.gate = trio.Event()
        await trio.testing.wait_all_tasks_blocked()
        assert [c.op_id for c in vault2.calls][-1] == "merged-1"
        scopes[1].cancel()  # ...and is cancelled while the vault holds it
    assert "s1" not in answers
    failed = answers["s2"]
    assert isinstance(failed, Tokenized) and failed.failure is Failure.INTERNAL_ERROR


@pytest.mark.parametrize("limits", [{"in_flight_max": 0}, {"items_max": 0}])
def test_limits_are_checked(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        _coalescer(FakeVault(), **limits)
