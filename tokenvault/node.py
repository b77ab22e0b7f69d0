"""One peer on trio: the driver that runs the sans-IO `PeerCore` with real time, LevelDB and the
peer links. Routing, persist-before-send, timers and client-operation policy are the core's;
this module only does what the core's `Step` asks.

Rules:
- Every input reaches the core synchronously: there is no checkpoint between a core call and
  acting on its step, so no other input runs in between.
- A step is acted on at once: events logged and counted, messages queued on the links (a message
  sent to several peers is encoded once), messages to this peer itself given back to the core in
  a task of their own, answers handed to the requests that wait for them.
- Durability (group commit): one task, the syncer, makes the store durable whenever a step asks,
  many steps per synced LevelDB batch, and reports the ticket to the core (or the failure). A
  peer batch is answered once what it produced is settled, which paces the sending peer.
- One clock task calls `advance` when the core's next timer or heartbeat is due.
- A peer batch reaches the core only once it fits this cluster's configuration (`BatchRules`:
  owners that are configured, fields that the owner has, a heartbeat only of its sender); the
  codec has already checked every type and range. A batch that does not fit is refused whole:
  peers of one configuration (the fingerprint says so) never send one.
"""

from __future__ import annotations

import itertools
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from tokenvault.config import ClusterConfig, PeerConfig, cluster_fingerprint
from tokenvault.http.peer_auth import PeerCredential, PeerSigner, new_incarnation, require_source
from tokenvault.http.peer_codec import CodecError, decode_batch, encode_message
from tokenvault.http.peer_transport import PeerLink
from tokenvault.log import EventLog
from tokenvault.metrics import Metrics
from tokenvault.quorum.anti_entropy import AntiEntropyLimits
from tokenvault.quorum.client_operations import ClientAnswer, ClientOperation
from tokenvault.quorum.effects import EpochDone, ReadDone, WriteDone
from tokenvault.quorum.messages import Heartbeat, InsertRequest, Message
from tokenvault.quorum.peer_core import PeerCore, PeerLimits, Step
from tokenvault.ring.hash_ring import HashRing
from tokenvault.store.leveldb_store import LevelDBStore
from tokenvault.store.storage import StorageError
from tokenvault.tokens import derive_peer_key

SYNC_RETRY_DELAY_S = 0.1  # after a failed sync, before the next attempt
_FINISHED_METRICS = {
    WriteDone: "tokenvault_quorum_writes_total",
    ReadDone: "tokenvault_quorum_reads_total",
    EpochDone: "tokenvault_epoch_operations_total",
}


class NotConfigured(CodecError):
    """A peer batch that decodes but does not fit this cluster's configuration."""


class BatchRules:
    """What a decoded peer batch must fit beyond the codec's checks: the configuration. The text
    of a refusal names only where it failed, never a value."""

    def __init__(self, config: ClusterConfig) -> None:
        self._fields: dict[str, frozenset[str]] = {o.id: o.fields for o in config.owners}

    def check(self, source: str, messages: Sequence[Message]) -> None:
        for index, message in enumerate(messages):
            if isinstance(message, Heartbeat):
                if message.sender != source:
                    raise NotConfigured(f"$.messages[{index}].sender is not the batch's source")
                continue
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
    event: trio.Event = field(default_factory=trio.Event)
    answer: ClientAnswer | None = None


def peer_limits(config: ClusterConfig) -> PeerLimits:
    """The core's limits as the cluster configuration sets them."""
    interval_s = config.anti_entropy_interval_s
    return PeerLimits(
        anti_entropy=AntiEntropyLimits(pass_interval_s=interval_s or 1.0),
        anti_entropy_enabled=interval_s > 0,
    )


class Node:
    def __init__(
        self,
        config: ClusterConfig,
        peer_id: str,
        *,
        log: EventLog | None = None,
        link_context: ssl.SSLContext | None = None,
    ) -> None:
        """`link_context`: the mutual-TLS context of this peer's links (None: plain HTTP)."""
        self.config = config
        self.peer: PeerConfig = config.peer(peer_id)
        self.peer_id = peer_id
        self.log = log if log is not None else EventLog(peer_id)
        self.metrics = Metrics()
        self.cluster_fingerprint = cluster_fingerprint(config)
        self._batch_rules = BatchRules(config)
        self.peer.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = LevelDBStore(str(self.peer.data_dir / "leveldb"))
        self.core = PeerCore(
            peer_id=peer_id,
            ring=HashRing((p.id for p in config.peers), config.vnodes_per_peer),
            quorum=config.quorum,
            owners=[o.id for o in config.owners],
            storage=self.store,
            secret=config.secret,
            rng=random.SystemRandom(),
            now=trio.current_time(),
            limits=peer_limits(config),
        )
        # Random per process start: in request ids (the first 8 digits) and in every signed batch.
        self._incarnation = new_incarnation()
        own_key = derive_peer_key(config.secret, peer_id)
        self.links: dict[str, PeerLink] = {
            p.id: PeerLink(
                local_peer_id=peer_id,
                peer_id=p.id,
                host=p.host,
                port=p.port,
                signer=PeerSigner(
                    sender=peer_id,
                    receiver=p.id,
                    key=own_key,
                    incarnation=self._incarnation,
                    fingerprint=self.cluster_fingerprint,
                ),
                link_context=link_context,
            )
            for p in config.peers
            if p.id != peer_id
        }
        self._op_counter = itertools.count(1)
        self._waiters: dict[str, _Waiter] = {}
        self._sync_wanted = trio.Event()
        self._settled_ticket = 0  # synced, or failed to sync
        self._settled = trio.Event()
        self._clock_wakeup = trio.Event()
        self._clock_sleeps_until = float("inf")
        self._nursery: trio.Nursery | None = None
        self.started_at = 0.0

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.started_at = trio.current_time()
            nursery.start_soon(self._run_clock)
            nursery.start_soon(self._run_syncer)
            for link in self.links.values():
                nursery.start_soon(link.run)
            task_status.started()

    def close(self) -> None:
        self.store.close()

    def new_request_id(self) -> str:
        return f"{self.peer_id}-{self._incarnation[:8]}-{next(self._op_counter)}"

    # -- inputs --------------------------------------------------------------------------------

    async def perform(self, operation: ClientOperation) -> ClientAnswer:
        """Runs a client operation to its answer (a failure is an answer too)."""
        waiter = self._waiters[operation.op_id] = _Waiter()
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
        if not self.core.is_peer(source):
            raise CodecError("batch from an unknown peer")
        if certified_source is not None and source != certified_source:
            raise CodecError("batch whose source is not the peer its certificate names")
        self._batch_rules.check(source, messages)
        step = self.core.receive(source, messages, trio.current_time())
        self._act(step)
        if step.sync_ticket is not None:
            while self._settled_ticket < step.sync_ticket:
                await self._settled.wait()

    async def _receive_local(self, messages: Sequence[Message]) -> None:
        self._act(self.core.receive(self.peer_id, messages, trio.current_time()))

    # -- acting on a step ----------------------------------------------------------------------

    def _act(self, step: Step) -> None:
        metrics = self.metrics
        for event in step.events:
            self.log.core_event(event)
            metrics.inc("tokenvault_events_total", (("event", event.name),))
            if event.name == "storage_error":
                metrics.inc("tokenvault_storage_errors_total")
        for reply in step.finished:
            outcome = "ok" if reply.failure is None else reply.failure.value
            metrics.inc(_FINISHED_METRICS[type(reply)], (("outcome", outcome),))
        encoded: dict[int, bytes] = {}
        for envelope in step.messages:
            message = envelope.message
            wire = encoded.get(id(message))
            if wire is None:
                wire = encoded[id(message)] = encode_message(message)
            self.links[envelope.destination].send_nowait(wire)
        if step.local:
            assert self._nursery is not None
            self._nursery.start_soon(self._receive_local, step.local)
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
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted = trio.Event()
            ticket = self.core.staged_ticket  # all of it is pending: wait_durable covers it
            try:
                await self.store.wait_durable()
            except StorageError:
                self._act(self.core.on_durability_failed(ticket, trio.current_time()))
                self._settle(ticket)
                self.log.emit("storage_error", level="error", kind="sync_failed")
                self.metrics.inc("tokenvault_storage_errors_total")
                await trio.sleep(SYNC_RETRY_DELAY_S)
                self._sync_wanted.set()  # the writes stay pending: try again
                continue
            self._act(self.core.on_durable(ticket, trio.current_time()))
            self._settle(ticket)

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
