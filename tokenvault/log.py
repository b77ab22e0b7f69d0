"""Structured logs: one JSON line per state change, on stderr.

Rules:
- Every line has ts, level, peer and event; owner, epoch and request_id when there is one. A
  line about an owner always names an epoch: the one the change is about, else the owner's
  active epoch as this peer knows it.
- Levels: error for safety and integrity alarms, warning for failures an operator should see
  (a quorum not reached, a peer down, a hint dropped, an epoch operation failed), info else; a
  peer held down that was never heard from since this one started (`never_heard`: the peers of
  a cluster start one by one) is info.
- Values, tokens in full and keys are never logged: callers pass counts, ids and prefixes only.
- The common outcomes of a write (`BATCHED_EVENTS`: a mapping stored, or found identical) are one
  line per step and (event, owner, epoch), not one per request: `count` sums their mappings,
  `requests` says how many requests they came from, `request_id` names the first and
  `request_ids` every one (at most REQUEST_IDS_MAX, then `request_ids_omitted`), so a request
  is still traced by its id. Every other event stays one line each.
- Lines are encoded by msgspec (C), once each, with the fields in the order above.
- A line that a flood could repeat (a refused batch, a failed handshake, an accept failure) goes
  through a `LogThrottle`: at most one line per key per interval, saying how many it held back.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TextIO

import msgspec

from tokenvault.quorum.effects import Event

# Safety and integrity alarms: an operator must look.
ALARM_EVENTS = frozenset(
    {
        "paxos_disagreement",
        "storage_corrupt",  # a held record failed verification (replica.py)
        "mapping_repaired",  # a corrupt record was replaced by a mapping that verifies
        "corrupt_record_uncounted",  # a corrupt record its partner lacks left the digests
        "integrity_conflict",
        "core_error",  # a core raised (a violated invariant): the input was dropped
        "storage_error",  # the store failed to stage or read: the input was dropped
    }
)
# Failures the system handles by itself, but an operator should see.
WARNING_EVENTS = frozenset(
    {
        "quorum_failed",
        "peer_down",
        "hint_dropped",
        "epoch_operation_failed",
        "client_operation_expired",
        "transfer_page_corrupt",  # a transfer page failed its checksum: asked again
        "transfer_source_replaced",  # a transfer's source went silent: the next one goes on
        "transfer_record_corrupt",  # a source sent a record that fails verification: skipped
    }
)
# The common outcomes of a write: one line per step, with counts (module rules).
BATCHED_EVENTS = frozenset({"mapping_stored", "mapping_identical"})
REQUEST_IDS_MAX = 64

_ENCODE = msgspec.json.Encoder().encode


class EventLog:
    def __init__(self, peer_id: str, stream: TextIO | None = None) -> None:
        self._peer_id = peer_id
        self._stream = stream if stream is not None else sys.stderr

    def emit(
        self,
        event: str,
        *,
        level: str = "info",
        owner: str = "",
        epoch: int = 0,
        request_id: str = "",
        **details: str | int | float | bool,
    ) -> None:
        self._write(event, level, owner, epoch, request_id, details)

    def _write(
        self,
        event: str,
        level: str,
        owner: str,
        epoch: int,
        request_id: str,
        details: dict[str, str | int | float | bool | list[str]]
        | dict[str, str | int | float | bool],
    ) -> None:
        line: dict[str, object] = {
            "ts": round(time.time(), 6),
            "level": level,
            "peer": self._peer_id,
            "event": event,
        }
        if owner:
            line["owner"] = owner
        if epoch:
            line["epoch"] = epoch
        if request_id:
            line["request_id"] = request_id
        line.update(details)
        # A closed or broken log stream must never take the peer down.
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(_ENCODE(line).decode() + "\n")

    def core_event(self, event: Event, *, active_epoch: int = 0) -> None:
        """One core event; `active_epoch` is named when the event names no epoch of its own."""
        self.emit(
            event.name,
            level=level_of(event.name, event.details),
            owner=event.owner,
            epoch=event.epoch or active_epoch,
            request_id=event.request_id,
            **dict(event.details),
        )

    def core_events(self, events: Sequence[Event]) -> None:
        """The events of one step: BATCHED_EVENTS merged per (event, owner, epoch), the rest
        one line each, in the order of their first event."""
        merged: dict[tuple[str, str, int], list[Event]] = {}
        for event in events:
            if event.name in BATCHED_EVENTS:
                group = merged.get((event.name, event.owner, event.epoch))
                if group is None:
                    merged[(event.name, event.owner, event.epoch)] = [event]
                    continue
                group.append(event)
            else:
                self.core_event(event)
        for (name, owner, epoch), group in merged.items():
            if len(group) == 1:
                self.core_event(group[0])
                continue
            ids = [event.request_id for event in group]
            details: dict[str, str | int | float | bool | list[str]] = {
                "count": sum(_count_of(event) for event in group),
                "requests": len(group),
                "request_ids": ids[:REQUEST_IDS_MAX],
            }
            if len(ids) > REQUEST_IDS_MAX:
                details["request_ids_omitted"] = len(ids) - REQUEST_IDS_MAX
            self._write(name, level_of(name), owner, epoch, ids[0], details)


def level_of(event_name: str, details: tuple[tuple[str, object], ...] = ()) -> str:
    """The level of a core event's line (module rules)."""
    if event_name in ALARM_EVENTS or "conflict" in event_name:
        return "error"
    if event_name in WARNING_EVENTS and ("never_heard", True) not in details:
        return "warning"
    return "info"


def _count_of(event: Event) -> int:
    for name, value in event.details:
        if name == "count" and type(value) is int:
            return value
    return 1


class LogThrottle:
    """Lets one line per key through each `interval_s`, and says how many lines of that key it
    held back since. At most `keys_max` keys are remembered (then it starts over), so memory is
    bounded whatever the keys are."""

    def __init__(
        self,
        interval_s: float,
        *,
        keys_max: int = 1_000,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval_s = interval_s
        self._keys_max = keys_max
        self._clock_s = clock_s
        self._logged_at: dict[Hashable, float] = {}
        self._held_back: dict[Hashable, int] = {}

    def allow(self, key: Hashable = None) -> int | None:
        """None when this line is held back; else how many of this key were held back since
        the previous line (0 for the first)."""
        now = self._clock_s()
        last = self._logged_at.get(key)
        if last is not None and now - last < self._interval_s:
            self._held_back[key] = self._held_back.get(key, 0) + 1
            return None
        if last is None and len(self._logged_at) >= self._keys_max:
            self._logged_at.clear()
            self._held_back.clear()
        self._logged_at[key] = now
        return self._held_back.pop(key, 0)
