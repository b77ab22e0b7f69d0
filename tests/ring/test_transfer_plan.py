"""The transfer planner (ring/transfer_plan.py): exactly the owners whose lists change, N
replicas each on the new ring, and minimal movement with vnodes (one target and one leaver per
moved owner, the share a consistent-hash ring predicts)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenvault.ring.membership import (
    AddMember,
    FinishChange,
    Membership,
    MembershipChange,
    RemoveMember,
    ReplaceMember,
    apply_change,
    bootstrap_membership,
)
from tokenvault.ring.transfer_plan import OwnerMove, plan_transfers

OWNERS = [f"owner-{i}" for i in range(300)]


def cluster(size: int, *, vnodes: int = 64, replicas: int = 3) -> Membership:
    peers = [(f"n{i}", f"h{i}:1") for i in range(1, size + 1)]
    return bootstrap_membership(peers, replica_count=replicas, vnodes_per_peer=vnodes)


def test_a_stable_membership_moves_nothing() -> None:
    assert plan_transfers(cluster(4), OWNERS) == ()


def test_owner_move_names_its_targets_and_leavers() -> None:
    move = OwnerMove(owner="o", old=("n1", "n2", "n3"), new=("n1", "n4", "n2"))
    assert move.targets == ("n4",) and move.leavers == ("n3",)


def test_a_replace_moves_exactly_the_replaced_members_owners_to_the_new_one() -> None:
    base = cluster(5)
    joint = apply_change(base, ReplaceMember(old="n3", new="n9", address="h9:1"))
    moves = plan_transfers(joint, OWNERS)
    holding = {o for o in OWNERS if "n3" in base.new_ring().preference_list(o, 3)}
    assert {m.owner for m in moves} == holding
    assert all(m.targets == ("n9",) and m.leavers == ("n3",) for m in moves)


def test_an_add_to_five_moves_about_the_share_a_ring_predicts_from_every_peer() -> None:
    joint = apply_change(cluster(5), AddMember(id="n6", address="h6:1"))
    moves = plan_transfers(joint, OWNERS)
    share = len(moves) / len(OWNERS)
    assert 0.35 < share < 0.65  # N / (P + 1) = 3 / 6 of the owners gain the new peer
    leavers = [m.leavers[0] for m in moves]
    for peer in ("n1", "n2", "n3", "n4", "n5"):
        assert leavers.count(peer) > len(moves) / 10  # no single donor


# -- properties ---------------------------------------------------------------------------------


@st.composite
def joint_memberships(draw: st.DrawFn) -> Membership:
    size = draw(st.integers(min_value=3, max_value=7))
    replicas = draw(st.integers(min_value=1, max_value=3))
    base = cluster(size, vnodes=draw(st.sampled_from([1, 4, 16, 64])), replicas=replicas)
    ids = [m.id for m in base.members]
    kind = draw(st.sampled_from(["add", "remove", "replace"]))
    change: MembershipChange
    if kind == "add":
        change = AddMember(id="x1", address="x:1")
    elif kind == "remove" and size > replicas:
        change = RemoveMember(id=draw(st.sampled_from(ids)))
    else:
        change = ReplaceMember(old=draw(st.sampled_from(ids)), new="x1", address="x:1")
    return apply_change(base, change)


@settings(max_examples=150, deadline=None)
@given(joint_memberships(), st.lists(st.text(alphabet="abc123", min_size=1), max_size=40))
def test_the_plan_is_exactly_the_owners_whose_lists_change(
    joint: Membership, owners: list[str]
) -> None:
    moves = plan_transfers(joint, owners)
    by_owner = {m.owner: m for m in moves}
    count = joint.replica_count
    old_ring, new_ring = joint.old_ring(), joint.new_ring()
    new_members = set(new_ring.peer_ids)
    for owner in set(owners):
        old = old_ring.preference_list(owner, count)
        new = new_ring.preference_list(owner, count)
        assert (owner in by_owner) == (old != new)
        # every owner ends with N distinct replicas of the new ring
        assert len(set(new)) == count and set(new) <= new_members
        if owner in by_owner:
            move = by_owner[owner]
            assert (move.old, move.new) == (old, new)
            # minimal movement: one peer in, one peer out
            assert len(move.targets) == 1 and len(move.leavers) == 1
            joining_or_replacing = {m.id for m in joint.members if m.state == "joining"}
            leaving = {m.id for m in joint.members if m.state == "leaving"}
            assert set(move.targets) <= joining_or_replacing or set(move.leavers) <= leaving
    assert [m.owner for m in moves] == sorted(by_owner)  # in owner order, each once


@settings(max_examples=50, deadline=None)
@given(joint_memberships())
def test_after_the_finish_the_new_lists_are_the_stable_ones(joint: Membership) -> None:
    final = apply_change(joint, FinishChange(version=joint.version))
    assert plan_transfers(final, OWNERS[:50]) == ()
    for owner in OWNERS[:50]:
        count = joint.replica_count
        assert final.new_ring().preference_list(owner, count) == joint.new_ring().preference_list(
            owner, count
        )
