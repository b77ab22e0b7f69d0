"""The replica core: insert-once storage of an owner's mappings, sans-IO.

Rules:
- An insert answers, per mapping, STORED (new), IDENTICAL (already held, equal: a retry) or
  CONFLICT (a different mapping under the same token). A conflict is an integrity alarm: it is
  reported and counted and the held mapping is never overwritten (only a corrupt record is,
  below).
- The replica reads through a `StorageView` that already shows every write it staged earlier
  (the driver stages each Effects' writes before the next input), so two inserts of one token
  can never both be STORED.
- Fencing: a tokenize's mapping under an epoch below the owner's fence (the highest slot this
  replica accepted or learned in, see acceptor.py) is refused FENCED, so once a majority
  accepted epoch e+1 no write quorum (W + majority > N) can form under epoch e. Repairs copy
  mappings that exist already and are not fenced.
- Every held record is verified when read (sealing.py): its AEAD tag, and its token against
  its field and value whenever this replica knows the decided value of its epoch (else the tag
  alone). A record that fails is CORRUPT: reported (`storage_corrupt`, level error, owner and
  token prefix only), answered in `ReadReply.corrupt` (never as a value, never as "not held")
  and CONFLICT to an insert that does not repair it.
- Repair, the only overwrite: a held record that fails verification is replaced by an incoming
  mapping that verifies: its token checked whenever this replica knows the decided value of
  its epoch. When it does not, the held record failed its tag (the token check needs the same
  epoch value), so it is no mapping at all, and the incoming one is taken as it would be for
  an empty key, where no insert is token-checked either (anti-entropy teaches a replica only
  the highest decided epoch, so waiting for the epoch could leave the record corrupt for
  good). Each replacement is a `mapping_repaired` event (level error) and answers STORED.
- Its replies leave only after the driver made all staged writes durable: a STORED or IDENTICAL
  answer means "fsync'd here".

Invariant (invariants.py): a replica never overwrites a mapping that verifies. Before an insert's
writes are emitted, each key is read again and must be empty or hold a record that fails
verification, and no key is written twice (one more read per new mapping, a pair to the decision
in the loop: measured, 0.3 us, a seventh of an insert).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tokenvault.quorum.effects import Effects, Event, Write
from tokenvault.quorum.invariants import InvariantViolation
from tokenvault.quorum.merkle import OwnerDigests
from tokenvault.quorum.messages import (
    Envelope,
    EpochValue,
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
    Origin,
    OwnerInspect,
    OwnerView,
    ReadReply,
    ReadRequest,
)
from tokenvault.quorum.records import (
    MAPPING_PREFIX,
    StorageCorrupt,
    StorageView,
    decode_mapping,
    encode_mapping,
    mapping_key,
    owner_mapping_prefix,
    read_acceptor_slot,
    read_active_epoch,
    read_decided,
    read_epoch_meta,
)
from tokenvault.quorum.sealing import Sealer


class _Corrupt:
    """A held record that fails verification: never returned, replaced only by a repair."""

    __slots__ = ()


CORRUPT = _Corrupt()
Held = Mapping | _Corrupt


DECIDED_CACHED_MAX = 10_000  # (owner, epoch) decided values kept for verifying reads


class Replica:
    def __init__(
        self,
        *,
        peer_id: str,
        storage: StorageView,
        sealer: Sealer,
        digests_built_in_pages: bool = False,
    ) -> None:
        self._peer_id = peer_id
        self._storage = storage
        self._sealer = sealer
        # Digests of what is held, kept with every stored mapping (built from the store at
        # start: what a crash lost before its fsync is not counted). At once, or, when
        # digests_built_in_pages, by the driver calling `digests.rebuild_page` (merkle.py).
        self.digests = OwnerDigests()
        if digests_built_in_pages:
            self.digests.begin_build()
        else:
            self.digests.rebuild(storage)
        self.repaired = 0  # held records that failed verification, replaced by verified ones
        # Keys of corrupt records left out of the digests (`uncount_corrupt`); rebuilt digests
        # count them again until anti-entropy meets them once more.
        self._uncounted: set[bytes] = set()
        self._decided: dict[tuple[str, int], EpochValue] = {}  # see _decided_value

    def forget_unstaged(self, writes: Sequence[Write]) -> None:
        """The driver could not stage these writes (the store refused them): the digests
        forget the new mappings among them and count again the dropped ones (`drop`), so they
        count only what the store holds."""
        added: dict[str, list[tuple[str, bytes, bytes]]] = {}
        kept: dict[str, list[tuple[str, bytes, bytes]]] = {}
        for key, record in writes:
            if not key.startswith(MAPPING_PREFIX):
                continue
            owner_raw, _, token_raw = key[len(MAPPING_PREFIX) :].partition(b"\x00")
            owner, token = owner_raw.decode(), token_raw.decode()
            if record is not None:
                added.setdefault(owner, []).append((token, key, record))
                continue
            held = self._storage.get(key)  # a drop the store refused: the record stays
            if held is not None and key not in self._uncounted and self.digests.covers(key):
                kept.setdefault(owner, []).append((token, key, held))
        for owner, mappings in added.items():
            self.digests.remove_many(owner, mappings)
        for owner, mappings in kept.items():
            self.digests.add_many(owner, mappings)

    def drop(self, owner: str, tokens: Sequence[str]) -> Effects:
        """Deletes the records held under these tokens of an owner this peer no longer
        replicates (dropping.py decides when), and leaves them out of the digests: the only
        delete of a mapping record."""
        effects = Effects()
        removed: list[tuple[str, bytes, bytes]] = []
        for token in tokens:
            key = mapping_key(owner, token)
            raw = self._storage.get(key)
            if raw is None:
                continue
            effects.writes.append((key, None))
            if key not in self._uncounted and self.digests.covers(key):
                removed.append((token, key, raw))
        self.digests.remove_many(owner, removed)
        return effects

    # -- verification --------------------------------------------------------------------------

    def verifies(self, mapping: Mapping) -> bool:
        """The token check: true when the mapping's token is the keyed hash of its field and
        value under its epoch, and when this replica does not know that epoch's value (nothing
        to check against: a sealed record's tag is then the whole check)."""
        decided = self._decided_value(mapping.owner, mapping.epoch)
        return decided is None or self._sealer.token_matches(mapping, decided)

    def _decided_value(self, owner: str, epoch: int) -> EpochValue | None:
        """The decided value of an epoch, cached once known: a decided slot never changes (the
        acceptor asserts it), so reads stop parsing its JSON record for every record they
        verify. Unknown epochs are read again next time (they may be learned meanwhile)."""
        cache_key = (owner, epoch)
        value = self._decided.get(cache_key)
        if value is None:
            value = read_decided(self._storage, owner, epoch)
            if value is not None:
                if len(self._decided) >= DECIDED_CACHED_MAX:
                    self._decided.clear()
                self._decided[cache_key] = value
        return value

    def verified(self, owner: str, token: str, raw: bytes) -> Held:
        """The mapping a record holds if it verifies, else CORRUPT."""
        try:
            mapping = decode_mapping(self._sealer, owner, token, raw)
        except StorageCorrupt:
            return CORRUPT
        return mapping if self.verifies(mapping) else CORRUPT

    def held_mapping(self, owner: str, token: str) -> Held | None:
        """What is held for a token: a verified mapping, CORRUPT, or None (nothing)."""
        raw = self._storage.get(mapping_key(owner, token))
        return None if raw is None else self.verified(owner, token, raw)

    def uncount_corrupt(self, owner: str, token: str, partner: str) -> Effects:
        """Leave a held record that fails verification out of the digests, once an anti-entropy
        partner showed it lacks the token: while it stayed counted, the digests of a mapping no
        replica can supply (a failed write's lone copy, then a flipped bit) differed forever.
        The record stays, and stays answered corrupt: deleting it would turn "unknown here"
        into "not held", and R such answers could then outvote the W - 1 copies left of an
        acknowledged mapping (the sweep found it, seeds 2637 and 2784). A replica that holds
        the mapping still repairs it: the key walk reads the store, not the digests."""
        effects = Effects()
        key = mapping_key(owner, token)
        if key in self._uncounted or not self.digests.covers(key):
            return effects  # a build in progress counts it later; a later pass meets it again
        raw = self._storage.get(key)
        if raw is None or self.verified(owner, token, raw) is not CORRUPT:
            return effects
        self._uncounted.add(key)
        self.digests.remove_many(owner, ((token, key, raw),))
        effects.events.append(
            Event(
                name="corrupt_record_uncounted",
                owner=owner,
                details=(("token_prefix", token[:8]), ("partner", partner)),
            )
        )
        return effects

    def read_mapping(self, owner: str, token: str) -> Mapping | None:
        held = self.held_mapping(owner, token)
        return held if isinstance(held, Mapping) else None

    def _held(self, owner: str, token: str, request_id: str, effects: Effects) -> Held | None:
        raw = self._storage.get(mapping_key(owner, token))
        return None if raw is None else self._check_held(owner, token, raw, request_id, effects)

    def _check_held(
        self, owner: str, token: str, raw: bytes, request_id: str, effects: Effects
    ) -> Held:
        """The held record verified; one that fails is reported and held as CORRUPT."""
        held = self.verified(owner, token, raw)
        if held is CORRUPT:
            effects.events.append(_corrupt_event(owner, token, request_id))
        return held

    def on_message(self, source: str, message: Message) -> Effects:
        if isinstance(message, InsertRequest):
            return self._on_insert(source, message)
        if isinstance(message, ReadRequest):
            return self._on_read(source, message)
        if isinstance(message, OwnerInspect):
            return self._on_inspect(source, message)
        raise AssertionError(f"replica got a message it does not serve: {type(message).__name__}")

    def store_copies(
        self, source: str, request: InsertRequest
    ) -> tuple[Effects, tuple[InsertOutcome, ...]]:
        """Mappings a transfer copied from `source` (a repair: never fenced), through the same
        insert-once path as every insert; the outcomes instead of a reply message."""
        assert request.repair and request.origin is Origin.TRANSFER
        effects = self._on_insert(source, request)
        reply = effects.messages.pop().message
        assert isinstance(reply, InsertReply) and not effects.messages
        return effects, reply.outcomes

    def _on_insert(self, source: str, request: InsertRequest) -> Effects:
        effects = Effects()
        outcomes: list[InsertOutcome] = []
        identical = 0
        fence = 0 if request.repair else read_epoch_meta(self._storage, request.owner).fence_slot
        fenced = 0
        # The hot loop (measured): one key build and one read per mapping; a token not held
        # yet (the common case) costs no decode, and its digest is updated for all at once.
        prefix = owner_mapping_prefix(request.owner)
        read = self._storage.get
        new: list[tuple[str, bytes, bytes]] = []  # (token, key, record)
        replaced: list[tuple[str, bytes, bytes]] = []  # corrupt records being repaired
        for mapping in request.mappings:
            if mapping.epoch < fence:
                outcomes.append(InsertOutcome.FENCED)
                fenced += 1
                continue
            key = prefix + mapping.token.encode()
            raw = read(key)
            if raw is None:
                new.append((mapping.token, key, encode_mapping(self._sealer, mapping)))
                outcomes.append(InsertOutcome.STORED)
                continue
            held = self._check_held(mapping.owner, mapping.token, raw, request.op_id, effects)
            if held == mapping:
                outcomes.append(InsertOutcome.IDENTICAL)
                identical += 1
            elif held is CORRUPT and self.verifies(mapping):
                replaced.append((mapping.token, key, raw))
                new.append((mapping.token, key, encode_mapping(self._sealer, mapping)))
                outcomes.append(InsertOutcome.STORED)
                effects.events.append(_mapping_event("mapping_repaired", mapping, request, source))
            else:
                outcomes.append(InsertOutcome.CONFLICT)
                effects.events.append(_mapping_event("mapping_conflict", mapping, request, source))
        _require_no_verified_overwrite(request.owner, new, read, self.verified)
        effects.writes.extend((key, record) for _, key, record in new)
        self.digests.remove_many(
            request.owner, [r for r in replaced if r[1] not in self._uncounted]
        )
        self._uncounted.difference_update(key for _, key, _ in replaced)
        self.digests.add_many(request.owner, new)
        self.repaired += len(replaced)
        counts = (
            ("mapping_fenced", fenced, (("fence_epoch", fence),)),
            ("mapping_stored", len(new) - len(replaced), ()),
            ("mapping_identical", identical, ()),
        )
        for name, count, extra in counts:
            if count:
                effects.events.append(
                    Event(
                        name=name,
                        owner=request.owner,
                        request_id=request.op_id,
                        epoch=request.epoch,
                        details=(("count", count), *extra),
                    )
                )
        reply = InsertReply(
            op_id=request.op_id,
            owner=request.owner,
            tokens=tuple(m.token for m in request.mappings),
            outcomes=tuple(outcomes),
            origin=request.origin,
        )
        effects.messages.append(Envelope(source=self._peer_id, destination=source, message=reply))
        return effects

    def _on_read(self, source: str, request: ReadRequest) -> Effects:
        effects = Effects()
        held = [
            self._held(request.owner, token, request.op_id, effects) for token in request.tokens
        ]
        reply = ReadReply(
            op_id=request.op_id,
            owner=request.owner,
            tokens=request.tokens,
            mappings=tuple(m if isinstance(m, Mapping) else None for m in held),
            corrupt=tuple(t for t, m in zip(request.tokens, held, strict=True) if m is CORRUPT),
        )
        effects.messages.append(Envelope(source=self._peer_id, destination=source, message=reply))
        return effects

    def _on_inspect(self, source: str, inspect: OwnerInspect) -> Effects:
        meta = read_epoch_meta(self._storage, inspect.owner)
        next_slot = read_acceptor_slot(self._storage, inspect.owner, meta.decided_slot + 1)
        view = OwnerView(
            op_id=inspect.op_id,
            owner=inspect.owner,
            token_count=self.digests.count(inspect.owner),
            digest=self.digests.root(inspect.owner),
            complete=self.digests.ready(inspect.owner),
            decided=read_active_epoch(self._storage, inspect.owner),
            accepted_slot=meta.accepted_slot,
            next_slot_promised=next_slot.promised,
            next_slot_accepted=next_slot.accepted_ballot,
        )
        return Effects(messages=[Envelope(source=self._peer_id, destination=source, message=view)])


def _mapping_event(name: str, mapping: Mapping, request: InsertRequest, source: str) -> Event:
    """An insert's outcome for one mapping worth a log line: token prefix, never the value."""
    return Event(
        name=name,
        owner=request.owner,
        request_id=request.op_id,
        epoch=mapping.epoch,
        details=(("token_prefix", mapping.token[:8]), ("source", source)),
    )


def _corrupt_event(owner: str, token: str, request_id: str) -> Event:
    """A held record failed verification: owner and token prefix only, never a value."""
    return Event(
        name="storage_corrupt",
        owner=owner,
        request_id=request_id,
        details=(("token_prefix", token[:8]),),
    )


def _require_no_verified_overwrite(
    owner: str,
    new: list[tuple[str, bytes, bytes]],
    read: Callable[[bytes], bytes | None],
    verified: Callable[[str, str, bytes], Held],
) -> None:
    """Every mapping write is for a key that is empty now or holds a record that fails
    verification, and for a key written once."""
    keys = set()
    for token, key, _ in new:
        held = read(key)
        if key in keys or (held is not None and verified(owner, token, held) is not CORRUPT):
            raise InvariantViolation(
                f"replica would overwrite a mapping: owner {owner} token prefix {token[:8]}"
            )
        keys.add(key)
