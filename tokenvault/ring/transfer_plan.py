"""Which owners move, from which replicas to which, for a pending membership change.

Theory of operation (docs/membership.md §3): a joint membership has an old ring and a new ring;
an owner *moves* when its preference lists on the two differ. Each new replica that was not in
the old list (a *target*) is filled by one transfer from the old list's replicas (the
*sources*); each old replica not in the new list (a *leaver*) drops the owner's data once the
change is drained. With vnodes, an add inserts the new peer into some lists (each loses its
last replica), a remove takes the peer out of its lists (each gains the next peer clockwise),
and a replace puts the new peer in the old one's place: at most one target and one leaver per
owner for one change, and the moves spread over every peer's vnodes. A replace over a pending
change (membership.py) changes only the new ring: an owner may then have two targets.

Rules: pure (no I/O, clock or randomness), deterministic: equal memberships and owners give equal
plans on every peer, in owner order. A stable membership moves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotation only
    from collections.abc import Iterable

    from tokenvault.ring.membership import Membership

__all__ = ["OwnerMove", "plan_transfers"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerMove:
    owner: str
    old: tuple[str, ...]  # the preference list on the old ring: the transfers' sources
    new: tuple[str, ...]  # the preference list on the new ring

    @property
    def targets(self) -> tuple[str, ...]:
        """New replicas to fill, in preference order."""
        return tuple(peer for peer in self.new if peer not in self.old)

    @property
    def leavers(self) -> tuple[str, ...]:
        """Old replicas that drop the owner once the change is drained."""
        return tuple(peer for peer in self.old if peer not in self.new)


def plan_transfers(membership: Membership, owners: Iterable[str]) -> tuple[OwnerMove, ...]:
    """Every owner whose preference list differs between the old and the new ring."""
    if membership.stable:
        return ()
    old_ring, new_ring = membership.old_ring(), membership.new_ring()
    count = membership.replica_count
    moves = []
    for owner in sorted(set(owners)):
        old = old_ring.preference_list(owner, count)
        new = new_ring.preference_list(owner, count)
        if old != new:
            moves.append(OwnerMove(owner=owner, old=old, new=new))
            assert set(old) != set(new), "a list differs only by order: not a move"
    return tuple(moves)
