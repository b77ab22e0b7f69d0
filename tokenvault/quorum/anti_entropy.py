"""Anti-entropy: replicas of an owner compare digests in the background and copy what is
missing, both ways, mappings and decided epochs alike, sans-IO.

Theory of operation, one pass (at most one in flight per peer, one started per
`pass_interval_s`, round-robin over (owner, partner) pairs of the owners this peer replicates):
1. SUMMARY: the initiator sends its digest leaves (merkle.py) and decided epoch. The partner
   answers which buckets differ and its own decided epoch. Whoever is behind on the epoch learns
   the other's decided value (a Decide to itself). Equal leaves end the pass: a quiet cluster
   exchanges one summary per pass and reads nothing from disk.
2. KEYS, per differing bucket, page by page: the initiator sends its tokens and record hashes of
   one window; the partner pushes (repair inserts) what the initiator lacks in that window and
   answers which tokens it lacks, which the initiator then pushes. Pushes are repair inserts of
   origin ANTI_ENTROPY: their replies come back here by that origin.
A token held with different records on the two sides (a flipped bit changes a record's hash, so
its bucket differs and the walk reaches it) is settled by verification (replica.py): the partner
checks its own record; one that verifies is pushed to the initiator, one that fails is asked
for (listed as missing) so the initiator pushes its own, if that verifies. The receiving
replica replaces its record only when it fails verification and the pushed one verifies (a
`mapping_repaired` there); equal mappings in two record formats answer IDENTICAL; two different
mappings that both verify answer CONFLICT, an integrity alarm (`anti_entropy_conflict`), never
an overwrite. A corrupt record is never pushed.
Anti-entropy writes no record itself: a learned epoch is a Decide to this peer's acceptor, a
copied mapping a repair insert to a replica, and their writes are checked there (invariants.py:
a decided value never changes, a mapping that verifies is never overwritten).

Bounds: `buckets_per_pass_max`, `keys_per_page_max`, `pages_per_pass_max`, and
`pass_timeout_s`: a pass whose partner stays silent that long ends `timed_out` (a pass that
gets answers goes on, however slow they are under load, up to its page bound).
Recovery (recovery.py): while this peer refills a lost store, `urgent` is set and passes run
back to back; a pass tells whether the partner had nothing this peer lacks (`nothing_missing`:
equal digests, or every differing window compared and the partner pushed nothing, as each
AeKeysReply says in `pushed`).
Whatever a pass leaves undone still differs and is taken up by a later pass, at once after a
pass that repaired something, else after `pass_interval_s` (the throttle of a quiet cluster).
A pass starts only with a partner the peer core offers (not held down, and heard from since this
peer started: a pass with a peer still starting would only time out); when no pair can start,
the next tick asks again.
A busy owner (its count here changed within `busy_window_s`) is compared at most once per
`busy_pass_interval_s` per partner: under a steady stream of writes two replicas' digests
always differ by the writes in flight, which the coordinator and hinted handoff deliver anyway,
and walking the differing buckets again and again would read and hash every key of the owner
for nothing. Writes that stop make the owner quiet again within `busy_window_s`; a refill
(`urgent`) never waits.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from tokenvault.quorum.effects import Effects, Event
from tokenvault.quorum.merkle import BUCKETS, bucket_prefix, mapping_hash
from tokenvault.quorum.messages import (
    AeKeys,
    AeKeysReply,
    AeSummary,
    AeSummaryReply,
    Decide,
    Envelope,
    EpochValue,
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
    Origin,
)
from tokenvault.quorum.records import StorageView, mapping_key

AE_OP_PREFIX = "ae:"  # readable op ids in the logs; nothing routes or decides by it


class DigestSource(Protocol):
    """What the replica and acceptor know: leaves, counts, decided epochs."""

    def leaves(self, owner: str) -> tuple[int, ...]: ...

    def count(self, owner: str) -> int: ...

    def ready(self, owner: str) -> bool: ...


class HeldRecords(Protocol):
    """The replica's verified view of what it holds (replica.py)."""

    def held_mapping(self, owner: str, token: str) -> Mapping | object | None: ...

    def uncount_corrupt(self, owner: str, token: str, partner: str) -> Effects: ...


class DecidedSource(Protocol):
    def active_epoch(self, owner: str) -> EpochValue: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AntiEntropyLimits:
    pass_interval_s: float = 1.0
    pass_timeout_s: float = 5.0
    buckets_per_pass_max: int = 64
    keys_per_page_max: int = 1_000
    pages_per_pass_max: int = 128
    busy_window_s: float = 1.0
    busy_pass_interval_s: float = 10.0


@dataclass(slots=True, kw_only=True)
class _Pass:
    op_id: str
    owner: str
    partner: str
    started: float
    last_answer: float  # when the partner last answered this pass (or it started)
    buckets: collections.deque[int] = field(default_factory=collections.deque)
    start_after: str | None = None
    last: str | None = None
    pages: int = 0
    pushed: int = 0
    differing: int = 0
    received: int = 0  # mappings the partner pushed to this peer


@dataclass(frozen=True, slots=True, kw_only=True)
class PassReport:
    owner: str
    partner: str
    started: float
    finished: float
    differing_buckets: int
    pages: int
    mappings_pushed: int
    outcome: str  # "in_sync", "repaired", "timed_out"
    mappings_received: int = 0
    complete: bool = True  # every differing bucket was compared

    @property
    def nothing_missing(self) -> bool:
        """The partner had nothing this peer lacks (as far as this pass could tell)."""
        if self.outcome == "in_sync":
            return True
        return self.outcome == "repaired" and self.complete and self.mappings_received == 0


@dataclass(slots=True)
class AntiEntropyStatistics:
    passes: int = 0
    passes_in_sync: int = 0
    mappings_pushed: int = 0
    mappings_repaired_here: int = 0
    epochs_learned: int = 0
    last_pass: PassReport | None = None


def _hex(leaf: int) -> str:
    return f"{leaf:032x}"


class AntiEntropy:
    def __init__(
        self,
        *,
        peer_id: str,
        storage: StorageView,
        digests: DigestSource,
        records: HeldRecords,
        decided: DecidedSource,
        replicas_by_owner: dict[str, tuple[str, ...]],
        limits: AntiEntropyLimits = AntiEntropyLimits(),
    ) -> None:
        self._peer_id = peer_id
        self._storage = storage
        self._digests = digests
        self._records = records
        self._decided = decided
        self._limits = limits
        self._pairs: Iterator[tuple[str, str]] | None = None
        self._pair_count = 0
        self._replicas_by_owner: dict[str, tuple[str, ...]] = {}
        self.set_replicas(replicas_by_owner)
        self._current: _Pass | None = None
        self._next_pass_at = 0.0
        self._sequence = itertools.count(1)
        self.statistics = AntiEntropyStatistics()
        self.urgent = False  # refilling a lost store: passes back to back (recovery.py)
        self._counts_seen: dict[str, tuple[int, float]] = {}  # owner -> (count, changed at)
        self._pair_passed_at: dict[tuple[str, str], float] = {}

    def set_replicas(self, replicas_by_owner: dict[str, tuple[str, ...]]) -> None:
        """Each owner's replicas (all of them while a ring change moves it): the pairs passes
        cycle through, and who may exchange an owner's data. A pass under way goes on."""
        peer_id = self._peer_id
        pairs = [
            (owner, partner)
            for owner, replicas in sorted(replicas_by_owner.items())
            if peer_id in replicas
            for partner in replicas
            if partner != peer_id
        ]
        self._pairs = itertools.cycle(pairs) if pairs else None
        self._pair_count = len(pairs)
        self._replicas_by_owner = replicas_by_owner

    # -- initiator -----------------------------------------------------------------------------

    def tick(self, now: float, down: frozenset[str]) -> Effects:
        effects = Effects()
        current = self._current
        if current is not None:
            if now - current.last_answer < self._limits.pass_timeout_s:
                return effects
            self._end_pass(current, now, "timed_out", effects)
        if self._pairs is None or now < self._next_pass_at:
            return effects
        for _ in range(self._pair_count):
            owner, partner = next(self._pairs)
            # An owner whose digests are still being built (merkle.py) is compared later.
            ready = self._digests.ready(owner)
            if partner not in down and ready and not self._deferred(owner, partner, now):
                break
        else:
            return effects  # no pair can start now: asked again at the next tick
        self._next_pass_at = now + self._limits.pass_interval_s
        self._pair_passed_at[(owner, partner)] = now
        op_id = f"{AE_OP_PREFIX}{self._peer_id}:{next(self._sequence)}"
        self._current = _Pass(
            op_id=op_id, owner=owner, partner=partner, started=now, last_answer=now
        )
        summary = AeSummary(
            op_id=op_id,
            owner=owner,
            leaves=tuple(_hex(leaf) for leaf in self._digests.leaves(owner)),
            count=self._digests.count(owner),
            decided=self._decided.active_epoch(owner),
        )
        self._send(partner, summary, effects)
        return effects

    def _deferred(self, owner: str, partner: str, now: float) -> bool:
        """Whether a busy owner waits for its next pass with this partner (module rules)."""
        count = self._digests.count(owner)
        seen = self._counts_seen.get(owner)
        if seen is None or seen[0] != count:
            self._counts_seen[owner] = (count, now)
            busy = seen is not None
        else:
            busy = now - seen[1] < self._limits.busy_window_s
        if not busy or self.urgent:
            return False
        last = self._pair_passed_at.get((owner, partner))
        return last is not None and now - last < self._limits.busy_pass_interval_s

    def on_message(self, source: str, message: Message, now: float) -> Effects:
        effects = Effects()
        replicas = self._replicas_by_owner.get(getattr(message, "owner", ""), ())
        if source not in replicas or self._peer_id not in replicas:
            return effects  # only an owner's replicas exchange its data
        if isinstance(message, AeSummary):
            self._on_summary(source, message, effects)
        elif isinstance(message, AeKeys):
            self._on_keys(source, message, effects)
        elif isinstance(message, InsertReply):
            self._on_push_reply(source, message, effects)
        else:
            current = self._current
            if current is None or message.op_id != current.op_id or source != current.partner:
                return effects
            current.last_answer = now
            if isinstance(message, AeSummaryReply):
                self._on_summary_reply(current, message, now, effects)
            elif isinstance(message, AeKeysReply):
                self._on_keys_reply(current, message, now, effects)
        return effects

    def _on_summary_reply(
        self, current: _Pass, reply: AeSummaryReply, now: float, effects: Effects
    ) -> None:
        self._learn_epoch(reply.owner, reply.decided, effects)
        differing = [b for b in reply.differing if 0 <= b < BUCKETS]
        current.differing = len(differing)
        current.buckets.extend(differing[: self._limits.buckets_per_pass_max])
        if not current.buckets:
            self._end_pass(current, now, "in_sync", effects)
            return
        self._send_page(current, effects)

    def _send_page(self, current: _Pass, effects: Effects) -> None:
        bucket = current.buckets[0]
        prefix = bucket_prefix(current.owner, bucket)
        after = (
            None if current.start_after is None else mapping_key(current.owner, current.start_after)
        )
        page = self._storage.scan(prefix, start_after=after, limit=self._limits.keys_per_page_max)
        entries = tuple(
            (self._token(current.owner, key), f"{mapping_hash(key, record):032x}")
            for key, record in page
        )
        full = len(page) == self._limits.keys_per_page_max
        current.last = entries[-1][0] if full else None
        current.pages += 1
        keys = AeKeys(
            op_id=current.op_id,
            owner=current.owner,
            bucket=bucket,
            start_after=current.start_after,
            last=current.last,
            entries=entries,
        )
        self._send(current.partner, keys, effects)

    def _on_keys_reply(
        self, current: _Pass, reply: AeKeysReply, now: float, effects: Effects
    ) -> None:
        if not current.buckets or reply.bucket != current.buckets[0]:
            return
        current.pushed += self._push(current.owner, current.partner, reply.missing, effects)
        current.received += reply.pushed
        if current.last is not None:
            current.start_after = current.last  # the next page of the same bucket
        else:
            current.buckets.popleft()
            current.start_after = None
        if not current.buckets or current.pages >= self._limits.pages_per_pass_max:
            self._end_pass(current, now, "repaired", effects)
            return
        self._send_page(current, effects)

    def _end_pass(self, current: _Pass, now: float, outcome: str, effects: Effects) -> None:
        self._current = None
        report = PassReport(
            owner=current.owner,
            partner=current.partner,
            started=current.started,
            finished=now,
            differing_buckets=current.differing,
            pages=current.pages,
            mappings_pushed=current.pushed,
            outcome=outcome,
            mappings_received=current.received,
            complete=not current.buckets and current.differing <= self._limits.buckets_per_pass_max,
        )
        stats = self.statistics
        stats.passes += 1
        stats.passes_in_sync += outcome == "in_sync"
        stats.last_pass = report
        if outcome == "repaired" or self.urgent:
            self._next_pass_at = now  # more may differ: no pause while repairing
        if outcome != "in_sync":
            effects.events.append(
                Event(
                    name="anti_entropy_pass",
                    owner=current.owner,
                    request_id=current.op_id,
                    details=(
                        ("partner", current.partner),
                        ("outcome", outcome),
                        ("differing_buckets", current.differing),
                        ("pages", current.pages),
                        ("pushed", current.pushed),
                    ),
                )
            )

    # -- partner -------------------------------------------------------------------------------

    def _on_summary(self, source: str, summary: AeSummary, effects: Effects) -> None:
        self._learn_epoch(summary.owner, summary.decided, effects)
        mine = self._digests.leaves(summary.owner)
        theirs = summary.leaves
        differing = tuple(
            bucket
            for bucket in range(BUCKETS)
            if bucket >= len(theirs) or theirs[bucket] != _hex(mine[bucket])
        )
        reply = AeSummaryReply(
            op_id=summary.op_id,
            owner=summary.owner,
            differing=differing,
            decided=self._decided.active_epoch(summary.owner),
        )
        self._send(source, reply, effects)

    def _on_keys(self, source: str, keys: AeKeys, effects: Effects) -> None:
        if not 0 <= keys.bucket < BUCKETS:
            return
        owner = keys.owner
        theirs = dict(keys.entries)
        prefix = bucket_prefix(owner, keys.bucket)
        after = None if keys.start_after is None else mapping_key(owner, keys.start_after)
        mine: dict[str, str] = {}
        # Bounded: twice a page of our own; what is beyond waits for a later pass.
        for key, record in self._storage.scan(
            prefix, start_after=after, limit=2 * self._limits.keys_per_page_max
        ):
            token = self._token(owner, key)
            if keys.last is not None and token > keys.last:
                break
            mine[token] = f"{mapping_hash(key, record):032x}"
        they_lack = [t for t in mine if t not in theirs]
        we_lack = [t for t in theirs if t not in mine]
        for token in (t for t in mine if t in theirs and theirs[t] != mine[t]):
            if isinstance(self._records.held_mapping(owner, token), Mapping):
                they_lack.append(token)  # ours verifies: theirs is replaced if it does not
            else:
                we_lack.append(token)  # ours is corrupt: ask for theirs
        pushed = self._push(owner, source, they_lack, effects, op_id=keys.op_id)
        reply = AeKeysReply(
            op_id=keys.op_id,
            owner=owner,
            bucket=keys.bucket,
            missing=tuple(we_lack),
            pushed=pushed,
        )
        self._send(source, reply, effects)

    # -- both ----------------------------------------------------------------------------------

    def _push(
        self,
        owner: str,
        target: str,
        tokens: tuple[str, ...] | list[str],
        effects: Effects,
        op_id: str | None = None,
    ) -> int:
        mappings: list[Mapping] = []
        for token in tokens[: self._limits.keys_per_page_max]:
            held = self._records.held_mapping(owner, token)
            if isinstance(held, Mapping):  # never a corrupt record
                mappings.append(held)
            elif held is not None:  # corrupt, and the partner lacks it: out of the digests
                effects.events.extend(self._records.uncount_corrupt(owner, token, target).events)
        if mappings:
            push_id = op_id or f"{AE_OP_PREFIX}{self._peer_id}:{next(self._sequence)}"
            request = InsertRequest(
                op_id=push_id,
                owner=owner,
                mappings=tuple(mappings),
                repair=True,
                origin=Origin.ANTI_ENTROPY,
            )
            self._send(target, request, effects)
            self.statistics.mappings_pushed += len(mappings)
        return len(mappings)

    def _on_push_reply(self, source: str, reply: InsertReply, effects: Effects) -> None:
        for token, outcome in zip(reply.tokens, reply.outcomes, strict=True):
            if outcome is InsertOutcome.CONFLICT:  # both records verify and differ
                effects.events.append(
                    Event(
                        name="anti_entropy_conflict",
                        owner=reply.owner,
                        request_id=reply.op_id,
                        details=(("partner", source), ("token_prefix", token[:8])),
                    )
                )
        stored = sum(1 for outcome in reply.outcomes if outcome is InsertOutcome.STORED)
        if stored:
            effects.events.append(
                Event(
                    name="anti_entropy_repaired",
                    owner=reply.owner,
                    request_id=reply.op_id,
                    details=(("mappings", stored),),
                )
            )

    def _learn_epoch(self, owner: str, theirs: EpochValue, effects: Effects) -> None:
        mine = self._decided.active_epoch(owner)
        if theirs.epoch == mine.epoch and theirs != mine:
            effects.events.append(
                Event(
                    name="paxos_disagreement",
                    owner=owner,
                    epoch=mine.epoch,
                    details=(("slot", mine.epoch), ("found_by", "anti_entropy")),
                )
            )
        if theirs.epoch > mine.epoch:
            self.statistics.epochs_learned += 1
            decide = Decide(op_id=f"{AE_OP_PREFIX}epoch", owner=owner, value=theirs)
            self._send(self._peer_id, decide, effects)

    def _send(self, destination: str, message: Message, effects: Effects) -> None:
        effects.messages.append(
            Envelope(source=self._peer_id, destination=destination, message=message)
        )

    @staticmethod
    def _token(owner: str, key: bytes) -> str:
        return key[len(mapping_key(owner, "")) :].decode()
