"""Structured logs: one JSON line per state change, on stderr.

Rules:
- Every line has ts, level, peer and event; owner and request_id when there is one.
- Values, tokens in full and keys are never logged: callers pass counts, ids and prefixes only.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import TextIO

from tokenvault.quorum.effects import Event

# Safety and integrity alarms: an operator must look.
ALARM_EVENTS = frozenset({"paxos_disagreement", "storage_corrupt", "integrity_conflict"})


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
        request_id: str = "",
        **details: str | int | float | bool,
    ) -> None:
        line: dict[str, object] = {
            "ts": round(time.time(), 6),
            "level": level,
            "peer": self._peer_id,
            "event": event,
        }
        if owner:
            line["owner"] = owner
        if request_id:
            line["request_id"] = request_id
        line.update(details)
        # A closed or broken log stream must never take the peer down.
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(json.dumps(line, separators=(",", ":")) + "\n")

    def core_event(self, event: Event) -> None:
        level = "error" if event.name in ALARM_EVENTS or "conflict" in event.name else "info"
        self.emit(
            event.name,
            level=level,
            owner=event.owner,
            request_id=event.request_id,
            **dict(event.details),
        )
