"""One request's attempts as the clients carry them out: the peer to send to, what an answer
or a transport error means, when to try again, and the error that ends it.

Rules:
- The sync and async clients differ only in how they send and sleep; everything else about an
  attempt is here, once: classifying httpx's exceptions (failover.FailureKind), reading an
  answer (JSON of a 2xx; an error class of errors.py otherwise), asking failover.py for the
  next attempt, telling the caller's `on_attempt` observer, and the final error.
- The final error is the last peer's error answer when any peer answered; when none did, an
  Unreachable error naming each peer's last failure.
- Messages name peers' URLs and httpx's reason, never a header (the key) or a body.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tokenvault.client.calls import Call
from tokenvault.client.errors import (
    BadAnswer,
    TokenvaultError,
    Unavailable,
    Unreachable,
    error_from_answer,
)
from tokenvault.client.failover import Failover, Failure, FailureKind, RetryPolicy

__all__ = ["AttemptReport", "Attempts", "Wait", "peer_url"]


@dataclass(frozen=True, slots=True)
class AttemptReport:
    """What one attempt did: answered (`error` None) or failed, and what follows."""

    attempt: int  # 1-based
    peer: str
    error: TokenvaultError | None
    next_peer: str | None = None  # the next attempt's peer, when there is one
    next_delay_s: float = 0.0


AttemptObserver = Callable[[AttemptReport], None]


@dataclass(frozen=True, slots=True)
class Wait:
    """Try again: at `peer`, after `delay_s`."""

    delay_s: float


def peer_url(address: str, *, https: bool) -> str:
    """A peer's base URL: a bare host:port gets https:// when `https`, else http://."""
    url = address.strip()
    if "://" not in url:
        url = f"{'https' if https else 'http'}://{url}"
    return url.rstrip("/")


class Attempts:
    """The attempts of one Call over `peers`, from `first_peer` on."""

    def __init__(
        self,
        call: Call,
        peers: tuple[str, ...],
        first_peer: int,
        policy: RetryPolicy,
        jitter: random.Random,
        observer: AttemptObserver | None,
    ) -> None:
        self._call = call
        self._peers = peers
        self._failover = Failover(len(peers), first_peer, call.retry, policy, jitter)
        self._policy = policy
        self._observer = observer
        self._last_failures: dict[str, TokenvaultError] = {}
        self._last_answer_error: TokenvaultError | None = None

    @property
    def peer_index(self) -> int:
        return self._failover.peer_index

    @property
    def url(self) -> str:
        return self._peers[self.peer_index] + self._call.path

    def on_response(self, response: httpx.Response) -> Any:
        """The answer's JSON (2xx), a Wait before the next attempt, or the error that ends it."""
        peer = self._peers[self.peer_index]
        if response.is_success:
            try:
                answer = response.json()
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise self._ended(
                    BadAnswer(f"{peer} answered {response.status_code} without JSON", peer=peer)
                ) from None
            self._report(None, peer, self._failover.attempts)
            return answer
        try:
            body: Any = response.json()
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        error = error_from_answer(
            response.status_code,
            body,
            response.headers.get("Retry-After"),
            peer,
            response.reason_phrase,
        )
        self._last_answer_error = error
        if isinstance(error, Unavailable):
            return self._failed(error, Failure(FailureKind.UNAVAILABLE, error.retry_after_s))
        raise self._ended(error)

    def on_exception(self, exception: Exception) -> Wait:
        """A Wait before the next attempt after httpx raised, or the error that ends it."""
        peer = self._peers[self.peer_index]
        reason = str(exception) or type(exception).__name__
        if isinstance(exception, httpx.ConnectTimeout | httpx.PoolTimeout):
            error = Unreachable(
                f"cannot connect to {peer}: no connection within "
                f"{self._policy.connect_timeout_s:g} s",
                peer=peer,
            )
            return self._failed(error, Failure(FailureKind.UNSENT))
        if isinstance(exception, httpx.ConnectError):
            error = Unreachable(f"cannot connect to {peer}: {reason}", peer=peer)
            return self._failed(error, Failure(FailureKind.UNSENT))
        if isinstance(exception, httpx.TimeoutException):
            error = Unreachable(
                f"no answer from {peer} within {self._policy.timeout_s:g} s", peer=peer
            )
            return self._failed(error, Failure(FailureKind.LOST))
        if isinstance(exception, httpx.NetworkError | httpx.RemoteProtocolError):
            error = Unreachable(f"connection to {peer} lost before the answer: {reason}", peer=peer)
            return self._failed(error, Failure(FailureKind.LOST))
        # An unusable URL or protocol: no other attempt would do better.
        raise self._ended(Unreachable(f"request to {peer} failed: {reason}", peer=peer))

    def _failed(self, error: TokenvaultError, failure: Failure) -> Wait:
        peer, attempt = self._peers[self.peer_index], self._failover.attempts
        self._last_failures[peer] = error
        following = self._failover.after(failure, time.monotonic())
        if following is None:
            self._report(error, peer, attempt)
            raise self._final_error(error)
        next_peer = self._peers[following.peer_index]
        self._report(error, peer, attempt, next_peer, following.delay_s)
        return Wait(following.delay_s)

    def _ended(self, error: TokenvaultError) -> TokenvaultError:
        """Reports the current attempt as the last one; returns its error to raise."""
        self._report(error, self._peers[self.peer_index], self._failover.attempts)
        return error

    def _final_error(self, last: TokenvaultError) -> TokenvaultError:
        if self._last_answer_error is not None or len(self._last_failures) <= 1:
            return self._last_answer_error or last
        failures = "; ".join(error.message for error in self._last_failures.values())
        return Unreachable(
            f"no peer answered ({self._failover.attempts} attempts): {failures}", peer=last.peer
        )

    def _report(
        self,
        error: TokenvaultError | None,
        peer: str,
        attempt: int,
        next_peer: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        if self._observer is not None:
            self._observer(AttemptReport(attempt, peer, error, next_peer, delay_s))
