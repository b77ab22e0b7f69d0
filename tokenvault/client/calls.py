"""The API's requests as data: method, path, body, and whether sending it twice is safe.

Rules:
- One function per operation builds its Call; the clients (sync and async) send any Call the
  same way, so a rule about a request lives here once.
- Bodies are JSON as json.dumps writes it (ASCII); a raw body (the command line's --json)
  is sent byte for byte.
- Path parameters (a token, an owner) are percent-encoded whole: they never add a path segment.
- Batching: `batches` cuts a sequence into lists of at most BATCH_ITEMS_MAX (the API's limit of
  records per tokenize and tokens per detokenize), in order.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tokenvault.client.failover import Retry

__all__ = [
    "BATCH_ITEMS_MAX",
    "Call",
    "batches",
    "detokenize_call",
    "epoch_call",
    "get_call",
    "members_call",
    "members_change_call",
    "ring_call",
    "ring_owner_call",
    "rotate_call",
    "token_call",
    "tokenize_body_call",
    "tokenize_call",
]

BATCH_ITEMS_MAX = 1_000  # records per tokenize, tokens per detokenize (docs/api.md "Limits")


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    body: bytes | None = None
    retry: Retry = Retry.ALWAYS

    def __repr__(self) -> str:  # a body holds values or tokens: never shown
        size = "no body" if self.body is None else f"{len(self.body)} bytes"
        return f"Call({self.method} {self.path}, {size}, retry={self.retry.value})"


def tokenize_call(records: Sequence[Mapping[str, Any]]) -> Call:
    """Insert-once: the same records give the same tokens, so a retry is always safe."""
    return tokenize_body_call(_json({"records": [dict(record) for record in records]}))


def tokenize_body_call(body: bytes) -> Call:
    return Call("POST", "/v1/tokenize", body, Retry.ALWAYS)


def detokenize_call(tokens: Sequence[str]) -> Call:
    return Call("POST", "/v1/detokenize", _json({"tokens": list(tokens)}), Retry.ALWAYS)


def token_call(token: str) -> Call:
    return get_call(f"/v1/tokens/{_segment(token)}")


def epoch_call() -> Call:
    return get_call("/v1/epoch")


def rotate_call(expected_epoch: int | None) -> Call:
    """With expected_epoch the rotate is conditional and safe to repeat; without, it is not."""
    if expected_epoch is None:
        return Call("POST", "/v1/epoch/rotate", None, Retry.IF_UNSENT)
    return Call("POST", "/v1/epoch/rotate", _json({"expected_epoch": expected_epoch}))


def ring_call() -> Call:
    return get_call("/v1/ring")


def ring_owner_call(owner: str) -> Call:
    return get_call(f"/v1/ring/owners/{_segment(owner)}")


MEMBERS_PATH = "/v1/admin/members"


def members_call() -> Call:
    return get_call(MEMBERS_PATH)


def members_change_call(
    action: str, member: str, *, address: str | None = None, replaces: str | None = None
) -> Call:
    """A membership change (admin key). Idempotent by intent: the same change sent again
    answers `already`, so a retry after a timeout or a 503 is safe."""
    body: dict[str, str] = {"action": action, "id": member}
    if address is not None:
        body["address"] = address
    if replaces is not None:
        body["replaces"] = replaces
    return Call("POST", MEMBERS_PATH, _json(body), Retry.ALWAYS)


def get_call(path: str) -> Call:
    """Any GET of the API (they change nothing: always safe to retry)."""
    return Call("GET", path, None, Retry.ALWAYS)


ItemT = TypeVar("ItemT")


def batches(items: Iterable[ItemT], size: int = BATCH_ITEMS_MAX) -> Iterator[list[ItemT]]:
    """Consecutive lists of at most `size` items, in order."""
    if not 1 <= size <= BATCH_ITEMS_MAX:
        raise ValueError(f"a batch holds 1 to {BATCH_ITEMS_MAX} items")
    batch: list[ItemT] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _json(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def _segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")
