"""The workload: clients of several owners tokenizing, detokenizing, reading and rotating the
owners' epochs through random peers, as users of the public API would, and the liveness phase's
final reads.

Rules:
- A tokenize sends (field, value) items; the peer computes the tokens under the epoch it knows
  (as the public API does) and answers them with that epoch. Values overlap: every client of an
  owner draws from one small pool, and every owner uses the same pool.
- Epochs move under the clients' feet: an epoch read learns the owner's epoch; a rotate asks for
  the next one, naming the epoch it expects (the latest its owner's clients saw) or none; a
  burst fires two or three rotates at once through different peers, all with the same expected
  epoch (or all with none), so proposers duel. Every run rotates every owner.
- A detokenize asks tokens the owner's clients were answered, tokens of attempts whose outcome
  they do not know, and now and then a well-formed token nobody ever inserted. A client never
  learns the tokens of a tokenize that failed; the simulator does (the observer saw the peer
  compute them) and hands them to the client, which reads them to learn whether they exist.
- An attempt that fails or times out is retried after a backoff, maybe through another peer.
  Each client draws how many attempts it makes (1 up to `attempts_max`): clients that give up
  early leave writes in doubt behind them. A burst's rotates are not retried.
- Operations are spread over the fault window (think times scale with it), so most of them meet
  faults. Every attempt is one operation of the history.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tokenvault.quorum.client_operations import Tokenized
from tokenvault.quorum.effects import EpochDone, ReadDone
from tokenvault.quorum.messages import Mapping
from tokenvault.sim.client import (
    ClientAnswer,
    ClientRequest,
    Refused,
    RequestKind,
    Reset,
    describe_answer,
    epoch_key,
)
from tokenvault.sim.config import SimConfig
from tokenvault.sim.engine import Engine
from tokenvault.sim.history import History, Operation, OperationKind, Outcome
from tokenvault.tokens import make_token

FIELDS = ("ssn", "email")
VALUES_MIN = 4
TOKENS_PER_READ_MAX = 4
VALUES_PER_WRITE_MAX = 3
NEVER_ISSUED_SHARE = 0.15
IN_DOUBT_TOKEN_SHARE = 0.3
# What a client's next operation is (the rest are detokenizes).
TOKENIZE_SHARE = 0.42
EPOCH_READ_SHARE = 0.07
ROTATE_SHARE = 0.05
BURST_SHARE = 0.04
BURST_SIZE = (2, 3)  # concurrent rotates in a burst
EXPECTED_EPOCH_SHARE = 0.7  # rotates and bursts that name the epoch they expect
READ_AFTER_GIVING_UP_SHARE = 0.5
OTHER_PEER_ON_RETRY_SHARE = 0.5
BACKOFF_S = (0.05, 0.5)
THINK_SHARE_OF_FAULT_WINDOW_MAX = 0.25  # so that even a short run meets faults

_KIND_OF_REQUEST = {
    OperationKind.TOKENIZE: RequestKind.TOKENIZE,
    OperationKind.DETOKENIZE: RequestKind.DETOKENIZE,
    OperationKind.CHECK: RequestKind.DETOKENIZE,
    OperationKind.EPOCH: RequestKind.EPOCH,
    OperationKind.ROTATE: RequestKind.ROTATE,
}


class Gateway(Protocol):
    """What clients talk to: the cluster (with the client link's latency), and what the
    simulator knows that a client would not (the tokens a failed tokenize tried)."""

    def submit(
        self, peer_id: str, request: ClientRequest, sink: Callable[[ClientAnswer], None]
    ) -> None: ...

    def durable_copies(self, mapping: Mapping) -> int: ...

    def attempted_tokens(self, op_id: str) -> tuple[str, ...]: ...


@dataclass(slots=True)
class _OwnerState:
    owner: str
    answered: dict[str, None] = field(default_factory=dict)  # ordered set of tokens
    in_doubt: dict[str, None] = field(default_factory=dict)  # written, never acknowledged
    never_issued: int = 0
    known_epoch: int = 1  # the highest epoch any client of the owner was answered
    bursts: int = 0


@dataclass(slots=True)
class _Intent:
    """One client operation, over its attempts (or the concurrent rotates of a burst)."""

    kind: OperationKind
    items: tuple[tuple[str, str], ...] = ()
    tokens: tuple[str, ...] = ()
    expected_epoch: int | None = None
    group: str = ""
    attempts: int = 0
    last_peer: str = ""
    outstanding: int = 0  # a burst's rotates not answered yet
    op_ids: list[str] = field(default_factory=list)


def record_answer(
    history: History,
    gateway: Gateway,
    engine: Engine,
    client: str,
    op_id: str,
    answer: ClientAnswer,
) -> Operation | None:
    """Complete an operation of the history with what its client received; None when the
    client had given up on it already (a late answer)."""
    op = history.get(op_id)
    if op.outcome is not Outcome.PENDING:
        engine.record(f"late-answer {client} {describe_answer(answer)}")
        return None
    engine.record(f"answer {client} {describe_answer(answer)}")
    now = engine.now_s
    if isinstance(answer, Refused):
        history.complete(op_id, at_s=now, outcome=Outcome.FAIL, reason="refused")
    elif isinstance(answer, Reset):
        history.complete(op_id, at_s=now, outcome=Outcome.INDETERMINATE, reason="connection reset")
    elif answer.failure is not None:
        history.complete(op_id, at_s=now, outcome=Outcome.FAIL, reason=answer.failure.value)
    elif isinstance(answer, Tokenized):
        assert answer.epoch is not None
        history.complete(
            op_id,
            at_s=now,
            outcome=Outcome.OK,
            copies_at_answer=tuple(gateway.durable_copies(m) for m in answer.mappings),
            mappings=answer.mappings,
            epoch_value=answer.epoch,
        )
    elif isinstance(answer, EpochDone):
        assert answer.value is not None
        history.complete(
            op_id, at_s=now, outcome=Outcome.OK, epoch_value=answer.value, rotated=answer.rotated
        )
    else:
        assert isinstance(answer, ReadDone)
        history.complete(
            op_id,
            at_s=now,
            outcome=Outcome.OK,
            found=answer.mappings,
            copies_at_answer=tuple(
                0 if m is None else gateway.durable_copies(m) for m in answer.mappings
            ),
        )
    return op


def record_timeout(history: History, engine: Engine, client: str, op_id: str) -> Operation | None:
    """The client gave up on an attempt; None when it had been answered already."""
    op = history.get(op_id)
    if op.outcome is not Outcome.PENDING:
        return None
    engine.record(f"timeout {client} op={op_id}")
    history.complete(
        op_id, at_s=engine.now_s, outcome=Outcome.INDETERMINATE, reason="client timeout"
    )
    return op


class Workload:
    def __init__(
        self,
        *,
        config: SimConfig,
        engine: Engine,
        history: History,
        gateway: Gateway,
        client_peers: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.history = history
        self.gateway = gateway
        self.peer_ids = config.peer_ids
        self._client_peers = client_peers
        self._remaining = config.operation_count
        self.values = tuple(
            f"v{index}" for index in range(max(VALUES_MIN, config.operation_count // 10))
        )
        self._owners = {owner: _OwnerState(owner=owner) for owner in config.owner_ids}
        client_count = config.owner_count * config.clients_per_owner
        self.think_mean_s = min(
            config.faults_end_s * client_count / max(1, config.operation_count),
            config.faults_end_s * THINK_SHARE_OF_FAULT_WINDOW_MAX,
        )
        self._clients = [
            _Client(self, f"c{index}", self._owners[owner])
            for index, owner in enumerate(
                owner for owner in config.owner_ids for _ in range(config.clients_per_owner)
            )
        ]
        self._checkers: list[_Client] = []
        self._checker_rng = engine.rng("workload/checker")

    # -- phases --------------------------------------------------------------------------------

    def start(self) -> None:
        for client in self._clients:
            client.start()

    def finished(self) -> bool:
        return self._remaining == 0 and not any(c.busy for c in self._clients)

    def start_checks(self, peers: Sequence[str] | None = None) -> None:
        """The liveness phase: one read per owner, through a random peer (of `peers`, the
        members of the learned ring that serve; the bootstrap's by default), of every token a
        tokenize acknowledged or a read returned."""
        through = tuple(peers) if peers else self.peer_ids
        wanted: dict[str, dict[str, None]] = {owner: {} for owner in self._owners}
        for op in self.history:
            if op.outcome is not Outcome.OK:
                continue
            if op.kind is OperationKind.TOKENIZE:
                wanted[op.owner].update(dict.fromkeys(m.token for m in op.mappings))
            elif op.is_read:
                wanted[op.owner].update(dict.fromkeys(m.token for m in op.found if m is not None))
        for owner, tokens in wanted.items():
            if tokens:
                peer = self._checker_rng.choice(through)
                checker = _Client(self, f"check-{owner}", self._owners[owner])
                self._checkers.append(checker)
                checker.check(peer, tuple(tokens))

    def checks_done(self) -> bool:
        return not any(c.busy for c in self._checkers)

    # -- shared by clients ---------------------------------------------------------------------

    def peers(self) -> Sequence[str]:
        """The peers clients talk to now: the bootstrap's, or (`client_peers`, with membership
        changes) the members of the ring the cluster learned, as an operator tells clients."""
        return self.peer_ids if self._client_peers is None else self._client_peers()

    def take_operation(self) -> bool:
        if self._remaining == 0:
            return False
        self._remaining -= 1
        return True


class _Client:
    def __init__(self, workload: Workload, name: str, owner: _OwnerState) -> None:
        self.name = name
        self.busy = False
        self._workload = workload
        self._owner = owner
        self._engine = workload.engine
        self._history = workload.history
        self._gateway = workload.gateway
        self._config = workload.config
        self._rng = workload.engine.rng(f"workload/client/{name}")
        self._counter = 0
        self._intent: _Intent | None = None
        self._attempts_max = self._rng.randint(1, workload.config.attempts_max)
        self._read_next: tuple[str, ...] = ()  # tokens of a tokenize given up on

    def start(self) -> None:
        self._engine.after(self._think_s(), self._next)

    def check(self, peer: str, tokens: Sequence[str]) -> None:
        self._intent = _Intent(kind=OperationKind.CHECK, tokens=tuple(tokens))
        self.busy = True
        self._attempt(peer)

    def _think_s(self) -> float:
        return self._rng.expovariate(1.0 / self._workload.think_mean_s)

    def _next(self) -> None:
        if not self._workload.take_operation():
            self.busy = False
            return
        self.busy = True
        owner = self._owner
        read_next, self._read_next = self._read_next, ()
        draw = self._rng.random()
        peer = self._rng.choice(self._workload.peers())
        if read_next and self._rng.random() < READ_AFTER_GIVING_UP_SHARE:
            self._intent = _Intent(kind=OperationKind.DETOKENIZE, tokens=read_next)
        elif not owner.answered or draw < TOKENIZE_SHARE:
            self._intent = _Intent(kind=OperationKind.TOKENIZE, items=self._draw_items())
        elif draw < TOKENIZE_SHARE + EPOCH_READ_SHARE:
            self._intent = _Intent(kind=OperationKind.EPOCH)
        elif draw < TOKENIZE_SHARE + EPOCH_READ_SHARE + ROTATE_SHARE:
            self._intent = _Intent(kind=OperationKind.ROTATE, expected_epoch=self._expected())
        elif draw < TOKENIZE_SHARE + EPOCH_READ_SHARE + ROTATE_SHARE + BURST_SHARE:
            self._burst()
            return
        else:
            self._intent = _Intent(kind=OperationKind.DETOKENIZE, tokens=self._draw_tokens())
        self._attempt(peer)

    def _expected(self) -> int | None:
        return self._owner.known_epoch if self._rng.random() < EXPECTED_EPOCH_SHARE else None

    def _burst(self) -> None:
        """Two or three rotates at once, through different peers, with one expectation."""
        owner = self._owner
        owner.bursts += 1
        size = self._rng.randint(*BURST_SIZE)
        peers = self._rng.sample(list(self._workload.peers()), size)
        intent = _Intent(
            kind=OperationKind.ROTATE,
            expected_epoch=self._expected(),
            group=f"{owner.owner}/b{owner.bursts}-{self.name}",
            outstanding=size,
        )
        self._intent = intent
        for peer in peers:
            self._attempt(peer)

    def _draw_items(self) -> tuple[tuple[str, str], ...]:
        items: dict[tuple[str, str], None] = {}
        for _ in range(self._rng.randint(1, VALUES_PER_WRITE_MAX)):
            value = self._rng.choice(self._workload.values)
            items[(self._rng.choice(FIELDS), value)] = None
        return tuple(items)

    def _draw_tokens(self) -> tuple[str, ...]:
        owner = self._owner
        tokens: dict[str, None] = {}
        for _ in range(self._rng.randint(1, TOKENS_PER_READ_MAX)):
            draw = self._rng.random()
            if draw < NEVER_ISSUED_SHARE:
                owner.never_issued += 1
                value = f"never-issued-{owner.never_issued}"
                tokens[make_token(epoch_key(owner.owner, 1, ""), FIELDS[0], value)] = None
            elif draw < NEVER_ISSUED_SHARE + IN_DOUBT_TOKEN_SHARE and owner.in_doubt:
                tokens[self._rng.choice(list(owner.in_doubt))] = None
            else:
                tokens[self._rng.choice(list(owner.answered))] = None
        return tuple(tokens)

    # -- attempts ------------------------------------------------------------------------------

    def _attempt(self, peer: str) -> None:
        intent = self._intent
        assert intent is not None
        intent.attempts += 1
        intent.last_peer = peer
        self._counter += 1
        op_id = f"{self.name}-{self._counter}"
        intent.op_ids.append(op_id)
        self._history.invoke(
            Operation(
                op_id=op_id,
                client=self.name,
                kind=intent.kind,
                owner=self._owner.owner,
                peer=peer,
                attempt=1 if intent.group else intent.attempts,  # a burst's rotates run at once
                invoke_s=self._engine.now_s,
                items=intent.items,
                tokens=intent.tokens,
                expected_epoch=intent.expected_epoch,
                group=intent.group,
            )
        )
        expected = (
            "" if intent.kind is not OperationKind.ROTATE else f" expected={intent.expected_epoch}"
        )
        self._engine.record(
            f"invoke {self.name} {intent.kind.value} op={op_id} via {peer}{expected}"
        )
        request = ClientRequest(
            op_id=op_id,
            owner=self._owner.owner,
            kind=_KIND_OF_REQUEST[intent.kind],
            items=intent.items,
            tokens=intent.tokens,
            expected_epoch=intent.expected_epoch,
        )
        self._gateway.submit(peer, request, functools.partial(self._on_answer, op_id))
        self._engine.after(
            self._config.client_timeout_s, functools.partial(self._on_timeout, op_id)
        )

    def _on_answer(self, op_id: str, answer: ClientAnswer) -> None:
        op = record_answer(self._history, self._gateway, self._engine, self.name, op_id, answer)
        if op is None:
            return
        if op.outcome is Outcome.OK:
            self._learn(m.token for m in op.mappings)
            self._learn(m.token for m in op.found if m is not None)
            if op.epoch is not None:
                self._learn_epoch(op.epoch)
        self._after_attempt(op)

    def _learn(self, tokens: Iterable[str]) -> None:
        """Tokens an answer showed: known to exist from now on."""
        owner = self._owner
        for token in tokens:
            owner.answered[token] = None
            owner.in_doubt.pop(token, None)

    def _learn_epoch(self, epoch: int) -> None:
        owner = self._owner
        owner.known_epoch = max(owner.known_epoch, epoch)

    def _on_timeout(self, op_id: str) -> None:
        op = record_timeout(self._history, self._engine, self.name, op_id)
        if op is not None:
            self._after_attempt(op)

    def _after_attempt(self, op: Operation) -> None:
        intent = self._intent
        assert intent is not None
        if op.kind is OperationKind.TOKENIZE and op.outcome is not Outcome.OK:
            owner = self._owner
            attempted = self._gateway.attempted_tokens(op.op_id)
            owner.in_doubt.update(dict.fromkeys(t for t in attempted if t not in owner.answered))
        if intent.group:
            intent.outstanding -= 1
            if intent.outstanding:
                return
            self._intent = None
            self._engine.after(self._think_s(), self._next)
            return
        retry = (
            op.outcome is not Outcome.OK
            and intent.kind is not OperationKind.CHECK
            and intent.attempts < self._attempts_max
        )
        if retry:
            peer = intent.last_peer
            if self._rng.random() < OTHER_PEER_ON_RETRY_SHARE:
                peer = self._rng.choice(self._workload.peers())
            backoff_s = self._rng.uniform(*BACKOFF_S) * intent.attempts
            self._engine.after(backoff_s, functools.partial(self._attempt, peer))
            return
        self._intent = None
        if intent.kind is OperationKind.TOKENIZE and op.outcome is not Outcome.OK:
            tokens: dict[str, None] = {}
            for op_id in intent.op_ids:
                tokens.update(dict.fromkeys(self._gateway.attempted_tokens(op_id)))
            self._read_next = tuple(tokens)[:TOKENS_PER_READ_MAX]
        if intent.kind is OperationKind.CHECK:
            self.busy = False
            return
        self._engine.after(self._think_s(), self._next)
