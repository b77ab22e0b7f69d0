"""A rule broken inside a peer, seen by the simulator when it happened (observer.py,
ring_log.py); the checker reports each as a violation.

Rules: plain data; the invariant's name is one of docs/simulation.md's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """A rule broken inside a peer, seen when it happened."""

    invariant: str
    summary: str
    at_s: float
    peers: tuple[str, ...] = ()
    op_ids: tuple[str, ...] = ()  # operations it involves (the proposers of ballots and values)
    tokens: tuple[str, ...] = ()  # tokens it involves
