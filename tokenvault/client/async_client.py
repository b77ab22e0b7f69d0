"""The asynchronous client: the sync Client's twin for asyncio or trio (httpx.AsyncClient,
anyio's sleep).

Rules: those of sync_client.py, with `await`; one pooled httpx.AsyncClient per AsyncClient,
closed by `aclose()` or an `async with` block. Concurrent requests on one AsyncClient are
fine: each has its own attempts; they share the pool and the peer to start with.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
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

__all__ = ["AsyncClient"]


class AsyncClient(ClientBase):
    def __init__(
        self,
        peers: str | Sequence[str],
        key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        **options: Any,
    ) -> None:
        """`options`: ca_path, verify, policy (RetryPolicy), on_attempt, jitter (ClientBase)."""
        super().__init__(peers, key, **options)
        self._sleep = sleep
        self._http = httpx.AsyncClient(transport=transport, **self._http_options())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call) -> Any:
        """Any Call (calls.py); the JSON of its answer."""
        return (await self._send(call))[0]

    async def _send(self, call: Call) -> tuple[Any, str]:
        attempts = self._attempts(call)
        while True:
            try:
                response = await self._http.request(
                    call.method, attempts.url, content=call.body, headers=self._headers(call)
                )
            except (httpx.HTTPError, httpx.InvalidURL) as exception:
                await self._sleep(attempts.on_exception(exception).delay_s)
                continue
            if response.status_code != 503:
                self._answered(attempts)
            outcome = attempts.on_response(response)
            if isinstance(outcome, Wait):
                await self._sleep(outcome.delay_s)
                continue
            return outcome, self.peers[attempts.peer_index]

    # -- the API ---------------------------------------------------------------------------------

    async def tokenize(self, records: Sequence[Mapping[str, Any]]) -> Tokenized:
        """At most 1,000 records (else PayloadTooLarge); see tokenize_many."""
        return decode_answer(*await self._send(calls.tokenize_call(records)), Tokenized)

    async def tokenize_many(self, records: Iterable[Mapping[str, Any]]) -> TokenizedMany:
        parts = [await self.tokenize(batch) for batch in calls.batches(records)]
        return merge_tokenized(parts)

    async def detokenize(self, tokens: Sequence[str]) -> list[TokenLookup]:
        """At most 1,000 tokens (else PayloadTooLarge); see detokenize_many."""
        return decode_lookups(*await self._send(calls.detokenize_call(tokens)))

    async def detokenize_many(self, tokens: Iterable[str]) -> list[TokenLookup]:
        found: list[TokenLookup] = []
        for batch in calls.batches(tokens):
            found.extend(await self.detokenize(batch))
        return found

    async def lookup_token(self, token: str) -> TokenMapping:
        """NotFound when the token does not exist or is not this owner's."""
        return decode_answer(*await self._send(calls.token_call(token)), TokenMapping)

    async def epoch(self) -> Epoch:
        return decode_answer(*await self._send(calls.epoch_call()), Epoch)

    async def rotate(self, expected_epoch: int | None = None) -> Rotated:
        """Retried after failures only with expected_epoch (failover.py says why)."""
        return decode_answer(*await self._send(calls.rotate_call(expected_epoch)), Rotated)

    async def ring(self) -> Ring:
        return decode_answer(*await self._send(calls.ring_call()), Ring)

    async def ring_owner(self, owner: str) -> OwnerPlacement:
        return decode_answer(*await self._send(calls.ring_owner_call(owner)), OwnerPlacement)

    async def members(self) -> Members:
        """GET /v1/admin/members (admin key): the ring's version and members."""
        return decode_answer(*await self._send(calls.members_call()), Members)

    async def add_member(self, member: str, address: str) -> MembersChanged:
        """Adds `member` at `address` (host:port); answers once the joint version is decided."""
        call = calls.members_change_call("add", member, address=address)
        return decode_answer(*await self._send(call), MembersChanged)

    async def remove_member(self, member: str) -> MembersChanged:
        return decode_answer(
            *await self._send(calls.members_change_call("remove", member)), MembersChanged
        )

    async def replace_member(self, old: str, new: str, address: str) -> MembersChanged:
        """`new` (at `address`) takes `old`'s place: exactly `old`'s owners move to it."""
        call = calls.members_change_call("replace", new, address=address, replaces=old)
        return decode_answer(*await self._send(call), MembersChanged)

    async def get_json(self, path: str) -> Any:
        """A GET of any other endpoint (/v1/admin/node ...): its JSON as the peer sent it."""
        return await self.send(calls.get_call(path))
