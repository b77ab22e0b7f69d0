"""One peer: the one place where trio, the store, the transport and the sans-IO cores meet.

Theory of operation:
- Inputs reach the cores from three places: client operations (the public API), peer batches
  (the internal endpoint, or straight from this peer to itself) and timers. Each core call is
  synchronous, so no other input runs between a call and the staging of its writes.
- Persist before send: the writes of every Effects are staged at once and made durable (one
  group-committed LevelDB batch for everything pending) before any message or reply it produced
  leaves. A replica's answer waits for durability even when it wrote nothing itself, because what
  it read may have been staged by an insert that is not yet fsync'd.
- Every state change the cores report is one JSON log line and one counter.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import trio

from tokenvault.config import ClusterConfig, PeerConfig, cluster_fingerprint
from tokenvault.http.peer_codec import CodecError, decode_batch, encode_message
from tokenvault.http.peer_transport import PeerLink
from tokenvault.log import EventLog
from tokenvault.metrics import Metrics
from tokenvault.quorum.acceptor import Acceptor
from tokenvault.quorum.anti_entropy import AntiEntropy, AntiEntropyLimits
from tokenvault.quorum.coordinator import Coordinator, CoordinatorLimits
from tokenvault.quorum.effects import (
    ClientReply,
    Effects,
    EpochDone,
    Failure,
    ReadDone,
    Timer,
    WriteDone,
)
from tokenvault.quorum.epoch_coordinator import EpochCoordinator
from tokenvault.quorum.failure_detector import FailureDetector, PeerState
from tokenvault.quorum.hinted_handoff import HintedHandoff
from tokenvault.quorum.messages import (
    GENESIS,
    Decide,
    Envelope,
    EpochValue,
    InsertReply,
    Mapping,
    Message,
    OwnerInspect,
    OwnerView,
)
from tokenvault.quorum.records import StorageCorrupt
from tokenvault.quorum.replica import Replica
from tokenvault.quorum.routing import Destination, route
from tokenvault.ring.hash_ring import HashRing
from tokenvault.store.leveldb_store import LevelDBStore
from tokenvault.store.storage import StorageError
from tokenvault.tokens import derive_peer_key

TIMERS_MAX = 100_000
INSPECT_TIMEOUT_S = 2.0
PREFERENCE_LISTS_CACHED_MAX = 100_000
CONFIG_MISMATCH_LOG_INTERVAL_S = 60.0
CONFIG_MISMATCH_SENDERS_MAX = 1_000
_FINGERPRINT = re.compile(r"[0-9a-f]{32}")


class OperationFailed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.value)
        self.failure = failure


@dataclass(slots=True)
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    reply: ClientReply | None = None


@dataclass(slots=True)
class _Inspection:
    expected: int
    views: dict[str, OwnerView] = field(default_factory=dict)
    complete: trio.Event = field(default_factory=trio.Event)


class Node:
    def __init__(
        self,
        config: ClusterConfig,
        peer_id: str,
        *,
        log: EventLog | None = None,
        coordinator_limits: CoordinatorLimits = CoordinatorLimits(),
    ) -> None:
        self.config = config
        self.peer: PeerConfig = config.peer(peer_id)
        self.peer_id = peer_id
        self.log = log if log is not None else EventLog(peer_id)
        self.metrics = Metrics()
        self.ring = HashRing((p.id for p in config.peers), config.vnodes_per_peer)
        self._preference_lists: dict[str, tuple[str, ...]] = {}
        self.peer_key = derive_peer_key(config.secret)
        self.cluster_fingerprint = cluster_fingerprint(config)
        self._mismatch_logged_at: dict[str, float] = {}  # sender address -> last alarm
        self.peer.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = LevelDBStore(str(self.peer.data_dir / "leveldb"))
        self.replica = Replica(peer_id=peer_id, storage=self.store)
        self.acceptor = Acceptor(peer_id=peer_id, storage=self.store)
        self.hints = HintedHandoff(peer_id=peer_id, storage=self.store)
        self.anti_entropy = AntiEntropy(
            peer_id=peer_id,
            storage=self.store,
            digests=self.replica.digests,
            decided=self.acceptor,
            replicas_by_owner={o.id: self.preference_list(o.id) for o in config.owners},
            limits=AntiEntropyLimits(pass_interval_s=config.anti_entropy_interval_s or 1.0),
        )
        self.anti_entropy_enabled = config.anti_entropy_interval_s > 0
        self.coordinator = Coordinator(
            peer_id=peer_id, quorum=config.quorum, limits=coordinator_limits, hints=self.hints
        )
        self.epoch_coordinator = EpochCoordinator(peer_id=peer_id, rng=random.SystemRandom())
        # The highest epoch this peer knows per owner: what new tokens are computed under.
        # Stale is safe: replicas fence old epochs and the tokenize learns and retries.
        self._epochs: dict[str, EpochValue] = {}
        for owner in config.owners:
            if peer_id in self.preference_list(owner.id):
                self._epochs[owner.id] = self.acceptor.active_epoch(owner.id)
        self.links: dict[str, PeerLink] = {
            p.id: PeerLink(
                local_peer_id=peer_id,
                peer_id=p.id,
                host=p.host,
                port=p.port,
                peer_key=self.peer_key,
                cluster_fingerprint=self.cluster_fingerprint,
            )
            for p in config.peers
            if p.id != peer_id
        }
        self._incarnation = secrets.token_hex(4)
        self._op_counter = itertools.count(1)
        self._waiters: dict[str, _Waiter] = {}
        self._inspections: dict[str, _Inspection] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_sequence = itertools.count()
        self._timer_wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.started_at = 0.0
        self.failure_detector = FailureDetector(
            peer_id=peer_id, peers=tuple(p.id for p in config.peers), now=trio.current_time()
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.started_at = trio.current_time()
            nursery.start_soon(self._run_timers)
            nursery.start_soon(self._run_heartbeats)
            for link in self.links.values():
                nursery.start_soon(link.run)
            task_status.started()

    def close(self) -> None:
        self.store.close()

    def new_request_id(self) -> str:
        return f"{self.peer_id}-{self._incarnation}-{next(self._op_counter)}"

    # -- client operations ---------------------------------------------------------------------

    def preference_list(self, owner: str) -> tuple[str, ...]:
        """The owner's replicas; the ring is static, so each owner's list is computed once."""
        replicas = self._preference_lists.get(owner)
        if replicas is None:
            replicas = self.ring.preference_list(owner, self.config.quorum.replica_count)
            if len(self._preference_lists) < PREFERENCE_LISTS_CACHED_MAX:
                self._preference_lists[owner] = replicas
        return replicas

    async def write_mappings(
        self, request_id: str, owner: str, mappings: Sequence[Mapping]
    ) -> None:
        """Returns once every mapping is durable on W replicas; raises OperationFailed."""
        waiter = self._waiters[request_id] = _Waiter()
        effects = self.coordinator.start_write(
            op_id=request_id,
            owner=owner,
            replicas=self.preference_list(owner),
            mappings=mappings,
            now=trio.current_time(),
            down=self.down_peers(),
        )
        reply = await self._await_reply(request_id, waiter, effects)
        assert isinstance(reply, WriteDone)
        self.metrics.inc("tokenvault_quorum_writes_total", _outcome(reply.failure))
        if reply.failure is not None:
            raise OperationFailed(reply.failure)

    async def read_mappings(
        self, request_id: str, owner: str, tokens: Sequence[str]
    ) -> tuple[Mapping | None, ...]:
        waiter = self._waiters[request_id] = _Waiter()
        effects = self.coordinator.start_read(
            op_id=request_id,
            owner=owner,
            replicas=self.preference_list(owner),
            tokens=tokens,
            now=trio.current_time(),
            down=self.down_peers(),
        )
        reply = await self._await_reply(request_id, waiter, effects)
        assert isinstance(reply, ReadDone)
        self.metrics.inc("tokenvault_quorum_reads_total", _outcome(reply.failure))
        if reply.failure is not None:
            raise OperationFailed(reply.failure)
        return reply.mappings

    def known_epoch(self, owner: str) -> EpochValue:
        return self._epochs.get(owner, GENESIS)

    def _note_epoch(self, owner: str, value: EpochValue) -> None:
        known = self._epochs.get(owner, GENESIS)
        if value.epoch > known.epoch:
            self._epochs[owner] = value
            self.log.emit("epoch_known", owner=owner, epoch=value.epoch)

    async def learn_epoch(self, request_id: str, owner: str) -> EpochValue:
        """The active epoch per a majority of the owner's replicas; finishes half-done rounds."""
        value, _ = await self._epoch_operation(
            request_id,
            owner,
            self.epoch_coordinator.start_learn(
                op_id=request_id,
                owner=owner,
                replicas=self.preference_list(owner),
                now=trio.current_time(),
                down=self.down_peers(),
            ),
        )
        return value

    async def rotate_epoch(
        self, request_id: str, owner: str, expected_epoch: int | None
    ) -> tuple[EpochValue, bool]:
        return await self._epoch_operation(
            request_id,
            owner,
            self.epoch_coordinator.start_rotate(
                op_id=request_id,
                owner=owner,
                replicas=self.preference_list(owner),
                expected_epoch=expected_epoch,
                requested_at_s=time.time(),
                now=trio.current_time(),
                down=self.down_peers(),
            ),
        )

    async def _epoch_operation(
        self, request_id: str, owner: str, effects: Effects
    ) -> tuple[EpochValue, bool]:
        waiter = self._waiters[request_id] = _Waiter()
        reply = await self._await_reply(request_id, waiter, effects)
        assert isinstance(reply, EpochDone)
        self.metrics.inc("tokenvault_epoch_operations_total", _outcome(reply.failure))
        if reply.failure is not None:
            raise OperationFailed(reply.failure)
        assert reply.value is not None
        self._note_epoch(owner, reply.value)
        return reply.value, reply.rotated

    async def _await_reply(self, request_id: str, waiter: _Waiter, effects: Effects) -> ClientReply:
        try:
            await self._dispatch(effects, from_replica=False)
            await waiter.event.wait()
        finally:
            self._waiters.pop(request_id, None)
        assert waiter.reply is not None
        return waiter.reply

    # -- peer messages -------------------------------------------------------------------------

    def refuse_foreign_batch(self, sender: str, fingerprint: str) -> None:
        """A batch from a peer whose cluster configuration differs: an alarm (at most one
        line per sender per CONFIG_MISMATCH_LOG_INTERVAL_S) and a counter; the caller refuses
        it, so such a peer is never heard and its writes never land here."""
        self.metrics.inc("tokenvault_config_mismatches_total")
        now = trio.current_time()
        last = self._mismatch_logged_at.get(sender)
        if last is not None and now - last < CONFIG_MISMATCH_LOG_INTERVAL_S:
            return
        if len(self._mismatch_logged_at) >= CONFIG_MISMATCH_SENDERS_MAX:
            self._mismatch_logged_at.clear()
        self._mismatch_logged_at[sender] = now
        self.log.emit(
            "config_mismatch",
            level="error",
            sender=sender,
            theirs=fingerprint if _FINGERPRINT.fullmatch(fingerprint) else "missing-or-malformed",
            ours=self.cluster_fingerprint,
        )

    async def receive_peer_batch(self, body: bytes) -> None:
        """Handles one authenticated batch from a peer; raises CodecError on a malformed one."""
        source, messages = decode_batch(body)
        if source not in self.ring.peer_ids or source == self.peer_id:
            raise CodecError("batch from an unknown peer")
        signs_of_life = self.failure_detector.heard_from(source, trio.current_time())
        if not signs_of_life.is_empty():
            await self._dispatch(signs_of_life, from_replica=False)
        await self._deliver(source, messages)

    async def _deliver(self, source: str, messages: Sequence[Message]) -> None:
        storage_effects = Effects()  # from the cores that answer out of storage
        now = trio.current_time()
        for message in messages:
            destination = route(message)
            if destination is Destination.NONE:
                continue
            if destination is Destination.INSPECTION:
                assert isinstance(message, OwnerView)
                self._note_inspection(source, message)
                continue
            effects = self._core_effects(destination, source, message, now)
            if destination.answers_from_storage:
                self.store.stage(effects.writes)
                storage_effects.extend(effects)
            else:
                await self._dispatch(effects, from_replica=False)
        if not storage_effects.is_empty():
            await self._dispatch(storage_effects, from_replica=True, staged=True)

    def _core_effects(
        self, destination: Destination, source: str, message: Message, now: float
    ) -> Effects:
        if destination is Destination.REPLICA:
            return self.replica.on_message(source, message)
        if destination is Destination.ACCEPTOR:
            effects = self.acceptor.on_message(source, message)
            if isinstance(message, Decide):
                self._note_epoch(message.owner, message.value)
            return effects
        if destination is Destination.ANTI_ENTROPY:
            return self.anti_entropy.on_message(source, message, now)
        if destination is Destination.HINTS:
            assert isinstance(message, InsertReply)
            return self.hints.on_reply(source, message)
        if destination is Destination.COORDINATOR:
            return self.coordinator.on_message(source, message)
        assert destination is Destination.EPOCH_COORDINATOR
        return self.epoch_coordinator.on_message(source, message, now)

    def _note_inspection(self, source: str, view: OwnerView) -> None:
        inspection = self._inspections.get(view.op_id)
        if inspection is not None:
            inspection.views[source] = view
            if len(inspection.views) == inspection.expected:
                inspection.complete.set()

    async def _deliver_locally(self, messages: list[Message]) -> None:
        with self._store_failures_logged():
            await self._deliver(self.peer_id, messages)

    @contextlib.contextmanager
    def _store_failures_logged(self) -> Iterator[None]:
        """A background task whose store write or read fails is dropped, logged and counted;
        the peer stays up (what it was doing is retried by resends, hints or anti-entropy)."""
        try:
            yield
        except (StorageError, StorageCorrupt) as error:
            self.log.emit("storage_error", level="error", kind=type(error).__name__)
            self.metrics.inc("tokenvault_storage_errors_total")

    # -- the driver ----------------------------------------------------------------------------

    async def _dispatch(
        self, effects: Effects, *, from_replica: bool, staged: bool = False
    ) -> None:
        """Persist, arm, then send: the order of effects.py."""
        if not staged:
            self.store.stage(effects.writes)
        for event in effects.events:
            active = self.known_epoch(event.owner).epoch if event.owner else 0
            self.log.core_event(event, active_epoch=active)
            self.metrics.inc("tokenvault_events_total", (("event", event.name),))
        if effects.writes or from_replica:
            await self.store.wait_durable()
        for timer in effects.timers:
            self._arm(timer)
        local: list[Message] = []
        encoded: dict[int, bytes] = {}  # one message sent to several peers is encoded once
        for envelope in effects.messages:
            message = envelope.message
            if envelope.destination == self.peer_id:
                local.append(message)
                continue
            wire = encoded.get(id(message))
            if wire is None:
                wire = encoded[id(message)] = encode_message(message)
            self.links[envelope.destination].send_nowait(wire)
        if local:
            assert self._nursery is not None
            self._nursery.start_soon(self._deliver_locally, local)
        for reply in effects.replies:
            waiter = self._waiters.get(reply.op_id)
            if waiter is not None:
                waiter.reply = reply
                waiter.event.set()

    def _arm(self, timer: Timer) -> None:
        if len(self._timers) >= TIMERS_MAX:
            self.metrics.inc("tokenvault_timers_dropped_total")
            return
        heapq.heappush(self._timers, (timer.due, next(self._timer_sequence), timer))
        if self._timers[0][2] is timer:
            self._timer_wakeup.set()

    async def _run_timers(self) -> None:
        while True:
            due = self._timers[0][0] if self._timers else float("inf")
            with trio.move_on_at(due):
                self._timer_wakeup = trio.Event()
                await self._timer_wakeup.wait()
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, timer = heapq.heappop(self._timers)
                effects = self.coordinator.on_timer(timer, now)
                effects.extend(self.epoch_coordinator.on_timer(timer, now))
                if not effects.is_empty():
                    assert self._nursery is not None
                    self._nursery.start_soon(self._dispatch_timer_effects, effects)

    async def _dispatch_timer_effects(self, effects: Effects) -> None:
        with self._store_failures_logged():
            await self._dispatch(effects, from_replica=False)

    # -- inspection ----------------------------------------------------------------------------

    async def inspect_owner(
        self, owner: str, timeout_s: float = INSPECT_TIMEOUT_S
    ) -> dict[str, OwnerView]:
        """Every replica's own view of the owner that answers within the timeout."""
        request_id = self.new_request_id()
        replicas = self.preference_list(owner)
        inspection = self._inspections[request_id] = _Inspection(expected=len(replicas))
        try:
            inspect = OwnerInspect(op_id=request_id, owner=owner)
            envelopes = [
                Envelope(source=self.peer_id, destination=replica, message=inspect)
                for replica in replicas
            ]
            await self._dispatch(Effects(messages=envelopes), from_replica=False)
            with trio.move_on_after(timeout_s):
                await inspection.complete.wait()
        finally:
            del self._inspections[request_id]
        return inspection.views

    async def _run_heartbeats(self) -> None:
        interval_s = self.failure_detector.limits.heartbeat_interval_s
        while True:  # the first beat goes out at once: a restarted peer is seen up quickly
            now = trio.current_time()
            effects = self.failure_detector.tick(now)
            down = self.down_peers()
            effects.extend(self.hints.tick(now, down))
            with self._store_failures_logged():
                if self.anti_entropy_enabled:
                    effects.extend(self.anti_entropy.tick(now, down))
                await self._dispatch(effects, from_replica=False)
            await trio.sleep(interval_s)

    def down_peers(self) -> frozenset[str]:
        return frozenset(v.peer for v in self.failure_detector.views() if v.state is PeerState.DOWN)

    def peer_views(self) -> list[dict[str, object]]:
        now = trio.current_time()
        seen = {v.peer: v for v in self.failure_detector.views()}
        views: list[dict[str, object]] = []
        heard: float | None
        for peer in self.config.peers:
            view = seen.get(peer.id)
            if view is None:  # this peer itself
                state, since, heard = "up", self.started_at, now
            else:
                state, since, heard = view.state.value, view.since, view.last_heard
            views.append(
                {
                    "id": peer.id,
                    "address": peer.address,
                    "state": state,
                    "for_s": round(now - since, 3),
                    "last_heard_s_ago": None if heard is None else round(now - heard, 3),
                    "self": view is None,
                }
            )
        return views

    def node_view(self) -> dict[str, object]:
        store = self.store.statistics()
        return {
            "peer": self.peer_id,
            "address": self.peer.address,
            "cluster_fingerprint": self.cluster_fingerprint,
            "uptime_s": round(trio.current_time() - self.started_at, 3),
            "operations_in_flight": self.coordinator.operations_in_flight(),
            "owners": [o.id for o in self.config.owners],
            "anti_entropy": self._anti_entropy_view(),
            "hints": [
                {"target": h.target, "hints": h.hints, "bytes": h.bytes, "in_flight": h.in_flight}
                for h in self.hints.statistics()
            ],
            "store": {
                "flushes": store.flushes,
                "writes_flushed": store.writes_flushed,
                "largest_flush_writes": store.largest_flush_writes,
                "pending_writes": store.pending_writes,
            },
            "links": [
                {
                    "peer": s.peer_id,
                    "queued_messages": s.queued_messages,
                    "batches_sent": s.batches_sent,
                    "messages_sent": s.messages_sent,
                    "bytes_sent": s.bytes_sent,
                    "batches_failed": s.batches_failed,
                    "messages_dropped": s.messages_dropped,
                }
                for s in (link.statistics() for link in self.links.values())
            ],
            "peers": self.peer_views(),
        }

    def _anti_entropy_view(self) -> dict[str, object]:
        stats = self.anti_entropy.statistics
        last = stats.last_pass
        now = trio.current_time()
        return {
            "enabled": self.anti_entropy_enabled,
            "passes": stats.passes,
            "passes_in_sync": stats.passes_in_sync,
            "mappings_pushed": stats.mappings_pushed,
            "epochs_learned": stats.epochs_learned,
            "last_pass": None
            if last is None
            else {
                "owner": last.owner,
                "partner": last.partner,
                "outcome": last.outcome,
                "finished_s_ago": round(now - last.finished, 3),
                "duration_s": round(last.finished - last.started, 3),
                "differing_buckets": last.differing_buckets,
                "pages": last.pages,
                "mappings_pushed": last.mappings_pushed,
            },
        }

    def render_metrics(self) -> str:
        store = self.store.statistics()
        metrics = self.metrics
        metrics.set_gauge("tokenvault_store_flushes", store.flushes)
        metrics.set_gauge("tokenvault_store_writes_flushed", store.writes_flushed)
        metrics.set_gauge("tokenvault_store_pending_writes", store.pending_writes)
        metrics.set_gauge(
            "tokenvault_operations_in_flight", self.coordinator.operations_in_flight()
        )
        metrics.set_gauge("tokenvault_hints_pending", self.hints.pending_total())
        stats = self.anti_entropy.statistics
        metrics.set_gauge("tokenvault_anti_entropy_passes", stats.passes)
        metrics.set_gauge("tokenvault_anti_entropy_passes_in_sync", stats.passes_in_sync)
        metrics.set_gauge("tokenvault_anti_entropy_mappings_pushed", stats.mappings_pushed)
        for state in ("up", "suspect", "down"):
            count = sum(1 for v in self.failure_detector.views() if v.state.value == state)
            metrics.set_gauge("tokenvault_peers", count, (("state", state),))
        for link in self.links.values():
            s = link.statistics()
            labels = (("peer", s.peer_id),)
            metrics.set_gauge("tokenvault_link_queued_messages", s.queued_messages, labels)
            metrics.set_gauge("tokenvault_link_batches_failed", s.batches_failed, labels)
            metrics.set_gauge("tokenvault_link_bytes_sent", s.bytes_sent, labels)
            metrics.set_gauge("tokenvault_link_messages_dropped", s.messages_dropped, labels)
        return metrics.render()


def _outcome(failure: Failure | None) -> tuple[tuple[str, str], ...]:
    return (("outcome", "ok" if failure is None else failure.value),)
