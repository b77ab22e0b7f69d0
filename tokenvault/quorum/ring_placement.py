"""Owners' placements under a learned membership, and who must have learned a version before
the peers act on it (docs/membership.md §3).

Theory of operation:
- A stable membership places an owner on its preference list. A joint one (a change pending)
  on two sets: the preference list on the old ring and the one on the new ring; reads go to the
  old set. A finish version, until the change is *drained*, still on two sets: the old ring of
  the change it ended (`Membership.previous`) and its own ring; reads go to the new set. Drained,
  one set again.
- Drained: every peer that could still read the old set at an older version has learned the
  finish: every member, and every member the change removed but did not replace (a replaced
  member is gone for good: the operator said so by replacing it). From then on a coordinator
  at an older version is refused by every replica it asks (the ring fence, peer_core.py), so
  writes to the new set alone meet every read.
- Fenced (a joint version): every replica of a moved owner's old and new sets but a replaced
  one learned the version, so every write acknowledged from then on is a dual write; what a
  transfer must copy is what the old set held before.

Rules: pure and deterministic; placements cached per version, at most `cached_max` owners.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tokenvault.quorum.placement import OwnerPlacement
from tokenvault.ring.membership import JOINING, LEAVING, Member, MemberRing, Membership

__all__ = ["RingPlacement", "drain_set", "replaced_members"]


def replaced_members(members: Iterable[Member]) -> frozenset[str]:
    """The leaving members whose vnode seed a joining member took: replaced, gone for good."""
    members = tuple(members)
    taken = {m.seed for m in members if m.state == JOINING and m.seed}
    return frozenset(m.id for m in members if m.state == LEAVING and m.vnode_seed in taken)


def drain_set(membership: Membership) -> frozenset[str]:
    """Who must have learned `membership` before writes leave the old set of its change."""
    removed = {m.id for m in membership.previous if m.state == LEAVING}
    kept_removed = removed - replaced_members(membership.previous)
    return frozenset(m.id for m in membership.members) | kept_removed


class RingPlacement:
    """The placements of one learned membership."""

    __slots__ = ("_cache", "_cached_max", "_new", "_old", "_reads_new", "drained", "membership")

    def __init__(self, membership: Membership, *, drained: bool, cached_max: int) -> None:
        self.membership = membership
        self.drained = drained
        self._cached_max = cached_max
        self._cache: dict[str, OwnerPlacement] = {}
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
        """Every replica of the owner's sets but a replaced one reports this version."""
        version = self.membership.version
        replaced = replaced_members(self.membership.members)
        return all(
            versions.get(peer, 0) >= version
            for peer in self.placement(owner).replicas
            if peer not in replaced
        )
