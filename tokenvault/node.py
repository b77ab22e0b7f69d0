"""One peer on trio: the driver that runs the sans-IO `PeerCore` with real time, LevelDB and the
peer links. Routing, persist-before-send, timers and client-operation policy are the core's;
this module only does what the core's `Step` asks.

Rules:
- Every input reaches the core synchronously: there is no checkpoint between a core call and
  acting on its step, so no other input runs in between.
- A step is acted on at once: events logged and counted, messages queued on the links (a message
  sent to several peers is encoded once), messages to this peer itself queued for the local
  task, answers handed to the requests that wait for them. The local task gives every queued
  local message back to the core in one `receive` per wake-up, in the order queued (never
  inside the step that produced them: a core call never re-enters the core).
- Durability (group commit): one task, the syncer, makes the store durable whenever a step asks,
  many steps per synced LevelDB batch, and reports the ticket to the core (or the failure). A
  peer batch is answered once what it produced is settled, which paces the sending peer.
- A failed sync is retried with back-off (SYNC_RETRY_DELAY_S doubling to SYNC_RETRY_DELAY_MAX_S):
  the writes stay pending in the store, which reopens its directory before the next attempt
  (leveldb_store.py), so the peer takes writes again by itself once space returns. Storage
  failures are logged through one LogThrottle (STORAGE_LOG_INTERVAL_S), named (disk_full,
  io_error) and counted every time.
- A damaged store (LevelDB reported a corruption; at open, or later in a read or a flush) is
  never worked around: it is moved aside and replaced by a new, empty one (`store_damaged`, one
  error line naming the file), and a new core is built over it, as a process start would.
  Operations of the old core end as failures. Replicas and recovery refill the new store.
- Start-up is O(1) in the size of the store: nothing scans it before the peer serves. What a
  scan used to build at open is built after, in the background, in the event loop's thread (no
  read on a handle being closed or reopened), a page at a time:
  - the scrub reads every block of the store, checksums verified: a first pass
    SCRUB_FIRST_PASS_DELAY_S after open (which also fills the store's KeyFilter, the verified
    open scan of before: one page per FILTER_FILL_PAGE_INTERVAL_S while it does, since inserts
    read LevelDB until it has), then one every SCRUB_INTERVAL_S, in pages of SCRUB_PAGE_KEYS
    keys, one page per SCRUB_PAGE_INTERVAL_S, so a damaged block nobody reads is found too;
  - the replica's digests (merkle.py), DIGEST_PAGE_KEYS mappings per DIGEST_PAGE_INTERVAL_S,
    for every core built (at start, and over a store that replaced a damaged one); an owner's
    anti-entropy starts once its digests are whole.
- Readiness (`readiness()`, what /readyz and the views read): the core serving, the store
  taking writes, and a write quorum of every owner's replicas not held down (PeerCore).
- One clock task calls `advance` when the core's next timer or heartbeat is due.
- A peer batch reaches the core only once it fits this cluster's configuration (`BatchRules`:
  owners that are configured, fields that the owner has, a heartbeat only of its sender, a join
  request only for its sender; from a peer outside the ring this peer learned, only what
  PeerCore.admits: heartbeats, join requests, ring fetches and decided memberships); the
  codec has already checked every type and range. A batch that does not fit is refused
  whole: peers of one configuration (the fingerprint says so) never send one.
- The ring (docs/membership.md): the peer links follow the learned membership (peer_links.py:
  a link per member address, and per bootstrap peer while this peer joins), updated after
  every step that changed it and before that step's messages leave; a message for a peer with
  no link is dropped and counted (`tokenvault_peer_messages_unroutable_total`). A peer started
  with `joining` (its own entry: `tokenvault node --join`, not in cluster.toml) asks the
  bootstrap members to add it (PeerCore's join_address) until it learns a membership naming it.
  `members_view` and `change_members` are what /v1/admin/members reads and asks.
"""

from __future__ import annotations

import itertools
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import trio

from tokenvault import node_metrics
from tokenvault.coalescing import Coalescer
from tokenvault.config import ClusterConfig, PeerConfig, cluster_fingerprint
from tokenvault.http.peer_auth import PeerCredential, new_incarnation, require_source
from tokenvault.http.peer_codec import CodecError, decode_batch, encode_message
from tokenvault.http.peer_transport import PeerLink
from tokenvault.log import EventLog, LogThrottle
from tokenvault.metrics import Metrics
from tokenvault.node_metrics import RunningTotals
from tokenvault.peer_links import PeerLinks
from tokenvault.quorum.anti_entropy import AntiEntropyLimits
from tokenvault.quorum.client_operations import (
    ChangeMembership,
    ClientAnswer,
    ClientOperation,
    failed_answer,
)
from tokenvault.quorum.dropping import DropView
from tokenvault.quorum.effects import (
    EpochDone,
    Failure,
    ReadDone,
    RingDone,
    RingOutcome,
    WriteDone,
)
from tokenvault.quorum.messages import (
    RING_MESSAGE_TYPES,
    Heartbeat,
    InsertRequest,
    Message,
    RingJoin,
)
from tokenvault.quorum.peer_core import PeerCore, PeerLimits, Step
from tokenvault.quorum.recovery import Phase
from tokenvault.quorum.transfer import BYTES_PER_MB, TransferLimits, TransferView
from tokenvault.ring.membership import (
    AddMember,
    Member,
    Membership,
    RemoveMember,
    ReplaceMember,
    bootstrap_membership,
)
from tokenvault.store.damage import Damage, move_aside
from tokenvault.store.leveldb_store import LevelDBStore, OpenedStore, StoreWriteFailed, open_store
from tokenvault.store.storage import StorageError
from tokenvault.tokens import derive_peer_key

SYNC_RETRY_DELAY_S = 0.1  # after a failed sync, before the next attempt
SYNC_RETRY_DELAY_MAX_S = 1.0  # the back-off's ceiling: how soon a full disk is tried again
STORAGE_LOG_INTERVAL_S = 10.0  # at most one storage failure line per kind per interval
SCRUB_INTERVAL_S = 600.0  # from the end of one scrub of the whole store to the next
SCRUB_PAGE_KEYS = 1_000  # keys read per step: about 0.2 ms from the page cache
SCRUB_PAGE_INTERVAL_S = 0.05  # between steps: at most 20,000 keys a second
SCRUB_FIRST_PASS_DELAY_S = 1.0  # from open to the first scrub (which fills the KeyFilter)
FILTER_FILL_PAGE_INTERVAL_S = 0.01  # between steps while they fill the KeyFilter: 100,000 keys/s
DIGEST_PAGE_KEYS = 2_000  # mappings hashed per step of a digest build: about 4 ms
DIGEST_PAGE_INTERVAL_S = 0.01  # between steps: at most 200,000 mappings a second
_FINISHED_METRICS = {
    WriteDone: "tokenvault_quorum_writes_total",
    ReadDone: "tokenvault_quorum_reads_total",
    EpochDone: "tokenvault_epoch_operations_total",
}


class NotConfigured(CodecError):
    """A peer batch that decodes but does not fit this cluster's configuration."""


class BatchRules:
    """What a decoded peer batch must fit beyond the codec's checks: the configuration. The text
    of a refusal names only where it failed, never a value. (What a peer outside the learned
    ring may send at all is the core's rule: PeerCore.admits.)"""

    def __init__(self, config: ClusterConfig) -> None:
        self._fields: dict[str, frozenset[str]] = {o.id: o.fields for o in config.owners}

    def check(self, source: str, messages: Sequence[Message]) -> None:
        for index, message in enumerate(messages):
            if isinstance(message, Heartbeat):
                if message.sender != source:
                    raise NotConfigured(f"$.messages[{index}].sender is not the batch's source")
                continue
            if isinstance(message, RingJoin):
                if message.id != source:
                    raise NotConfigured(f"$.messages[{index}].id is not the batch's source")
                continue
            if isinstance(message, RING_MESSAGE_TYPES):
                continue  # the ring's own: no owner
            fields = self._fields.get(message.owner)
            if fields is None:
                raise NotConfigured(f"$.messages[{index}].owner is not a configured owner")
            # New writes only: a mapping already held (a repair, a read reply) stays readable
            # even if its field left the configuration since it was written.
            if isinstance(message, InsertRequest) and not message.repair:
                for row, mapping in enumerate(message.mappings):
                    if mapping.field not in fields:
                        raise NotConfigured(
                            f"$.messages[{index}].mappings[{row}] has a field its owner lacks"
                        )


@dataclass(slots=True)
class _Waiter:
    operation: ClientOperation | ChangeMembership
    event: trio.Event = field(default_factory=trio.Event)
    answer: ClientAnswer | None = None


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether this peer should be sent traffic (/readyz), and if not, why."""

    ready: bool
    # "serving" when ready; else "starting", "recovering" (service_state), "disk_full",
    # "store_failing" or "no_write_quorum"
    reason: str


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """One transfer into this peer, and the owner's new replica set it fills."""

    view: TransferView
    new_set: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MembersView:
    """The ring as this peer learned it, the transfers into this peer, and the owners it
    hands over and drops."""

    version: int
    members: tuple[Member, ...]
    transfers: tuple[TransferProgress, ...]
    drained: bool  # stable, and every peer of the last change learned it
    drops: tuple[DropView, ...]  # owners held here that this peer no longer replicates


def peer_limits(config: ClusterConfig) -> PeerLimits:
    """The core's limits as the cluster configuration sets them."""
    interval_s = config.anti_entropy_interval_s
    return PeerLimits(
        anti_entropy=AntiEntropyLimits(pass_interval_s=interval_s or 1.0),
        anti_entropy_enabled=interval_s > 0,
        transfer=TransferLimits(rate_bytes_s=config.transfer_rate_mb_s * BYTES_PER_MB),
    )


class Node:
    def __init__(
        self,
        config: ClusterConfig,
        peer_id: str,
        *,
        log: EventLog | None = None,
        link_context: ssl.SSLContext | None = None,
        scrub_interval_s: float = SCRUB_INTERVAL_S,
        joining: PeerConfig | None = None,
    ) -> None:
        """`link_context`: the mutual-TLS context of this peer's links (None: plain HTTP).
        `joining`: this peer's own entry when it is not in cluster.toml (`node --join`): it
        asks the bootstrap members to add it at that address."""
        self.scrub_interval_s = scrub_interval_s
        self.scrubs = 0  # whole passes over the store that found nothing
        self.config = config
        if joining is not None:
            assert joining.id == peer_id and peer_id not in {p.id for p in config.peers}
        self.peer: PeerConfig = joining if joining is not None else config.peer(peer_id)
        self._join_address = None if joining is None else joining.address
        self.peer_id = peer_id
        self.log = log if log is not None else EventLog(peer_id)
        self.metrics = Metrics()
        node_metrics.declare(self.metrics)
        self.cluster_fingerprint = cluster_fingerprint(config)
        self._batch_rules = BatchRules(config)
        self.peer.data_dir.mkdir(parents=True, exist_ok=True)
        self.store_path = self.peer.data_dir / "leveldb"
        self._storage_throttle = LogThrottle(STORAGE_LOG_INTERVAL_S, clock_s=trio.current_time)
        opened = open_store(self.store_path)  # StorageError: not even a new store opens
        self._log_opened(opened)
        self.store: LevelDBStore = opened.store
        self.stores_replaced = 0 if opened.damage is None else 1
        self.core = self._new_core()
        self._retired_totals = RunningTotals()  # of the stores and cores replaced so far
        # Random per process start: in request ids (the first 8 digits) and in every signed batch.
        self._incarnation = new_incarnation()
        self._links = PeerLinks(
            local_peer_id=peer_id,
            key=derive_peer_key(config.secret, peer_id),
            incarnation=self._incarnation,
            fingerprint=self.cluster_fingerprint,
            link_context=link_context,
        )
        self._links_follow: tuple[Membership, bool] | None = None  # what the links follow
        self._follow_ring()
        self._op_counter = itertools.count(1)
        self.coalescer = Coalescer(self._perform_alone, self.new_request_id)
        self._waiters: dict[str, _Waiter] = {}
        self._sync_wanted = trio.Event()
        self._settled_ticket = 0  # synced, or failed to sync
        self._settled = trio.Event()
        self._core_generation = 0  # cores built over a new store since the start
        self._replace_wanted = trio.Event()
        self._new_core_built = trio.Event()  # its digests are to be built (the digest builder)
        self._store_in_use = trio.Lock()  # a sync, or a store replacement: one at a time
        self._clock_wakeup = trio.Event()
        self._local_queue: list[Message] = []  # messages to itself, for the local task
        self._local_wanted = trio.Event()
        self._clock_sleeps_until = float("inf")
        self.started_at = 0.0

    def running_totals(self) -> RunningTotals:
        """What the stores and cores of this process counted, the replaced ones included."""
        return self._retired_totals + RunningTotals.of(self.store, self.core)

    @property
    def links(self) -> dict[str, PeerLink]:
        """The peer links now, by peer id (they follow the ring: `_follow_ring`)."""
        return self._links.links

    @property
    def messages_unroutable(self) -> int:
        """Messages dropped because their destination had no link (not in the learned ring)."""
        return self._links.unroutable

    def _bootstrap(self) -> Membership:
        config = self.config
        return bootstrap_membership(
            ((p.id, p.address) for p in config.peers),
            replica_count=config.quorum.replica_count,
            vnodes_per_peer=config.vnodes_per_peer,
        )

    def _follow_ring(self) -> None:
        """The links follow the learned membership: a link per member (and per member of the
        change it ended, until the next one), and per bootstrap peer while this peer joins."""
        core = self.core
        membership = core.membership
        joining = self._join_address is not None and not core.is_member()
        if self._links_follow == (membership, joining):
            return
        self._links_follow = (membership, joining)
        addresses = {p.id: p.address for p in self.config.peers} if joining else {}
        for member in (*membership.previous, *membership.members):
            addresses[member.id] = member.address
        self._links.follow(addresses)

    def _new_core(self) -> PeerCore:
        """Every core, built from the store (what a process start does)."""
        config = self.config
        return PeerCore(
            peer_id=self.peer_id,
            bootstrap=self._bootstrap(),
            join_address=self._join_address,
            quorum=config.quorum,
            owners=[o.id for o in config.owners],
            storage=self.store,
            secret=config.secret,
            rng=random.SystemRandom(),
            now=trio.current_time(),
            limits=replace(peer_limits(config), digests_built_in_pages=True),
        )

    def _log_opened(self, opened: OpenedStore) -> None:
        for tail in opened.log_tails:
            self.log.emit(
                "store_log_tail_dropped",
                level="warning",
                file=tail.file,
                bytes=tail.bytes_dropped,
            )
        if opened.damage is not None:
            assert opened.moved_to is not None
            self._log_damage(opened.damage, opened.moved_to.name, found="open")

    def _log_damage(self, damage: Damage, moved_to: str, *, found: str) -> None:
        self.log.emit(
            "store_damaged",
            level="error",
            file=damage.file,
            reason=damage.reason,
            found=found,
            moved_to=moved_to,
            action="started an empty store",
        )

    def service_state(self) -> str:
        """ "serving"; "starting" while a fresh store waits for its peers to say whether the
        cluster knew it (a brand-new peer: a heartbeat or two), or its `serving` record is not
        yet durable; "recovering" while it rebuilds a lost store (PeerCore.state, refined)."""
        if self.core.state == "serving":
            return "serving"
        return "recovering" if self.core.recovery.phase is Phase.RECOVERING else "starting"

    def readiness(self) -> Readiness:
        """Ready while the core serves, the store takes writes, and every owner has at least W
        replicas that this peer's failure detector does not hold down (itself counted): the
        one place views, /readyz and /metrics read it from."""
        state = self.service_state()
        if state != "serving":
            return Readiness(ready=False, reason=state)
        health = self.store.health()
        if health.write_failure == "disk_full":
            return Readiness(ready=False, reason="disk_full")
        if not health.writable:
            return Readiness(ready=False, reason="store_failing")
        if self.core.owners_without_write_quorum([o.id for o in self.config.owners]):
            return Readiness(ready=False, reason="no_write_quorum")
        return Readiness(ready=True, reason="serving")

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.started_at = trio.current_time()
            nursery.start_soon(self._run_clock)
            nursery.start_soon(self._run_syncer)
            nursery.start_soon(self._run_local)
            nursery.start_soon(self._run_store_replacer)
            nursery.start_soon(self._run_scrubber)
            nursery.start_soon(self._run_digest_builder)
            await nursery.start(self._links.run)
            task_status.started()

    def close(self) -> None:
        self.store.close()

    def new_request_id(self) -> str:
        return f"{self.peer_id}-{self._incarnation[:8]}-{next(self._op_counter)}"

    # -- inputs --------------------------------------------------------------------------------

    async def perform(self, operation: ClientOperation) -> ClientAnswer:
        """Runs a client operation to its answer (a failure is an answer too); concurrent
        tokenizes and detokenizes of one owner are merged under load (coalescing.py)."""
        return await self.coalescer.perform(operation)

    def members_view(self) -> MembersView:
        """The learned membership, and the transfers into this peer (transfer.py)."""
        core = self.core
        membership = core.membership
        transfers = tuple(
            TransferProgress(view=view, new_set=core.placement(view.owner).new)
            for view in core.transfer_views()
        )
        return MembersView(
            version=membership.version,
            members=membership.members,
            transfers=transfers,
            drained=core.ring_drained,
            drops=tuple(core.drop_views()),
        )

    async def change_members(self, change: AddMember | RemoveMember | ReplaceMember) -> RingDone:
        """Proposes one membership change through this peer's ring register; its answer once
        decided, refused, or out of time (RingOutcome)."""
        answer = await self._perform_alone(
            ChangeMembership(op_id=self.new_request_id(), change=change)
        )
        assert isinstance(answer, RingDone)
        return answer

    async def _perform_alone(self, operation: ClientOperation | ChangeMembership) -> ClientAnswer:
        waiter = self._waiters[operation.op_id] = _Waiter(operation)
        try:
            self._act(self.core.start(operation, trio.current_time()))
            await waiter.event.wait()
        finally:
            del self._waiters[operation.op_id]
        assert waiter.answer is not None
        return waiter.answer

    async def receive_peer_batch(
        self, body: bytes, credential: PeerCredential, *, certified_source: str | None = None
    ) -> None:
        """One batch whose head and body were authenticated (http/peer_auth.py). Raises
        PeerAuthError when it names another source than its signer, CodecError when it is
        malformed, does not fit this cluster's configuration (`BatchRules`), or names another
        source than `certified_source` (the peer its TLS certificate names) when given."""
        source, messages = decode_batch(body)
        require_source(credential, source)
        if source == self.peer_id:
            raise CodecError("batch from this peer itself")
        if not self.core.admits(source, messages):
            raise CodecError("batch from a peer outside the ring naming more than ring messages")
        if certified_source is not None and source != certified_source:
            raise CodecError("batch whose source is not the peer its certificate names")
        self._batch_rules.check(source, messages)
        step = self.core.receive(source, messages, trio.current_time())
        self._act(step)
        if step.sync_ticket is not None:
            generation = self._core_generation
            while self._settled_ticket < step.sync_ticket and generation == self._core_generation:
                await self._settled.wait()

    async def _run_local(self) -> None:
        """Messages to itself: all that were queued since the last wake-up, in one input."""
        while True:
            await self._local_wanted.wait()
            self._local_wanted = trio.Event()
            messages, self._local_queue = self._local_queue, []
            self._act(self.core.receive(self.peer_id, messages, trio.current_time()))

    # -- acting on a step ----------------------------------------------------------------------

    def _act(self, step: Step) -> None:
        metrics = self.metrics
        if step.events:
            logged = []
            for event in step.events:
                metrics.inc("tokenvault_events_total", (("event", event.name),))
                if event.name == "storage_error":
                    metrics.inc("tokenvault_storage_errors_total")
                    # A full or failing store fails every input alike: one line per interval.
                    if self._storage_throttle.allow(event.details) is None:
                        continue
                logged.append(event)
            self.log.core_events(logged)
        if step.faults and self.store.health().damage is not None:
            self._replace_wanted.set()
        for reply in step.finished:
            outcome = "ok" if reply.failure is None else reply.failure.value
            metrics.inc(_FINISHED_METRICS[type(reply)], (("outcome", outcome),))
        self._follow_ring()  # before the step's messages: a new member gets its own
        encoded: dict[int, bytes] = {}
        for envelope in step.messages:
            message = envelope.message
            wire = encoded.get(id(message))
            if wire is None:
                wire = encoded[id(message)] = encode_message(message)
            if not self._links.send_nowait(envelope.destination, wire):
                metrics.inc("tokenvault_peer_messages_unroutable_total")
        if step.local:
            self._local_queue.extend(step.local)
            self._local_wanted.set()
        for answer in step.answers:
            waiter = self._waiters.get(answer.op_id)
            if waiter is not None:
                waiter.answer = answer
                waiter.event.set()
        if step.sync_ticket is not None:
            self._sync_wanted.set()
        if self.core.next_due() < self._clock_sleeps_until:
            self._clock_wakeup.set()

    async def _run_syncer(self) -> None:
        retry_delay_s = SYNC_RETRY_DELAY_S
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted = trio.Event()
            async with self._store_in_use:
                core = self.core
                ticket = core.staged_ticket  # all of it is pending: wait_durable covers it
                try:
                    await self.store.wait_durable()
                except StorageError as error:
                    self._act(core.on_durability_failed(ticket, trio.current_time()))
                    self._settle(ticket)
                    self._sync_failed(error)
                    failed = True
                else:
                    if retry_delay_s > SYNC_RETRY_DELAY_S:
                        self.log.emit("store_writable", reopens=self.store.health().reopens)
                    retry_delay_s = SYNC_RETRY_DELAY_S
                    self._act(core.on_durable(ticket, trio.current_time()))
                    self._settle(ticket)
                    failed = False
            if failed:
                if self.store.health().damage is not None:
                    self._replace_wanted.set()
                    continue  # the new store has nothing pending
                await trio.sleep(retry_delay_s)
                retry_delay_s = min(2 * retry_delay_s, SYNC_RETRY_DELAY_MAX_S)
                self._sync_wanted.set()  # the writes stay pending: try again

    def _sync_failed(self, error: StorageError) -> None:
        """Count a failed sync; log it by kind, at most once per STORAGE_LOG_INTERVAL_S."""
        self.metrics.inc("tokenvault_storage_errors_total")
        failure = error if isinstance(error, StoreWriteFailed) else None
        kind = "sync_failed" if failure is None else failure.kind
        held_back = self._storage_throttle.allow(("sync", kind))
        if held_back is None:
            return
        self.log.emit(
            "storage_error",
            level="error",
            kind=kind,
            file="" if failure is None else failure.file,
            reason="" if failure is None else failure.reason,
            held_back=held_back,
        )

    async def _run_store_replacer(self) -> None:
        """Replace a damaged store by a new, empty one, and the core by one built over it."""
        while True:
            await self._replace_wanted.wait()
            self._replace_wanted = trio.Event()
            async with self._store_in_use:  # no flush runs
                damage = self.store.health().damage
                if damage is None:
                    continue
                self._retired_totals += RunningTotals.of(self.store, self.core)
                self.store.close()
                moved_to = move_aside(self.store_path)
                # StorageError here ends the peer: not even a new store opens.
                self.store = LevelDBStore(str(self.store_path))
                self.stores_replaced += 1
                self._log_damage(damage, moved_to.name, found="running")

                old_waiters = list(self._waiters.values())
                self.core = self._new_core()
                self._new_core_built.set()
                self._core_generation += 1
                self._settled_ticket = 0
                self._settle(0)
                for waiter in old_waiters:
                    if waiter.answer is None:
                        waiter.answer = self._store_failed_answer(waiter.operation)
                        waiter.event.set()
                self._follow_ring()
                self._clock_wakeup.set()

    def _store_failed_answer(self, operation: ClientOperation | ChangeMembership) -> ClientAnswer:
        """The answer of an operation whose core was replaced with its damaged store; a
        membership change is indeterminate then (its accept may still be chosen)."""
        if isinstance(operation, ChangeMembership):
            membership = self.core.membership
            return RingDone(
                op_id=operation.op_id,
                outcome=RingOutcome.TIMEOUT,
                membership=membership,
                reason=Failure.STORE_FAILED.value,
            )
        return failed_answer(operation, Failure.STORE_FAILED)

    async def _run_digest_builder(self) -> None:
        """Build the digests of the core's replica from the store, a page at a time, and again
        for every core built over a store that replaced a damaged one."""
        while True:
            core = self.core
            digests = core.replica.digests
            while not digests.complete and core is self.core:
                try:
                    digests.rebuild_page(self.store, DIGEST_PAGE_KEYS)
                except StorageError:  # damaged (the replacer takes over), or closed meanwhile
                    if self.store.health().damage is not None:
                        self._replace_wanted.set()
                        break
                await trio.sleep(DIGEST_PAGE_INTERVAL_S)
            if core is self.core:
                await self._new_core_built.wait()
            self._new_core_built = trio.Event()

    async def _run_scrubber(self) -> None:
        """Verify every block of the store, a page at a time: first soon after open, then
        every scrub_interval_s."""
        await trio.sleep(SCRUB_FIRST_PASS_DELAY_S)
        while True:
            store = self.store
            cursor: bytes | None = None
            while store is self.store:
                try:
                    cursor = store.verify_page(cursor, SCRUB_PAGE_KEYS)
                except StorageError:  # damaged (the replacer takes over), or closed meanwhile
                    if store.health().damage is not None:
                        self._replace_wanted.set()
                    break
                if cursor is None:
                    self.scrubs += 1
                    break
                filling = not store.key_filter_complete
                await trio.sleep(FILTER_FILL_PAGE_INTERVAL_S if filling else SCRUB_PAGE_INTERVAL_S)
            await trio.sleep(self.scrub_interval_s)

    def _settle(self, ticket: int) -> None:
        self._settled_ticket = max(self._settled_ticket, ticket)
        self._settled.set()
        self._settled = trio.Event()

    async def _run_clock(self) -> None:
        while True:
            self._clock_wakeup = trio.Event()
            self._clock_sleeps_until = due = self.core.next_due()
            with trio.move_on_at(due):
                await self._clock_wakeup.wait()
            self._clock_sleeps_until = float("inf")
            now = trio.current_time()
            if now >= self.core.next_due():
                self._act(self.core.advance(now))
