"""The workload: clients of several owners tokenizing and detokenizing overlapping values through
random peers, as users of the public API would, and the liveness phase's final reads.

Rules:
- A client computes its tokens itself, as the public API does (derive_epoch_key / make_token
  under a simulator secret, epoch 1), and asks a random peer to write the mappings.
- Values overlap: every client of an owner draws from one small pool of values, and every owner
  uses the same pool (different owners get different tokens for one value).
- A detokenize asks tokens the owner's clients were answered, tokens of attempts whose outcome
  they do not know, and now and then a well-formed token nobody ever inserted.
- An attempt that fails or times out is retried after a backoff, maybe through another peer; a
  retry computes the same tokens, so it is safe. Each client draws how many attempts it makes
  (1 up to `attempts_max`): clients that give up early leave writes in doubt behind them, and a
  client that gave up on a tokenize often reads its tokens next, to learn whether they exist.
- Operations are spread over the fault window (think times scale with it), so most of them meet
  faults. Every attempt is one operation of the history.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tokenvault.quorum.effects import ReadDone, WriteDone
from tokenvault.quorum.messages import Mapping
from tokenvault.sim.config import SimConfig
from tokenvault.sim.engine import Engine
from tokenvault.sim.history import History, Operation, OperationKind, Outcome
from tokenvault.sim.peer import ClientAnswer, ClientRequest, Refused, Reset, describe_answer
from tokenvault.tokens import derive_epoch_key, make_token

SIM_SECRET = b"tokenvault-simulator-secret"
EPOCH = 1
FIELDS = ("ssn", "email")
VALUES_MIN = 4
TOKENS_PER_READ_MAX = 4
VALUES_PER_WRITE_MAX = 3
NEVER_ISSUED_SHARE = 0.15
IN_DOUBT_TOKEN_SHARE = 0.3
TOKENIZE_SHARE = 0.5
READ_AFTER_GIVING_UP_SHARE = 0.5
OTHER_PEER_ON_RETRY_SHARE = 0.5
BACKOFF_S = (0.05, 0.5)
THINK_SHARE_OF_FAULT_WINDOW_MAX = 0.25  # so that even a short run meets faults


class Gateway(Protocol):
    """What clients talk to: the cluster (with the client link's latency)."""

    def submit(
        self, peer_id: str, request: ClientRequest, sink: Callable[[ClientAnswer], None]
    ) -> None: ...

    def durable_copies(self, mapping: Mapping) -> int: ...


@dataclass(slots=True)
class _OwnerState:
    owner: str
    epoch_key: bytes
    answered: dict[str, None] = field(default_factory=dict)  # ordered set of tokens
    in_doubt: dict[str, None] = field(default_factory=dict)  # written, never acknowledged
    never_issued: int = 0


@dataclass(slots=True)
class _Intent:
    """One client operation, over its attempts."""

    kind: OperationKind
    mappings: tuple[Mapping, ...] = ()
    tokens: tuple[str, ...] = ()
    attempts: int = 0
    last_peer: str = ""


class Workload:
    def __init__(
        self, *, config: SimConfig, engine: Engine, history: History, gateway: Gateway
    ) -> None:
        self.config = config
        self.engine = engine
        self.history = history
        self.gateway = gateway
        self.peer_ids = config.peer_ids
        self._remaining = config.operation_count
        self.values = tuple(
            f"v{index}" for index in range(max(VALUES_MIN, config.operation_count // 10))
        )
        self._owners = {
            owner: _OwnerState(owner=owner, epoch_key=derive_epoch_key(SIM_SECRET, owner, EPOCH))
            for owner in config.owner_ids
        }
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
        self._checker_rng = engine.rng("workload/checker")

    # -- phases --------------------------------------------------------------------------------

    def start(self) -> None:
        for client in self._clients:
            client.start()

    def finished(self) -> bool:
        return self._remaining == 0 and not any(c.busy for c in self._clients)

    def start_checks(self) -> None:
        """The liveness phase: one read per owner, through a random peer, of every token a
        tokenize acknowledged or a read returned."""
        wanted: dict[str, dict[str, None]] = {owner: {} for owner in self._owners}
        for op in self.history:
            if op.outcome is not Outcome.OK:
                continue
            if op.kind is OperationKind.TOKENIZE:
                wanted[op.owner].update(dict.fromkeys(m.token for m in op.mappings))
            else:
                wanted[op.owner].update(dict.fromkeys(m.token for m in op.found if m is not None))
        for owner, tokens in wanted.items():
            if tokens:
                peer = self._checker_rng.choice(self.peer_ids)
                checker = _Client(self, f"check-{owner}", self._owners[owner])
                checker.check(peer, tuple(tokens))

    # -- shared by clients ---------------------------------------------------------------------

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
        if read_next and self._rng.random() < READ_AFTER_GIVING_UP_SHARE:
            self._intent = _Intent(kind=OperationKind.DETOKENIZE, tokens=read_next)
        elif not owner.answered or self._rng.random() < TOKENIZE_SHARE:
            self._intent = _Intent(kind=OperationKind.TOKENIZE, mappings=self._draw_mappings())
        else:
            self._intent = _Intent(kind=OperationKind.DETOKENIZE, tokens=self._draw_tokens())
        self._attempt(self._rng.choice(self._workload.peer_ids))

    def _draw_mappings(self) -> tuple[Mapping, ...]:
        owner = self._owner
        mappings: dict[str, Mapping] = {}
        for _ in range(self._rng.randint(1, VALUES_PER_WRITE_MAX)):
            value = self._rng.choice(self._workload.values)
            field_name = self._rng.choice(FIELDS)
            token = make_token(owner.epoch_key, field_name, value)
            mappings[token] = Mapping(
                owner=owner.owner, token=token, value=value, field=field_name, epoch=EPOCH
            )
        return tuple(mappings.values())

    def _draw_tokens(self) -> tuple[str, ...]:
        owner = self._owner
        tokens: dict[str, None] = {}
        for _ in range(self._rng.randint(1, TOKENS_PER_READ_MAX)):
            draw = self._rng.random()
            if draw < NEVER_ISSUED_SHARE:
                owner.never_issued += 1
                value = f"never-issued-{owner.never_issued}"
                tokens[make_token(owner.epoch_key, FIELDS[0], value)] = None
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
        self._history.invoke(
            Operation(
                op_id=op_id,
                client=self.name,
                kind=intent.kind,
                owner=self._owner.owner,
                peer=peer,
                attempt=intent.attempts,
                invoke_s=self._engine.now_s,
                mappings=intent.mappings,
                tokens=intent.tokens,
            )
        )
        if intent.kind is OperationKind.TOKENIZE:
            owner = self._owner
            owner.in_doubt.update(
                dict.fromkeys(m.token for m in intent.mappings if m.token not in owner.answered)
            )
        self._engine.record(f"invoke {self.name} {intent.kind.value} op={op_id} via {peer}")
        request = ClientRequest(
            op_id=op_id, owner=self._owner.owner, mappings=intent.mappings, tokens=intent.tokens
        )
        self._gateway.submit(peer, request, functools.partial(self._on_answer, op_id))
        self._engine.after(
            self._config.client_timeout_s, functools.partial(self._on_timeout, op_id)
        )

    def _on_answer(self, op_id: str, answer: ClientAnswer) -> None:
        op = self._history.get(op_id)
        if op.outcome is not Outcome.PENDING:
            self._engine.record(f"late-answer {self.name} {describe_answer(answer)}")
            return
        self._engine.record(f"answer {self.name} {describe_answer(answer)}")
        now = self._engine.now_s
        gateway = self._gateway
        if isinstance(answer, Refused):
            self._history.complete(op_id, at_s=now, outcome=Outcome.FAIL, reason="refused")
        elif isinstance(answer, Reset):
            self._history.complete(
                op_id, at_s=now, outcome=Outcome.INDETERMINATE, reason="connection reset"
            )
        elif answer.failure is not None:
            self._history.complete(
                op_id, at_s=now, outcome=Outcome.FAIL, reason=answer.failure.value
            )
        elif isinstance(answer, WriteDone):
            copies = tuple(gateway.durable_copies(m) for m in op.mappings)
            self._history.complete(op_id, at_s=now, outcome=Outcome.OK, copies_at_answer=copies)
            self._learn(m.token for m in op.mappings)
        else:
            assert isinstance(answer, ReadDone)
            copies = tuple(0 if m is None else gateway.durable_copies(m) for m in answer.mappings)
            self._history.complete(
                op_id, at_s=now, outcome=Outcome.OK, found=answer.mappings, copies_at_answer=copies
            )
            self._learn(m.token for m in answer.mappings if m is not None)
        self._after_attempt(op)

    def _learn(self, tokens: Iterable[str]) -> None:
        """Tokens an answer showed: known to exist from now on."""
        owner = self._owner
        for token in tokens:
            owner.answered[token] = None
            owner.in_doubt.pop(token, None)

    def _on_timeout(self, op_id: str) -> None:
        op = self._history.get(op_id)
        if op.outcome is not Outcome.PENDING:
            return
        self._engine.record(f"timeout {self.name} op={op_id}")
        self._history.complete(
            op_id, at_s=self._engine.now_s, outcome=Outcome.INDETERMINATE, reason="client timeout"
        )
        self._after_attempt(op)

    def _after_attempt(self, op: Operation) -> None:
        intent = self._intent
        assert intent is not None
        retry = (
            op.outcome is not Outcome.OK
            and intent.kind is not OperationKind.CHECK
            and intent.attempts < self._attempts_max
        )
        if retry:
            peer = intent.last_peer
            if self._rng.random() < OTHER_PEER_ON_RETRY_SHARE:
                peer = self._rng.choice(self._workload.peer_ids)
            backoff_s = self._rng.uniform(*BACKOFF_S) * intent.attempts
            self._engine.after(backoff_s, functools.partial(self._attempt, peer))
            return
        self._intent = None
        if intent.kind is OperationKind.TOKENIZE and op.outcome is not Outcome.OK:
            self._read_next = tuple(m.token for m in intent.mappings)
        if intent.kind is OperationKind.CHECK:
            self.busy = False
            return
        self._engine.after(self._think_s(), self._next)
