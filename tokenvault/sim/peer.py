"""One simulated peer: the real `PeerCore` (every protocol core, routing, persist-before-send,
timers and the client operations, exactly as node.py runs them) over a MemoryStore, driven on
virtual time.

Rules (the driver's part, as node.py's):
- Every input reaches the core at once and its `Step` is acted on at once: events recorded and
  counted, messages sent on the simulated network, messages to this peer itself given back as a
  new input (after no delay), answers given to the clients after the client latency.
- Durability: a step that asks for it (or leaves anything unsynced) schedules one sync event
  after a drawn fsync latency (group commit: one pending at a time); the sync makes the store
  durable and reports the ticket to the core, which releases what waited.
- One wake-up event is kept scheduled at the core's `next_due()`.
- A crash calls `store.crash()` (staged writes are lost) and drops the core with its memory:
  operations in flight (their clients see the connection reset: outcome indeterminate), held
  outputs, the failure detector's view, hints in flight, the anti-entropy pass, the known
  epochs. A restart builds a new core over the same store (what a process does when it starts).
  Events of an earlier life (wake-ups, syncs, local messages) are ignored.
- A paused peer runs nothing: every input that reaches it waits, in order, until it resumes. A
  down peer drops what reaches it and refuses clients.
- A fault the core contained (an exception in a core) is recorded as a `CoreError`: always a
  violation of the run.
- Aimed crashes (`arm_crash`) strike at the next moment of their kind: a staged write, a repair
  write (a hint or anti-entropy insert staged here, or sent from here), a client write sent.
- A full disk (`fill_disk` .. `free_disk`) fails every sync, as node.py's syncer sees ENOSPC:
  the core hears `on_durability_failed` (what waited fails over), the writes stay staged, and
  the sync is retried every DISK_FULL_RETRY_S until one succeeds.
- A lost write-ahead log tail (`crash_losing_wal_tail`) is a crash after which the store is
  found damaged: the restart replaces it with an empty one, as node.py does with a store that
  LevelDB reports corrupt (the synced writes of its lost tail go with it).
- Admission, as node.py's: a batch the core does not admit (`PeerCore.admits`: a stranger to
  its learned ring may send only heartbeats, join requests, ring fetches and decided
  memberships) is refused (`refuse-batch`). Judged when the batch is taken in, against the
  ring the core holds then.
- Membership changes (`admin_request`) are the operator's, not a client's: answered by a
  `RingDone` to their own sink (or `Refused` when down, `Reset` when the peer crashed).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenvault.quorum.client_operations import ChangeMembership, Inspected
from tokenvault.quorum.effects import RingDone
from tokenvault.quorum.messages import (
    Accept,
    Envelope,
    EpochValue,
    InsertRequest,
    Mapping,
    Message,
    Origin,
    RingDecide,
    RingVote,
)
from tokenvault.quorum.peer_core import PeerCore, PeerLimits, Step
from tokenvault.quorum.quorum_config import QuorumConfig
from tokenvault.quorum.records import MAPPING_PREFIX
from tokenvault.ring.membership import Membership
from tokenvault.sim.client import (
    SIM_SECRET,
    AnswerSink,
    ClientAnswer,
    ClientRequest,
    Refused,
    Reset,
    operation_of,
)
from tokenvault.sim.durable import DurableView
from tokenvault.sim.engine import Action, Engine
from tokenvault.sim.faults import StrikeOn
from tokenvault.sim.network import describe_message, short_token
from tokenvault.sim.observer import Observer, is_watched
from tokenvault.store.memory_store import MemoryStore

AdminAnswer = RingDone | Refused | Reset
AdminSink = Callable[[AdminAnswer], None]
DEFERRED_INPUTS_MAX = 100_000  # inputs waiting for a paused peer
DISK_FULL_RETRY_S = 0.5  # a failed sync is tried again after this (node.py backs off to 1 s)


class PeerState(enum.Enum):
    UP = "up"
    PAUSED = "paused"
    DOWN = "down"


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreError:
    """An exception that escaped a core (the core contained it): always a violation."""

    peer: str
    at_s: float
    input: str
    error: str
    location: str


@dataclass(slots=True)
class PeerStats:
    crashes: int = 0
    restarts: int = 0
    wipes: int = 0  # crashes that lost the whole store
    lost_writes: int = 0  # staged writes a crash threw away
    dropped_held: int = 0  # held outputs a crash threw away
    pauses: int = 0
    deferred_inputs: int = 0  # inputs that waited for a paused peer
    syncs: int = 0
    syncs_failed: int = 0  # syncs that failed on a full disk
    stores_replaced: int = 0  # restarts with an empty store after a lost log tail
    refused: int = 0
    reset: int = 0
    ticks: int = 0
    strikes: dict[str, int] = field(default_factory=dict)  # aimed crashes by StrikeOn
    hints_lost_in_flight: int = 0  # hint deliveries in flight when the peer crashed
    tokenize_relearned: int = 0  # fenced tokenize writes that learned the epoch and retried
    bit_flips: int = 0  # bits flipped in its stored records while it was down


def is_repair_insert(message: Message) -> bool:
    """A hint delivery or an anti-entropy push, as opposed to a client's write or read repair."""
    return isinstance(message, InsertRequest) and message.origin is not Origin.COORDINATOR


class SimPeer:
    def __init__(
        self,
        peer_id: str,
        *,
        engine: Engine,
        bootstrap: Membership,
        quorum: QuorumConfig,
        fsync_s: tuple[float, float],
        client_latency_s: float,
        send: Callable[[Envelope], None],
        owners: tuple[str, ...] = (),
        observer: Observer | None = None,
        limits: PeerLimits = PeerLimits(),
        store: MemoryStore | None = None,
        join_address: str | None = None,
    ) -> None:
        self.peer_id = peer_id
        self.join_address = join_address  # started to join: asks to be added by itself
        self.store = MemoryStore() if store is None else store
        self.durable = DurableView(self.store)
        self.wiped = False  # its store was wiped and it has not restarted yet
        # Mappings it held durably until a disk fault took them (a wipe took the store, a bit
        # flipped in the record): acknowledged copies that the disk lost, not copies that were
        # never durable (the checker's W count and hint rule).
        self.lost_mappings: dict[tuple[str, str], Mapping] = {}
        self.flipped: dict[tuple[str, str], Mapping] = {}  # records a bit flip corrupted
        self.state = PeerState.UP
        self.incarnation = 1
        self.stats = PeerStats()
        self.core_errors: list[CoreError] = []
        self.core_events: dict[str, int] = {}
        self.observer = (
            observer if observer is not None else Observer(replica_count=quorum.replica_count)
        )
        self._engine = engine
        self._bootstrap = bootstrap
        self._quorum = quorum
        self._owners = owners
        self._limits = limits
        self._fsync_s = fsync_s
        self._client_latency_s = client_latency_s
        self._send = send
        self._rng = engine.rng(f"peer/{peer_id}/fsync")
        self._epoch_rng = engine.rng(f"peer/{peer_id}/epoch")
        self._staged_watched: list[tuple[bytes, bytes | None]] = []
        self._sync_pending = False
        self._wake_at = float("inf")
        self._deferred: list[tuple[str, Action, int | None]] = []
        self._clients: dict[str, AnswerSink] = {}  # client op id -> its sink
        self._admins: dict[str, AdminSink] = {}  # membership change op id -> its sink
        self._armed: StrikeOn | None = None
        self.disk_full = False
        self._relearned_before = 0  # tokenize relearns of earlier lives
        self.core = self._build_core()
        self._schedule_wake()

    def _build_core(self) -> PeerCore:
        """Every core, from the durable store (what a process builds when it starts)."""
        return PeerCore(
            peer_id=self.peer_id,
            bootstrap=self._bootstrap,
            quorum=self._quorum,
            owners=self._owners,
            storage=self.store,
            secret=SIM_SECRET,
            rng=self._epoch_rng,
            now=self._engine.now_s,
            limits=self._limits,
            join_address=self.join_address,
        )

    # -- inputs --------------------------------------------------------------------------------

    def receive(self, envelope: Envelope) -> None:
        """A message from the network."""
        text = f"deliver {envelope.source}->{self.peer_id} {describe_message(envelope.message)}"
        self._enter(text, functools.partial(self._on_messages, envelope.source, [envelope.message]))

    def client_request(self, request: ClientRequest, sink: AnswerSink) -> None:
        """A client's request reaches this peer."""
        text = f"request {self.peer_id} {request.kind.value} op={request.op_id} {request.owner}"
        if self.state is PeerState.DOWN:
            self.stats.refused += 1
            self._engine.record(f"refuse {self.peer_id} op={request.op_id}")
            self._answer(sink, Refused(op_id=request.op_id))
            return
        self._enter(text, lambda: self._on_client_request(request, sink))

    def admin_request(self, operation: ChangeMembership, sink: AdminSink) -> None:
        """The operator's membership change reaches this peer."""
        if self.state is PeerState.DOWN:
            self._engine.record(f"refuse {self.peer_id} op={operation.op_id}")
            self._admin_answer(sink, Refused(op_id=operation.op_id))
            return
        text = f"request {self.peer_id} ring-change op={operation.op_id}"
        self._enter(text, lambda: self._on_admin_request(operation, sink))

    def _on_admin_request(self, operation: ChangeMembership, sink: AdminSink) -> None:
        self._admins[operation.op_id] = sink
        self._act(self.core.start(operation, self._engine.now_s))

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

    def _on_messages(self, source: str, messages: list[Message]) -> None:
        if not self.core.admits(source, messages):
            # the node refuses such a batch (node.py): it never reaches the core
            self._engine.record(f"refuse-batch {source}->{self.peer_id} not-a-ring-peer")
            return
        for message in messages:
            if isinstance(message, Accept):
                self.observer.on_accept_delivered(self.peer_id, message)
        step = self.core.receive(source, messages, self._engine.now_s)
        if step.writes and self._armed is StrikeOn.REPAIR:
            repair = next((m for m in messages if is_repair_insert(m)), None)
            if repair is not None:
                self._strike(StrikeOn.REPAIR, repair.op_id)
        self._act(step)

    def _on_client_request(self, request: ClientRequest, sink: AnswerSink) -> None:
        self._clients[request.op_id] = sink
        self._act(self.core.start(operation_of(request, self._engine.now_s), self._engine.now_s))

    def _on_wake(self, at_s: float) -> None:
        if at_s == self._wake_at:
            self._wake_at = float("inf")
        now = self._engine.now_s
        if now >= self.core.next_due():
            step = self.core.advance(now)
            self.stats.ticks += step.ticked
            self._act(step)
        self._schedule_wake()

    def _on_sync(self) -> None:
        self._sync_pending = False
        if self.disk_full:
            self._sync_failed()
            return
        written = self.store.sync()
        if self._staged_watched:
            watched, self._staged_watched = self._staged_watched, []
            self.observer.on_durable(self.peer_id, watched, self._engine.now_s)
        self.stats.syncs += 1
        step = self.core.on_durable(self.core.staged_ticket, self._engine.now_s)
        released = len(step.messages) + len(step.local) + len(step.answers)
        self._engine.record(f"synced {self.peer_id} writes={written} released={released}")
        self._act(step)

    def _sync_failed(self) -> None:
        """A sync on a full disk: what waited for it fails; the writes stay staged."""
        self.stats.syncs_failed += 1
        self._engine.record(f"sync-failed {self.peer_id} disk-full")
        self._sync_pending = True  # the retry below is the one pending sync
        self._engine.after(DISK_FULL_RETRY_S, self._bound(f"sync {self.peer_id}", self._on_sync))
        self._act(self.core.on_durability_failed(self.core.staged_ticket, self._engine.now_s))

    # -- acting on a step ----------------------------------------------------------------------

    def _act(self, step: Step) -> None:
        now = self._engine.now_s
        self._record_events(step)
        for fault in step.faults:
            self.core_errors.append(
                CoreError(
                    peer=self.peer_id,
                    at_s=now,
                    input=f"{fault.core} {fault.input}",
                    error=f"{fault.error_type}: {fault.message}",
                    location=fault.location,
                )
            )
            self._engine.record(f"core-exception {self.peer_id} {fault.core} {fault.error_type}")
        for attempt in step.attempts:
            self.observer.on_write_attempt(attempt)
        if step.writes:
            self._staged_watched.extend(w for w in step.writes if is_watched(w[0]))
            if self._armed is StrikeOn.STAGED_WRITE:
                self._strike(StrikeOn.STAGED_WRITE)
        if step.sync_ticket is not None or self.store.has_unsynced():
            self._request_sync()
        for envelope in step.messages:
            self._observe_sent(envelope.message)
            self._send(envelope)
        for message in step.local:
            self._observe_sent(message)
            text = f"deliver {self.peer_id}->{self.peer_id} {describe_message(message)}"
            action = functools.partial(self._on_messages, self.peer_id, [message])
            self._engine.after(0.0, self._bound(text, action))
        for answer in step.answers:
            if isinstance(answer, RingDone):
                admin = self._admins.pop(answer.op_id, None)
                if admin is not None:
                    self._admin_answer(admin, answer)
                continue
            sink = self._clients.pop(answer.op_id, None)
            if sink is not None:
                assert not isinstance(answer, Inspected), "clients read and write only"
                self._answer(sink, answer)
        self.stats.tokenize_relearned = (
            self._relearned_before + self.core.statistics().tokenize_relearned
        )
        self._schedule_wake()

    def _record_events(self, step: Step) -> None:
        for event in step.events:
            name = event.name
            if name == "read_repair":
                name += "_blocking" if ("blocking", 1) in event.details else "_background"
            self.core_events[name] = self.core_events.get(name, 0) + 1
            if name == "epoch_known":
                self._engine.record(f"epoch-known {self.peer_id} {event.owner} {event.epoch}")
                continue
            details = " ".join(f"{k}={v}" for k, v in event.details if k != "token_prefix")
            self._engine.record(
                f"event {self.peer_id} {event.name} op={event.request_id} {details}".rstrip()
            )

    def _observe_sent(self, message: Message) -> None:
        ring = self.observer.ring
        if isinstance(message, Accept):
            self.observer.on_accept_sent(message.owner, message.value)
        elif isinstance(message, RingDecide) and ring is not None:
            ring.on_decided_sent(self.peer_id, message.value, self._engine.now_s)
        elif isinstance(message, RingVote) and message.learned is not None and ring is not None:
            ring.on_decided_sent(self.peer_id, message.learned, self._engine.now_s)
        elif isinstance(message, InsertRequest) and self._armed is not None:
            armed = self._armed
            repair = is_repair_insert(message)
            if (armed is StrikeOn.CLIENT_WRITE and not message.repair) or (
                armed is StrikeOn.REPAIR and repair
            ):
                self._strike(armed, message.op_id)

    def _request_sync(self) -> None:
        if self._sync_pending:
            return
        self._sync_pending = True
        delay_s = self._rng.uniform(*self._fsync_s)
        self._engine.after(delay_s, self._bound(f"sync {self.peer_id}", self._on_sync))

    def _schedule_wake(self) -> None:
        due = self.core.next_due()
        if due < self._wake_at:
            self._wake_at = due
            at_s = max(due, self._engine.now_s)
            action = functools.partial(self._on_wake, due)
            self._engine.at(at_s, self._bound(f"wake {self.peer_id}", action))

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

    def _admin_answer(self, sink: AdminSink, answer: AdminAnswer) -> None:
        self._engine.after(self._client_latency_s, lambda: sink(answer))

    # -- faults --------------------------------------------------------------------------------

    def crash(self) -> None:
        if self.state is PeerState.DOWN:
            return
        lost = self.store.crash()
        held = self.core.statistics().held_outputs
        self.stats.crashes += 1
        self.stats.lost_writes += lost
        self.stats.dropped_held += held
        hints_in_flight = sum(h.in_flight for h in self.core.hints.statistics())
        self.stats.hints_lost_in_flight += hints_in_flight
        self._relearned_before = self.stats.tokenize_relearned
        waiting = sorted(self._clients.items())
        admins = sorted(self._admins.items())
        self._engine.record(
            f"crash {self.peer_id} lost_writes={lost} held={held}"
            f" deferred={len(self._deferred)} ops_reset={len(waiting)}"
            f" hints_in_flight={hints_in_flight}"
        )
        self._deferred.clear()
        self._clients.clear()
        self._admins.clear()
        self._staged_watched.clear()
        self._sync_pending = False
        self._wake_at = float("inf")
        self._armed = None
        self.incarnation += 1
        self.state = PeerState.DOWN
        for op_id, sink in waiting:
            self.stats.reset += 1
            self._answer(sink, Reset(op_id=op_id))
        for op_id, admin in admins:
            self._admin_answer(admin, Reset(op_id=op_id))

    def wipe(self, *, lost_wal_tail: bool = False) -> None:
        """A crash that loses the whole store: a replaced disk, or (`lost_wal_tail`) a store
        found damaged at restart and moved aside, as node.py does. The peer restarts empty."""
        if self.state is PeerState.DOWN:
            return
        self.crash()
        held = len(self.store.durable_items(b""))
        self.lost_mappings.update(self.durable.mappings())
        self.store = MemoryStore()
        self.durable = DurableView(self.store)
        self.wiped = True  # until it restarted
        if lost_wal_tail:
            self.stats.stores_replaced += 1
        else:
            self.stats.wipes += 1
        self.observer.on_wipe(self.peer_id)
        cause = "lose-wal-tail" if lost_wal_tail else "wipe"
        self._engine.record(f"{cause} {self.peer_id} records_lost={held}")

    def flip_bit(self, draw: int) -> None:
        """One bit of one durable mapping record flips while the peer is down (`draw` picks
        which record and which bit); called off when it holds no mapping."""
        if self.state is not PeerState.DOWN:
            return
        records = self.store.durable_items(MAPPING_PREFIX)
        if not records:
            self._engine.record(f"bit-flip {self.peer_id} called off: no mapping held")
            return
        key, raw = records[draw % len(records)]
        bit = (draw // len(records)) % (8 * len(raw))
        owner_raw, _, token_raw = key[len(MAPPING_PREFIX) :].partition(b"\x00")
        owner, token = owner_raw.decode(), token_raw.decode()
        held = self.durable.mapping(owner, token)
        if held is not None:
            self.lost_mappings[(owner, token)] = held
            self.flipped[(owner, token)] = held
        self.store.flip_bit(key, bit)
        self.stats.bit_flips += 1
        self._engine.record(f"bit-flip {self.peer_id} token={short_token(token)} bit={bit}")

    def holds_unrepaired_flip(self) -> bool:
        """Whether a record a bit flip corrupted is still not the mapping it held."""
        return any(
            self.durable.mapping(owner, token) != held
            for (owner, token), held in self.flipped.items()
        )

    def fill_disk(self) -> None:
        if not self.disk_full:
            self.disk_full = True
            self._engine.record(f"disk-full {self.peer_id}")

    def free_disk(self) -> None:
        if self.disk_full:
            self.disk_full = False
            self._engine.record(f"disk-freed {self.peer_id}")

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
        self.wiped = False
        self.core = self._build_core()
        durable = len(self.store.durable_items(MAPPING_PREFIX))
        hints = self.core.hints.pending_total()
        self._engine.record(f"restart {self.peer_id} durable_mappings={durable} hints={hints}")
        self._schedule_wake()

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

    def known_epoch(self, owner: str) -> EpochValue:
        return self.core.known_epoch(owner)

    def down_peers(self) -> frozenset[str]:
        return self.core.down_peers()

    def preference_list(self, owner: str) -> tuple[str, ...]:
        return self.core.preference_list(owner)

    def held_effects(self) -> int:
        if self.state is PeerState.DOWN:
            return 0
        return self.core.statistics().held_outputs

    def operations_in_flight(self) -> int:
        if self.state is PeerState.DOWN:
            return 0
        return self.core.operations_in_flight()
