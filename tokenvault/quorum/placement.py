"""Where one owner's data lives at one ring version, and the quorums counted against it.

Theory of operation (docs/membership.md §3): a stable owner has one replica set, its preference
list. While a membership change moves the owner (the *joint* phase, then the finish until the
change is drained) it has two: the preference list on the old ring and the one on the new ring.
Then, as in Raft's joint consensus, a write needs W acknowledgements in EACH set, an epoch round
a majority of EACH set, and reads are served by one set: the old one during the joint phase,
the new one once the finish is learned.

Rules: pure values; a set never repeats a peer; `replicas` (whom a write is sent to) is the old
set, then the new set's peers not in it, so a stable owner's replicas are its preference list,
unchanged, in order.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["OwnerPlacement", "quorum_in_each", "reachable_in_each"]


@dataclass(frozen=True, slots=True)
class OwnerPlacement:
    old: tuple[str, ...]  # the owner's preference list on the old ring
    new: tuple[str, ...]  # on the new ring: equal to `old` when the owner does not move
    reads_new: bool = False  # reads go to the new set (the finish is learned), else the old
    version: int = 0  # the ring version it was computed at: what requests carry (`ring`)

    def __post_init__(self) -> None:
        assert len(set(self.old)) == len(self.old), "a replica set never repeats a peer"
        assert len(set(self.new)) == len(self.new), "a replica set never repeats a peer"
        assert len(self.old) == len(self.new), "both sets are N replicas"

    @staticmethod
    def stable(replicas: tuple[str, ...], version: int = 0) -> OwnerPlacement:
        return OwnerPlacement(old=replicas, new=replicas, version=version)

    @property
    def joint(self) -> bool:
        return self.old != self.new

    @property
    def replicas(self) -> tuple[str, ...]:
        """Every replica of the owner at this version: the old set, then the new ones."""
        if not self.joint:
            return self.old
        return self.old + tuple(r for r in self.new if r not in self.old)

    @property
    def quorum_sets(self) -> tuple[tuple[str, ...], ...]:
        """The sets a write (W of each) or an epoch round (a majority of each) must reach."""
        return (self.old, self.new) if self.joint else (self.old,)

    @property
    def read_set(self) -> tuple[str, ...]:
        return self.new if self.reads_new else self.old


def quorum_in_each(
    peers: Collection[str], sets: tuple[tuple[str, ...], ...], quorum: int | None = None
) -> bool:
    """`peers` hold `quorum` members of every set (a majority of each when `quorum` is None)."""
    for replica_set in sets:
        needed = len(replica_set) // 2 + 1 if quorum is None else quorum
        if sum(1 for r in replica_set if r in peers) < needed:
            return False
    return True


def reachable_in_each(
    excluded: Collection[str], sets: tuple[tuple[str, ...], ...], quorum: int | None = None
) -> bool:
    """Every set still has `quorum` members (a majority when None) outside `excluded`."""
    for replica_set in sets:
        needed = len(replica_set) // 2 + 1 if quorum is None else quorum
        if sum(1 for r in replica_set if r not in excluded) < needed:
            return False
    return True
