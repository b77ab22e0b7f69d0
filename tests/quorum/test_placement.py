"""Owner placements and the joint vote, checked against a dumb reference on random inputs."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenvault.quorum.placement import (
    OwnerPlacement,
    Vote,
    joint_vote,
    quorum_in_each,
    reachable_in_each,
    set_vote,
)

PEERS = ("a", "b", "c", "d", "e", "f", "g")


def reference_vote(
    granted: frozenset[str],
    refused: frozenset[str],
    sets: tuple[tuple[str, ...], ...],
    quorum: int | None,
) -> Vote:
    """Every way the peers that have not voted yet may still vote, tried one by one: WON when
    the configuration wins whatever they say, LOST when it wins whatever they say in none."""

    def wins(yes: frozenset[str]) -> bool:
        for replica_set in sets:
            needed = len(replica_set) // 2 + 1 if quorum is None else quorum
            if not any(
                all(peer in yes for peer in chosen)
                for chosen in itertools.combinations(replica_set, needed)
            ):
                return False
        return True

    voters = sorted({peer for replica_set in sets for peer in replica_set})
    open_peers = [p for p in voters if p not in granted and p not in refused]
    outcomes = set()
    for answers in itertools.product((False, True), repeat=len(open_peers)):
        yes = granted | {p for p, said in zip(open_peers, answers, strict=True) if said}
        outcomes.add(wins(frozenset(yes)))
    if outcomes == {True}:
        return Vote.WON
    return Vote.LOST if outcomes == {False} else Vote.PENDING


@st.composite
def votes(
    draw: st.DrawFn,
) -> tuple[frozenset[str], frozenset[str], tuple[tuple[str, ...], ...], int | None]:
    size = draw(st.integers(1, 5))
    replica_set = st.permutations(PEERS).map(lambda peers: tuple(peers[:size]))
    sets = tuple(draw(st.lists(replica_set, min_size=1, max_size=2)))
    quorum = draw(st.none() | st.integers(1, size))
    granted = frozenset(draw(st.sets(st.sampled_from(PEERS))))
    refused = frozenset(draw(st.sets(st.sampled_from(PEERS)))) - granted
    return granted, refused, sets, quorum


@given(votes())
def test_joint_vote_matches_the_reference(
    vote: tuple[frozenset[str], frozenset[str], tuple[tuple[str, ...], ...], int | None],
) -> None:
    granted, refused, sets, quorum = vote
    assert joint_vote(granted, refused, sets, quorum) is reference_vote(
        granted, refused, sets, quorum
    )
    assert quorum_in_each(granted, sets, quorum) is (
        reference_vote(granted, frozenset(), sets, quorum) is Vote.WON
    )
    assert reachable_in_each(refused, sets, quorum) is (
        reference_vote(frozenset(), refused, sets, quorum) is not Vote.LOST
    )


@given(votes())
def test_a_joint_vote_is_the_vote_of_each_set(
    vote: tuple[frozenset[str], frozenset[str], tuple[tuple[str, ...], ...], int | None],
) -> None:
    granted, refused, sets, quorum = vote
    each = [set_vote(granted, refused, replica_set, quorum) for replica_set in sets]
    result = joint_vote(granted, refused, sets, quorum)
    assert (result is Vote.WON) == all(v is Vote.WON for v in each)
    assert (result is Vote.LOST) == any(v is Vote.LOST for v in each)


def test_the_reference_knows_each_answer() -> None:
    old, new = ("a", "b", "c"), ("a", "b", "d")
    assert reference_vote(frozenset("ab"), frozenset(), (old, new), 2) is Vote.WON
    assert reference_vote(frozenset("ac"), frozenset(), (old, new), 2) is Vote.PENDING
    assert reference_vote(frozenset("ac"), frozenset("bd"), (old, new), 2) is Vote.LOST
    assert reference_vote(frozenset("c"), frozenset("ab"), (old,), None) is Vote.LOST


def test_w_in_old_alone_is_not_a_joint_quorum() -> None:
    old, new = ("a", "b", "c"), ("d", "e", "f")
    assert set_vote({"a", "b"}, (), old, 2) is Vote.WON
    assert joint_vote({"a", "b"}, (), (old, new), 2) is Vote.PENDING
    assert joint_vote({"a", "b", "d", "e"}, (), (old, new), 2) is Vote.WON
    assert joint_vote({"a", "b"}, {"d", "e"}, (old, new), 2) is Vote.LOST


def test_placement_sets() -> None:
    stable = OwnerPlacement.stable(("a", "b", "c"), version=3)
    assert not stable.joint
    assert stable.replicas == stable.read_set == ("a", "b", "c")
    assert stable.quorum_sets == (("a", "b", "c"),)
    joint = OwnerPlacement(old=("a", "b", "c"), new=("a", "d", "c"), version=4)
    assert joint.joint
    assert joint.replicas == ("a", "b", "c", "d")
    assert joint.quorum_sets == (("a", "b", "c"), ("a", "d", "c"))
    assert joint.read_set == ("a", "b", "c")
    finishing = OwnerPlacement(old=("a", "b", "c"), new=("a", "d", "c"), reads_new=True)
    assert finishing.read_set == ("a", "d", "c")
    with pytest.raises(AssertionError):
        OwnerPlacement(old=("a", "a", "b"), new=("a", "b", "c"))
    with pytest.raises(AssertionError):
        OwnerPlacement(old=("a", "b"), new=("a", "b", "c"))
