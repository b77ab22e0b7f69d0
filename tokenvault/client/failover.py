"""Which peer to try next, and after how long: the failover rules of the client, without I/O.

Theory: a request goes to one peer at a time, starting with the peer that answered last (so a
dead peer costs one failed attempt per client, not one per request). When an attempt fails in
a way that another peer (or a later try) may fix, the next peer in the list gets it; every
peer has had its turn once a round is complete, and before the next round the client waits a
backoff with full jitter: a uniform draw from [0, min(BACKOFF_MAX, BACKOFF_BASE * 2^round)].
A peer that answered 503 with Retry-After is not asked again before that many seconds
(at most RETRY_AFTER_MAX) have passed.

Rules:
- At most `attempts_max` attempts per request, whatever happens: the loop has a limit.
- What may be retried depends on whether the request is safe to send twice (`Retry`):
  - Retry.ALWAYS (tokenize: insert-once, the same input gives the same tokens; detokenize,
    every GET; rotate with expected_epoch, which is conditional): retried after a connection
    that failed, a timeout, a connection lost before the answer, and a 503.
  - Retry.IF_UNSENT (rotate without expected_epoch: sent twice it may rotate twice): retried
    only when the request surely never left the client (the connection could not be made);
    a timeout, a lost connection or a 503 after it was sent end the request with that error,
    because the rotate may have happened.
- Any other answer (2xx, or an error status other than 503) ends the request: 4xx answers do
  not change by asking another peer.
- Pure: time comes in as `now_s`, randomness from the `random.Random` given.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

__all__ = [
    "ATTEMPTS_MAX_DEFAULT",
    "Failover",
    "Failure",
    "FailureKind",
    "NextAttempt",
    "Retry",
    "RetryPolicy",
]

ATTEMPTS_MAX_DEFAULT = 5


class Retry(enum.Enum):
    ALWAYS = "always"
    IF_UNSENT = "if_unsent"


class FailureKind(enum.Enum):
    UNSENT = "unsent"  # no connection: the peer never saw the request
    LOST = "lost"  # sent, and then no answer: a timeout or a dropped connection
    UNAVAILABLE = "unavailable"  # 503: nothing was claimed


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """The limits of one request's attempts (defaults: docs/api.md, "Python client")."""

    attempts_max: int = ATTEMPTS_MAX_DEFAULT
    timeout_s: float = 10.0  # per attempt: connect, send, and wait for the answer
    connect_timeout_s: float = 3.0
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    retry_after_max_s: float = 10.0  # a longer Retry-After is waited for this long only

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise ValueError("attempts_max must be at least 1")
        if min(self.timeout_s, self.connect_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        if min(self.backoff_base_s, self.backoff_max_s, self.retry_after_max_s) < 0:
            raise ValueError("backoff and retry-after limits must not be negative")


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class NextAttempt:
    peer_index: int
    delay_s: float


@dataclass(slots=True)
class Failover:
    """One request's attempts over `peer_count` peers, starting at `first_peer`."""

    peer_count: int
    first_peer: int
    retry: Retry
    policy: RetryPolicy
    random: random.Random
    attempts: int = 1  # the first attempt is under way when this is made
    peer_index: int = field(init=False)
    _tried_this_round: int = field(init=False, default=1)
    _round: int = field(init=False, default=0)
    _not_before_s: dict[int, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        assert self.peer_count >= 1 and 0 <= self.first_peer < self.peer_count
        self.peer_index = self.first_peer

    def after(self, failure: Failure, now_s: float) -> NextAttempt | None:
        """The next attempt after the current one failed so; None when the request must end."""
        if self.retry is Retry.IF_UNSENT and failure.kind is not FailureKind.UNSENT:
            return None
        if self.attempts >= self.policy.attempts_max:
            return None
        if failure.retry_after_s is not None:
            wait_s = min(failure.retry_after_s, self.policy.retry_after_max_s)
            self._not_before_s[self.peer_index] = now_s + wait_s
        delay_s = 0.0
        if self._tried_this_round >= self.peer_count:  # every peer had its turn: back off
            ceiling_s = min(self.policy.backoff_max_s, self.policy.backoff_base_s * 2**self._round)
            delay_s = self.random.uniform(0.0, ceiling_s)
            self._round += 1
            self._tried_this_round = 0
        self.peer_index = (self.peer_index + 1) % self.peer_count
        delay_s = max(delay_s, self._not_before_s.get(self.peer_index, now_s) - now_s)
        self.attempts += 1
        self._tried_this_round += 1
        return NextAttempt(self.peer_index, delay_s)
