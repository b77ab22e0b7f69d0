"""Dropping: a member deletes the mappings of owners it no longer replicates, once the change
that moved them is drained, after handing each page to the owner's replicas, sans-IO
(docs/membership.md §3 step 5).

Theory of operation. The peer core names the owners to drop (`set_owners`): under a stable,
drained ring, every owner this peer is in no quorum set of, with the read set to hand it to.
For each, page by page in token order (at most `pages_in_flight_max` pages in flight over all
owners, one per owner):
1. the records of a page are read and verified (sealing.py); those that verify go, as repair
   inserts of origin DROP, to every replica of the owner's read set not held down;
2. once W replicas answered STORED or IDENTICAL for every mapping of the page (durable there:
   replies leave a replica only after its fsync), the page's records are deleted
   (`Replica.drop`, which keeps the digests right) and the next page is read;
3. a page with nothing left to read ends the owner (`transfer_dropped`, with the count).

Rules:
- Safety: a record is deleted only when this peer replicates the owner in no quorum set of the
  ring it learned (`is_replica` is asked again right before the delete: an InvariantViolation
  otherwise) and W replicas of the read set durably hold every mapping of its page. Under a
  drained ring every acknowledged write is on W of the read set already (the joint phase wrote
  W of each set and the transfers committed); the hand-over makes sure of it, page by page, and
  repairs a replica that lost a copy since.
- A CONFLICT (a replica holds another mapping under a token) is an integrity alarm
  (`drop_conflict`): the page is kept for good and the owner goes on after it. A record that
  fails verification is deleted with its page (it is no mapping; the replicas hold theirs).
- A page goes to each replica not held down once; unanswered for `resend_after_s`, again to
  every replica that did not acknowledge it (inserts are idempotent), and at once to a replica
  no longer held down; replies to a page no longer in flight are ignored.
- A new ring that makes this peer a replica of an owner again, or any change pending, takes the
  owner out at once (`set_owners`); its page in flight is forgotten.
- Progress needs no record: what was deleted is gone, and a restart starts again from the first
  record still held. An owner whose count of records changes later (a late hint, a repair) is
  dropped again at the next tick; one whose records a conflict kept is not retried until its
  count changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenvault.quorum.effects import Effects, Event
from tokenvault.quorum.invariants import require
from tokenvault.quorum.messages import (
    Envelope,
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
    Origin,
)
from tokenvault.quorum.records import StorageView, owner_mapping_prefix
from tokenvault.quorum.replica import Replica

DROP_OP_PREFIX = "drop:"
_HANDED = frozenset({InsertOutcome.STORED, InsertOutcome.IDENTICAL})


@dataclass(frozen=True, slots=True, kw_only=True)
class DropLimits:
    page_mappings_max: int = 500
    pages_in_flight_max: int = 2  # over all owners
    resend_after_s: float = 5.0


@dataclass(frozen=True, slots=True)
class DropView:
    """An owner this peer holds but no longer replicates, as the operator sees it."""

    owner: str
    state: str  # "dropping" (pages under way), "waiting" (not started yet), "kept" (conflicts)
    mappings_held: int  # records still counted here
    mappings_dropped: int  # deleted since it started


@dataclass(slots=True)
class _Page:
    op_id: str
    tokens: tuple[str, ...]  # every token read (corrupt records too): what is deleted
    mappings: tuple[Mapping, ...]  # those that verify: what is handed over
    sent_at: float
    acknowledged: set[str] = field(default_factory=set)
    sent_to: set[str] = field(default_factory=set)  # since the last (re)send


@dataclass(slots=True)
class _Owner:
    read_set: tuple[str, ...]
    after: bytes | None = None  # the key of the last record of the page before, None: none
    page: _Page | None = None
    dropped: int = 0
    kept: int = 0  # records of pages a conflict kept


class Dropping:
    def __init__(
        self,
        *,
        peer_id: str,
        storage: StorageView,
        replica: Replica,
        write_quorum: int,
        is_replica: Callable[[str], bool],
        limits: DropLimits = DropLimits(),
    ) -> None:
        self._peer_id = peer_id
        self._storage = storage
        self._replica = replica
        self._write_quorum = write_quorum
        self._is_replica = is_replica
        self._limits = limits
        self._candidates: dict[str, tuple[str, ...]] = {}  # owner -> the read set to hand to
        self._owners: dict[str, _Owner] = {}  # owners being dropped
        self._down: frozenset[str] = frozenset()
        self._kept: dict[str, int] = {}  # owner -> records conflicts kept when it last ended
        self._sequence = itertools.count(1)
        self.mappings_dropped = 0
        self.conflicts = 0

    def views(self) -> list[DropView]:
        """Every owner named to drop that still holds records here, by owner."""
        found = []
        digests = self._replica.digests
        for owner in sorted(self._candidates):
            held = digests.count(owner)
            state = self._owners.get(owner)
            if state is not None:
                found.append(DropView(owner, "dropping", held, state.dropped))
            elif held > 0:
                kept = held == self._kept.get(owner, 0)
                found.append(DropView(owner, "kept" if kept else "waiting", held, 0))
        return found

    def set_down(self, peers: frozenset[str]) -> None:
        self._down = peers

    def set_owners(self, owners: dict[str, tuple[str, ...]], now: float) -> Effects:
        """The owners to drop and the read set of each (empty: drop nothing, e.g. while a
        change is pending). An owner no longer named is forgotten with its page in flight."""
        for owner in [o for o in self._owners if o not in owners]:
            del self._owners[owner]
        for owner, read_set in owners.items():
            state = self._owners.get(owner)
            if state is not None and state.read_set != read_set:
                del self._owners[owner]  # a new read set: start again with it
        self._candidates = dict(owners)
        return self.tick(now)

    def tick(self, now: float) -> Effects:
        """Owners that hold records start (a look at their digests' count, each tick); pages
        in flight too long go again; free slots take the next page."""
        effects = Effects()
        for owner, read_set in self._candidates.items():
            if owner not in self._owners and self._to_start(owner):
                self._owners[owner] = _Owner(read_set=read_set)
                effects.events.append(
                    Event(name="drop_started", owner=owner, details=(("replicas", len(read_set)),))
                )
        for owner, state in self._owners.items():
            page = state.page
            if page is None:
                continue
            if now - page.sent_at >= self._limits.resend_after_s:
                page.sent_at = now
                page.sent_to.clear()  # unanswered: every replica that did not acknowledge
            self._send(owner, state, page, effects)  # and a replica no longer held down
        self._pump(now, effects)
        return effects

    def on_message(self, source: str, message: Message, now: float) -> Effects:
        effects = Effects()
        if not isinstance(message, InsertReply) or message.origin is not Origin.DROP:
            return effects
        state = self._owners.get(message.owner)
        page = None if state is None else state.page
        if state is None or page is None or page.op_id != message.op_id:
            return effects  # a page forgotten or done: nothing waits for it
        if source not in state.read_set:
            return effects
        handed = dict(zip(message.tokens, message.outcomes, strict=True))
        if any(outcome is InsertOutcome.CONFLICT for outcome in handed.values()):
            self._refuse(message.owner, state, page, source, effects)
        elif all(handed.get(m.token) in _HANDED for m in page.mappings):
            page.acknowledged.add(source)
            if len(page.acknowledged) >= self._write_quorum:
                self._delete(message.owner, state, page, effects)
        self._pump(now, effects)
        return effects

    # -- internals -----------------------------------------------------------------------------

    def _to_start(self, owner: str) -> bool:
        """Records of `owner` are counted here, and not only those a conflict kept when it
        last ended (those stay until the count changes): records that came behind the pages
        (a late hint, a repair) start it again."""
        digests = self._replica.digests
        if not digests.ready(owner):
            return False
        count = digests.count(owner)
        return count > 0 and count != self._kept.get(owner, 0)

    def _pump(self, now: float, effects: Effects) -> None:
        in_flight = sum(1 for state in self._owners.values() if state.page is not None)
        for owner, state in list(self._owners.items()):
            if in_flight >= self._limits.pages_in_flight_max:
                return
            if state.page is not None:
                continue
            page = self._read_page(owner, state, now)
            if page is None:
                del self._owners[owner]
                self._kept[owner] = state.kept
                effects.events.append(
                    Event(
                        name="transfer_dropped", owner=owner, details=(("mappings", state.dropped),)
                    )
                )
                continue
            state.page = page
            in_flight += 1
            if page.mappings:
                self._send(owner, state, page, effects)
            else:  # only records that fail verification: nothing to hand over
                self._delete(owner, state, page, effects)
                in_flight -= 1

    def _read_page(self, owner: str, state: _Owner, now: float) -> _Page | None:
        prefix = owner_mapping_prefix(owner)
        rows = self._storage.scan(
            prefix, start_after=state.after, limit=self._limits.page_mappings_max
        )
        if not rows:
            return None
        tokens: list[str] = []
        mappings: list[Mapping] = []
        for key, raw in rows:
            token = key[len(prefix) :].decode()
            tokens.append(token)
            held = self._replica.verified(owner, token, raw)
            if isinstance(held, Mapping):
                mappings.append(held)
        op_id = f"{DROP_OP_PREFIX}{self._peer_id}:{next(self._sequence)}"
        return _Page(op_id=op_id, tokens=tuple(tokens), mappings=tuple(mappings), sent_at=now)

    def _send(self, owner: str, state: _Owner, page: _Page, effects: Effects) -> None:
        request = InsertRequest(
            op_id=page.op_id, owner=owner, mappings=page.mappings, repair=True, origin=Origin.DROP
        )
        for replica in state.read_set:
            if replica in page.acknowledged or replica in page.sent_to or replica in self._down:
                continue
            if replica == self._peer_id:
                continue
            page.sent_to.add(replica)
            effects.messages.append(
                Envelope(source=self._peer_id, destination=replica, message=request)
            )

    def _delete(self, owner: str, state: _Owner, page: _Page, effects: Effects) -> None:
        require(
            not self._is_replica(owner),
            f"dropping the records of {owner}, which this peer replicates",
        )
        effects.extend(self._replica.drop(owner, page.tokens))
        state.dropped += len(page.tokens)
        self.mappings_dropped += len(page.tokens)
        self._next_page(owner, state, page)

    def _refuse(
        self, owner: str, state: _Owner, page: _Page, source: str, effects: Effects
    ) -> None:
        """A replica holds another mapping under a token of the page: the page stays here
        (an integrity alarm, as anti-entropy's), and the owner goes on after it."""
        self.conflicts += 1
        state.kept += len(page.tokens)
        effects.events.append(
            Event(
                name="drop_conflict",
                owner=owner,
                request_id=page.op_id,
                details=(("replica", source), ("mappings", len(page.mappings))),
            )
        )
        self._next_page(owner, state, page)

    @staticmethod
    def _next_page(owner: str, state: _Owner, page: _Page) -> None:
        """The next page starts after this one (its deletes may not be staged yet: the store
        shows them only once the driver staged this call's writes)."""
        state.after = owner_mapping_prefix(owner) + page.tokens[-1].encode()
        state.page = None
