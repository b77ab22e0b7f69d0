"""Placements under a learned membership (quorum/ring_placement.py): who must have learned a
joint version before an owner's transfer starts (fenced), and the finish before writes leave
the old set (drained). A replaced member is gone for good, so one of them may stay silent; never
two, since two replicas still at an older version could acknowledge a write alone (W = 2)."""

from __future__ import annotations

import pytest

from tokenvault.quorum.ring_placement import RingPlacement, is_drained
from tokenvault.ring.membership import (
    AddMember,
    FinishChange,
    Membership,
    RemoveMember,
    ReplaceMember,
    apply_change,
    bootstrap_membership,
)

OWNERS = tuple(f"owner-{i}" for i in range(40))


def four() -> Membership:
    return bootstrap_membership(
        [(p, f"{p}:1") for p in ("n1", "n2", "n3", "n4")], replica_count=3, vnodes_per_peer=8
    )


def placement(membership: Membership) -> RingPlacement:
    return RingPlacement(membership, drained=False, cached_max=100)


def versions(membership: Membership, *silent: str) -> dict[str, int]:
    peers = {m.id for m in membership.members} | {m.id for m in membership.previous}
    return {p: membership.version for p in peers if p not in silent}


def moved(ring: RingPlacement, *members: str) -> list[str]:
    """Owners whose sets hold every one of `members`."""
    return [o for o in OWNERS if set(members) <= set(ring.placement(o).replicas)]


def test_a_joint_owner_is_fenced_once_every_replica_reports_the_version() -> None:
    joint = apply_change(four(), AddMember(id="n5", address="n5:1"))
    ring = placement(joint)
    owners = moved(ring, "n5")
    assert owners
    for owner in owners:
        assert ring.fenced(owner, versions(joint))
        silent = next(p for p in ring.placement(owner).replicas if p != "n5")
        assert not ring.fenced(owner, versions(joint, silent)), "a live member is waited for"


def test_one_replaced_member_may_stay_silent_two_may_not() -> None:
    joint = apply_change(four(), ReplaceMember(old="n1", new="n8", address="n8:1"))
    over = apply_change(joint, ReplaceMember(old="n2", new="n9", address="n9:1"))
    ring = placement(over)
    owners = moved(ring, "n1", "n2")
    assert owners, "with 4 peers and N = 3 some owner has both on its old set"
    for owner in owners:
        assert ring.fenced(owner, versions(over, "n1"))
        assert ring.fenced(owner, versions(over, "n2"))
        assert not ring.fenced(owner, versions(over, "n1", "n2"))
        assert not ring.fenced(owner, versions(over, "n1", "n8")), "a joining one is waited for"


@pytest.mark.parametrize("silent", [(), ("n1",), ("n2",), ("n1", "n2"), ("n3",), ("n8",)])
def test_a_finish_is_drained_once_all_report_but_one_replaced_member(
    silent: tuple[str, ...],
) -> None:
    joint = apply_change(four(), ReplaceMember(old="n1", new="n8", address="n8:1"))
    over = apply_change(joint, ReplaceMember(old="n2", new="n9", address="n9:1"))
    finished = apply_change(over, FinishChange(version=over.version))
    reported = versions(finished, *silent)
    drained = is_drained(finished, lambda peer: reported.get(peer, 0) >= finished.version)
    assert drained == (len(silent) <= 1 and set(silent) <= {"n1", "n2"})


def test_a_removed_member_that_nobody_replaced_is_waited_for() -> None:
    joint = apply_change(four(), RemoveMember(id="n4"))
    finished = apply_change(joint, FinishChange(version=joint.version))
    reported = versions(finished, "n4")
    assert not is_drained(finished, lambda peer: reported.get(peer, 0) >= finished.version)
