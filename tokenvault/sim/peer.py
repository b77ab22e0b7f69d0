"""One simulated peer: a MemoryStore, the real Replica and Coordinator cores, and the driver rules
of node.py, on virtual time.

Rules (the same as node.py's):
- Writes are staged right after each core call, before the peer takes any other input, so the
  cores' next reads see them.
- Persist before send: an Effects with writes, and every Effects of the replica (even one that
  wrote nothing: what it read may be staged and not yet durable), is held until the store is
  durable; then its timers are armed, its messages sent and its replies given.
- fsync takes virtual time: the first held Effects schedules one sync event (group commit);
  when it fires, `store.sync()` makes everything staged durable and every held Effects leaves.
- A crash calls `store.crash()` (staged writes are lost), drops the held Effects, the pending
  sync and the coordinator's operations (their clients see the connection reset: outcome
  indeterminate). A restart builds a new Replica and Coordinator over the same store: the
  durable state survives. Events of an earlier life (timers, syncs) are ignored.
- A paused peer runs nothing: every input that reaches it (message, client request, timer,
  sync) waits, in order, until it resumes. A down peer drops what reaches it and refuses
  clients.
- An exception from a core is recorded (a violation) and the peer crashes, as the process would.
"""

from __future__ import annotations

import enum
import functools
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from tokenvault.quorum.coordinator import Coordinator, CoordinatorLimits
from tokenvault.quorum.effects import Effects, Event, ReadDone, Timer, WriteDone
from tokenvault.quorum.messages import (
    Envelope,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
    ReadReply,
    ReadRequest,
)
from tokenvault.quorum.quorum_config import QuorumConfig
from tokenvault.quorum.records import MAPPING_PREFIX, decode_mapping, mapping_key
from tokenvault.quorum.replica import Replica
from tokenvault.ring.hash_ring import HashRing
from tokenvault.sim.engine import Action, Engine
from tokenvault.sim.network import describe_message, short_token
from tokenvault.store.memory_store import MemoryStore

DEFERRED_INPUTS_MAX = 100_000  # inputs waiting for a paused peer
HELD_EFFECTS_MAX = 100_000  # Effects waiting for durability


class PeerState(enum.Enum):
    UP = "up"
    PAUSED = "paused"
    DOWN = "down"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRequest:
    """A tokenize (mappings) or detokenize (tokens) as the public API hands it to a peer."""

    op_id: str
    owner: str
    mappings: tuple[Mapping, ...] = ()
    tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.mappings) == bool(self.tokens):
            raise ValueError("a client request is either a tokenize or a detokenize")


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """The peer was down: nothing happened."""

    op_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reset:
    """The peer crashed with the operation in flight: it may or may not have happened."""

    op_id: str


ClientAnswer = WriteDone | ReadDone | Refused | Reset
AnswerSink = Callable[[ClientAnswer], None]


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
    ) -> None:
        self.peer_id = peer_id
        self.store = MemoryStore()
        self.state = PeerState.UP
        self.incarnation = 1
        self.stats = PeerStats()
        self.core_errors: list[CoreError] = []
        self.core_events: dict[str, int] = {}
        self._engine = engine
        self._ring = ring
        self._quorum = quorum
        self._limits = limits
        self._fsync_s = fsync_s
        self._client_latency_s = client_latency_s
        self._send = send
        self._rng = engine.rng(f"peer/{peer_id}/fsync")
        self._preference_lists: dict[str, tuple[str, ...]] = {}
        self._held: list[Effects] = []
        self._sync_pending = False
        self._deferred: list[tuple[str, Action, int | None]] = []
        self._waiters: dict[str, AnswerSink] = {}
        self._crash_armed = False
        self.replica, self.coordinator = self._build_cores()

    def _build_cores(self) -> tuple[Replica, Coordinator]:
        replica = Replica(peer_id=self.peer_id, storage=self.store)
        coordinator = Coordinator(peer_id=self.peer_id, quorum=self._quorum, limits=self._limits)
        return replica, coordinator

    # -- inputs --------------------------------------------------------------------------------

    def receive(self, envelope: Envelope) -> None:
        """A message from the network (or from this peer itself)."""
        text = f"deliver {envelope.source}->{self.peer_id} {describe_message(envelope.message)}"
        self._enter(text, lambda: self._on_message(envelope.source, envelope.message))

    def client_request(self, request: ClientRequest, sink: AnswerSink) -> None:
        """A client's request reaches this peer."""
        kind = "tokenize" if request.mappings else "detokenize"
        text = f"request {self.peer_id} {kind} op={request.op_id} {request.owner}"
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

    # -- the driver ----------------------------------------------------------------------------

    def _on_message(self, source: str, message: Message) -> None:
        """Route as node.py does: requests to the replica, their answers to the coordinator.
        The epoch (Paxos) and inspection messages are not part of this simulation yet."""
        if isinstance(message, InsertRequest | ReadRequest):
            effects = self._call_core("replica", lambda: self.replica.on_message(source, message))
            if effects is not None:
                self._after_core(effects, from_replica=True)
        elif isinstance(message, InsertReply | ReadReply):
            effects = self._call_core(
                "coordinator", lambda: self.coordinator.on_message(source, message)
            )
            if effects is not None:
                self._after_core(effects, from_replica=False)
        else:
            self._engine.record(f"unrouted {self.peer_id} {type(message).__name__}")

    def _on_client_request(self, request: ClientRequest, sink: AnswerSink) -> None:
        replicas = self.preference_list(request.owner)
        now = self._engine.now_s
        if request.mappings:
            effects = self._call_core(
                "start_write",
                lambda: self.coordinator.start_write(
                    op_id=request.op_id,
                    owner=request.owner,
                    replicas=replicas,
                    mappings=request.mappings,
                    now=now,
                ),
            )
        else:
            effects = self._call_core(
                "start_read",
                lambda: self.coordinator.start_read(
                    op_id=request.op_id,
                    owner=request.owner,
                    replicas=replicas,
                    tokens=request.tokens,
                    now=now,
                ),
            )
        if effects is None:
            self._answer(sink, Reset(op_id=request.op_id))
            return
        self._waiters[request.op_id] = sink
        self._after_core(effects, from_replica=False)

    def _on_timer(self, timer: Timer) -> None:
        now = self._engine.now_s
        effects = self._call_core("timer", lambda: self.coordinator.on_timer(timer, now))
        if effects is not None:
            self._after_core(effects, from_replica=False)

    def _after_core(self, effects: Effects, *, from_replica: bool) -> None:
        """Stage at once; then release, or hold until the next sync (persist before send)."""
        self.store.stage(effects.writes)
        self._count_events(effects.events)
        if effects.writes and self._crash_armed:
            self._crash_armed = False
            self._engine.after(0.0, self._bound(f"aimed-crash {self.peer_id}", self.crash))
        if self.store.has_unsynced():
            self._request_sync()
        if self._must_wait_for_sync(effects, from_replica=from_replica):
            assert len(self._held) < HELD_EFFECTS_MAX, "held effects overflow"
            self._held.append(effects)
            return
        self._release(effects)

    def _must_wait_for_sync(self, effects: Effects, *, from_replica: bool) -> bool:
        """node.py's rule: wait when this Effects wrote, or came from the replica, and anything
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
        for envelope in effects.messages:
            assert envelope.source == self.peer_id
            if envelope.destination == self.peer_id:
                text = (
                    f"deliver {self.peer_id}->{self.peer_id} {describe_message(envelope.message)}"
                )
                action = functools.partial(self._on_message, self.peer_id, envelope.message)
                engine.after(0.0, self._bound(text, action))
            else:
                self._send(envelope)
        for reply in effects.replies:
            assert isinstance(reply, WriteDone | ReadDone), "only writes and reads are started"
            sink = self._waiters.pop(reply.op_id, None)
            if sink is not None:
                self._answer(sink, reply)

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
        waiting = sorted(self._waiters.items())
        self._engine.record(
            f"crash {self.peer_id} lost_writes={lost} held={len(self._held)}"
            f" deferred={len(self._deferred)} ops_reset={len(waiting)}"
        )
        self._held.clear()
        self._deferred.clear()
        self._waiters.clear()
        self._sync_pending = False
        self._crash_armed = False
        self.incarnation += 1
        self.state = PeerState.DOWN
        for op_id, sink in waiting:
            self.stats.reset += 1
            self._answer(sink, Reset(op_id=op_id))

    def arm_crash(self) -> None:
        """An aimed crash: strike right after the next staged write (before it is durable)."""
        if self.state is PeerState.UP:
            self._crash_armed = True
            self._engine.record(f"arm-crash {self.peer_id}")

    def restart(self) -> None:
        if self.state is not PeerState.DOWN:
            return
        self.state = PeerState.UP
        self.stats.restarts += 1
        self.replica, self.coordinator = self._build_cores()
        durable = len(self.store.durable_items(MAPPING_PREFIX))
        self._engine.record(f"restart {self.peer_id} durable_mappings={durable}")

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
        self._crash_armed = False

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

    def durably_holds(self, mapping: Mapping) -> bool:
        key = mapping_key(mapping.owner, mapping.token)
        for found_key, raw in self.store.durable_items(key):
            if found_key == key:
                return decode_mapping(mapping.owner, mapping.token, raw) == mapping
        return False

    def durable_mappings(self) -> dict[tuple[str, str], Mapping]:
        """Every mapping this peer holds durably, by (owner, token)."""
        held: dict[tuple[str, str], Mapping] = {}
        for key, raw in self.store.durable_items(MAPPING_PREFIX):
            owner_raw, _, token_raw = key[len(MAPPING_PREFIX) :].partition(b"\x00")
            owner, token = owner_raw.decode(), token_raw.decode()
            held[(owner, token)] = decode_mapping(owner, token, raw)
        return held

    def held_effects(self) -> int:
        return len(self._held)

    def operations_in_flight(self) -> int:
        return 0 if self.state is PeerState.DOWN else self.coordinator.operations_in_flight()


def describe_answer(answer: ClientAnswer) -> str:
    """A canonical text of what a client received."""
    if isinstance(answer, Refused):
        return f"refused op={answer.op_id}"
    if isinstance(answer, Reset):
        return f"reset op={answer.op_id}"
    if isinstance(answer, WriteDone):
        outcome = "ok" if answer.failure is None else answer.failure.value
        return f"write-done op={answer.op_id} {outcome}"
    outcome = "ok" if answer.failure is None else answer.failure.value
    found = ",".join(
        "-" if m is None else f"{short_token(m.token)}:{m.value}" for m in answer.mappings
    )
    return f"read-done op={answer.op_id} {outcome} [{found}]"
