"""Transfers as the new replicas made them durable over a run, judged at their commit
(docs/membership.md §6): the simulator's view of transfer.py's promise.

What it keeps: when a peer's first record of a transfer (ring version v, owner) becomes durable,
the transfer has started there; its sources (the record's old set) are read at that moment, and
every mapping durably on at least W of them is what the new replica must hold once it commits.
A pass starts after that record is durable (persist before send), and mappings are insert-once,
so every whole pass from an old replica that held a mapping then copies it.

Invariant (an `Observation`):
- transfer-commits-complete: when a transfer's `committed` record becomes durable on its
  target, the target durably holds every mapping that W old replicas held when it started
  (the commit's own write batch included). A commit before the N - W + 1 whole passes that
  meet every old write quorum breaks it.

Wipes: a target's wipe forgets its transfers (its next records start them again); an old
replica's wipe takes it out of the holders counted (its store is gone; recovery refills it,
and a recovering peer serves no page), so a mapping it alone brought to W is not asked for.

Rules: observation only; never reaches into a core. Deterministic: nothing iterates a set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from tokenvault.quorum.messages import Mapping
from tokenvault.quorum.transfer_records import TransferRecord
from tokenvault.sim.network import short_token
from tokenvault.sim.observation import Observation

INVARIANT = "transfer-commits-complete"
MISSING_SHOWN_MAX = 5  # tokens named in one report

# What a peer holds durably of one owner, by token.
OwnerHoldings = Callable[[str, str], dict[str, Mapping]]


@dataclass(slots=True)
class _Started:
    """A transfer as it started on its target: the old replicas and what each held then."""

    old: tuple[str, ...]
    held: dict[str, dict[str, Mapping]]  # old replica -> token -> mapping, at the start
    judged: bool = False


class TransferLog:
    def __init__(self, *, write_quorum: int, holdings: OwnerHoldings) -> None:
        self._write_quorum = write_quorum
        self._holdings = holdings
        self._started: dict[tuple[str, int, str], _Started] = {}  # (target, version, owner)
        self.observations: list[Observation] = []
        self.commits_judged = 0
        self.commits_unjudged = 0

    def on_durable(self, peer: str, raw: bytes | None, at_s: float) -> None:
        """A transfer record just became durable on `peer` (the target)."""
        if raw is None:
            return  # forgotten once a later version is learned
        try:
            record = msgspec.json.decode(raw, type=TransferRecord)
        except (msgspec.DecodeError, ValueError):
            return  # a corrupt record is the peer's to report (StorageCorrupt), not the run's
        where = (peer, record.version, record.owner)
        started = self._started.get(where)
        if started is None and record.step == "committed":
            # Started and committed in one sync: what the sources held at the start is not
            # known (the pass may have started before a later write), so it is not judged.
            self.commits_unjudged += 1
            return
        if started is None:
            started = _Started(
                old=record.old,
                held={p: self._holdings(p, record.owner) for p in record.old if p != peer},
            )
            self._started[where] = started
        if record.step == "committed" and not started.judged:
            started.judged = True
            self._judge(peer, record, started, at_s)

    def on_wipe(self, peer: str) -> None:
        """`peer` lost its store: its own transfers start again; it holds nothing it held."""
        self._started = {k: v for k, v in self._started.items() if k[0] != peer}
        for started in self._started.values():
            started.held.pop(peer, None)

    def _judge(self, target: str, record: TransferRecord, started: _Started, at_s: float) -> None:
        self.commits_judged += 1
        counts: dict[tuple[str, Mapping], int] = {}
        for replica in started.old:
            for token, mapping in started.held.get(replica, {}).items():
                counts[(token, mapping)] = counts.get((token, mapping), 0) + 1
        now = self._holdings(target, record.owner)
        missing = sorted(
            token
            for (token, mapping), count in counts.items()
            if count >= self._write_quorum and now.get(token) != mapping
        )
        if not missing:
            return
        shown = ", ".join(short_token(t) for t in missing[:MISSING_SHOWN_MAX])
        self.observations.append(
            Observation(
                invariant=INVARIANT,
                summary=(
                    f"{target} committed the transfer of {record.owner} at ring version"
                    f" {record.version} (passes from {', '.join(record.verified) or 'none'})"
                    f" without {len(missing)} mapping(s) W={self._write_quorum} of its old set"
                    f" {', '.join(started.old)} held when it started: {shown}"
                ),
                at_s=at_s,
                peers=(target, *started.old),
                tokens=tuple(missing[:MISSING_SHOWN_MAX]),
            )
        )
