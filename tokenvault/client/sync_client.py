"""The synchronous client: `Client(peers, key)`, or `Client.from_cluster_dir(directory)`.

Rules:
- One pooled httpx.Client per Client (keep-alive connections to each peer it used); close it
  with `close()` or a `with` block.
- Every request goes through exchange.Attempts: failover over the peers, bounded attempts,
  backoff with jitter, Retry-After honoured; an error ends it as a TokenvaultError.
- tokenize_many / detokenize_many send consecutive requests of at most 1,000 records or tokens
  (calls.batches) and return everything in the order given; a failure of any request raises
  (the requests before it did happen: tokenize is insert-once, so sending all again is safe).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import httpx

from tokenvault.client import calls
from tokenvault.client.base import ClientBase, merge_tokenized
from tokenvault.client.calls import Call
from tokenvault.client.exchange import Wait
from tokenvault.client.results import (
    Epoch,
    Members,
    MembersChanged,
    OwnerPlacement,
    Ring,
    Rotated,
    Tokenized,
    TokenizedMany,
    TokenLookup,
    TokenMapping,
    decode_answer,
    decode_lookups,
)

__all__ = ["Client"]


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # looked up at each call: a test may replace time.sleep


class Client(ClientBase):
    def __init__(
        self,
        peers: str | Sequence[str],
        key: str,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
        **options: Any,
    ) -> None:
        """`options`: ca_path, verify, policy (RetryPolicy), on_attempt, jitter (ClientBase);
        `sleep` replaces time.sleep (tests)."""
        super().__init__(peers, key, **options)
        self._sleep = sleep or _sleep
        self._http = httpx.Client(transport=transport, **self._http_options())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call) -> Any:
        """Any Call (calls.py); the JSON of its answer."""
        return self._send(call)[0]

    def _send(self, call: Call) -> tuple[Any, str]:
        attempts = self._attempts(call)
        while True:
            try:
                response = self._http.request(
                    call.method, attempts.url, content=call.body, headers=self._headers(call)
                )
            except (httpx.HTTPError, httpx.InvalidURL) as exception:
                self._sleep(attempts.on_exception(exception).delay_s)
                continue
            if response.status_code != 503:
                self._answered(attempts)
            outcome = attempts.on_response(response)
            if isinstance(outcome, Wait):
                self._sleep(outcome.delay_s)
                continue
            return outcome, self.peers[attempts.peer_index]

    # -- the API ---------------------------------------------------------------------------------

    def tokenize(self, records: Sequence[Mapping[str, Any]]) -> Tokenized:
        """At most 1,000 records (else PayloadTooLarge); see tokenize_many."""
        return decode_answer(*self._send(calls.tokenize_call(records)), Tokenized)

    def tokenize_many(self, records: Iterable[Mapping[str, Any]]) -> TokenizedMany:
        parts = [self.tokenize(batch) for batch in calls.batches(records)]
        return merge_tokenized(parts)

    def detokenize(self, tokens: Sequence[str]) -> list[TokenLookup]:
        """At most 1,000 tokens (else PayloadTooLarge); see detokenize_many."""
        return decode_lookups(*self._send(calls.detokenize_call(tokens)))

    def detokenize_many(self, tokens: Iterable[str]) -> list[TokenLookup]:
        return [found for batch in calls.batches(tokens) for found in self.detokenize(batch)]

    def lookup_token(self, token: str) -> TokenMapping:
        """NotFound when the token does not exist or is not this owner's."""
        return decode_answer(*self._send(calls.token_call(token)), TokenMapping)

    def epoch(self) -> Epoch:
        return decode_answer(*self._send(calls.epoch_call()), Epoch)

    def rotate(self, expected_epoch: int | None = None) -> Rotated:
        """Retried after failures only with expected_epoch (failover.py says why)."""
        return decode_answer(*self._send(calls.rotate_call(expected_epoch)), Rotated)

    def ring(self) -> Ring:
        return decode_answer(*self._send(calls.ring_call()), Ring)

    def ring_owner(self, owner: str) -> OwnerPlacement:
        return decode_answer(*self._send(calls.ring_owner_call(owner)), OwnerPlacement)

    def members(self) -> Members:
        """GET /v1/admin/members (admin key): the ring's version and members."""
        return decode_answer(*self._send(calls.members_call()), Members)

    def add_member(self, member: str, address: str) -> MembersChanged:
        """Adds `member` at `address` (host:port); answers once the joint version is decided."""
        call = calls.members_change_call("add", member, address=address)
        return decode_answer(*self._send(call), MembersChanged)

    def remove_member(self, member: str) -> MembersChanged:
        return decode_answer(
            *self._send(calls.members_change_call("remove", member)), MembersChanged
        )

    def replace_member(self, old: str, new: str, address: str) -> MembersChanged:
        """`new` (at `address`) takes `old`'s place: exactly `old`'s owners move to it."""
        call = calls.members_change_call("replace", new, address=address, replaces=old)
        return decode_answer(*self._send(call), MembersChanged)

    def get_json(self, path: str) -> Any:
        """A GET of any other endpoint (/v1/admin/node ...): its JSON as the peer sent it."""
        return self.send(calls.get_call(path))
