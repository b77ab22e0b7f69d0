"""Hinted handoff: mappings a replica missed wait, durably, on the coordinator's peer until the
replica is back, sans-IO.

Theory of operation: a write that reached W replicas but not all N leaves, for each replica that
did not acknowledge in time, a hint — the owner and the mappings it lacks — in this peer's
store. Every tick, for each target the failure detector does not hold down, the oldest hints
travel as repair inserts of origin HINTS (never fenced; the replies come back here by that
origin); a hint is deleted only when the target answered with a durable acknowledgement of
every mapping in it.

Rules:
- Bounded per target by count and bytes (`hints_per_target_max`, `hint_bytes_per_target_max`):
  past either, the oldest hint is dropped and reported (anti-entropy still repairs what it held).
- At most `batch_hints_max` hints per target in flight; a batch unanswered after
  `resend_interval_s` is sent again (inserts are idempotent).
- Hints survive restarts: they are records `h NUL target NUL seq` in the store, rebuilt at start.
- No value is in clear in a hint: its JSON holds the owner and, per mapping, the token and the
  mapping's sealed record (records.py format 2, base64), the same bytes a replica stores. A hint
  of an older version (values in clear, key "mappings") is still read; one that does not decode
  or whose tag fails is counted unreadable and skipped.
"""

from __future__ import annotations

import base64
import collections
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenvault.quorum.effects import Effects, Event
from tokenvault.quorum.messages import (
    Envelope,
    InsertReply,
    InsertRequest,
    Mapping,
    Origin,
    highest_epoch,
)
from tokenvault.quorum.records import StorageCorrupt, StorageView, decode_mapping, encode_mapping
from tokenvault.quorum.sealing import Sealer

HINT_PREFIX = b"h\x00"
HINT_OP_PREFIX = "hint:"  # readable op ids in the logs; nothing routes or decides by it


@dataclass(frozen=True, slots=True, kw_only=True)
class HintLimits:
    hints_per_target_max: int = 10_000
    hint_bytes_per_target_max: int = 64 * 1024 * 1024
    batch_hints_max: int = 16
    resend_interval_s: float = 1.0
    load_scan_batch: int = 1_024


@dataclass(slots=True, kw_only=True)
class _Hint:
    key: bytes
    owner: str
    mappings: tuple[Mapping, ...]
    size_bytes: int


@dataclass(slots=True)
class _Target:
    hints: collections.OrderedDict[bytes, _Hint] = field(default_factory=collections.OrderedDict)
    bytes_held: int = 0
    in_flight: dict[str, bytes] = field(default_factory=dict)  # op id -> hint key
    sent_at: float = float("-inf")


@dataclass(frozen=True, slots=True, kw_only=True)
class HintStatistics:
    target: str
    hints: int
    bytes: int
    in_flight: int


def hint_key(target: str, sequence: int) -> bytes:
    return HINT_PREFIX + target.encode() + b"\x00" + sequence.to_bytes(8, "big")


def encode_hint(sealer: Sealer, owner: str, mappings: Sequence[Mapping]) -> bytes:
    rows = [[m.token, base64.b64encode(encode_mapping(sealer, m)).decode()] for m in mappings]
    return json.dumps({"owner": owner, "sealed": rows}, separators=(",", ":")).encode()


def decode_hint(sealer: Sealer, raw: bytes) -> tuple[str, tuple[Mapping, ...]]:
    """Raises StorageCorrupt, ValueError, KeyError or TypeError for a hint that does not
    decode."""
    record: Any = json.loads(raw)
    owner = record["owner"]
    if "sealed" in record:
        return owner, tuple(
            decode_mapping(sealer, owner, t, base64.b64decode(r, validate=True))
            for t, r in record["sealed"]
        )
    mappings = tuple(  # an older version's hint, values in clear
        Mapping(owner=owner, token=t, value=v, field=f, epoch=e)
        for t, v, f, e in record["mappings"]
    )
    return owner, mappings


class HintedHandoff:
    def __init__(
        self,
        *,
        peer_id: str,
        storage: StorageView,
        sealer: Sealer,
        limits: HintLimits = HintLimits(),
    ) -> None:
        self._peer_id = peer_id
        self._sealer = sealer
        self._limits = limits
        self._targets: dict[str, _Target] = collections.defaultdict(_Target)
        self._next_sequence = 1
        self._unreadable = 0
        self._load(storage)

    def _load(self, storage: StorageView) -> None:
        after: bytes | None = None
        while True:
            batch = storage.scan(HINT_PREFIX, start_after=after, limit=self._limits.load_scan_batch)
            for key, raw in batch:
                target_bytes, sequence = key[len(HINT_PREFIX) : -9], key[-8:]
                self._next_sequence = max(self._next_sequence, int.from_bytes(sequence) + 1)
                try:
                    owner, mappings = decode_hint(self._sealer, raw)
                except (StorageCorrupt, ValueError, KeyError, TypeError):
                    self._unreadable += 1
                    continue
                target = self._targets[target_bytes.decode()]
                target.hints[key] = _Hint(
                    key=key, owner=owner, mappings=mappings, size_bytes=len(raw)
                )
                target.bytes_held += len(raw)
            if len(batch) < self._limits.load_scan_batch:
                return
            after = batch[-1][0]

    def statistics(self) -> tuple[HintStatistics, ...]:
        return tuple(
            HintStatistics(
                target=name, hints=len(t.hints), bytes=t.bytes_held, in_flight=len(t.in_flight)
            )
            for name, t in sorted(self._targets.items())
            if t.hints
        )

    @property
    def last_sequence(self) -> int:
        """The sequence of the latest hint stored (grows with every hint: a new one since a
        look shows as a higher value)."""
        return self._next_sequence - 1

    def pending_total(self) -> int:
        return sum(len(t.hints) for t in self._targets.values())

    def add(self, target: str, owner: str, mappings: Sequence[Mapping], request_id: str) -> Effects:
        """Keep `mappings` for `target`, durably; drop the oldest past the bounds."""
        assert mappings and target != self._peer_id
        effects = Effects()
        raw = encode_hint(self._sealer, owner, mappings)
        key = hint_key(target, self._next_sequence)
        self._next_sequence += 1
        state = self._targets[target]
        state.hints[key] = _Hint(
            key=key, owner=owner, mappings=tuple(mappings), size_bytes=len(raw)
        )
        state.bytes_held += len(raw)
        effects.writes.append((key, raw))
        effects.events.append(
            Event(
                name="hint_stored",
                owner=owner,
                request_id=request_id,
                epoch=highest_epoch(mappings),
                details=(("target", target), ("mappings", len(mappings))),
            )
        )
        limits = self._limits
        while len(state.hints) > limits.hints_per_target_max or (
            state.bytes_held > limits.hint_bytes_per_target_max and len(state.hints) > 1
        ):
            oldest = next(iter(state.hints.values()))
            self._forget(state, oldest.key, effects)
            effects.events.append(
                Event(
                    name="hint_dropped",
                    owner=oldest.owner,
                    epoch=highest_epoch(oldest.mappings),
                    details=(("target", target), ("reason", "overflow")),
                )
            )
        return effects

    def tick(self, now: float, down: frozenset[str]) -> Effects:
        """Send the oldest hints to every target that is not down and has none in flight."""
        effects = Effects()
        for name, state in sorted(self._targets.items()):
            if not state.hints or name in down:
                continue
            if state.in_flight and now - state.sent_at < self._limits.resend_interval_s:
                continue
            state.in_flight.clear()
            state.sent_at = now
            for hint in list(state.hints.values())[: self._limits.batch_hints_max]:
                op_id = f"{HINT_OP_PREFIX}{self._peer_id}:{int.from_bytes(hint.key[-8:])}"
                state.in_flight[op_id] = hint.key
                request = InsertRequest(
                    op_id=op_id,
                    owner=hint.owner,
                    mappings=hint.mappings,
                    repair=True,
                    origin=Origin.HINTS,
                )
                effects.messages.append(
                    Envelope(source=self._peer_id, destination=name, message=request)
                )
        return effects

    def on_reply(self, source: str, reply: InsertReply) -> Effects:
        effects = Effects()
        state = self._targets.get(source)
        if state is None or reply.op_id not in state.in_flight:
            return effects
        key = state.in_flight.pop(reply.op_id)
        hint = state.hints.get(key)
        if hint is None:
            return effects
        # Match on the tokens, not the op id alone: after a restart a sequence number (and so
        # an op id) can be reused, and a late reply to the old hint must not delete the new one.
        if reply.tokens != tuple(m.token for m in hint.mappings):
            state.in_flight[reply.op_id] = key  # not an answer to this hint: keep waiting
            return effects
        if all(outcome.is_durable_ack for outcome in reply.outcomes):
            self._forget(state, key, effects)
            effects.events.append(
                Event(
                    name="hint_delivered",
                    owner=hint.owner,
                    request_id=reply.op_id,
                    epoch=highest_epoch(hint.mappings),
                    details=(("target", source), ("mappings", len(hint.mappings))),
                )
            )
        else:
            # The target holds a different mapping under a token: an integrity alarm. The hint
            # cannot be delivered; anti-entropy and the admin view show the conflict.
            self._forget(state, key, effects)
            effects.events.append(
                Event(
                    name="hint_conflict",
                    owner=hint.owner,
                    request_id=reply.op_id,
                    epoch=highest_epoch(hint.mappings),
                    details=(("target", source),),
                )
            )
        return effects

    def forget_unplaced(self, placed: Callable[[str, str], bool], after: int = 0) -> Effects:
        """Deletes the hints whose target no longer replicates their owner (`placed(target,
        owner)` false: a change moved the owner, or removed the target, and is drained):
        the write they complete was acknowledged by W replicas of every set it counted, the
        transfers gave the owner's new replicas the rest, and a target that no longer
        replicates the owner would only drop it again (`hints_forgotten`, per target).
        Only hints of a sequence above `after` are looked at (those stored since a look under
        the same ring): newest first, each target's hints being in sequence order."""
        effects = Effects()
        for name, state in sorted(self._targets.items()):
            unplaced = []
            for key in reversed(state.hints):
                if int.from_bytes(key[-8:], "big") <= after:
                    break
                if not placed(name, state.hints[key].owner):
                    unplaced.append(key)
            for key in unplaced:
                for op_id in [o for o, k in state.in_flight.items() if k == key]:
                    del state.in_flight[op_id]
                self._forget(state, key, effects)
            if unplaced:
                effects.events.append(
                    Event(
                        name="hints_forgotten", details=(("target", name), ("hints", len(unplaced)))
                    )
                )
        return effects

    @staticmethod
    def _forget(state: _Target, key: bytes, effects: Effects) -> None:
        hint = state.hints.pop(key)
        state.bytes_held -= hint.size_bytes
        effects.writes.append((key, None))
