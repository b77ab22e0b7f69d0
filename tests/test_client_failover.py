"""The failover planner (tokenvault/client/failover.py): which peer next, after how long, and
when a request ends; pure, so time and randomness are given."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenvault.client.failover import (
    Failover,
    Failure,
    FailureKind,
    NextAttempt,
    Retry,
    RetryPolicy,
)

UNSENT = Failure(FailureKind.UNSENT)
LOST = Failure(FailureKind.LOST)


def plan(peers: int, first: int = 0, retry: Retry = Retry.ALWAYS, **policy: float) -> Failover:
    return Failover(peers, first, retry, RetryPolicy(**policy), random.Random(7))  # type: ignore[arg-type]


def test_each_peer_in_turn_from_the_first_then_a_jittered_backoff() -> None:
    failover = plan(3, first=1, attempts_max=5, backoff_base_s=0.1, backoff_max_s=2.0)
    first = [failover.after(UNSENT, now_s=0.0) for _ in range(2)]
    assert first == [NextAttempt(2, 0.0), NextAttempt(0, 0.0)]
    fourth = failover.after(UNSENT, now_s=0.0)  # every peer had its turn: back off
    assert fourth is not None and fourth.peer_index == 1 and 0.0 <= fourth.delay_s <= 0.1
    assert failover.after(UNSENT, now_s=0.0) == NextAttempt(2, 0.0)
    assert failover.after(UNSENT, now_s=0.0) is None  # attempts_max reached
    assert failover.attempts == 5


def test_retry_after_holds_that_peer_back_but_not_the_others() -> None:
    failover = plan(2, retry_after_max_s=10.0, backoff_base_s=0.0)
    busy = Failure(FailureKind.UNAVAILABLE, retry_after_s=1.5)
    assert failover.after(busy, now_s=100.0) == NextAttempt(1, 0.0)  # the other peer at once
    assert failover.after(busy, now_s=100.25) == NextAttempt(0, 1.25)  # peer 0 after its 1.5 s


def test_a_long_retry_after_is_waited_for_at_most_its_limit() -> None:
    failover = plan(1, retry_after_max_s=3.0, backoff_base_s=0.0)
    assert failover.after(Failure(FailureKind.UNAVAILABLE, 3600.0), now_s=0.0) == NextAttempt(
        0, 3.0
    )


@pytest.mark.parametrize("failure", [LOST, Failure(FailureKind.UNAVAILABLE, 1.0)])
def test_a_request_unsafe_to_repeat_ends_once_it_may_have_been_received(failure: Failure) -> None:
    assert plan(3, retry=Retry.IF_UNSENT).after(failure, now_s=0.0) is None


def test_a_request_unsafe_to_repeat_still_fails_over_when_it_was_never_sent() -> None:
    assert plan(3, retry=Retry.IF_UNSENT).after(UNSENT, now_s=0.0) == NextAttempt(1, 0.0)


def test_a_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="attempts_max"):
        RetryPolicy(attempts_max=0)
    with pytest.raises(ValueError, match="timeouts"):
        RetryPolicy(timeout_s=0)


@given(
    peers=st.integers(1, 6),
    attempts_max=st.integers(1, 12),
    failures=st.lists(
        st.sampled_from([UNSENT, LOST, Failure(FailureKind.UNAVAILABLE, 1.0)]), min_size=20
    ),
    seed=st.integers(0, 2**32),
)
def test_attempts_are_bounded_delays_are_bounded_and_every_peer_gets_a_turn(
    peers: int, attempts_max: int, failures: list[Failure], seed: int
) -> None:
    policy = RetryPolicy(attempts_max=attempts_max, backoff_max_s=2.0, retry_after_max_s=1.0)
    failover = Failover(peers, 0, Retry.ALWAYS, policy, random.Random(seed))
    visited = [0]
    for failure in failures:
        following = failover.after(failure, now_s=0.0)
        if following is None:
            break
        assert 0.0 <= following.delay_s <= 2.0
        visited.append(following.peer_index)
    assert len(visited) == attempts_max  # every attempt allowed, and not one more
    assert set(visited) == set(range(min(peers, attempts_max)))
