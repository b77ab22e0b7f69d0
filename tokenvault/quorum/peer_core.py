"""One whole peer as a sans-IO state machine: every protocol core wired together, the one thing
both drivers run (node.py on trio, LevelDB and sockets; sim/peer.py on virtual time and a
MemoryStore). It is to this project what `RawNode` is to etcd's raft.

Theory of operation:
- Inputs: `receive` (a batch of peer messages, or messages this peer sent itself), `start` (a
  client operation), `advance` (time passed: due timers and the heartbeat tick), and the driver's
  report on the store, `on_durable` or `on_durability_failed`. Each returns a `Step`.
- A `Step` says what to log and count (`events`), what to send now (`messages`; `local` are
  messages to this peer itself, which the driver gives back through `receive` as a new input),
  which client operations finished (`answers`) and, in `sync_ticket`, that something waits for
  durability: the driver makes everything staged so far durable, then calls `on_durable(ticket)`.
  `next_due()` is when the driver must call `advance` next.
- Writes: the writes of each core call are staged in the store at once, before the next core
  call, so the next read sees them.
- Persist before send: the output of a core call that wrote, or that answers out of storage
  (replica, acceptor, anti-entropy: what it read may be staged and not yet durable), is held
  until everything staged up to then is durable; everything else leaves at once. An
  acknowledgement therefore always means fsync'd.
- Timers are kept here, bounded, each routed back to the core that set it.
- Client operations are small state machines: a tokenize computes its tokens under the epoch
  this peer knows, writes them, and when a replica answers FENCED learns the epoch from a
  majority and writes again, at most `tokenize_attempts_max` writes. Every successful epoch
  operation and every Decide raises the known epoch; it never goes back.
- Recovery (recovery.py): `state` is "serving" or "recovering", the one place both drivers,
  /v1/admin/node and /readyz read it from. A peer that is not serving answers peer requests that
  would vote or count toward a quorum with an explicit refusal (recovery.py `refusal`), and
  client operations with RECOVERING, but for owner inspections and detokenizes: a read it
  coordinates counts only the other replicas' answers (its own replica refuses), so it is as
  safe as through any peer; a tokenize or rotate would act on epochs it has not learned yet,
  and a rotate's ballots on a proposer that forgot its own; heartbeats and RecoveryQuery
  carry store identities, noted (and told to the proposer, which drops answers of a replaced
  store) before anything else of the batch. It serves once the `serving` record is durable.
- Transfers (transfer.py): while a change is pending, this peer fills the owners it is a new
  replica of, each once the owner is fenced (every replica of both sets reported the joint
  version), and resumes them from their records at its first serving tick; its heartbeats say
  when all of them committed (`transfers_done`), and a voter proposes the finish once every
  target said so. Transfers of earlier changes are forgotten.
- Containment: an exception from a core (a violated invariant, a failed store) drops the input
  that caused it. It is one `core_error` or `storage_error` event (level error) and one entry of
  `Step.faults`; a client operation it interrupts is answered with a failure; the peer goes on.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from tokenvault.quorum.acceptor import Acceptor
from tokenvault.quorum.anti_entropy import AntiEntropy, AntiEntropyLimits
from tokenvault.quorum.client_operations import (
    ChangeMembership,
    ClientAnswer,
    ClientOperation,
    Detokenize,
    Inspected,
    InspectOwner,
    LearnEpoch,
    RotateEpoch,
    Tokenize,
    TokenizeAttempt,
    Tokenized,
    failed_answer,
)
from tokenvault.quorum.coordinator import Coordinator, CoordinatorLimits
from tokenvault.quorum.dropping import DropLimits, Dropping, DropView
from tokenvault.quorum.effects import (
    ClientReply,
    Effects,
    EpochDone,
    Event,
    Failure,
    ReadDone,
    RingDone,
    RingOutcome,
    Timer,
    TimerKind,
    Write,
    WriteDone,
)
from tokenvault.quorum.epoch_coordinator import EpochCoordinator, EpochLimits, RandomSource
from tokenvault.quorum.failure_detector import DetectorLimits, FailureDetector, PeerState
from tokenvault.quorum.hinted_handoff import HintedHandoff, HintLimits
from tokenvault.quorum.invariants import raised_at
from tokenvault.quorum.messages import (
    GENESIS,
    Decide,
    Envelope,
    EpochValue,
    Heartbeat,
    InsertReply,
    Mapping,
    Message,
    OwnerInspect,
    OwnerView,
    RecoveryQuery,
    RecoveryReport,
    RingAccept,
    RingDecide,
    RingFetch,
    RingJoin,
    RingPrepare,
    RingVote,
)
from tokenvault.quorum.placement import OwnerPlacement, reachable_in_each
from tokenvault.quorum.quorum_config import QuorumConfig
from tokenvault.quorum.records import StorageCorrupt
from tokenvault.quorum.recovery import (
    Phase,
    Recovery,
    RecoveryLimits,
    RecoveryProgress,
    refusal,
)
from tokenvault.quorum.replica import Replica
from tokenvault.quorum.ring_placement import RingPlacement, is_drained
from tokenvault.quorum.ring_register import RingLimits, RingRegister
from tokenvault.quorum.routing import Destination, route
from tokenvault.quorum.sealing import Sealer
from tokenvault.quorum.transfer import TransferLimits, Transfers, TransferView
from tokenvault.ring.membership import AddMember, FinishChange, Membership, MembershipChange
from tokenvault.ring.transfer_plan import plan_transfers
from tokenvault.store.storage import Storage, StorageError

# What a peer outside this peer's learned ring may send (`PeerCore.admits`).
STRANGER_MESSAGE_TYPES = (Heartbeat, RingJoin, RingFetch, RingDecide)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerLimits:
    coordinator: CoordinatorLimits = field(default_factory=CoordinatorLimits)
    epoch: EpochLimits = field(default_factory=EpochLimits)
    detector: DetectorLimits = field(default_factory=DetectorLimits)
    hints: HintLimits = field(default_factory=HintLimits)
    anti_entropy: AntiEntropyLimits = field(default_factory=AntiEntropyLimits)
    recovery: RecoveryLimits = field(default_factory=RecoveryLimits)
    ring: RingLimits = field(default_factory=RingLimits)
    transfer: TransferLimits = field(default_factory=TransferLimits)
    dropping: DropLimits = field(default_factory=DropLimits)
    anti_entropy_enabled: bool = True
    # The replica's digests built page by page by the driver after start (merkle.py), not at
    # once in the constructor: node.py, so that a large store serves at once.
    digests_built_in_pages: bool = False
    tokenize_attempts_max: int = 3  # writes of one tokenize: the first, and one per FENCED
    inspect_timeout_s: float = 1.5  # an owner inspection answers with the views it has by then
    timers_max: int = 100_000  # pending timers; more are dropped and counted
    held_outputs_max: int = 100_000  # outputs waiting for durability; beyond, their messages
    # are dropped (and counted): peers resend, and client answers are always kept
    client_operations_max: int = 100_000  # client operations in flight; more are OVERLOADED
    # A client operation still unanswered this long after its start answers INTERNAL_ERROR: a
    # last resort (the cores' own deadlines end every operation far sooner) so that no request
    # waits forever, not even when a core failed or timers were dropped.
    client_deadline_s: float = 60.0
    preference_lists_cached_max: int = 100_000
    token_makers_cached_max: int = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreFault:
    """An exception a core raised; the input that caused it was dropped. `message` is for
    tests and the simulator only: drivers log the type and location, never the text."""

    core: str
    input: str
    error_type: str
    message: str
    location: str
    storage: bool  # a store failure (an operating error), not a bug


@dataclass(slots=True)
class Step:
    """What one input produced; the driver acts on it in this order: log and count `events`;
    send `messages`; give `local` back to `receive` as a new input; deliver `answers`; when
    `sync_ticket` is set, make the store durable, then call `on_durable(sync_ticket)`."""

    messages: list[Envelope] = field(default_factory=list)
    local: list[Message] = field(default_factory=list)
    answers: list[ClientAnswer] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    finished: list[WriteDone | ReadDone | EpochDone] = field(default_factory=list)  # coordinated
    writes: list[Write] = field(default_factory=list)  # staged by this step
    attempts: list[TokenizeAttempt] = field(default_factory=list)
    faults: list[CoreFault] = field(default_factory=list)
    sync_ticket: int | None = None
    ticked: bool = False  # the heartbeat tick ran in this step


@dataclass(frozen=True, slots=True)
class PeerCoreStatistics:
    timers_pending: int
    timers_dropped: int
    held_outputs: int
    held_messages_dropped: int
    client_operations: int
    tokenize_relearned: int  # fenced tokenize writes that learned the epoch and tried again
    core_errors: int
    storage_errors: int


# -- internals --------------------------------------------------------------------------------


class _Core:
    """Which core set a timer (timers go back to it) or produced an output."""

    COORDINATOR = Destination.COORDINATOR.value  # a message's core is its destination's value
    EPOCH_COORDINATOR = Destination.EPOCH_COORDINATOR.value
    INSPECTION = Destination.INSPECTION.value
    RING = Destination.RING.value
    TRANSFER = Destination.TRANSFER.value
    DROPPING = Destination.DROPPING.value


@dataclass(slots=True)
class _Held:
    """The output of one core call, waiting until everything staged up to `ticket` is durable."""

    ticket: int
    core: str
    messages: list[Envelope]
    timers: list[Timer]
    replies: list[ClientReply]


@dataclass(slots=True)
class _Tokenizing:
    operation: Tokenize
    epoch: EpochValue
    writes: int = 0
    tokens: tuple[str, ...] = ()
    mappings: tuple[Mapping, ...] = ()


@dataclass(slots=True)
class _Inspecting:
    operation: InspectOwner
    expected: frozenset[str]
    views: dict[str, OwnerView] = field(default_factory=dict)


_ClientState = _Tokenizing | _Inspecting | ClientOperation


def _operation_of(state: _ClientState) -> ClientOperation:
    return state.operation if isinstance(state, _Tokenizing | _Inspecting) else state


class PeerCore:
    def __init__(
        self,
        *,
        peer_id: str,
        bootstrap: Membership,
        quorum: QuorumConfig,
        owners: Sequence[str],
        storage: Storage,
        secret: bytes,
        rng: RandomSource,
        now: float,
        limits: PeerLimits = PeerLimits(),
        join_address: str | None = None,
    ) -> None:
        """Builds every core from the store: what a peer is when its process starts.
        `bootstrap` is version 1 of the ring (cluster.toml's peers); `join_address`, for a peer
        started to join (not in the bootstrap): the address of its peer links, which it asks
        the bootstrap members to add until it learns a membership that names it."""
        self.peer_id = peer_id
        self.quorum = quorum
        self.limits = limits
        self._storage = storage
        self._owners = tuple(sorted(set(owners)))
        self._bootstrap = bootstrap
        self._join_address = join_address
        self.ring_register = RingRegister(
            peer_id=peer_id, storage=storage, bootstrap=bootstrap, rng=rng, limits=limits.ring
        )
        learned = self.ring_register.learned  # a peer that was removed is no member: it
        # serves no client (NOT_A_MEMBER) until its operator stops it
        # What each peer's heartbeats said: its learned ring version, and the highest version
        # whose transfers into it are all committed.
        self._ring_versions: dict[str, int] = {}
        self._drained_version = 0  # the highest ring version known drained (here or gossiped)
        self._transfers_done: dict[str, int] = {}
        self._ring_ops = 0  # ring operations this peer started itself (finishes, joins)
        self._ring_clients: set[str] = set()  # ChangeMembership operations in flight
        self._ring = self._placement_of(learned)
        replicas_by_owner = self._replicas_by_owner()
        self.recovery = Recovery(
            peer_id=peer_id,
            peers=self._ring_peers(),
            storage=storage,
            rng=rng,
            placements=self._placements(),
            limits=replace(limits.recovery, in_flight_bound_s=limits.epoch.operation_timeout_s),
        )
        self.recovery.resume(now)
        self.sealer = Sealer(secret, cached_max=limits.token_makers_cached_max)
        self.replica = Replica(
            peer_id=peer_id,
            storage=storage,
            sealer=self.sealer,
            digests_built_in_pages=limits.digests_built_in_pages,
        )
        self.acceptor = Acceptor(peer_id=peer_id, storage=storage, store_id=self.recovery.store_id)
        self.transfers = Transfers(
            peer_id=peer_id,
            storage=storage,
            replica=self.replica,
            acceptor=self.acceptor,
            quorum=quorum,
            store_id=self.recovery.store_id,
            holds=self._holds,
            now=now,
            limits=limits.transfer,
        )
        self._transfers_resumed = False  # resumed at the first tick that serves
        self._targets: tuple[int, tuple[str, ...]] = (0, ())  # (version, owners moved here)
        self.hints = HintedHandoff(
            peer_id=peer_id, storage=storage, sealer=self.sealer, limits=limits.hints
        )
        self.coordinator = Coordinator(
            peer_id=peer_id, quorum=quorum, limits=limits.coordinator, hints=self.hints
        )
        self.epoch_coordinator = EpochCoordinator(peer_id=peer_id, rng=rng, limits=limits.epoch)
        self.failure_detector = FailureDetector(
            peer_id=peer_id, peers=self._detector_peers(), now=now, limits=limits.detector
        )
        self.anti_entropy = AntiEntropy(
            peer_id=peer_id,
            storage=storage,
            digests=self.replica.digests,
            records=self.replica,
            decided=self.acceptor,
            replicas_by_owner=replicas_by_owner,
            limits=limits.anti_entropy,
        )
        self.anti_entropy.urgent = self.recovery.phase is Phase.RECOVERING
        self.dropping = Dropping(
            peer_id=peer_id,
            storage=storage,
            replica=self.replica,
            write_quorum=quorum.write_quorum,
            is_replica=lambda owner: self._replicates(self.peer_id, owner),
            limits=limits.dropping,
        )
        self._dropping_for: tuple[int, bool] = (0, False)  # the ring the owners were named for
        self._hints_looked_at = -1  # the last hint's sequence when unplaced ones were forgotten
        # The highest epoch this peer knows per owner: what new tokens are computed under.
        # Stale is safe: replicas fence old epochs and the tokenize learns and retries.
        self._epochs: dict[str, EpochValue] = {
            owner: self.acceptor.active_epoch(owner)
            for owner in owners
            if peer_id in self.placement(owner).replicas
        }
        self._clients: dict[str, _ClientState] = {}  # client op id -> its state
        self._client_started: dict[str, float] = {}  # client op id -> when, oldest first
        self._core_ops: dict[str, str] = {}  # core op id -> the client op it serves
        self._timers: list[tuple[float, int, str, Timer]] = []
        self._timer_sequence = itertools.count()
        self._next_tick = now  # the first heartbeat goes out at once
        self._held: deque[_Held] = deque()
        self._staged_ticket = 0  # core calls that staged writes, so far
        self._durable_ticket = 0  # the highest ticket the driver reported durable
        self._now = now
        self._timers_dropped = 0
        self._held_messages_dropped = 0
        self._tokenize_relearned = 0
        self._core_errors = 0
        self._storage_errors = 0
        self._anti_entropy_passes = 0
        # The ticket of the `serving` record: the peer serves once it is durable.
        self._serving_ticket = 0
        # The ticket of the record that ended `undecided`: its identity goes out once durable.
        self._identity_ticket = 0
        self._startup_writes = self.recovery.startup_writes
        if self._startup_writes:
            # The new identity; a store that serves from the start (an older version's, or a
            # one-peer cluster's) serves at once: what it votes is synced after this record.
            storage.stage(self._startup_writes)
            self._staged_ticket += 1

    # -- queries -------------------------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        """The ring as this peer learned it (the highest version)."""
        return self._ring.membership

    def placement(self, owner: str) -> OwnerPlacement:
        """Where the owner's data lives at the learned ring version (placement.py)."""
        return self._ring.placement(owner)

    def preference_list(self, owner: str) -> tuple[str, ...]:
        """Every replica of the owner at the learned version (both sets during a change)."""
        return self._ring.placement(owner).replicas

    @property
    def ring_drained(self) -> bool:
        """The learned ring is stable and every peer of its last change learned it."""
        return self._ring.membership.stable and self._ring.drained

    def drop_views(self) -> list[DropView]:
        """The owners this peer holds but no longer replicates (dropping.py)."""
        return self.dropping.views()

    def is_member(self) -> bool:
        return self._ring.membership.member(self.peer_id) is not None

    @property
    def state(self) -> str:
        """ "serving", or "recovering" while a fresh store has not heard whether it lost its
        state, while it recovers, and until its `serving` record is durable."""
        durable = self._durable_ticket >= self._serving_ticket
        return "serving" if self.recovery.phase is Phase.SERVING and durable else "recovering"

    def recovery_progress(self) -> RecoveryProgress:
        return self.recovery.progress()

    def transfer_views(self) -> list[TransferView]:
        """The transfers into this peer (transfer.py), for /v1/admin/members."""
        return self.transfers.views(self._now)

    def known_epoch(self, owner: str) -> EpochValue:
        return self._epochs.get(owner, GENESIS)

    def down_peers(self) -> frozenset[str]:
        return frozenset(v.peer for v in self.failure_detector.views() if v.state is PeerState.DOWN)

    def _not_partners(self) -> frozenset[str]:
        """Peers anti-entropy does not start a pass with: those held down, and those not heard
        from since this peer started (a pass with a peer still starting would only time out)."""
        return self.down_peers() | self.failure_detector.never_heard()

    def owners_without_write_quorum(self, owners: Sequence[str]) -> int:
        """How many of ``owners`` have fewer than W replicas this peer could count on now, as
        its failure detector sees them (`_unusable_replicas`: those held down, and its own
        while it recovers): a write it coordinates for such an owner fails at once. No pass
        over ``owners`` while at most N - W peers are unusable (the common case)."""
        unusable = self._unusable_replicas()
        quorum = self.quorum
        if len(unusable) <= quorum.replica_count - quorum.write_quorum:
            return 0
        return sum(
            1
            for owner in owners
            if not reachable_in_each(
                unusable, self.placement(owner).quorum_sets, quorum.write_quorum
            )
        )

    def _unusable_replicas(self) -> frozenset[str]:
        """Replicas an operation should not count on: those held down, and this peer's own
        while it recovers (it refuses reads and writes: ask the others first)."""
        down = self.down_peers()
        return down if self.state == "serving" else down | {self.peer_id}

    def is_peer(self, peer_id: str) -> bool:
        """Another peer of this ring (or, for a joining peer, of the bootstrap): the only
        source a batch may name, but for a join request or a ring fetch."""
        return peer_id != self.peer_id and peer_id in self._detector_peers()

    def next_due(self) -> float:
        """When `advance` must run next: the earliest timer or the next heartbeat tick."""
        due = self._next_tick
        if self._timers and self._timers[0][0] < due:
            due = self._timers[0][0]
        return due

    @property
    def staged_ticket(self) -> int:
        """The ticket of everything staged so far (what a completed sync makes durable)."""
        return self._staged_ticket

    def operations_in_flight(self) -> int:
        return (
            self.coordinator.operations_in_flight() + self.epoch_coordinator.operations_in_flight()
        )

    def statistics(self) -> PeerCoreStatistics:
        return PeerCoreStatistics(
            timers_pending=len(self._timers),
            timers_dropped=self._timers_dropped,
            held_outputs=len(self._held),
            held_messages_dropped=self._held_messages_dropped,
            client_operations=len(self._clients),
            tokenize_relearned=self._tokenize_relearned,
            core_errors=self._core_errors,
            storage_errors=self._storage_errors,
        )

    # -- inputs --------------------------------------------------------------------------------

    def admits(self, source: str, messages: Sequence[Message]) -> bool:
        """Whether a driver may deliver this batch: from a ring peer (or this peer's own
        `local` output) anything; from any other authenticated peer only what a stranger may
        send: heartbeats, join requests, ring fetches and decided memberships (a peer behind
        fetches the ring from whoever gossiped a later version, a joining peer too)."""
        return (
            source == self.peer_id
            or self.is_peer(source)
            or all(isinstance(m, STRANGER_MESSAGE_TYPES) for m in messages)
        )

    def receive(self, source: str, messages: Sequence[Message], now: float) -> Step:
        """Messages from `source`, a batch the driver admitted (`admits`)."""
        assert self.admits(source, messages), "the driver admits what `admits` allows only"
        self._now = now
        step = Step()
        if source != self.peer_id:
            messages = self._fence(step, source, messages)
        if source != self.peer_id:  # any message is a sign of life
            self._call(
                step,
                "failure_detector",
                "heard_from",
                lambda: self.failure_detector.heard_from(source, now),
            )
        serving = self.state == "serving"
        for message in messages:
            if isinstance(message, Heartbeat | RecoveryQuery) and source != self.peer_id:
                self._note_identity(step, source, message, now)
            if not serving:
                refused = refusal(self.peer_id, self.recovery.store_id, source, message)
                if refused is not None:
                    for envelope in refused:  # to itself when it coordinates a detokenize
                        self._send(step, envelope)
                    continue
            destination = route(message)
            if destination is Destination.NONE:
                if isinstance(message, Heartbeat) and source != self.peer_id:
                    self._note_ring_gossip(step, source, message, now)
                continue
            if destination is Destination.RING:
                self._on_ring_message(step, source, message, now)
                continue
            if destination is Destination.RECOVERY:
                assert isinstance(message, RecoveryReport)
                self._on_recovery_report(step, source, message)
                continue
            if destination is Destination.INSPECTION:
                assert isinstance(message, OwnerView)
                self._note_inspection(step, source, message)
                continue
            core = destination.value
            call = self._message_call(destination, source, message, now)
            done = self._call(
                step,
                core,
                type(message).__name__,
                call,
                from_storage=destination.answers_from_storage,
            )
            if done and isinstance(message, Decide):
                self._note_epoch(step, message.owner, message.value)
        if not serving:
            self._check_recovered(step, now)
        return self._finish(step)

    def start(self, operation: ClientOperation | ChangeMembership, now: float) -> Step:
        """A client operation; its answer comes in this step or a later one, by `op_id`."""
        self._now = now
        step = Step()
        op_id = operation.op_id
        if op_id in self._clients or op_id in self._ring_clients:
            raise ValueError("client operation ids are unique while in flight")
        if isinstance(operation, ChangeMembership):
            self._start_ring_change(step, operation)
            return self._finish(step)
        if not self.is_member():
            step.answers.append(failed_answer(operation, Failure.NOT_A_MEMBER))
            return self._finish(step)
        if len(self._clients) >= self.limits.client_operations_max:
            step.answers.append(failed_answer(operation, Failure.OVERLOADED))
            return self._finish(step)
        if self.state != "serving" and not isinstance(operation, (InspectOwner, Detokenize)):
            step.answers.append(failed_answer(operation, Failure.RECOVERING))
            return self._finish(step)
        if isinstance(operation, Tokenize) and not operation.items:
            # nothing to store: the answer needs no replica
            step.answers.append(self._tokenized(operation, self.known_epoch(operation.owner)))
            return self._finish(step)
        self._client_started[op_id] = now
        if isinstance(operation, Tokenize):
            state = _Tokenizing(operation=operation, epoch=self.known_epoch(operation.owner))
            self._clients[op_id] = state
            self._write_tokens(step, state)
        elif isinstance(operation, InspectOwner):
            self._start_inspection(step, operation)
        else:
            self._clients[op_id] = operation
            self._start_core_op(step, op_id, op_id, operation)
        return self._finish(step)

    def advance(self, now: float) -> Step:
        """Time passed: every due timer fires, then the heartbeat tick if it is due."""
        self._now = now
        step = Step()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, core, timer = heapq.heappop(timers)
            self._fire(step, core, timer, now)
        if now >= self._next_tick:
            self._next_tick = now + self.limits.detector.heartbeat_interval_s
            step.ticked = True
            self._expire_clients(step, now)
            self._tick(step, now)
        return self._finish(step)

    def on_durable(self, ticket: int, now: float) -> Step:
        """Everything staged up to `ticket` is durable: release what waited for it."""
        assert ticket <= self._staged_ticket, "nothing is durable before it is staged"
        self._now = now
        self._durable_ticket = max(self._durable_ticket, ticket)
        step = Step()
        held = self._held
        while held and held[0].ticket <= self._durable_ticket:
            self._release(step, held.popleft())
        return self._finish(step)

    def on_durability_failed(self, ticket: int, now: float) -> Step:
        """The sync that was to make `ticket` durable failed: what waited for it never leaves.
        Its messages are dropped (peers resend), its timers armed (operations still end), the
        client operations it would have answered fail."""
        self._now = now
        step = Step()
        held = self._held
        while held and held[0].ticket <= ticket:
            output = held.popleft()
            for timer in output.timers:
                self._arm(output.core, timer)
            for reply in output.replies:
                if isinstance(reply, RingDone):
                    self._ring_store_failed(step, reply)
                else:
                    self._fail_client(step, reply.op_id, Failure.STORE_FAILED)
        return self._finish(step)

    def _ring_store_failed(self, step: Step, reply: RingDone) -> None:
        """A membership change whose outcome could not be made durable here: its client is
        told the outcome is unknown (the change may be decided on the other peers)."""
        if reply.op_id not in self._ring_clients:
            return
        self._ring_clients.discard(reply.op_id)
        step.answers.append(
            RingDone(
                op_id=reply.op_id,
                outcome=RingOutcome.TIMEOUT,
                membership=self._ring.membership,
                reason="store_failed",
            )
        )

    # -- the core calls ------------------------------------------------------------------------

    def _message_call(
        self, destination: Destination, source: str, message: Message, now: float
    ) -> Callable[[], Effects]:
        if destination is Destination.REPLICA:
            return lambda: self.replica.on_message(source, message)
        if destination is Destination.ACCEPTOR:
            return lambda: self.acceptor.on_message(source, message)
        if destination is Destination.ANTI_ENTROPY:
            return lambda: self._anti_entropy_call(
                lambda: self.anti_entropy.on_message(source, message, now), now
            )
        if destination is Destination.HINTS:
            assert isinstance(message, InsertReply)
            reply = message
            return lambda: self.hints.on_reply(source, reply)
        if destination is Destination.COORDINATOR:
            return lambda: self.coordinator.on_message(source, message)
        if destination is Destination.TRANSFER:
            return lambda: self.transfers.on_message(source, message, now)
        if destination is Destination.DROPPING:
            return lambda: self.dropping.on_message(source, message, now)
        assert destination is Destination.EPOCH_COORDINATOR
        return lambda: self.epoch_coordinator.on_message(source, message, now)

    def _call(
        self,
        step: Step,
        core: str,
        what: str,
        call: Callable[[], Effects],
        *,
        from_storage: bool = False,
    ) -> bool:
        """One core call: stage its writes, then hold or release its output. False when the
        core raised (the input is dropped)."""
        try:
            effects = call()
        except Exception as error:  # contained: see the module's rules
            self._contain(step, core, what, error)
            return False
        writes = effects.writes
        if writes:
            try:
                self._storage.stage(writes)
            except Exception as error:
                # The store refused them (StorageFull): what the replica counted is undone.
                self.replica.forget_unstaged(writes)
                self._contain(step, core, what, error)
                return False
            self._staged_ticket += 1
            step.writes.extend(writes)
        self._note_events(step, effects.events)
        output = _Held(
            ticket=self._staged_ticket,
            core=core,
            messages=effects.messages,
            timers=effects.timers,
            replies=effects.replies,
        )
        if self._needs_durability(effects, from_storage=from_storage) and (
            output.ticket > self._durable_ticket
        ):
            self._hold(output)
        else:
            self._release(step, output)
        return True

    def _needs_durability(self, effects: Effects, *, from_storage: bool) -> bool:
        """Persist before send: an output waits when its core wrote, or answered out of
        storage (what it read may be staged, not yet durable)."""
        return from_storage or bool(effects.writes)

    def _contain(self, step: Step, core: str, what: str, error: Exception) -> None:
        storage = isinstance(error, StorageError | StorageCorrupt)
        location = raised_at(error)
        error_type = type(error).__name__
        step.faults.append(
            CoreFault(
                core=core,
                input=what,
                error_type=error_type,
                message=str(error),
                location=location,
                storage=storage,
            )
        )
        if storage:
            self._storage_errors += 1
            name = "storage_error"
        else:
            self._core_errors += 1
            name = "core_error"
        details: tuple[tuple[str, str | int], ...] = (
            ("core", core),
            ("input", what),
            ("kind", error_type),
        )
        if not storage:
            details += (("location", location),)
        step.events.append(Event(name=name, details=details))

    def _hold(self, output: _Held) -> None:
        if len(self._held) >= self.limits.held_outputs_max and output.messages:
            self._held_messages_dropped += len(output.messages)
            output.messages = []
        self._held.append(output)

    def _release(self, step: Step, output: _Held) -> None:
        """Arm, send, answer: everything the output depends on is durable."""
        for timer in output.timers:
            self._arm(output.core, timer)
        for envelope in output.messages:
            self._send(step, envelope)
        for reply in output.replies:
            self._on_core_reply(step, reply)

    def _send(self, step: Step, envelope: Envelope) -> None:
        """Out to another peer, or back in as a local input when it is for this peer."""
        assert envelope.source == self.peer_id, "a peer sends only as itself"
        if envelope.destination == self.peer_id:
            step.local.append(envelope.message)
        else:
            step.messages.append(envelope)

    def _arm(self, core: str, timer: Timer) -> None:
        if len(self._timers) >= self.limits.timers_max:
            self._timers_dropped += 1
            return
        heapq.heappush(self._timers, (timer.due, next(self._timer_sequence), core, timer))

    def _fire(self, step: Step, core: str, timer: Timer, now: float) -> None:
        if core == _Core.INSPECTION:
            state = self._clients.get(timer.op_id)
            if isinstance(state, _Inspecting):
                self._answer_inspection(step, state)
            return
        if core == _Core.COORDINATOR:
            self._call(step, core, "timer", lambda: self.coordinator.on_timer(timer, now))
        elif core == _Core.RING:
            self._ring_call(step, "timer", lambda: self.ring_register.on_timer(timer, now))
        elif core == _Core.TRANSFER:
            self._call(step, core, "timer", lambda: self.transfers.on_timer(timer, now))
        else:
            assert core == _Core.EPOCH_COORDINATOR, core
            self._call(step, core, "timer", lambda: self.epoch_coordinator.on_timer(timer, now))

    def _tick(self, step: Step, now: float) -> None:
        """Heartbeats, then hinted handoff and anti-entropy with the peers held down."""
        self._call(
            step,
            "failure_detector",
            "tick",
            lambda: self.failure_detector.tick(now, self._heartbeat),
        )
        down = self.down_peers()
        self._call(step, "hints", "tick", lambda: self.hints.tick(now, down))
        if self.limits.anti_entropy_enabled:
            unheard = self._not_partners()
            self._call(
                step,
                "anti_entropy",
                "tick",
                lambda: self._anti_entropy_call(lambda: self.anti_entropy.tick(now, unheard), now),
            )
        self._call(step, "recovery", "tick", lambda: self.recovery.tick(now), from_storage=True)
        self._check_recovered(step, now)
        self._ring_tick(step, now)

    def _note_events(self, step: Step, events: list[Event]) -> None:
        """Every event about an owner names an epoch: its own, else the owner's known one."""
        for event in events:
            if event.owner and not event.epoch:
                event = replace(event, epoch=self.known_epoch(event.owner).epoch)
            step.events.append(event)

    def _note_epoch(self, step: Step, owner: str, value: EpochValue) -> None:
        if value.epoch > self.known_epoch(owner).epoch:
            self._epochs[owner] = value
            step.events.append(Event(name="epoch_known", owner=owner, epoch=value.epoch))

    def _finish(self, step: Step) -> Step:
        if self._startup_writes:  # staged when the core was built: made durable by this step
            step.writes[:0] = self._startup_writes
            self._startup_writes = []
        if step.writes or (self._held and self._held[-1].ticket > self._durable_ticket):
            step.sync_ticket = self._staged_ticket
        return step

    # -- the ring (ring_register.py, ring_placement.py; docs/membership.md) --------------------

    def _placement_of(self, membership: Membership) -> RingPlacement:
        # Drained here, or by a peer's word at this very version (a later version drained says
        # nothing of this one's removed peers: they need not have learned the later one).
        versions = self._ring_versions
        drained = self._drained_version == membership.version or is_drained(
            membership,
            lambda peer: peer == self.peer_id or versions.get(peer, 0) >= membership.version,
        )
        return RingPlacement(
            membership, drained=drained, cached_max=self.limits.preference_lists_cached_max
        )

    def _replicas_by_owner(self) -> dict[str, tuple[str, ...]]:
        """Whom anti-entropy compares an owner with: the set reads go to. A new replica is
        filled by its transfer (throttled, resumable: transfer.py), not by anti-entropy, and
        compared once the finish moved the reads to the new set."""
        return {owner: self.placement(owner).read_set for owner in self._owners}

    def _asks_to_join(self) -> bool:
        """Started with --join and no membership learned here ever named this peer: it asks the
        bootstrap members to add it. Once named, never again: a peer removed stays out (a
        restart with the same command does not undo the operator's remove)."""
        return (
            self._join_address is not None
            and not self.is_member()
            and not self.ring_register.ever_named
        )

    def _placements(self) -> dict[str, OwnerPlacement]:
        """Every owner's placement at the learned ring: whom recovery learns and refills from."""
        return {owner: self.placement(owner) for owner in self._owners}

    def _ring_peers(self) -> tuple[str, ...]:
        """Every peer of the learned ring (both rings while a change is not drained), this one
        included: the peers recovery waits for."""
        return tuple(sorted(self._ring.peers() | {self.peer_id}))

    def _ring_behind(self) -> bool:
        """A peer's heartbeat named a later ring version than the one learned here: the ring
        is being fetched (ring_register.py), and what this peer replicates may change with it."""
        learned = self._ring.membership.version
        return any(version > learned for version in self._ring_versions.values())

    def _detector_peers(self) -> tuple[str, ...]:
        """Whom this peer heartbeats: every peer of its ring (both rings while a change is not
        drained); a joining peer that is no member yet, the bootstrap members too."""
        peers = set(self._ring.peers())
        if self._asks_to_join():
            peers |= {m.id for m in self._bootstrap.members}
        peers.add(self.peer_id)
        return tuple(sorted(peers))

    def _refresh_ring(self, step: Step) -> None:
        """The learned membership or its drain changed: placements, anti-entropy's partners,
        recovery's owners and partners, and the failure detector's peers follow."""
        learned = self.ring_register.learned
        previous = self._ring
        ring = self._placement_of(learned)
        if ring.membership == previous.membership and ring.drained == previous.drained:
            return
        self._ring = ring
        if ring.membership.version != previous.membership.version:
            step.events.append(
                Event(
                    name="ring_applied",
                    details=(
                        ("version", learned.version),
                        ("stable", int(learned.stable)),
                        ("member", int(self.is_member())),
                    ),
                )
            )
        elif ring.drained:
            step.events.append(Event(name="ring_drained", details=(("version", learned.version),)))
        if ring.drained:
            self._drained_version = max(self._drained_version, learned.version)
        self.anti_entropy.set_replicas(self._replicas_by_owner())
        self.recovery.set_placements(self._placements(), self._ring_peers())
        self.failure_detector.set_peers(self._detector_peers(), self._now)
        if ring.membership.version != previous.membership.version:
            self._restart_under(step, ring.membership.version)
        for owner in self._owners:
            if self.peer_id in self.placement(owner).replicas and owner not in self._epochs:
                self._epochs[owner] = self.acceptor.active_epoch(owner)
        # At once, not at the next tick: a hand-over reply arriving meanwhile must not delete
        # an owner the new ring makes this peer a replica of again.
        self._drop_moved_owners(step, self._now)

    def _restart_under(self, step: Step, version: int) -> None:
        """A later ring version is learned: the coordinated reads, writes and epoch learns in
        flight were sent under an older one, which every replica that learned the later one
        refuses (the ring fence), so each starts again at once under its owner's new placement
        instead of timing out (a read or a learn asks again; a write inserts the same mappings
        again: insert-once). Rotates are left to finish or time out (epoch_coordinator.py)."""
        abandoned = [(op, False) for op in self.coordinator.abandon_older_than(version)]
        abandoned += [(op, True) for op in self.epoch_coordinator.abandon_older_than(version)]
        if abandoned:
            details = (("version", version), ("operations", len(abandoned)))
            step.events.append(Event(name="restarted_under_ring", details=details))
        for core_op, learning in abandoned:
            client_op = self._core_ops.pop(core_op, None)
            state = None if client_op is None else self._clients.get(client_op)
            if client_op is None or state is None:
                continue
            again = f"{core_op.partition('@')[0]}@r{version}"
            if isinstance(state, _Tokenizing):
                operation = state.operation
                if learning:
                    learn = LearnEpoch(op_id=client_op, owner=operation.owner)
                    self._start_core_op(step, client_op, again, learn)
                else:
                    self._start_core_op(step, client_op, again, operation, state.mappings)
            else:
                assert isinstance(state, Detokenize | LearnEpoch), "no rotate is abandoned"
                self._start_core_op(step, client_op, again, state)

    def _ring_call(self, step: Step, what: str, call: Callable[[], Effects]) -> None:
        """A ring register call: its output persists before it leaves (votes and learned
        memberships are records); the ring follows what it learned."""
        self._call(step, _Core.RING, what, call, from_storage=True)
        self._refresh_ring(step)

    def _fence(self, step: Step, source: str, messages: Sequence[Message]) -> Sequence[Message]:
        """The ring fence: a request sent under an older ring version than this peer's (a
        coordinator's write or read, a proposer's query, prepare or accept) is not answered;
        its sender is sent this peer's ring, learns it, and starts its next operations under
        the new placement (the refused one times out or completes on other replicas)."""
        version = self._ring.membership.version
        if version == 1:
            return messages  # the bootstrap: nothing is older
        kept = [m for m in messages if not 0 < getattr(m, "ring", 0) < version]
        if len(kept) < len(messages):
            step.events.append(
                Event(
                    name="ring_fenced",
                    details=(("sender", source), ("refused", len(messages) - len(kept))),
                )
            )
            decide = RingDecide(op_id=f"{self.peer_id}-ring-fence", value=self._ring.membership)
            self._send(step, Envelope(source=self.peer_id, destination=source, message=decide))
        return kept

    def _note_ring_gossip(self, step: Step, source: str, heartbeat: Heartbeat, now: float) -> None:
        self._ring_versions[source] = heartbeat.ring_version
        self._drained_version = max(self._drained_version, heartbeat.ring_drained)
        self._transfers_done[source] = heartbeat.transfers_done
        if heartbeat.ring_digest:
            version, digest = heartbeat.ring_version, heartbeat.ring_digest
            self._ring_call(
                step, "gossip", lambda: self.ring_register.on_gossip(source, version, digest, now)
            )
        else:
            self._refresh_ring(step)

    def _on_ring_message(self, step: Step, source: str, message: Message, now: float) -> None:
        if isinstance(message, RingJoin):
            self._on_join_request(step, message, now)
            return
        assert isinstance(message, RingPrepare | RingAccept | RingVote | RingDecide | RingFetch)
        if isinstance(message, RingPrepare | RingAccept) and self.state != "serving":
            return  # a store that lost its records lost its ring votes too: no vote (amnesia)
        ring_message = message
        self._ring_call(
            step,
            type(message).__name__,
            lambda: self.ring_register.on_message(source, ring_message, now),
        )

    def _on_join_request(self, step: Step, join: RingJoin, now: float) -> None:
        """A peer started with --join asks to be added: proposed here, once at a time."""
        if not self.is_member() or self.ring_register.operations_in_flight():
            return  # it asks again every heartbeat interval
        change = AddMember(id=join.id, address=join.address)
        self._propose(step, change, f"{self.peer_id}-join-{join.id}", now)

    def _start_ring_change(self, step: Step, operation: ChangeMembership) -> None:
        if self.state != "serving" or not self.is_member():
            reason = "recovering" if self.state != "serving" else "not_a_member"
            step.answers.append(
                RingDone(
                    op_id=operation.op_id,
                    outcome=RingOutcome.REFUSED,
                    membership=self._ring.membership,
                    reason=reason,
                )
            )
            return
        self._ring_clients.add(operation.op_id)
        self._propose(step, operation.change, operation.op_id, self._now)

    def _propose(self, step: Step, change: MembershipChange, op_id: str, now: float) -> None:
        self._ring_call(step, "propose", lambda: self.ring_register.propose(op_id, change, now))

    def _on_ring_done(self, step: Step, reply: RingDone) -> None:
        step.events.append(
            Event(
                name="ring_change_done",
                details=(
                    ("outcome", reply.outcome.value),
                    ("version", reply.membership.version),
                    ("reason", reply.reason),
                ),
            )
        )
        if reply.op_id in self._ring_clients:
            self._ring_clients.discard(reply.op_id)
            step.answers.append(reply)

    def _ring_tick(self, step: Step, now: float) -> None:
        """Each heartbeat interval: a joining peer asks to be added; a voter proposes the
        finish of a change whose transfers all committed."""
        membership = self._ring.membership
        address = self._join_address
        if address is not None and self._asks_to_join():
            join = RingJoin(op_id=f"{self.peer_id}-join", id=self.peer_id, address=address)
            for member in self._bootstrap.members:
                if member.id != self.peer_id:
                    envelope = Envelope(source=self.peer_id, destination=member.id, message=join)
                    self._send(step, envelope)
            return
        self._refresh_ring(step)
        self._start_transfers(step, now)
        self._drop_moved_owners(step, now)
        if membership.stable or self.peer_id not in membership.voters:
            return
        if self._change_transferred() and not self.ring_register.operations_in_flight():
            self._ring_ops += 1
            finish = FinishChange(version=membership.version)
            self._propose(step, finish, f"{self.peer_id}-finish-{self._ring_ops}", now)

    def _replicates(self, peer: str, owner: str) -> bool:
        """`peer` is in a quorum set of the owner on the learned ring (either, mid-change)."""
        return peer in self.placement(owner).replicas

    def _drop_moved_owners(self, step: Step, now: float) -> None:
        """Under a stable, drained ring, a serving member deletes the owners it no longer
        replicates, each handed to its read set first (dropping.py); while a change is
        pending, or before the store serves, nothing is dropped. Hints for a peer that no
        longer replicates their owner in any set are forgotten."""
        ring = self._ring
        version = ring.membership.version
        settled = (
            self.state == "serving" and ring.membership.stable and ring.drained and self.is_member()
        )
        dropping = self.dropping
        if (version, settled) != self._dropping_for:
            self._dropping_for = (version, settled)
            owners = {
                owner: placement.read_set
                for owner in self._owners
                if self.peer_id not in (placement := self.placement(owner)).replicas
            }
            call = functools.partial(dropping.set_owners, owners if settled else {}, now)
            self._call(step, _Core.DROPPING, "set_owners", call)
            self._hints_looked_at = -1  # a new ring: every hint is looked at again
        hints = self.hints
        if self.state == "serving" and hints.last_sequence != self._hints_looked_at:
            # A new ring, or hints stored since (a write started under an older placement):
            # only those, under an unchanged ring.
            after = max(self._hints_looked_at, 0)
            self._hints_looked_at = hints.last_sequence
            forget = functools.partial(hints.forget_unplaced, self._replicates, after)
            self._call(step, "hints", "forget_unplaced", forget)
        if settled:
            dropping.set_down(self.down_peers())
            self._call(step, _Core.DROPPING, "tick", lambda: dropping.tick(now))

    def _start_transfers(self, step: Step, now: float) -> None:
        """Transfers into this peer of the pending change, each once its owner is fenced
        (every replica of both its sets reported the joint version); those of earlier
        changes are forgotten. A store that does not serve yet transfers nothing."""
        if self.state != "serving":
            return
        transfers = self.transfers
        membership = self._ring.membership
        version = membership.version
        oldest_kept = version + 1 if membership.stable else version
        self._call(step, _Core.TRANSFER, "forget", lambda: transfers.forget_before(oldest_kept))
        transfers.set_down(self.down_peers())
        if not self._transfers_resumed:
            self._transfers_resumed = True
            self._call(step, _Core.TRANSFER, "resume", lambda: transfers.resume(now))
        if membership.stable:
            return
        self._call(step, _Core.TRANSFER, "tick", lambda: transfers.tick(now))
        versions = {**self._ring_versions, self.peer_id: version}
        for owner in self._targeted_owners():
            if self._ring.fenced(owner, versions):
                old = self.placement(owner).old
                call = functools.partial(transfers.start, version, owner, old, now)
                self._call(step, _Core.TRANSFER, "start", call)

    def _targeted_owners(self) -> tuple[str, ...]:
        """The owners the pending change moves to this peer: in the new set, not the old."""
        version = self._ring.membership.version
        if self._targets[0] != version:
            owners = tuple(
                owner
                for owner in self._owners
                if self.peer_id in self.placement(owner).new
                and self.peer_id not in self.placement(owner).old
            )
            self._targets = (version, owners)
        return self._targets[1]

    def _holds(self, owner: str) -> bool:
        """This peer keeps a copy of the owner now: a transfer may read it."""
        return self.peer_id in self.placement(owner).replicas

    def _own_transfers_done(self) -> int:
        """The highest joint version whose transfers into this peer all committed."""
        membership = self._ring.membership
        if membership.stable:
            return membership.version
        if self.transfers.committed(membership.version, self._targeted_owners()):
            return membership.version
        return 0

    def _change_transferred(self) -> bool:
        """Every target of the pending change reported its transfers committed."""
        membership = self._ring.membership
        version = membership.version
        targets = {
            target for move in plan_transfers(membership, self._owners) for target in move.targets
        }
        done = dict(self._transfers_done)
        done[self.peer_id] = self._own_transfers_done()
        return all(done.get(target, 0) >= version for target in targets)

    # -- recovery (recovery.py) ----------------------------------------------------------------

    def _note_identity(
        self, step: Step, source: str, message: Heartbeat | RecoveryQuery, now: float
    ) -> None:
        """A peer's store identity (and, in a heartbeat, what it remembers of ours); when it
        changed, the proposer drops what it counted from the old store before anything else."""
        recovery = self.recovery
        phase = recovery.phase
        store = message.store
        if isinstance(message, Heartbeat):
            heartbeat = message
            call = functools.partial(recovery.on_heartbeat, source, heartbeat, now)
        else:
            call = functools.partial(recovery.note_store, source, store)
        self._call(step, "recovery", type(message).__name__, call)
        if store:
            self._call(
                step,
                _Core.EPOCH_COORDINATOR,
                "note_store",
                lambda: self.epoch_coordinator.note_store(source, store, now),
            )
        if recovery.phase is not phase:
            self._on_phase(step, now)

    def _heartbeat(self, destination: str) -> Heartbeat:
        """The recovery core's heartbeat, without this store's identity until the record that
        decided its phase is durable (persist before send: a peer that restarts undecided must
        not find its identity already known)."""
        heartbeat = self.recovery.heartbeat(destination)
        store = heartbeat.store
        if self._durable_ticket < self._identity_ticket and store:
            store = ""
        version, digest = self.ring_register.gossip()
        return Heartbeat(
            sender=heartbeat.sender,
            store=store,
            known=heartbeat.known,
            ring_version=version,
            ring_digest=digest,
            transfers_done=self._own_transfers_done(),
            ring_drained=self._drained_version,
        )

    def _on_phase(self, step: Step, now: float) -> None:
        """The store's phase moved on (undecided -> recovering or serving)."""
        self._identity_ticket = self._staged_ticket
        if self.recovery.phase is Phase.SERVING:
            self._serving_ticket = self._staged_ticket
            self.anti_entropy.urgent = False
            return
        self.anti_entropy.urgent = True
        self._call(step, "recovery", "tick", lambda: self.recovery.tick(now), from_storage=True)

    def _on_recovery_report(self, step: Step, source: str, report: RecoveryReport) -> None:
        owner = report.owner
        if self.transfers.expects(report):  # a transfer's epochs step (transfer.py)
            now = self._now
            call = functools.partial(self.transfers.on_recovery_report, source, report, now)
            if self._call(step, _Core.TRANSFER, "RecoveryReport", call):
                self._note_epoch(step, owner, self.acceptor.active_epoch(owner))
            return
        reports = self.recovery.on_report(source, report)
        if reports is not None:
            self._call(step, "acceptor", "adopt", lambda: self.acceptor.adopt(owner, reports))
            self._note_epoch(step, owner, self.acceptor.active_epoch(owner))
        self._check_recovered(step, self._now)

    def _anti_entropy_call(self, call: Callable[[], Effects], now: float) -> Effects:
        """An anti-entropy call; a pass that ended is told to recovery, and while it refills a
        lost store the next pass starts at once."""
        effects = call()
        statistics = self.anti_entropy.statistics
        if statistics.passes == self._anti_entropy_passes:
            return effects
        self._anti_entropy_passes = statistics.passes
        last = statistics.last_pass
        if last is not None:
            self.recovery.on_pass(last.owner, last.partner, last.nothing_missing)
        if self.anti_entropy.urgent and self.limits.anti_entropy_enabled:
            effects.extend(self.anti_entropy.tick(now, self._not_partners()))
        return effects

    def _check_recovered(self, step: Step, now: float) -> None:
        """Serves once recovery is ready under the current ring: a wiped store restarts on the
        bootstrap ring (its ring records went with it), so while any peer gossips a later
        version, what it learned and refilled may be from the wrong replicas: it waits for that
        ring (fetched, then `_refresh_ring` re-targets recovery)."""
        if self.recovery.is_ready(now) and not self._ring_behind():
            self._call(step, "recovery", "finish", self.recovery.finish)
            self._on_phase(step, now)

    # -- client operations ---------------------------------------------------------------------

    def _start_core_op(
        self,
        step: Step,
        client_op: str,
        op_id: str,
        operation: Detokenize | LearnEpoch | RotateEpoch | Tokenize,
        mappings: Sequence[Mapping] = (),
    ) -> None:
        """Starts the coordinated operation `op_id` on behalf of the client's `client_op`."""
        self._core_ops[op_id] = client_op
        core, start, arguments = self._core_start(operation, mappings)
        call = functools.partial(
            start,
            op_id=op_id,
            owner=operation.owner,
            placement=self.placement(operation.owner),
            now=self._now,
            down=self._unusable_replicas(),
            **arguments,
        )
        if not self._call(step, core, f"start_{type(operation).__name__}", call):
            self._fail_client(step, op_id, Failure.INTERNAL_ERROR)

    def _core_start(
        self,
        operation: Detokenize | LearnEpoch | RotateEpoch | Tokenize,
        mappings: Sequence[Mapping],
    ) -> tuple[str, Callable[..., Effects], dict[str, object]]:
        """Which core starts an operation, how, and with what beyond the common arguments."""
        if isinstance(operation, Tokenize):
            return _Core.COORDINATOR, self.coordinator.start_write, {"mappings": mappings}
        if isinstance(operation, Detokenize):
            tokens = tuple(dict.fromkeys(operation.tokens))
            return _Core.COORDINATOR, self.coordinator.start_read, {"tokens": tokens}
        if isinstance(operation, LearnEpoch):
            return _Core.EPOCH_COORDINATOR, self.epoch_coordinator.start_learn, {}
        arguments: dict[str, object] = {
            "expected_epoch": operation.expected_epoch,
            "requested_at_s": operation.requested_at_s,
        }
        return _Core.EPOCH_COORDINATOR, self.epoch_coordinator.start_rotate, arguments

    def _on_core_reply(self, step: Step, reply: ClientReply) -> None:
        if isinstance(reply, RingDone):
            self._on_ring_done(step, reply)
            return
        step.finished.append(reply)
        client_op = self._core_ops.pop(reply.op_id, None)
        state = None if client_op is None else self._clients.get(client_op)
        if state is None or client_op is None:
            return  # its client operation already ended
        if isinstance(state, _Tokenizing):
            if isinstance(reply, WriteDone):
                self._on_tokens_written(step, state, reply)
            else:
                assert isinstance(reply, EpochDone)
                self._on_tokenize_learned(step, state, reply)
            return
        if isinstance(reply, EpochDone) and reply.failure is None:
            assert reply.value is not None
            self._note_epoch(step, reply.owner, reply.value)
        assert isinstance(reply, ReadDone | EpochDone)
        self._end_client(client_op)
        step.answers.append(replace(reply, op_id=client_op))

    def _write_tokens(self, step: Step, state: _Tokenizing) -> None:
        operation, epoch = state.operation, state.epoch
        state.writes += 1
        maker = self.sealer.token_maker(operation.owner, epoch)
        tokens = tuple(maker.token(name, value) for name, value in operation.items)
        mappings = {
            token: Mapping(
                owner=operation.owner, token=token, value=value, field=name, epoch=epoch.epoch
            )
            for token, (name, value) in zip(tokens, operation.items, strict=True)
        }
        state.tokens, state.mappings = tokens, tuple(mappings.values())
        op_id = f"{operation.op_id}/w{state.writes}"
        step.attempts.append(
            TokenizeAttempt(
                client_op=operation.op_id,
                op_id=op_id,
                peer=self.peer_id,
                at_s=self._now,
                epoch=epoch,
                mappings=state.mappings,
            )
        )
        self._start_core_op(step, operation.op_id, op_id, operation, state.mappings)

    def _on_tokens_written(self, step: Step, state: _Tokenizing, reply: WriteDone) -> None:
        operation = state.operation
        if reply.failure is Failure.FENCED and state.writes < self.limits.tokenize_attempts_max:
            # A replica holds a later epoch: learn it from a majority, then write again.
            self._tokenize_relearned += 1
            learn = LearnEpoch(op_id=operation.op_id, owner=operation.owner)
            self._start_core_op(step, operation.op_id, f"{operation.op_id}/l{state.writes}", learn)
            return
        self._end_client(operation.op_id)
        if reply.failure is not None:
            step.answers.append(failed_answer(operation, reply.failure, state.epoch, state.writes))
        else:
            step.answers.append(self._tokenized(operation, state.epoch, state))

    def _on_tokenize_learned(self, step: Step, state: _Tokenizing, reply: EpochDone) -> None:
        operation = state.operation
        if reply.failure is not None:
            self._end_client(operation.op_id)
            step.answers.append(failed_answer(operation, reply.failure, None, state.writes))
            return
        assert reply.value is not None
        self._note_epoch(step, operation.owner, reply.value)
        state.epoch = reply.value
        self._write_tokens(step, state)

    def _tokenized(
        self, operation: Tokenize, epoch: EpochValue, state: _Tokenizing | None = None
    ) -> Tokenized:
        return Tokenized(
            op_id=operation.op_id,
            owner=operation.owner,
            epoch=epoch,
            tokens=() if state is None else state.tokens,
            mappings=() if state is None else state.mappings,
            failure=None,
            writes=0 if state is None else state.writes,
        )

    def _fail_client(self, step: Step, core_op: str, failure: Failure) -> None:
        """The client operation that `core_op` serves ends with `failure`."""
        client_op = self._core_ops.pop(core_op, core_op)
        state = self._end_client(client_op)
        if state is None:
            return
        operation = _operation_of(state)
        writes = state.writes if isinstance(state, _Tokenizing) else 0
        step.answers.append(failed_answer(operation, failure, None, writes))

    def _end_client(self, client_op: str) -> _ClientState | None:
        self._client_started.pop(client_op, None)
        return self._clients.pop(client_op, None)

    def _expire_clients(self, step: Step, now: float) -> None:
        """Client operations started `client_deadline_s` ago or more are answered; the oldest
        come first (insertion order), so this stops at the first that is young enough."""
        oldest = now - self.limits.client_deadline_s
        expired = list(
            itertools.takewhile(lambda item: item[1] <= oldest, self._client_started.items())
        )
        for client_op, _ in expired:
            self._expire_client(step, client_op)

    def _expire_client(self, step: Step, client_op: str) -> None:
        """A client operation outlived `client_deadline_s`: it fails, and the coordinated
        operations it waited for are forgotten here (their late replies are ignored)."""
        for core_op in [c for c, client in self._core_ops.items() if client == client_op]:
            del self._core_ops[core_op]
        owner = _operation_of(self._clients[client_op]).owner
        step.events.append(
            Event(
                name="client_operation_expired",
                owner=owner,
                epoch=self.known_epoch(owner).epoch,
                request_id=client_op,
            )
        )
        self._fail_client(step, client_op, Failure.INTERNAL_ERROR)

    # -- owner inspection ----------------------------------------------------------------------

    def _start_inspection(self, step: Step, operation: InspectOwner) -> None:
        replicas = self.preference_list(operation.owner)
        state = _Inspecting(operation=operation, expected=frozenset(replicas))
        self._clients[operation.op_id] = state
        inspect = OwnerInspect(op_id=operation.op_id, owner=operation.owner)
        due = self._now + self.limits.inspect_timeout_s
        self._arm(_Core.INSPECTION, Timer(kind=TimerKind.DEADLINE, op_id=operation.op_id, due=due))
        for replica in replicas:
            envelope = Envelope(source=self.peer_id, destination=replica, message=inspect)
            if replica == self.peer_id:
                step.local.append(inspect)
            else:
                step.messages.append(envelope)

    def _note_inspection(self, step: Step, source: str, view: OwnerView) -> None:
        state = self._clients.get(view.op_id)
        if not isinstance(state, _Inspecting) or source not in state.expected:
            return  # late, stray or forged
        if view.owner != state.operation.owner:
            return
        state.views[source] = view
        # A replica held down is not waited for: it is shown as not answering (unless it did).
        if state.expected - state.views.keys() <= self.down_peers():
            self._answer_inspection(step, state)

    def _answer_inspection(self, step: Step, state: _Inspecting) -> None:
        operation = state.operation
        self._end_client(operation.op_id)
        step.answers.append(
            Inspected(op_id=operation.op_id, owner=operation.owner, views=dict(state.views))
        )
