"""Owners' placements under a learned membership, and who must have learned a version before
the peers act on it (docs/membership.md §3).

Theory of operation:
- A stable membership places an owner on its preference list. A joint one (a change pending)
  on two sets: the preference list on the old ring and the one on the new ring; reads go to the
  old set. A finish version, until the change is *drained*, still on two sets: the old ring of
  the change it ended (`Membership.previous`) and its own ring; reads go to the new set. Drained,
  one set again.
- Drained: every peer that could still read the old set at an older version has learned the
  finish: every member, and every member the change removed, but at most one *replaced* member
  (leaving, its points taken by a joining one: the operator said it is gone for good). From
  then on a coordinator at an older version is answered by at most that one replica (every
  other refuses it: the ring fence, peer_core.py), fewer than a read quorum (R >= 2), so writes
  to the new set alone meet every read.
- Fenced (a joint version): every replica of a moved owner's old and new sets learned the
  version, but at most one replaced member among them, so every write acknowledged from then on
  is a dual write (a write quorum W >= 2 of replicas still at an older version cannot form);
  what a transfer must copy is what the old set held before. Allowing one silent replaced
  member, not every replaced one, keeps this true when a replace runs over a pending change
  (two replaced members, one of them alive and behind). With W = 1 or R = 1 even one is too
  many for a replaced member that is alive: replace only dead peers there (operations.md).

Rules: pure and deterministic; placements cached per version, at most `cached_max` owners.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

from tokenvault.quorum.placement import OwnerPlacement
from tokenvault.ring.membership import LEAVING, MemberRing, Membership, replaced_members

__all__ = ["RingPlacement", "is_drained"]


def is_drained(membership: Membership, reported: Callable[[str], bool]) -> bool:
    """Every peer that could read the old set of the change `membership` ended reported it
    (`reported(peer)`), at most one replaced member aside."""
    removed = {m.id for m in membership.previous if m.state == LEAVING}
    waited = sorted({m.id for m in membership.members} | removed)
    return _at_most_one_silent_replaced(
        (peer for peer in waited if not reported(peer)), replaced_members(membership.previous)
    )


def _at_most_one_silent_replaced(silent: Iterable[str], replaced: Collection[str]) -> bool:
    silent = tuple(silent)
    return len(silent) <= 1 and all(peer in replaced for peer in silent)


class RingPlacement:
    """The placements of one learned membership."""

    __slots__ = (
        "_cache",
        "_cached_max",
        "_new",
        "_old",
        "_reads_new",
        "_replaced",
        "drained",
        "membership",
    )

    def __init__(self, membership: Membership, *, drained: bool, cached_max: int) -> None:
        self.membership = membership
        self.drained = drained
        self._cached_max = cached_max
        self._cache: dict[str, OwnerPlacement] = {}
        self._replaced = replaced_members(membership.members)
        self._old: MemberRing | None
        self._new: MemberRing
        if not membership.stable:
            self._old, self._new, self._reads_new = (
                membership.old_ring(),
                membership.new_ring(),
                False,
            )
        else:
            previous = None if drained else membership.previous_old_ring()
            self._old, self._new, self._reads_new = previous, membership.new_ring(), True

    def placement(self, owner: str) -> OwnerPlacement:
        placement = self._cache.get(owner)
        if placement is None:
            count = self.membership.replica_count
            new = self._new.preference_list(owner, count)
            version = self.membership.version
            if self._old is None:
                placement = OwnerPlacement.stable(new, version)
            else:
                old = self._old.preference_list(owner, count)
                placement = OwnerPlacement(
                    old=old, new=new, reads_new=self._reads_new, version=version
                )
                if not placement.joint:
                    placement = OwnerPlacement.stable(new, version)
            if len(self._cache) < self._cached_max:
                self._cache[owner] = placement
        return placement

    def peers(self) -> frozenset[str]:
        """Every peer some owner may be placed on at this version."""
        ids = {m.id for m in self.membership.members}
        if not self.drained:
            ids |= {m.id for m in self.membership.previous}
        return frozenset(ids)

    def fenced(self, owner: str, versions: Mapping[str, int]) -> bool:
        """Every replica of the owner's sets reports this version, at most one replaced member
        aside."""
        version = self.membership.version
        silent = (p for p in self.placement(owner).replicas if versions.get(p, 0) < version)
        return _at_most_one_silent_replaced(silent, self._replaced)
