"""The ring as the peers learned it over a run: every durable ring record and every membership
a peer sent as decided, judged as it arrives (docs/membership.md §6).

What it keeps:
- per peer, the version of its durable learned membership (`r\\0c`), across restarts (only what
  a sync made durable is seen); a wipe starts the peer's store again from the bootstrap;
- per version, every membership claimed decided: durable learned records and the memberships
  a peer sent as decided (`RingDecide`, and a `RingVote` answering with what it learned);
- per version, which peers durably accepted which membership (`r\\0a` records).

Invariants (each an `Observation`):
- one-membership-per-version: every membership claimed decided for one version is the same.
- ring-never-goes-back: per peer the durable learned version only grows (across restarts);
  and every decided version is what one change (or the finish of a pending one) makes of the
  version before it (`is_successor`): an add or remove only to a stable membership, a replace
  over a pending change only to its new ring.
- ring-decided-by-voters (at the end, `final_observations`): every decided version v + 1 was
  durably accepted by a majority of the voters of version v, when version v is known.

Rules: observation only; never reaches into a core. Deterministic: nothing iterates a set.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from tokenvault.quorum.quorum_config import majority
from tokenvault.quorum.records import StorageCorrupt
from tokenvault.quorum.ring_records import (
    LEARNED_KEY,
    RING_ACCEPTOR_PREFIX,
    read_learned,
    read_ring_slot,
    version_of_slot_key,
)
from tokenvault.ring.membership import Membership, is_successor
from tokenvault.sim.durable import OneRecord
from tokenvault.sim.observation import Observation

CLAIMS_KEPT_MAX = 4  # where a membership was claimed decided: the first few, for the report


def describe_membership(membership: Membership) -> str:
    """A short text of a membership: its version and members with their states."""
    members = ",".join(
        m.id + ("" if m.state == "active" else f"({m.state})") for m in membership.members
    )
    return f"v{membership.version}[{members}]"


@dataclass(slots=True)
class _Version:
    """What the run saw of one ring version."""

    claims: dict[str, list[str]] = field(default_factory=dict)  # digest -> where, in order
    values: dict[str, Membership] = field(default_factory=dict)  # digest -> the membership
    accepted: dict[str, list[str]] = field(default_factory=dict)  # digest -> acceptors
    reported_split: bool = False


class RingLog:
    def __init__(self, bootstrap: Membership) -> None:
        self.bootstrap = bootstrap
        self._learned: dict[str, int] = {}  # peer -> durable learned version
        self._versions: dict[int, _Version] = {}
        self.observations: list[Observation] = []

    # -- what peers did --------------------------------------------------------------------------

    def on_durable(self, peer: str, key: bytes, raw: bytes | None, at_s: float) -> None:
        """A ring record just became durable on `peer`."""
        if raw is None:
            return  # an acceptor slot dropped once a later version was learned
        try:
            if key == LEARNED_KEY:
                learned = read_learned(OneRecord(key, raw))
                assert learned is not None
                self._on_learned(peer, learned, at_s)
            elif key.startswith(RING_ACCEPTOR_PREFIX):
                version = version_of_slot_key(key)
                slot = read_ring_slot(OneRecord(key, raw), version)
                if slot.accepted_value is not None:
                    self._on_accepted(peer, version, slot.accepted_value)
        except StorageCorrupt:
            summary = f"{peer} made a ring record durable that does not decode"
            self._observe("ring-never-goes-back", summary, at_s, peer)

    def on_decided_sent(self, peer: str, membership: Membership, at_s: float) -> None:
        """`peer` sent `membership` as decided (a RingDecide, or a vote carrying its learned)."""
        self._claim(membership, f"sent by {peer}", at_s, peer)

    def on_wipe(self, peer: str) -> None:
        """`peer` lost its store: its next one starts from the bootstrap."""
        self._learned.pop(peer, None)

    def _on_learned(self, peer: str, learned: Membership, at_s: float) -> None:
        before = self._learned.get(peer, 1)
        if learned.version <= before:
            self._observe(
                "ring-never-goes-back",
                f"{peer} had durably learned ring version {before}, then durably learned"
                f" {describe_membership(learned)}",
                at_s,
                peer,
            )
        self._learned[peer] = max(before, learned.version)
        self._claim(learned, f"learned by {peer}", at_s, peer)

    def _on_accepted(self, peer: str, version: int, value: Membership) -> None:
        record = self._version(version)
        digest = value.digest()
        record.values.setdefault(digest, value)
        acceptors = record.accepted.setdefault(digest, [])
        if peer not in acceptors:
            acceptors.append(peer)

    def _claim(self, membership: Membership, where: str, at_s: float, peer: str) -> None:
        version = membership.version
        record = self._version(version)
        digest = membership.digest()
        record.values.setdefault(digest, membership)
        claims = record.claims.setdefault(digest, [])
        if len(claims) < CLAIMS_KEPT_MAX:
            claims.append(where)
        if len(record.claims) > 1 and not record.reported_split:
            record.reported_split = True
            listed = "; ".join(
                f"{describe_membership(record.values[d])} ({', '.join(w[:3])})"
                for d, w in record.claims.items()
            )
            self._observe(
                "one-membership-per-version",
                f"ring version {version} has {len(record.claims)} memberships: {listed}",
                at_s,
                peer,
            )

    # -- queries ---------------------------------------------------------------------------------

    def learned_version(self, peer: str) -> int:
        """The version `peer` durably learned (1: the bootstrap)."""
        return self._learned.get(peer, 1)

    def decided(self, version: int) -> Membership | None:
        """The membership claimed decided for `version` (the first claim), if any."""
        if version == 1:
            return self.bootstrap
        record = self._versions.get(version)
        if record is None or not record.claims:
            return None
        return record.values[next(iter(record.claims))]

    def highest(self) -> Membership:
        """The highest version any peer claimed decided (the bootstrap if none)."""
        decided = [v for v, r in self._versions.items() if r.claims]
        return self.decided(max(decided)) if decided else self.bootstrap  # type: ignore[return-value]

    def memberships(self) -> list[Membership]:
        """Every membership claimed decided, by version (the bootstrap first)."""
        found = [self.decided(v) for v in sorted(self._versions)]
        return [self.bootstrap, *(m for m in found if m is not None and m.version > 1)]

    def changes_over_pending(self) -> int:
        """Decided versions that changed a pending change (a replace, an abort) rather than
        finishing it: a finish carries the members it ended, those do not."""
        found = self.memberships()
        return sum(
            1
            for before, after in itertools.pairwise(found)
            if after.version == before.version + 1 and not before.stable and not after.previous
        )

    def versions_decided(self) -> int:
        return sum(1 for record in self._versions.values() if record.claims)

    def final_observations(self, at_s: float) -> list[Observation]:
        """Judged at the end, once every version seen is known: each decided version is a
        change of the one before (ring-never-goes-back), accepted by a majority of its voters
        (ring-decided-by-voters)."""
        found = []
        for version in sorted(self._versions):
            decided, before = self.decided(version), self.decided(version - 1)
            if decided is None or before is None or version < 2:
                continue
            if not is_successor(before, decided):
                found.append(
                    Observation(
                        invariant="ring-never-goes-back",
                        summary=f"ring version {version} {describe_membership(decided)} is no"
                        f" change of version {version - 1} {describe_membership(before)} (an"
                        " add or remove applies to a stable membership only, a replace over a"
                        " pending change to its new ring only)",
                        at_s=at_s,
                    )
                )
            voters = before.voters
            acceptors = self._versions[version].accepted.get(decided.digest(), [])
            counted = [peer for peer in acceptors if peer in voters]
            if len(counted) < majority(len(voters)):
                found.append(
                    Observation(
                        invariant="ring-decided-by-voters",
                        summary=f"ring version {version} {describe_membership(decided)} was"
                        f" decided, yet only {','.join(counted) or 'no voter'} of the voters"
                        f" {','.join(voters)} of version {version - 1} durably accepted it",
                        at_s=at_s,
                        peers=tuple(counted),
                    )
                )
        return found

    # -- helpers ---------------------------------------------------------------------------------

    def _version(self, version: int) -> _Version:
        record = self._versions.get(version)
        if record is None:
            record = self._versions[version] = _Version()
        return record

    def _observe(self, invariant: str, summary: str, at_s: float, *peers: str) -> None:
        self.observations.append(
            Observation(invariant=invariant, summary=summary, at_s=at_s, peers=peers)
        )
