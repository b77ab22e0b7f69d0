"""Transfers: a moved owner's new replica fills itself from the old ones, sans-IO
(docs/membership.md §3 "A transfer", §7).

Theory of operation. One transfer per (ring version, owner) this peer is a new replica of (in
the owner's new set, not in its old one), started by the peer core once the owner is fenced
(every replica of both sets learned the joint version: every write acknowledged from then on
reached W of the new set, so what must be copied is what the old set held before). The target
drives it, pulling; its steps:
1. epochs: recovery's learning step (recovery.py): a RecoveryQuery to every old replica, and
   with reports from a majority of the old set, `Acceptor.adopt`. The adopted state dominates
   everything a majority of the old set promised, accepted or decided (recovery's proof).
2. copying: one *pass* reads the owner's whole range from one old replica, page by page
   (`TransferPage`: at most 1,000 mappings or 1 MiB, in token order after the cursor). A page
   carries the records as stored (sealed) and a checksum; a page whose checksum fails is
   dropped (`transfer_page_corrupt`) and asked again. Its mappings go through the replica's
   insert-once path (a different mapping under a held token is a conflict, never an
   overwrite), and the new cursor is written in the SAME write batch: after a crash the
   transfer resumes after the last durable page. A source silent for `source_silence_s` (or
   that answers `unavailable`) is replaced by the next old replica, from the same cursor (key
   order is the same everywhere): `transfer_source_replaced`.
3. verifying: more passes, each from an old replica no whole pass was read from yet, until
   whole passes were read from `replica_count - write_quorum + 1` old replicas. Then
   `committed`, durable. Why that is enough: a pass stores here, durably, every mapping its
   source held when each page was read, and an old replica holds (insert-once, nothing dropped
   before the drain) everything it held at the fence; an acknowledged write is on W replicas
   of the old set, and N - W + 1 of them meet every such W. So the target holds every mapping
   acknowledged before the fence, and (dual writes) W of the new set hold every later one.
   A pass whose source was replaced half-way covers the range but no single replica: it
   counts for none. Fewer would not do: a replica may lack writes a quorum acknowledged (the
   hole of Cassandra's single-source bootstrap, CASSANDRA-2434); and with a dead old replica
   the survivors still number N - 1 >= N - W + 1, so a replace still commits.
The throttle (throttle.py) is one token bucket over all of this peer's transfers: a page is
asked only while the bucket is not in debt and fewer than `pages_in_flight_max` pages are
asked; a page's bytes are charged when it arrives; otherwise a THROTTLE timer.
The source side answers a page out of its store (routing.py: held until durable), or
`unavailable` when it does not hold the owner now (`holds`).

Rules: a transfer's durable cursor never goes back within a pass; `verified` only grows; a
committed transfer never leaves `committed`; nothing here overwrites a mapping (replica.py
does the inserts and asserts it).

Limits: `TransferLimits` (pages, bytes, silence, in flight, transfers held).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from msgspec.structs import replace

from tokenvault.quorum.acceptor import Acceptor
from tokenvault.quorum.effects import Effects, Event, Timer, TimerKind
from tokenvault.quorum.messages import (
    TRANSFER_PAGE_BYTES_MAX,
    TRANSFER_PAGE_MAPPINGS_MAX,
    Envelope,
    InsertOutcome,
    InsertRequest,
    Mapping,
    Message,
    Origin,
    RecoveryQuery,
    RecoveryReport,
    TransferPage,
    TransferPageReply,
)
from tokenvault.quorum.quorum_config import QuorumConfig, majority
from tokenvault.quorum.records import StorageView, mapping_key, owner_mapping_prefix
from tokenvault.quorum.replica import Replica
from tokenvault.quorum.throttle import TokenBucket
from tokenvault.quorum.transfer_records import (
    TransferRecord,
    encode_transfer,
    read_transfers,
    transfer_key,
)

TRANSFER_OP_PREFIX = "tr:"
THROTTLE_OP_ID = "tr:throttle"
BYTES_PER_MB = 1_000_000


class TransferStep(enum.Enum):
    EPOCHS = "epochs"
    COPYING = "copying"
    VERIFYING = "verifying"
    COMMITTED = "committed"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferLimits:
    rate_bytes_s: float = 10 * BYTES_PER_MB  # `transfer_rate_mb_s` (config), over all transfers
    burst_bytes: int = TRANSFER_PAGE_BYTES_MAX
    page_mappings_max: int = TRANSFER_PAGE_MAPPINGS_MAX
    page_bytes_max: int = TRANSFER_PAGE_BYTES_MAX
    source_silence_s: float = 5.0  # a source that stays silent this long is replaced
    query_interval_s: float = 1.0  # epoch queries go again to old replicas that did not answer
    pages_in_flight_max: int = 4  # over all transfers: bounds the throttle's overshoot
    transfers_max: int = 100_000  # transfers held (and records read at start)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferView:
    """One transfer as the operator sees it (GET /v1/admin/members)."""

    version: int
    owner: str
    target: str
    sources: tuple[str, ...]
    source: str  # the old replica the pass under way reads ("" when none)
    state: str  # TransferStep's value
    running: bool  # a page is asked or waits for the throttle
    mappings_moved: int
    bytes_moved: int
    rate_bytes_s: float  # since this process started or resumed it
    eta_s: float | None  # None when unknown yet
    verified: int  # old replicas a whole pass was read from
    conflicts: int


@dataclass(slots=True)
class _Counts:
    started: int = 0
    committed: int = 0
    pages: int = 0  # pages stored here
    pages_corrupt: int = 0
    pages_answered: int = 0  # pages this peer answered as a source
    sources_replaced: int = 0
    mappings_moved: int = 0
    bytes_moved: int = 0
    conflicts: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferStatistics:
    """Counts since this process started; `pending`: transfers here not committed yet."""

    started: int
    committed: int
    pending: int
    pages: int  # pages stored here
    pages_corrupt: int
    pages_answered: int  # pages this peer answered as a source
    sources_replaced: int
    mappings_moved: int
    bytes_moved: int
    conflicts: int


@dataclass(slots=True, kw_only=True)
class _Transfer:
    record: TransferRecord
    started_at: float  # when this process started or resumed it
    reports: dict[str, RecoveryReport] = field(default_factory=dict)
    request: int = 0  # the number of the page request outstanding; 0: none
    asking: str = ""  # whom it was sent to
    silent_due: float = 0.0  # the DEADLINE timer's due: the source is silent from then on
    skipped: set[str] = field(default_factory=set)  # sources that failed this pass
    retry_due: float = 0.0  # when a transfer with no source left tries them all again
    query_due: float = 0.0  # when epoch queries go again to old replicas that did not answer
    held: int = 0  # how many mappings the source said it holds
    seen_in_pass: int = 0
    bytes_this_run: int = 0
    seen_this_run: int = 0

    @property
    def step(self) -> TransferStep:
        return TransferStep(self.record.step)

    @property
    def op_id(self) -> str:
        return f"{TRANSFER_OP_PREFIX}{self.record.version}:{self.record.owner}"


def page_checksum(entries: Iterable[tuple[str, bytes]]) -> str:
    """The hex blake2b-128 of the length-prefixed (token, record) pairs of a page."""
    digest = hashlib.blake2b(digest_size=16)
    for token, record in entries:
        raw = token.encode()
        digest.update(len(raw).to_bytes(4, "big"))
        digest.update(raw)
        digest.update(len(record).to_bytes(4, "big"))
        digest.update(record)
    return digest.hexdigest()


def _event(name: str, record: TransferRecord, *details: tuple[str, str | int]) -> Event:
    """A transfer's event: its owner, its change's version, then `details`."""
    return Event(name=name, owner=record.owner, details=(("version", record.version), *details))


def passes_needed(quorum: QuorumConfig, old_count: int) -> int:
    """Old replicas a whole pass must be read from: N - W + 1, which meet every write quorum
    of the old set (never fewer because some are down: then it waits)."""
    return min(quorum.replica_count - quorum.write_quorum + 1, old_count)


class Transfers:
    def __init__(
        self,
        *,
        peer_id: str,
        storage: StorageView,
        replica: Replica,
        acceptor: Acceptor,
        quorum: QuorumConfig,
        store_id: str,
        holds: Callable[[str], bool],
        now: float,
        limits: TransferLimits = TransferLimits(),
    ) -> None:
        """`holds(owner)`: this peer keeps a copy of the owner now (it answers pages)."""
        self._peer_id = peer_id
        self._storage = storage
        self._replica = replica
        self._acceptor = acceptor
        self._quorum = quorum
        self._store_id = store_id
        self._holds = holds
        self._limits = limits
        self._bucket = TokenBucket(
            rate_bytes_s=limits.rate_bytes_s, burst_bytes=limits.burst_bytes, now=now
        )
        self._down: frozenset[str] = frozenset()
        self._throttle_due: float | None = None
        self._turn = 0  # round-robin over transfers waiting to ask
        self._requests = itertools.count(1)  # page request numbers (replies echo them)
        self._counts = _Counts()
        self._transfers: dict[tuple[int, str], _Transfer] = {
            (record.version, record.owner): _Transfer(record=record, started_at=now)
            for record in read_transfers(storage, limits.transfers_max)
        }
        self._by_op = {t.op_id: t for t in self._transfers.values()}

    # -- queries -------------------------------------------------------------------------------

    def committed(self, version: int, owners: Iterable[str]) -> bool:
        """Every transfer of `version` into these owners started and committed."""
        for owner in owners:
            transfer = self._transfers.get((version, owner))
            if transfer is None or transfer.step is not TransferStep.COMMITTED:
                return False
        return True

    def pending(self) -> int:
        return sum(1 for t in self._transfers.values() if t.step is not TransferStep.COMMITTED)

    def statistics(self) -> TransferStatistics:
        return TransferStatistics(pending=self.pending(), **dataclasses.asdict(self._counts))

    def expects(self, report: RecoveryReport) -> bool:
        """`report` answers an epoch query of a transfer (else it is recovery's)."""
        transfer = self._by_op.get(report.op_id.removesuffix(":q"))
        return transfer is not None and report.op_id == f"{transfer.op_id}:q"

    def views(self, now: float) -> list[TransferView]:
        return [self._view(t, now) for _, t in sorted(self._transfers.items())]

    def _view(self, transfer: _Transfer, now: float) -> TransferView:
        record = transfer.record
        elapsed = max(now - transfer.started_at, 1e-9)
        rate = transfer.bytes_this_run / elapsed
        eta: float | None = None
        step = transfer.step
        if step is TransferStep.COMMITTED:
            eta = 0.0
        elif step is not TransferStep.EPOCHS and transfer.held and transfer.seen_this_run:
            passes_left = passes_needed(self._quorum, len(record.old)) - len(record.verified)
            left = max(transfer.held - transfer.seen_in_pass, 0) + max(passes_left - 1, 0) * (
                transfer.held
            )
            eta = left / (transfer.seen_this_run / elapsed)
        running = step in (TransferStep.COPYING, TransferStep.VERIFYING)
        return TransferView(
            version=record.version,
            owner=record.owner,
            target=self._peer_id,
            sources=record.old,
            source=transfer.asking or record.source,
            state=step.value,
            running=running,
            mappings_moved=record.mappings_moved,
            bytes_moved=record.bytes_moved,
            rate_bytes_s=rate,
            eta_s=eta,
            verified=len(record.verified),
            conflicts=record.conflicts,
        )

    # -- inputs --------------------------------------------------------------------------------

    def set_down(self, peers: Iterable[str]) -> None:
        """Peers held down: not asked while another source can be."""
        self._down = frozenset(peers)

    def start(self, version: int, owner: str, old: tuple[str, ...], now: float) -> Effects:
        """Transfer `owner` into this peer for the joint `version`; a no-op when it exists."""
        effects = Effects()
        key = (version, owner)
        if key in self._transfers or len(self._transfers) >= self._limits.transfers_max:
            return effects
        assert self._peer_id not in old, "a transfer fills a replica that is not in the old set"
        assert len(set(old)) == len(old) and old
        transfer = _Transfer(
            record=TransferRecord(version=version, owner=owner, old=old), started_at=now
        )
        self._transfers[key] = transfer
        self._by_op[transfer.op_id] = transfer
        self._counts.started += 1
        self._persist(transfer, effects)
        effects.events.append(
            _event("transfer_started", transfer.record, ("sources", ",".join(old)))
        )
        self._query_epochs(transfer, now, effects)
        return effects

    def resume(self, now: float) -> Effects:
        """After a restart: every transfer read from the store goes on from its record."""
        effects = Effects()
        for transfer in self._transfers.values():
            transfer.started_at = now
            if transfer.step is TransferStep.EPOCHS:
                self._query_epochs(transfer, now, effects)
        self._pump(now, effects)
        return effects

    def tick(self, now: float) -> Effects:
        """Every heartbeat interval: what a lost timer (the driver bounds them) would leave
        waiting goes on: epoch queries due again, pages the throttle allows."""
        effects = Effects()
        for transfer in self._transfers.values():
            if transfer.step is TransferStep.EPOCHS and transfer.query_due <= now:
                self._query_epochs(transfer, now, effects)
            self._replace_silent(transfer, now)
        if self._throttle_due is not None and self._throttle_due <= now:
            self._throttle_due = None
        self._pump(now, effects)
        return effects

    def forget_before(self, version: int) -> Effects:
        """Transfers of changes before `version` are over: their records go."""
        effects = Effects()
        for key in [k for k in self._transfers if k[0] < version]:
            transfer = self._transfers.pop(key)
            del self._by_op[transfer.op_id]
            effects.writes.append((transfer_key(*key), None))
        return effects

    def on_recovery_report(self, source: str, report: RecoveryReport, now: float) -> Effects:
        effects = Effects()
        transfer = self._by_op.get(report.op_id.removesuffix(":q"))
        if transfer is None or transfer.step is not TransferStep.EPOCHS:
            return effects
        if source not in transfer.record.old:
            return effects
        transfer.reports[source] = report
        if len(transfer.reports) < majority(len(transfer.record.old)):
            return effects
        owner = transfer.record.owner
        effects.extend(self._acceptor.adopt(owner, list(transfer.reports.values())))
        transfer.reports.clear()
        transfer.record = replace(transfer.record, step=TransferStep.COPYING.value)
        self._persist(transfer, effects)
        self._pump(now, effects)
        return effects

    def on_message(self, source: str, message: Message, now: float) -> Effects:
        effects = Effects()
        if isinstance(message, TransferPage):
            self._answer(source, message, effects)
        elif isinstance(message, TransferPageReply):
            self._on_page(source, message, now, effects)
        # An InsertReply of origin TRANSFER: never asked for (the target inserts itself).
        return effects

    def on_timer(self, timer: Timer, now: float) -> Effects:
        effects = Effects()
        if timer.op_id == THROTTLE_OP_ID:
            if self._throttle_due is not None and self._throttle_due <= now:
                self._throttle_due = None
            self._pump(now, effects)
            return effects
        transfer = self._by_op.get(timer.op_id)
        if transfer is None:
            return effects
        if transfer.step is TransferStep.EPOCHS:
            if transfer.query_due <= now:
                self._query_epochs(transfer, now, effects)
            return effects
        self._replace_silent(transfer, now)
        self._pump(now, effects)
        return effects

    # -- the target ----------------------------------------------------------------------------

    def _replace_silent(self, transfer: _Transfer, now: float) -> None:
        """A page asked and unanswered by its DEADLINE: the source is replaced from the same
        cursor. Compared with the due the timer carries, never recomputed from the ask
        (`asked + silence - asked` may round below `silence`: the timer would fire early,
        change nothing and arm nothing, and the transfer would wait for good)."""
        if transfer.request and now >= transfer.silent_due:
            transfer.skipped.add(transfer.asking)
            transfer.request = 0

    def _query_epochs(self, transfer: _Transfer, now: float, effects: Effects) -> None:
        record = transfer.record
        query = RecoveryQuery(op_id=f"{transfer.op_id}:q", owner=record.owner, store=self._store_id)
        for peer in record.old:
            if peer not in transfer.reports:
                self._send(peer, query, effects)
        due = now + self._limits.query_interval_s
        transfer.query_due = due
        effects.timers.append(Timer(kind=TimerKind.RESEND, op_id=transfer.op_id, due=due))

    def _pump(self, now: float, effects: Effects) -> None:
        """Ask pages for transfers that wait, in turn, while the throttle allows."""
        waiting = [
            t
            for _, t in sorted(self._transfers.items())
            if t.step in (TransferStep.COPYING, TransferStep.VERIFYING) and not t.request
        ]
        in_flight = sum(1 for t in self._transfers.values() if t.request)
        count = len(waiting)
        for index in range(count):
            if in_flight >= self._limits.pages_in_flight_max:
                return
            ready_at = self._bucket.ready_at(now)
            if ready_at > now:
                if self._throttle_due is None or ready_at < self._throttle_due:
                    self._throttle_due = ready_at
                    effects.timers.append(
                        Timer(kind=TimerKind.THROTTLE, op_id=THROTTLE_OP_ID, due=ready_at)
                    )
                return
            transfer = waiting[(self._turn + index) % count]
            if self._ask(transfer, now, effects):
                in_flight += 1
        self._turn += 1

    def _ask(self, transfer: _Transfer, now: float, effects: Effects) -> bool:
        record = transfer.record
        source = self._source_for(transfer)
        due = now + self._limits.source_silence_s
        if source is None:  # every source failed: try them again then (one timer at a time)
            if transfer.retry_due <= now:
                transfer.retry_due = due
                effects.timers.append(Timer(kind=TimerKind.DEADLINE, op_id=transfer.op_id, due=due))
            return False
        effects.timers.append(Timer(kind=TimerKind.DEADLINE, op_id=transfer.op_id, due=due))
        if source != record.source:
            if record.cursor is not None:  # half-way through a pass: it is whole no more
                self._counts.sources_replaced += 1
                effects.events.append(
                    _event(
                        "transfer_source_replaced",
                        record,
                        ("was", record.source),
                        ("source", source),
                    )
                )
            transfer.record = replace(record, source=source, whole=record.cursor is None)
            self._persist(transfer, effects)
        transfer.request = next(self._requests)
        transfer.asking, transfer.silent_due = source, due
        page = TransferPage(
            op_id=transfer.op_id,
            owner=record.owner,
            after=record.cursor,
            limit=self._limits.page_mappings_max,
            request=transfer.request,
        )
        self._send(source, page, effects)
        return True

    def _source_for(self, transfer: _Transfer) -> str | None:
        """The pass's source while it answers; else the first old replica up that no whole
        pass was read from (half-way through a pass, any old replica up)."""
        record = transfer.record

        def usable(peer: str) -> bool:
            return peer not in self._down and peer not in transfer.skipped

        if record.source and record.cursor is not None and usable(record.source):
            return record.source
        fresh = [p for p in record.old if p not in record.verified and usable(p)]
        if record.cursor is None:
            candidates = fresh
        else:
            candidates = fresh + [p for p in record.old if p in record.verified and usable(p)]
        if candidates:
            return candidates[0]
        transfer.skipped.clear()
        return None

    def _on_page(self, source: str, reply: TransferPageReply, now: float, effects: Effects) -> None:
        transfer = self._by_op.get(reply.op_id)
        if (
            transfer is None
            or not transfer.request
            or reply.request != transfer.request
            or source != transfer.asking
            or reply.after != transfer.record.cursor
        ):
            return  # late, stray, or for a transfer that moved on
        transfer.request = 0
        record = transfer.record
        if reply.unavailable:
            transfer.skipped.add(source)
            self._pump(now, effects)
            return
        size = sum(len(raw) for _, raw in reply.entries)
        self._bucket.charge(size, now)
        if page_checksum(reply.entries) != reply.checksum:
            self._counts.pages_corrupt += 1
            effects.events.append(_event("transfer_page_corrupt", record, ("source", source)))
            self._pump(now, effects)
            return
        stored, conflicts = self._store(source, transfer, reply, effects)
        transfer.held = reply.held
        transfer.seen_in_pass += len(reply.entries)
        transfer.seen_this_run += len(reply.entries)
        transfer.bytes_this_run += size
        cursor = reply.entries[-1][0] if reply.entries else record.cursor
        record = replace(
            record,
            cursor=cursor,
            mappings_moved=record.mappings_moved + stored,
            bytes_moved=record.bytes_moved + size,
            conflicts=record.conflicts + conflicts,
        )
        self._counts.pages += 1
        self._counts.mappings_moved += stored
        self._counts.bytes_moved += size
        effects.events.append(
            _event(
                "transfer_page",
                record,
                ("source", source),
                ("mappings", len(reply.entries)),
                ("stored", stored),
                ("bytes", size),
            )
        )
        transfer.record = self._end_pass(record, effects) if reply.done else record
        if reply.done:
            transfer.seen_in_pass = 0
        self._persist(transfer, effects)
        self._pump(now, effects)

    def _store(
        self, source: str, transfer: _Transfer, reply: TransferPageReply, effects: Effects
    ) -> tuple[int, int]:
        """The page's mappings through the replica's insert-once path: (stored, conflicts).
        A record that does not verify (corrupt at the source) is left out: the source holds
        no mapping there, and another source's pass brings it."""
        owner = reply.owner
        mappings = []
        read = self._storage.get
        prefix = owner_mapping_prefix(owner)
        for token, raw in reply.entries:
            if read(prefix + token.encode()) == raw:
                continue  # the same record held here (sealing is deterministic): identical
            held = self._replica.verified(owner, token, raw)
            if isinstance(held, Mapping):
                mappings.append(held)
            else:
                effects.events.append(
                    Event(
                        name="transfer_record_corrupt",
                        owner=owner,
                        details=(("source", source), ("token_prefix", token[:8])),
                    )
                )
        if not mappings:
            return 0, 0
        request = InsertRequest(
            op_id=transfer.op_id,
            owner=owner,
            mappings=tuple(mappings),
            repair=True,
            origin=Origin.TRANSFER,
        )
        inserted, outcomes = self._replica.store_copies(source, request)
        effects.extend(inserted)
        stored = sum(1 for outcome in outcomes if outcome is InsertOutcome.STORED)
        conflicts = 0
        for mapping, outcome in zip(mappings, outcomes, strict=True):
            if outcome is InsertOutcome.CONFLICT:
                conflicts += 1
                effects.events.append(
                    Event(
                        name="transfer_conflict",
                        owner=owner,
                        epoch=mapping.epoch,
                        details=(("source", source), ("token_prefix", mapping.token[:8])),
                    )
                )
        self._counts.conflicts += conflicts
        return stored, conflicts

    def _end_pass(self, record: TransferRecord, effects: Effects) -> TransferRecord:
        """The pass read the range to its end: a whole pass verifies its source; enough of
        them commit the transfer."""
        verified = record.verified
        if record.whole and record.source not in verified:
            verified = (*verified, record.source)
        assert set(record.verified) <= set(verified), "verified sources only grow"
        needed = passes_needed(self._quorum, len(record.old))
        step = TransferStep.COMMITTED if len(verified) >= needed else TransferStep.VERIFYING
        ended = replace(
            record, step=step.value, source="", cursor=None, whole=True, verified=verified
        )
        effects.events.append(
            _event(
                "transfer_committed" if step is TransferStep.COMMITTED else "transfer_pass",
                record,
                ("source", record.source),
                ("whole", int(record.whole)),
                ("verified", len(verified)),
                ("mappings_moved", record.mappings_moved),
            )
        )
        if step is TransferStep.COMMITTED:
            self._counts.committed += 1
        return ended

    def _persist(self, transfer: _Transfer, effects: Effects) -> None:
        record = transfer.record
        key = transfer_key(record.version, record.owner)
        effects.writes.append((key, encode_transfer(record)))

    # -- the source ----------------------------------------------------------------------------

    def _answer(self, source: str, page: TransferPage, effects: Effects) -> None:
        """A page of the owner's records as stored, from the store (held until durable)."""
        owner = page.owner
        if not self._holds(owner):
            reply = TransferPageReply(
                op_id=page.op_id,
                owner=owner,
                after=page.after,
                request=page.request,
                unavailable=True,
            )
            self._send(source, reply, effects)
            return
        limit = min(page.limit, self._limits.page_mappings_max)
        after = None if page.after is None else mapping_key(owner, page.after)
        rows = self._storage.scan(owner_mapping_prefix(owner), start_after=after, limit=limit)
        prefix_length = len(owner_mapping_prefix(owner))
        entries: list[tuple[str, bytes]] = []
        size = 0
        for key, raw in rows:
            if entries and size + len(raw) > self._limits.page_bytes_max:
                break
            entries.append((key[prefix_length:].decode(), raw))
            size += len(raw)
        self._counts.pages_answered += 1
        reply = TransferPageReply(
            op_id=page.op_id,
            owner=owner,
            after=page.after,
            request=page.request,
            entries=tuple(entries),
            checksum=page_checksum(entries),
            done=len(entries) == len(rows) < limit,
            held=self._replica.digests.count(owner),
        )
        self._send(source, reply, effects)

    def _send(self, destination: str, message: Message, effects: Effects) -> None:
        effects.messages.append(
            Envelope(source=self._peer_id, destination=destination, message=message)
        )
