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

Counting (the shape of etcd's quorum/majority.go and joint.go): one set's vote is WON once
`quorum` of its members granted, LOST once so many refused (or are out of reach) that `quorum`
grants cannot come any more, else PENDING; a joint vote is WON when every set won, LOST when any
set lost, else PENDING. Only members of a set count in it: a grant from a peer outside every set
counts nowhere. A peer both granted and refused counts as granted.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

__all__ = [
    "OwnerPlacement",
    "Vote",
    "joint_vote",
    "quorum_in_each",
    "reachable_in_each",
    "set_vote",
]


class Vote(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


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


def set_vote(
    granted: Collection[str],
    refused: Collection[str],
    replica_set: tuple[str, ...],
    quorum: int | None = None,
) -> Vote:
    """One set's vote: `quorum` of its members granted (a majority when None), or can no more."""
    needed = len(replica_set) // 2 + 1 if quorum is None else quorum
    assert 1 <= needed <= len(replica_set), "a quorum is between 1 and the set's size"
    yes = sum(1 for r in replica_set if r in granted)
    if yes >= needed:
        return Vote.WON
    open_votes = sum(1 for r in replica_set if r not in granted and r not in refused)
    return Vote.PENDING if yes + open_votes >= needed else Vote.LOST


def joint_vote(
    granted: Collection[str],
    refused: Collection[str],
    sets: tuple[tuple[str, ...], ...],
    quorum: int | None = None,
) -> Vote:
    """The vote of every set: WON when each set won, LOST when any set lost, else PENDING."""
    assert sets, "a placement has at least one set"
    votes = {set_vote(granted, refused, replica_set, quorum) for replica_set in sets}
    if Vote.LOST in votes:
        return Vote.LOST
    return Vote.WON if votes == {Vote.WON} else Vote.PENDING


def quorum_in_each(
    peers: Collection[str], sets: tuple[tuple[str, ...], ...], quorum: int | None = None
) -> bool:
    """`peers` hold `quorum` members of every set (a majority of each when `quorum` is None)."""
    return joint_vote(peers, (), sets, quorum) is Vote.WON


def reachable_in_each(
    excluded: Collection[str], sets: tuple[tuple[str, ...], ...], quorum: int | None = None
) -> bool:
    """Every set still has `quorum` members (a majority when None) outside `excluded`."""
    return joint_vote((), excluded, sets, quorum) is not Vote.LOST
