"""One simulated peer: a MemoryStore, the real sans-IO cores node.py runs, node.py's driver rules
and routing, and the public API's tokenize loop, on virtual time.

The cores, as node.py builds them: Replica, Acceptor, HintedHandoff, Coordinator (with the hints),
EpochCoordinator (its random source drawn from the seed), FailureDetector and AntiEntropy (the
replicas of every owner from the ring), all over the peer's one store.

Rules (the same as node.py's):
- Routing, as `Node._deliver`: any message from another peer is first a sign of life for the
  failure detector; a Heartbeat is nothing else. Inserts, reads and inspections go to the
  replica; EpochQuery, Prepare, Accept and Decide to the acceptor (a Decide also updates the
  peer's known epoch); anti-entropy messages, and insert replies whose op id starts "ae:", to
  anti-entropy; insert replies whose op id starts "hint:" to hinted handoff; other insert and
  read replies to the coordinator; EpochReport, Promise and Accepted to the epoch coordinator.
  The replica's, the acceptor's and anti-entropy's answers wait for durability (they answer out
  of storage); the others wait only when they wrote.
- Timers go to the coordinator and to the epoch coordinator, as `Node._run_timers` does.
- Every heartbeat interval the peer ticks, as `Node._run_heartbeats`: the failure detector's
  tick, then hinted handoff's and anti-entropy's with the peers the detector holds down. The
  first tick of a life runs at once.
- Writes are staged right after each core call, before the peer takes any other input, so the
  cores' next reads see them. Persist before send: an Effects that wrote, or that answers out of
  storage, is held until the store is durable; then its timers are armed, its messages sent and
  its replies given. fsync takes virtual time: the first held Effects schedules one sync event
  (group commit).
- The API layer, as `http/api.py`: a tokenize computes its tokens under the peer's known epoch
  (`derive_epoch_key(secret, owner, epoch, salt)`), writes them with `down=` from the failure
  detector, and when a replica answers FENCED learns the epoch and tries again, at most
  `TOKENIZE_ATTEMPTS_MAX` writes. A detokenize is a quorum read; an epoch read is a learn; a
  rotate is a rotate (requested at the virtual time). The known epoch of every owner is kept as
  `Node._note_epoch` keeps it: raised by every successful epoch operation and every Decide.
- A crash calls `store.crash()` (staged writes are lost), drops the held Effects, the pending
  sync and every core with its memory: operations in flight (their clients see the connection
  reset: outcome indeterminate), the failure detector's view, hints in flight, the anti-entropy
  pass, the known epochs. A restart builds every core again over the same store: the durable
  state survives (hints, digests and known epochs are rebuilt from it). Events of an earlier life
  (timers, syncs, ticks) are ignored.
- A paused peer runs nothing: every input that reaches it (message, client request, timer, tick,
  sync) waits, in order, until it resumes. A down peer drops what reaches it and refuses
  clients.
- An exception from a core is recorded (a violation) and the peer crashes, as the process would.
"""

from __future__ import annotations

import enum
import functools
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenvault.quorum.acceptor import Acceptor
from tokenvault.quorum.anti_entropy import AntiEntropy, AntiEntropyLimits
from tokenvault.quorum.coordinator import Coordinator, CoordinatorLimits
from tokenvault.quorum.effects import (
    ClientReply,
    Effects,
    EpochDone,
    Event,
    Failure,
    ReadDone,
    Timer,
    WriteDone,
)
from tokenvault.quorum.epoch_coordinator import EpochCoordinator, EpochLimits
from tokenvault.quorum.failure_detector import DetectorLimits, FailureDetector
from tokenvault.quorum.failure_detector import PeerState as DetectorState
from tokenvault.quorum.hinted_handoff import HINT_OP_PREFIX, HintedHandoff, HintLimits
from tokenvault.quorum.messages import (
    GENESIS,
    Accept,
    Decide,
    Envelope,
    EpochValue,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
)
from tokenvault.quorum.quorum_config import QuorumConfig
from tokenvault.quorum.records import (
    ACCEPTOR_PREFIX,
    DECIDED_PREFIX,
    MAPPING_PREFIX,
    AcceptorSlot,
    decode_mapping,
    mapping_key,
    read_acceptor_slot,
    read_decided,
)
from tokenvault.quorum.replica import Replica
from tokenvault.quorum.routing import Destination, route
from tokenvault.ring.hash_ring import HashRing
from tokenvault.sim.engine import Action, Engine
from tokenvault.sim.faults import StrikeOn
from tokenvault.sim.network import describe_message, describe_value, short_token
from tokenvault.sim.observer import Observer, WriteAttempt, is_watched
from tokenvault.store.memory_store import MemoryStore
from tokenvault.tokens import derive_epoch_key, make_token

DEFERRED_INPUTS_MAX = 100_000  # inputs waiting for a paused peer
HELD_EFFECTS_MAX = 100_000  # Effects waiting for durability
SIM_SECRET = b"tokenvault-simulator-secret"  # the cluster secret of every simulated peer
TOKENIZE_ATTEMPTS_MAX = 3  # as http/api.py: a fenced tokenize learns the epoch and tries again
REPAIR_OP_PREFIXES = (HINT_OP_PREFIX, "ae:")


@functools.lru_cache(maxsize=4096)
def epoch_key(owner: str, epoch: int, salt: str) -> bytes:
    """The token key of one epoch of an owner, as the public API derives it."""
    return derive_epoch_key(SIM_SECRET, owner, epoch, bytes.fromhex(salt))


class PeerState(enum.Enum):
    UP = "up"
    PAUSED = "paused"
    DOWN = "down"


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
class Tokenized:
    """A tokenize's answer: the epoch its tokens were computed under and the mappings written
    (one per item, in order), or the failure of its last attempt."""

    op_id: str
    owner: str
    epoch: EpochValue | None
    mappings: tuple[Mapping, ...]
    failure: Failure | None
    writes: int  # write attempts it took


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
ReplyHandler = Callable[[ClientReply], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreError:
    """An exception that escaped a core: always a violation."""

    peer: str
    at_s: float
    input: str
    error: str
    location: str


@dataclass(slots=True)
class PeerStats:
    crashes: int = 0
    restarts: int = 0
    lost_writes: int = 0  # staged writes a crash threw away
    dropped_held: int = 0  # held Effects a crash threw away
    pauses: int = 0
    deferred_inputs: int = 0  # inputs that waited for a paused peer
    syncs: int = 0
    refused: int = 0
    reset: int = 0
    ticks: int = 0
    strikes: dict[str, int] = field(default_factory=dict)  # aimed crashes by StrikeOn
    hints_lost_in_flight: int = 0  # hint deliveries in flight when the peer crashed
    tokenize_relearned: int = 0  # fenced tokenize writes that learned the epoch and retried


@dataclass(slots=True)
class _Tokenize:
    """The API's tokenize loop for one request."""

    request: ClientRequest
    epoch: EpochValue
    writes: int = 0
    mappings: tuple[Mapping, ...] = ()


class SimPeer:
    def __init__(
        self,
        peer_id: str,
        *,
        engine: Engine,
        ring: HashRing,
        quorum: QuorumConfig,
        limits: CoordinatorLimits,
        fsync_s: tuple[float, float],
        client_latency_s: float,
        send: Callable[[Envelope], None],
        owners: tuple[str, ...] = (),
        observer: Observer | None = None,
        epoch_limits: EpochLimits = EpochLimits(),
        detector_limits: DetectorLimits = DetectorLimits(),
        hint_limits: HintLimits = HintLimits(),
        anti_entropy_limits: AntiEntropyLimits = AntiEntropyLimits(),
    ) -> None:
        self.peer_id = peer_id
        self.store = MemoryStore()
        self.state = PeerState.UP
        self.incarnation = 1
        self.stats = PeerStats()
        self.core_errors: list[CoreError] = []
        self.core_events: dict[str, int] = {}
        self.observer = (
            observer if observer is not None else Observer(replica_count=quorum.replica_count)
        )
        self._engine = engine
        self._ring = ring
        self._quorum = quorum
        self._limits = limits
        self._epoch_limits = epoch_limits
        self._detector_limits = detector_limits
        self._hint_limits = hint_limits
        self._anti_entropy_limits = anti_entropy_limits
        self._owners = owners
        self._fsync_s = fsync_s
        self._client_latency_s = client_latency_s
        self._send = send
        self._rng = engine.rng(f"peer/{peer_id}/fsync")
        self._epoch_rng = engine.rng(f"peer/{peer_id}/epoch")
        self._preference_lists: dict[str, tuple[str, ...]] = {}
        self._held: list[Effects] = []
        self._staged_watched: list[tuple[bytes, bytes | None]] = []
        self._sync_pending = False
        self._deferred: list[tuple[str, Action, int | None]] = []
        self._clients: dict[str, AnswerSink] = {}  # client op id -> its sink
        self._core_waiters: dict[str, ReplyHandler] = {}  # core op id -> what its reply does
        self._armed: StrikeOn | None = None
        self._build_cores()
        self._schedule_tick(0.0)

    def _build_cores(self) -> None:
        """Every core, from the durable store (what a process builds when it starts)."""
        peer_id, store = self.peer_id, self.store
        self.replica = Replica(peer_id=peer_id, storage=store)
        self.acceptor = Acceptor(peer_id=peer_id, storage=store)
        self.hints = HintedHandoff(peer_id=peer_id, storage=store, limits=self._hint_limits)
        self.coordinator = Coordinator(
            peer_id=peer_id, quorum=self._quorum, limits=self._limits, hints=self.hints
        )
        self.epoch_coordinator = EpochCoordinator(
            peer_id=peer_id, rng=self._epoch_rng, limits=self._epoch_limits
        )
        self.failure_detector = FailureDetector(
            peer_id=peer_id,
            peers=self._ring.peer_ids,
            now=self._engine.now_s,
            limits=self._detector_limits,
        )
        self.anti_entropy = AntiEntropy(
            peer_id=peer_id,
            storage=store,
            digests=self.replica.digests,
            decided=self.acceptor,
            replicas_by_owner={owner: self.preference_list(owner) for owner in self._owners},
            limits=self._anti_entropy_limits,
        )
        self._epochs: dict[str, EpochValue] = {
            owner: self.acceptor.active_epoch(owner)
            for owner in self._owners
            if peer_id in self.preference_list(owner)
        }

    # -- inputs --------------------------------------------------------------------------------

    def receive(self, envelope: Envelope) -> None:
        """A message from the network (or from this peer itself)."""
        text = f"deliver {envelope.source}->{self.peer_id} {describe_message(envelope.message)}"
        self._enter(text, lambda: self._on_message(envelope.source, envelope.message))

    def client_request(self, request: ClientRequest, sink: AnswerSink) -> None:
        """A client's request reaches this peer."""
        text = f"request {self.peer_id} {request.kind.value} op={request.op_id} {request.owner}"
        if self.state is PeerState.DOWN:
            self.stats.refused += 1
            self._engine.record(f"refuse {self.peer_id} op={request.op_id}")
            self._answer(sink, Refused(op_id=request.op_id))
            return
        self._enter(text, lambda: self._on_client_request(request, sink))

    def _enter(self, text: str, action: Action, incarnation: int | None = None) -> None:
        """Run an input now, defer it while paused, drop it when down or from an earlier life."""
        if incarnation is not None and incarnation != self.incarnation:
            self._engine.record(f"stale {text}")
            return
        if self.state is PeerState.DOWN:
            self._engine.record(f"drop-down {text}")
            return
        if self.state is PeerState.PAUSED:
            assert len(self._deferred) < DEFERRED_INPUTS_MAX, "a paused peer's inputs overflow"
            self.stats.deferred_inputs += 1
            self._engine.record(f"defer {text}")
            self._deferred.append((text, action, incarnation))
            return
        self._engine.record(text)
        action()

    def _bound(self, text: str, action: Action) -> Action:
        """An input of this life only: dropped if the peer restarted in between."""
        incarnation = self.incarnation
        return lambda: self._enter(text, action, incarnation)

    # -- routing, as Node._deliver ---------------------------------------------------------------

    def _on_message(self, source: str, message: Message) -> None:
        now = self._engine.now_s
        if source != self.peer_id:
            signs = self._call_core(
                "failure_detector", lambda: self.failure_detector.heard_from(source, now)
            )
            if signs is None:
                return
            if not signs.is_empty():
                self._after_core(signs, from_replica=False)
        destination = route(message)
        if destination is Destination.NONE:
            return
        if destination is Destination.INSPECTION:
            self._engine.record(f"unrouted {self.peer_id} owner-view op={message.op_id}")
            return
        if destination is Destination.REPLICA:
            repair_write = (
                message.op_id
                if isinstance(message, InsertRequest)
                and message.op_id.startswith(REPAIR_OP_PREFIXES)
                else ""
            )
            self._run_core(
                "replica",
                lambda: self.replica.on_message(source, message),
                from_replica=True,
                repair_write=repair_write,
            )
        elif destination is Destination.ACCEPTOR:
            if self._run_core(
                "acceptor", lambda: self.acceptor.on_message(source, message), from_replica=True
            ) and isinstance(message, Decide):
                self._note_epoch(message.owner, message.value)
        elif destination is Destination.ANTI_ENTROPY:
            self._run_core(
                "anti_entropy",
                lambda: self.anti_entropy.on_message(source, message, now),
                from_replica=True,
            )
        elif destination is Destination.HINTS:
            assert isinstance(message, InsertReply)
            self._run_core(
                "hints", lambda: self.hints.on_reply(source, message), from_replica=False
            )
        elif destination is Destination.COORDINATOR:
            self._run_core(
                "coordinator",
                lambda: self.coordinator.on_message(source, message),
                from_replica=False,
            )
        else:
            self._run_core(
                "epoch_coordinator",
                lambda: self.epoch_coordinator.on_message(source, message, now),
                from_replica=False,
            )

    def _run_core(
        self,
        what: str,
        call: Callable[[], Effects],
        *,
        from_replica: bool,
        repair_write: str = "",
    ) -> bool:
        """One core call and its Effects; False when the core raised (the peer crashed).
        repair_write: the op id of the repair insert this call serves, if it serves one."""
        effects = self._call_core(what, call)
        if effects is None:
            return False
        self._after_core(effects, from_replica=from_replica, repair_write=repair_write)
        return True

    # -- the API layer, as http/api.py -----------------------------------------------------------

    def known_epoch(self, owner: str) -> EpochValue:
        return self._epochs.get(owner, GENESIS)

    def _note_epoch(self, owner: str, value: EpochValue) -> None:
        if value.epoch > self.known_epoch(owner).epoch:
            self._epochs[owner] = value
            self._engine.record(f"epoch-known {self.peer_id} {owner} {describe_value(value)}")

    def down_peers(self) -> frozenset[str]:
        return frozenset(
            view.peer for view in self.failure_detector.views() if view.state is DetectorState.DOWN
        )

    def _on_client_request(self, request: ClientRequest, sink: AnswerSink) -> None:
        self._clients[request.op_id] = sink
        owner, op_id = request.owner, request.op_id
        replicas = self.preference_list(owner)
        now = self._engine.now_s
        if request.kind is RequestKind.TOKENIZE:
            self._tokenize_write(_Tokenize(request=request, epoch=self.known_epoch(owner)))
        elif request.kind is RequestKind.DETOKENIZE:
            tokens = tuple(dict.fromkeys(request.tokens))
            self._start_core_op(
                op_id,
                "start_read",
                lambda: self.coordinator.start_read(
                    op_id=op_id,
                    owner=owner,
                    replicas=replicas,
                    tokens=tokens,
                    now=now,
                    down=self.down_peers(),
                ),
                functools.partial(self._answer_epoch_or_read, op_id),
            )
        elif request.kind is RequestKind.EPOCH:
            self._start_core_op(
                op_id,
                "start_learn",
                lambda: self.epoch_coordinator.start_learn(
                    op_id=op_id, owner=owner, replicas=replicas, now=now, down=self.down_peers()
                ),
                functools.partial(self._answer_epoch_or_read, op_id),
            )
        else:
            self._start_core_op(
                op_id,
                "start_rotate",
                lambda: self.epoch_coordinator.start_rotate(
                    op_id=op_id,
                    owner=owner,
                    replicas=replicas,
                    expected_epoch=request.expected_epoch,
                    requested_at_s=now,
                    now=now,
                    down=self.down_peers(),
                ),
                functools.partial(self._answer_epoch_or_read, op_id),
            )

    def _start_core_op(
        self, op_id: str, what: str, call: Callable[[], Effects], on_reply: ReplyHandler
    ) -> None:
        self._core_waiters[op_id] = on_reply
        self._run_core(what, call, from_replica=False)

    def _answer_epoch_or_read(self, client_op: str, reply: ClientReply) -> None:
        if isinstance(reply, EpochDone) and reply.failure is None:
            assert reply.value is not None
            self._note_epoch(reply.owner, reply.value)
        assert isinstance(reply, EpochDone | ReadDone)
        self._answer_client(client_op, reply)

    def _tokenize_write(self, tokenize: _Tokenize) -> None:
        request, epoch = tokenize.request, tokenize.epoch
        tokenize.writes += 1
        key = epoch_key(request.owner, epoch.epoch, epoch.salt)
        mappings: dict[str, Mapping] = {}
        for field_name, value in request.items:
            token = make_token(key, field_name, value)
            mappings[token] = Mapping(
                owner=request.owner, token=token, value=value, field=field_name, epoch=epoch.epoch
            )
        tokenize.mappings = tuple(mappings.values())
        op_id = f"{request.op_id}/w{tokenize.writes}"
        now = self._engine.now_s
        self.observer.on_write_attempt(
            WriteAttempt(
                client_op=request.op_id,
                op_id=op_id,
                peer=self.peer_id,
                at_s=now,
                epoch=epoch,
                mappings=tokenize.mappings,
            )
        )
        self._start_core_op(
            op_id,
            "start_write",
            lambda: self.coordinator.start_write(
                op_id=op_id,
                owner=request.owner,
                replicas=self.preference_list(request.owner),
                mappings=tokenize.mappings,
                now=now,
                down=self.down_peers(),
            ),
            functools.partial(self._on_tokenize_written, tokenize),
        )

    def _on_tokenize_written(self, tokenize: _Tokenize, reply: ClientReply) -> None:
        assert isinstance(reply, WriteDone)
        request = tokenize.request
        if reply.failure is Failure.FENCED and tokenize.writes < TOKENIZE_ATTEMPTS_MAX:
            # A replica holds a later epoch: learn it from a majority, then tokenize again.
            self.stats.tokenize_relearned += 1
            op_id = f"{request.op_id}/l{tokenize.writes}"
            now = self._engine.now_s
            self._start_core_op(
                op_id,
                "start_learn",
                lambda: self.epoch_coordinator.start_learn(
                    op_id=op_id,
                    owner=request.owner,
                    replicas=self.preference_list(request.owner),
                    now=now,
                    down=self.down_peers(),
                ),
                functools.partial(self._on_tokenize_learned, tokenize),
            )
            return
        self._answer_client(
            request.op_id,
            Tokenized(
                op_id=request.op_id,
                owner=request.owner,
                epoch=tokenize.epoch,
                mappings=tokenize.mappings if reply.failure is None else (),
                failure=reply.failure,
                writes=tokenize.writes,
            ),
        )

    def _on_tokenize_learned(self, tokenize: _Tokenize, reply: ClientReply) -> None:
        assert isinstance(reply, EpochDone)
        request = tokenize.request
        if reply.failure is not None:
            self._answer_client(
                request.op_id,
                Tokenized(
                    op_id=request.op_id,
                    owner=request.owner,
                    epoch=None,
                    mappings=(),
                    failure=reply.failure,
                    writes=tokenize.writes,
                ),
            )
            return
        assert reply.value is not None
        self._note_epoch(request.owner, reply.value)
        tokenize.epoch = reply.value
        self._tokenize_write(tokenize)

    def _answer_client(self, client_op: str, answer: ClientAnswer) -> None:
        sink = self._clients.pop(client_op, None)
        if sink is not None:
            self._answer(sink, answer)

    # -- timers and ticks ----------------------------------------------------------------------

    def _on_timer(self, timer: Timer) -> None:
        now = self._engine.now_s

        def both() -> Effects:
            effects = self.coordinator.on_timer(timer, now)
            effects.extend(self.epoch_coordinator.on_timer(timer, now))
            return effects

        self._run_core("timer", both, from_replica=False)

    def _schedule_tick(self, delay_s: float) -> None:
        self._engine.after(delay_s, self._bound(f"tick {self.peer_id}", self._on_tick))

    def _on_tick(self) -> None:
        """Node._run_heartbeats: heartbeats, then hints and anti-entropy."""
        now = self._engine.now_s
        self.stats.ticks += 1
        self._schedule_tick(self._detector_limits.heartbeat_interval_s)

        def tick() -> Effects:
            effects = self.failure_detector.tick(now)
            down = self.down_peers()
            effects.extend(self.hints.tick(now, down))
            effects.extend(self.anti_entropy.tick(now, down))
            return effects

        self._run_core("tick", tick, from_replica=False)

    # -- the driver ----------------------------------------------------------------------------

    def _after_core(self, effects: Effects, *, from_replica: bool, repair_write: str = "") -> None:
        """Stage at once; then release, or hold until the next sync (persist before send)."""
        writes = effects.writes
        if writes:
            self.store.stage(writes)
            self._staged_watched.extend(w for w in writes if is_watched(w[0]))
            armed = self._armed
            if armed is StrikeOn.STAGED_WRITE or (armed is StrikeOn.REPAIR and repair_write):
                self._strike(armed, repair_write)
        self._count_events(effects.events)
        if self.store.has_unsynced():
            self._request_sync()
        if self._must_wait_for_sync(effects, from_replica=from_replica):
            assert len(self._held) < HELD_EFFECTS_MAX, "held effects overflow"
            self._held.append(effects)
            return
        self._release(effects)

    def _must_wait_for_sync(self, effects: Effects, *, from_replica: bool) -> bool:
        """node.py's rule: wait when this Effects wrote, or answers out of storage, and anything
        staged is not durable yet. (Mutation tests override this to break the rule.)"""
        return (bool(effects.writes) or from_replica) and self.store.has_unsynced()

    def _request_sync(self) -> None:
        if self._sync_pending:
            return
        self._sync_pending = True
        delay_s = self._rng.uniform(*self._fsync_s)
        self._engine.after(delay_s, self._bound(f"sync {self.peer_id}", self._on_sync))

    def _on_sync(self) -> None:
        self._sync_pending = False
        written = self.store.sync()
        if self._staged_watched:
            watched, self._staged_watched = self._staged_watched, []
            self.observer.on_durable(self.peer_id, watched, self._engine.now_s)
        held, self._held = self._held, []
        self.stats.syncs += 1
        self._engine.record(f"synced {self.peer_id} writes={written} released={len(held)}")
        for effects in held:
            self._release(effects)

    def _release(self, effects: Effects) -> None:
        """Arm timers, send messages, give replies: everything they depend on is durable."""
        engine = self._engine
        for timer in effects.timers:
            text = f"timer {self.peer_id} {timer.kind.value} op={timer.op_id}"
            action = functools.partial(self._on_timer, timer)
            engine.at(max(timer.due, engine.now_s), self._bound(text, action))
        strike: tuple[StrikeOn, str] | None = None
        for envelope in effects.messages:
            assert envelope.source == self.peer_id
            message = envelope.message
            if isinstance(message, Accept):
                self.observer.on_accept_sent(message.owner, message.value)
            elif isinstance(message, InsertRequest) and self._armed is not None and not strike:
                trigger = self._strike_on_insert(message)
                strike = None if trigger is None else (trigger, message.op_id)
            if envelope.destination == self.peer_id:
                text = f"deliver {self.peer_id}->{self.peer_id} {describe_message(message)}"
                action = functools.partial(self._on_message, self.peer_id, message)
                engine.after(0.0, self._bound(text, action))
            else:
                self._send(envelope)
        for reply in effects.replies:
            handler = self._core_waiters.pop(reply.op_id, None)
            if handler is not None:
                handler(reply)
        if strike is not None:
            self._strike(*strike)

    def _strike_on_insert(self, request: InsertRequest) -> StrikeOn | None:
        armed = self._armed
        if armed is StrikeOn.CLIENT_WRITE and not request.repair:
            return armed
        if armed is StrikeOn.REPAIR and request.op_id.startswith(REPAIR_OP_PREFIXES):
            return armed
        return None

    def _strike(self, trigger: StrikeOn, op_id: str = "") -> None:
        """An aimed crash found its moment: it strikes as the next event. The log line names
        the operation whose write or message was its moment."""
        self._armed = None
        self.stats.strikes[trigger.value] = self.stats.strikes.get(trigger.value, 0) + 1
        during = f" during op={op_id}" if op_id else ""
        self._engine.after(
            0.0,
            self._bound(f"aimed-crash {self.peer_id} {trigger.value}{during}", self.crash),
        )

    def _answer(self, sink: AnswerSink, answer: ClientAnswer) -> None:
        self._engine.after(self._client_latency_s, lambda: sink(answer))

    def _call_core(self, what: str, call: Callable[[], Effects]) -> Effects | None:
        try:
            return call()
        except Exception as error:
            frames = traceback.extract_tb(error.__traceback__)
            location = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            self.core_errors.append(
                CoreError(
                    peer=self.peer_id,
                    at_s=self._engine.now_s,
                    input=what,
                    error=f"{type(error).__name__}: {error}",
                    location=location,
                )
            )
            self._engine.record(f"core-exception {self.peer_id} {what} {type(error).__name__}")
            self.crash()
            return None

    def _count_events(self, events: list[Event]) -> None:
        for event in events:
            name = event.name
            if name == "read_repair":
                name += "_blocking" if ("blocking", 1) in event.details else "_background"
            self.core_events[name] = self.core_events.get(name, 0) + 1
            details = " ".join(f"{k}={v}" for k, v in event.details if k != "token_prefix")
            self._engine.record(
                f"event {self.peer_id} {event.name} op={event.request_id} {details}".rstrip()
            )

    # -- faults --------------------------------------------------------------------------------

    def crash(self) -> None:
        if self.state is PeerState.DOWN:
            return
        lost = self.store.crash()
        self.stats.crashes += 1
        self.stats.lost_writes += lost
        self.stats.dropped_held += len(self._held)
        hints_in_flight = sum(h.in_flight for h in self.hints.statistics())
        self.stats.hints_lost_in_flight += hints_in_flight
        waiting = sorted(self._clients.items())
        self._engine.record(
            f"crash {self.peer_id} lost_writes={lost} held={len(self._held)}"
            f" deferred={len(self._deferred)} ops_reset={len(waiting)}"
            f" hints_in_flight={hints_in_flight}"
        )
        self._held.clear()
        self._deferred.clear()
        self._clients.clear()
        self._core_waiters.clear()
        self._staged_watched.clear()
        self._sync_pending = False
        self._armed = None
        self.incarnation += 1
        self.state = PeerState.DOWN
        for op_id, sink in waiting:
            self.stats.reset += 1
            self._answer(sink, Reset(op_id=op_id))

    def arm_crash(self, strike_on: StrikeOn = StrikeOn.STAGED_WRITE) -> None:
        """An aimed crash: strike at the next moment of the kind asked."""
        if self.state is PeerState.UP:
            self._armed = strike_on
            self._engine.record(f"arm-crash {self.peer_id} {strike_on.value}")

    def restart(self) -> None:
        if self.state is not PeerState.DOWN:
            return
        self.state = PeerState.UP
        self.stats.restarts += 1
        self._build_cores()
        durable = len(self.store.durable_items(MAPPING_PREFIX))
        self._engine.record(
            f"restart {self.peer_id} durable_mappings={durable} hints={self.hints.pending_total()}"
        )
        self._schedule_tick(0.0)

    def pause(self) -> None:
        if self.state is not PeerState.UP:
            return
        self.state = PeerState.PAUSED
        self.stats.pauses += 1
        self._engine.record(f"pause {self.peer_id}")

    def resume(self) -> None:
        if self.state is not PeerState.PAUSED:
            return
        self.state = PeerState.UP
        deferred, self._deferred = self._deferred, []
        self._engine.record(f"resume {self.peer_id} deferred={len(deferred)}")
        for text, action, incarnation in deferred:
            self._engine.after(0.0, functools.partial(self._enter, text, action, incarnation))

    def disarm(self) -> None:
        self._armed = None

    def disarm_and_restart(self) -> None:
        """The end of a crash interval: an aimed crash that never struck is called off."""
        self.disarm()
        self.restart()

    # -- observation ---------------------------------------------------------------------------

    def preference_list(self, owner: str) -> tuple[str, ...]:
        found = self._preference_lists.get(owner)
        if found is None:
            found = self._ring.preference_list(owner, self._quorum.replica_count)
            self._preference_lists[owner] = found
        return found

    def durable_mapping(self, owner: str, token: str) -> Mapping | None:
        key = mapping_key(owner, token)
        for found_key, raw in self.store.durable_items(key):
            if found_key == key:
                return decode_mapping(owner, token, raw)
        return None

    def durably_holds(self, mapping: Mapping) -> bool:
        return self.durable_mapping(mapping.owner, mapping.token) == mapping

    def durable_mappings(self) -> dict[tuple[str, str], Mapping]:
        """Every mapping this peer holds durably, by (owner, token)."""
        held: dict[tuple[str, str], Mapping] = {}
        for key, raw in self.store.durable_items(MAPPING_PREFIX):
            owner_raw, _, token_raw = key[len(MAPPING_PREFIX) :].partition(b"\x00")
            owner, token = owner_raw.decode(), token_raw.decode()
            held[(owner, token)] = decode_mapping(owner, token, raw)
        return held

    def durable_decided(self) -> dict[tuple[str, int], EpochValue]:
        """Every value this peer durably decided, by (owner, slot), via the records helpers."""
        found: dict[tuple[str, int], EpochValue] = {}
        for key, raw in self.store.durable_items(DECIDED_PREFIX):
            owner, slot = key[2:-9].decode(), int.from_bytes(key[-8:], "big")
            value = read_decided(_Record(key, raw), owner, slot)
            assert value is not None
            found[(owner, slot)] = value
        return found

    def durable_acceptor_slots(self) -> dict[tuple[str, int], AcceptorSlot]:
        found: dict[tuple[str, int], AcceptorSlot] = {}
        for key, raw in self.store.durable_items(ACCEPTOR_PREFIX):
            owner, slot = key[2:-9].decode(), int.from_bytes(key[-8:], "big")
            found[(owner, slot)] = read_acceptor_slot(_Record(key, raw), owner, slot)
        return found

    def held_effects(self) -> int:
        return len(self._held)

    def operations_in_flight(self) -> int:
        if self.state is PeerState.DOWN:
            return 0
        return (
            self.coordinator.operations_in_flight() + self.epoch_coordinator.operations_in_flight()
        )


class _Record:
    """A StorageReader over one durable record."""

    __slots__ = ("_key", "_raw")

    def __init__(self, key: bytes, raw: bytes) -> None:
        self._key, self._raw = key, raw

    def get(self, key: bytes) -> bytes | None:
        return self._raw if key == self._key else None


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
