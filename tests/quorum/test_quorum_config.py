"""QuorumConfig and quorum_problem, checked against a dumb reference on every small (N, W, R)."""

from __future__ import annotations

import itertools

import pytest

from tokenvault.quorum.quorum_config import QuorumConfig, majority, quorum_problem

SMALL = list(
    itertools.product(range(1, 8), range(-1, 10), range(-1, 10))
)  # N in 1..7, W and R well past both ends of 1..N


def reference_is_safe(n: int, w: int, r: int) -> bool:
    """The rules written out one by one, with no cleverness."""
    if n < 1:
        return False
    if w < 1 or w > n:
        return False
    if r < 1 or r > n:
        return False
    if not w + r > n:
        return False
    # 2W > N, said as "two write quorums always share a replica": the smallest possible
    # overlap of two W-subsets of N replicas is 2W - N, and it must be at least one.
    return max(0, w + w - n) >= 1


def test_reference_has_both_answers_for_every_n() -> None:
    for n in range(1, 8):
        answers = {reference_is_safe(n, w, r) for w in range(1, n + 1) for r in range(1, n + 1)}
        assert answers == {True, False} or n == 1
    assert reference_is_safe(1, 1, 1)
    assert reference_is_safe(3, 2, 2)
    assert not reference_is_safe(3, 1, 3)  # W + R > N, but two writes of one replica need not meet
    assert not reference_is_safe(4, 2, 3)  # W = N/2 is not a majority
    assert not reference_is_safe(5, 3, 2)  # W + R = N


@pytest.mark.parametrize(("n", "w", "r"), SMALL)
def test_quorum_problem_matches_reference(n: int, w: int, r: int) -> None:
    problem = quorum_problem(n, w, r)
    assert isinstance(problem, str)
    assert (problem == "") == reference_is_safe(n, w, r)


def test_every_safe_config_builds_and_every_unsafe_one_raises() -> None:
    safe = unsafe = 0
    for n, w, r in SMALL:
        if reference_is_safe(n, w, r):
            config = QuorumConfig(replica_count=n, write_quorum=w, read_quorum=r)
            assert (config.replica_count, config.write_quorum, config.read_quorum) == (n, w, r)
            safe += 1
        else:
            with pytest.raises(ValueError) as raised:
                QuorumConfig(replica_count=n, write_quorum=w, read_quorum=r)
            assert str(raised.value) == quorum_problem(n, w, r) != ""
            unsafe += 1
    assert safe > 0 and unsafe > 0


@pytest.mark.parametrize("n", [0, -1, -5])
def test_no_replicas_is_refused(n: int) -> None:
    assert "at least 1" in quorum_problem(n, 1, 1)
    with pytest.raises(ValueError):
        QuorumConfig(replica_count=n, write_quorum=1, read_quorum=1)


@pytest.mark.parametrize(
    ("n", "w", "r", "words"),
    [
        (3, 0, 2, "write_quorum (W)"),
        (3, 4, 2, "write_quorum (W)"),
        (3, 2, 0, "read_quorum (R)"),
        (3, 2, 4, "read_quorum (R)"),
        (3, 2, 1, "W + R > N"),
        (4, 2, 3, "W > N / 2"),
    ],
)
def test_problem_names_the_broken_rule(n: int, w: int, r: int, words: str) -> None:
    assert words in quorum_problem(n, w, r)


def test_majority() -> None:
    for n in range(1, 8):
        m = majority(n)
        assert 2 * m > n and 2 * (m - 1) <= n
        assert quorum_problem(n, m, m) == ""


def test_config_is_frozen() -> None:
    config = QuorumConfig(replica_count=3, write_quorum=2, read_quorum=2)
    with pytest.raises(AttributeError):
        config.write_quorum = 1  # type: ignore[misc]
