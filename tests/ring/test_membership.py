"""Memberships and their changes (ring/membership.py): what each change makes, what is refused,
the rings of a joint membership, and properties over random change sequences."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenvault.ring.hash_ring import HashRing
from tokenvault.ring.membership import (
    ACTIVE,
    JOINING,
    LEAVING,
    AddMember,
    ChangeRefused,
    FinishChange,
    Member,
    Membership,
    MembershipChange,
    RemoveMember,
    ReplaceMember,
    apply_change,
    bootstrap_membership,
    change_satisfied,
    is_successor,
    replaced_members,
)

OWNERS = [f"owner-{i}" for i in range(200)]


def three() -> Membership:
    return bootstrap_membership(
        [("n1", "h1:1"), ("n2", "h2:1"), ("n3", "h3:1")], replica_count=3, vnodes_per_peer=16
    )


def states(membership: Membership) -> dict[str, str]:
    return {m.id: m.state for m in membership.members}


def finish(membership: Membership) -> Membership:
    return apply_change(membership, FinishChange(version=membership.version))


def four() -> Membership:
    return finish(apply_change(three(), AddMember(id="n4", address="h4:1")))


def test_bootstrap_is_version_one_all_active_and_its_ring_is_the_static_ring() -> None:
    base = three()
    assert base.version == 1 and base.stable
    assert base.voters == ("n1", "n2", "n3")
    static = HashRing(["n1", "n2", "n3"], 16)
    for owner in OWNERS:
        assert base.new_ring().preference_list(owner, 3) == static.preference_list(owner, 3)
        assert base.old_ring().preference_list(owner, 2) == static.preference_list(owner, 2)


def test_add_is_a_joint_version_then_finish_makes_it_active() -> None:
    joint = apply_change(three(), AddMember(id="n4", address="h4:1"))
    assert joint.version == 2 and not joint.stable
    assert states(joint) == {"n1": ACTIVE, "n2": ACTIVE, "n3": ACTIVE, "n4": JOINING}
    assert joint.old_ring().peer_ids == ("n1", "n2", "n3")
    assert joint.new_ring().peer_ids == ("n1", "n2", "n3", "n4")
    assert joint.voters == ("n1", "n2", "n3", "n4")
    final = finish(joint)
    assert final.version == 3 and final.stable
    assert states(final) == {"n1": ACTIVE, "n2": ACTIVE, "n3": ACTIVE, "n4": ACTIVE}


def test_remove_marks_leaving_and_finish_drops_it() -> None:
    joint = apply_change(four(), RemoveMember(id="n2"))
    assert states(joint)["n2"] == LEAVING
    assert "n2" not in joint.voters
    assert "n2" in joint.old_ring().peer_ids and "n2" not in joint.new_ring().peer_ids
    final = finish(joint)
    assert [m.id for m in final.members] == ["n1", "n3", "n4"]


def test_replace_gives_the_new_member_the_old_ones_points() -> None:
    joint = apply_change(three(), ReplaceMember(old="n2", new="n9", address="h9:1"))
    assert states(joint) == {"n1": ACTIVE, "n2": LEAVING, "n3": ACTIVE, "n9": JOINING}
    for owner in OWNERS:
        old = joint.old_ring().preference_list(owner, 3)
        assert joint.new_ring().preference_list(owner, 3) == tuple(
            "n9" if peer == "n2" else peer for peer in old
        )
    final = finish(joint)
    member = final.member("n9")
    assert member is not None and member.vnode_seed == "n2" and member.state == ACTIVE


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (AddMember(id="n1", address="x:1"), "already_member"),
        (AddMember(id="bad id", address="x:1"), "invalid_member"),
        (AddMember(id="n4", address=""), "invalid_member"),
        (RemoveMember(id="n7"), "unknown_member"),
        (RemoveMember(id="n1"), "too_few_peers"),
        (ReplaceMember(old="n7", new="n8", address="x:1"), "unknown_member"),
        (ReplaceMember(old="n1", new="n2", address="x:1"), "already_member"),
        (FinishChange(version=1), "nothing_pending"),
    ],
)
def test_refused_changes_name_their_reason(change: MembershipChange, reason: str) -> None:
    with pytest.raises(ChangeRefused) as refused:
        apply_change(three(), change)
    assert refused.value.reason == reason


def test_a_member_dead_mid_change_is_replaced_over_it_keeping_the_old_ring() -> None:
    joint = apply_change(four(), AddMember(id="n5", address="h5:1"))
    over = apply_change(joint, ReplaceMember(old="n2", new="n9", address="h9:1"))
    assert over.version == joint.version + 1 and not over.stable
    assert states(over) == {
        "n1": ACTIVE,
        "n2": LEAVING,
        "n3": ACTIVE,
        "n4": ACTIVE,
        "n5": JOINING,
        "n9": JOINING,
    }
    assert over.old_ring().peer_ids == joint.old_ring().peer_ids
    assert replaced_members(over.members) == {"n2"}
    assert "n2" not in over.voters
    member = over.member("n9")
    assert member is not None and member.vnode_seed == "n2"
    replace = ReplaceMember(old="n2", new="n9", address="h9:1")
    assert is_successor(joint, over) and change_satisfied(over, replace)
    final = finish(over)
    assert states(final) == {m: ACTIVE for m in ("n1", "n3", "n4", "n5", "n9")}
    assert final.previous == over.members


def test_a_joining_member_dead_before_the_finish_is_replaced_by_a_peer_on_its_points() -> None:
    joint = apply_change(three(), AddMember(id="n4", address="h4:1"))
    over = apply_change(joint, ReplaceMember(old="n4", new="n5", address="h5:1"))
    assert states(over) == {"n1": ACTIVE, "n2": ACTIVE, "n3": ACTIVE, "n5": JOINING}
    assert replaced_members(over.members) == frozenset()  # n4 was never on the old ring
    for owner in OWNERS:
        assert over.new_ring().preference_list(owner, 3) == tuple(
            "n5" if peer == "n4" else peer for peer in joint.new_ring().preference_list(owner, 3)
        )
    assert is_successor(joint, over)


def test_a_removed_member_dead_before_the_finish_is_replaced() -> None:
    joint = apply_change(four(), RemoveMember(id="n2"))
    over = apply_change(joint, ReplaceMember(old="n2", new="n9", address="h9:1"))
    assert states(over)["n2"] == LEAVING and states(over)["n9"] == JOINING
    assert replaced_members(over.members) == {"n2"}
    assert is_successor(joint, over)


def test_removing_a_joining_member_aborts_its_add() -> None:
    base = three()
    joint = apply_change(base, AddMember(id="n4", address="h4:1"))
    aborted = apply_change(joint, RemoveMember(id="n4"))
    assert aborted.stable and aborted.version == 3 and aborted.members == base.members
    assert aborted.previous == ()
    assert is_successor(joint, aborted) and change_satisfied(aborted, RemoveMember(id="n4"))


def test_a_second_member_dead_mid_replace_is_replaced_too() -> None:
    joint = apply_change(four(), ReplaceMember(old="n1", new="n8", address="h8:1"))
    over = apply_change(joint, ReplaceMember(old="n2", new="n9", address="h9:1"))
    assert replaced_members(over.members) == {"n1", "n2"}
    assert over.old_ring().peer_ids == joint.old_ring().peer_ids
    assert [m.id for m in finish(over).members] == ["n3", "n4", "n8", "n9"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # an add, or the remove of a member, waits for the finish
        (AddMember(id="n5", address="h5:1"), AddMember(id="n6", address="h6:1")),
        (AddMember(id="n5", address="h5:1"), RemoveMember(id="n2")),
        # the replaced member again: its replacement is the one to replace
        (
            ReplaceMember(old="n1", new="n8", address="h8:1"),
            ReplaceMember(old="n1", new="n9", address="h9:1"),
        ),
        # a joining member that replaces someone: removing it would leave a dead peer to wait for
        (ReplaceMember(old="n1", new="n8", address="h8:1"), RemoveMember(id="n8")),
    ],
)
def test_over_a_pending_change_only_a_replace_or_an_abort_applies(
    first: MembershipChange, second: MembershipChange
) -> None:
    joint = apply_change(four(), first)
    with pytest.raises(ChangeRefused) as refused:
        apply_change(joint, second)
    assert refused.value.reason == "change_pending"


def test_a_finish_names_the_version_it_ends() -> None:
    joint = apply_change(four(), AddMember(id="n5", address="h5:1"))
    over = apply_change(joint, ReplaceMember(old="n2", new="n9", address="h9:1"))
    stale = FinishChange(version=joint.version)
    with pytest.raises(ChangeRefused) as refused:
        apply_change(over, stale)  # its transfers were never seen committed
    assert refused.value.reason == "superseded"
    assert change_satisfied(over, stale)  # its proposer is done: the later change is finished
    assert not change_satisfied(over, FinishChange(version=over.version))
    assert not is_successor(over, apply_change(joint, stale))


def test_an_id_that_is_a_vnode_seed_cannot_join() -> None:
    replaced = finish(apply_change(three(), ReplaceMember(old="n2", new="n9", address="h9:1")))
    with pytest.raises(ChangeRefused) as refused:
        apply_change(replaced, AddMember(id="n2", address="h2:1"))
    assert refused.value.reason == "already_member"


def test_a_membership_refuses_to_be_built_invalid() -> None:
    base = three()
    with pytest.raises(ValueError, match="sorted"):
        Membership(version=1, replica_count=3, vnodes_per_peer=16, members=base.members[::-1])
    with pytest.raises(ValueError, match="fewer peers"):
        Membership(version=1, replica_count=4, vnodes_per_peer=16, members=base.members)
    with pytest.raises(ValueError, match="state"):
        Member(id="n1", address="h:1", state="gone")


def test_json_round_trip_and_a_decoded_membership_is_validated() -> None:
    base = apply_change(three(), ReplaceMember(old="n2", new="n9", address="h9:1"))
    raw = msgspec.json.encode(base)
    assert msgspec.json.decode(raw, type=Membership) == base
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw.replace(b'"n9"', b'"n1"'), type=Membership)


def test_digest_is_stable_and_covers_every_field() -> None:
    base = three()
    assert base.digest() == three().digest() and len(base.digest()) == 16
    moved = bootstrap_membership(
        [("n1", "h1:2"), ("n2", "h2:1"), ("n3", "h3:1")], replica_count=3, vnodes_per_peer=16
    )
    assert moved.digest() != base.digest()
    assert apply_change(base, AddMember(id="n4", address="h4:1")).digest() != base.digest()


# -- properties over random sequences of changes -------------------------------------------------

_IDS = [f"p{i}" for i in range(8)]


@st.composite
def change_sequences(draw: st.DrawFn) -> list[MembershipChange]:
    changes: list[MembershipChange] = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        kind = draw(st.sampled_from(["add", "remove", "replace", "finish"]))
        peer = draw(st.sampled_from(_IDS))
        other = draw(st.sampled_from(_IDS))
        if kind == "add":
            changes.append(AddMember(id=peer, address=f"{peer}:1"))
        elif kind == "remove":
            changes.append(RemoveMember(id=peer))
        elif kind == "replace":
            changes.append(ReplaceMember(old=other, new=peer, address=f"{peer}:1"))
        else:
            changes.append(FinishChange(version=0))  # of whatever is pending when applied
    return changes


def _start() -> Membership:
    return bootstrap_membership(
        [(p, f"{p}:1") for p in _IDS[:4]], replica_count=3, vnodes_per_peer=8
    )


@settings(max_examples=200, deadline=None)
@given(change_sequences())
def test_applied_changes_keep_every_rule(changes: list[MembershipChange]) -> None:
    current = _start()
    for drawn in changes:
        change = _bound(drawn, current)
        try:
            after = apply_change(current, change)
        except ChangeRefused:
            continue  # a refused change built nothing
        assert after.version == current.version + 1
        assert is_successor(current, after)
        assert change_satisfied(after, change)
        assert not change_satisfied(current, change)
        if current.stable:
            assert not after.stable  # a change, then its finish
        elif not isinstance(change, FinishChange):
            assert after.old_ring().peer_ids == current.old_ring().peer_ids
        for ring in (after.old_ring(), after.new_ring()):
            for owner in OWNERS[:20]:
                preference = ring.preference_list(owner, after.replica_count)
                assert len(set(preference)) == after.replica_count
        current = after


@settings(max_examples=100, deadline=None)
@given(change_sequences(), change_sequences())
def test_only_one_step_is_a_successor(
    first: list[MembershipChange], second: list[MembershipChange]
) -> None:
    base = _start()
    reached = [base]
    for change in [*first, *second]:
        with contextlib.suppress(ChangeRefused):
            reached.append(apply_change(reached[-1], _bound(change, reached[-1])))
    for i, earlier in enumerate(reached):
        for later in reached[i + 2 :]:
            assert not is_successor(earlier, later)
        assert not is_successor(earlier, earlier)


def _bound(change: MembershipChange, current: Membership) -> MembershipChange:
    """A drawn finish ends whatever is pending when it is applied."""
    if isinstance(change, FinishChange):
        return FinishChange(version=current.version)
    return change
