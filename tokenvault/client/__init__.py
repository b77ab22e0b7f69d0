"""tokenvault's Python client: `Client` (sync) and `AsyncClient` (asyncio or trio), on httpx.

    with Client.from_cluster_dir("tokenvault-cluster") as client:
        tokenized = client.tokenize([{"ssn": "123-45-6789"}])

Rules:
- A client knows every peer of the cluster and fails over between them: connection errors,
  timeouts and 503 move a request to the next peer, with bounded attempts, backoff with jitter
  and Retry-After honoured (failover.py). Tokenize, detokenize, every GET and a rotate with
  expected_epoch are retried; a rotate without expected_epoch only when it was never sent.
- Answers are typed (results.py); error answers and failures raise a TokenvaultError subclass
  (errors.py) with status, code, message, retry_after_s and peer.
- members / add_member / remove_member / replace_member (admin key) read and change the ring's
  membership (docs/api.md, /v1/admin/members); a change answers once decided, and is safe to
  send again (the same change answers `already`).
- tokenize_many / detokenize_many split any number of records or tokens into requests of at
  most 1,000 and keep their order.
- The API key never appears in a repr, an error, or an attempt report; the library logs nothing.
"""

from __future__ import annotations

from tokenvault.client.async_client import AsyncClient
from tokenvault.client.calls import BATCH_ITEMS_MAX, Call
from tokenvault.client.errors import (
    AlreadyMember,
    BadAnswer,
    ChangePending,
    ClientError,
    Conflict,
    Forbidden,
    Internal,
    InvalidMember,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    NothingPending,
    PayloadTooLarge,
    RingUnavailable,
    ServerError,
    TokenvaultError,
    TooFewPeers,
    Unauthenticated,
    Unavailable,
    UnknownMember,
    Unreachable,
)
from tokenvault.client.exchange import AttemptReport
from tokenvault.client.failover import Retry, RetryPolicy
from tokenvault.client.results import (
    Epoch,
    Member,
    Members,
    MembersChanged,
    OwnerPlacement,
    PeerAddress,
    Ring,
    RingPeer,
    Rotated,
    Tokenized,
    TokenizedMany,
    TokenLookup,
    TokenMapping,
)
from tokenvault.client.sync_client import Client
from tokenvault.config import ConfigError

__all__ = [
    "BATCH_ITEMS_MAX",
    "AlreadyMember",
    "AsyncClient",
    "AttemptReport",
    "BadAnswer",
    "Call",
    "ChangePending",
    "Client",
    "ClientError",
    "ConfigError",
    "Conflict",
    "Epoch",
    "Forbidden",
    "Internal",
    "InvalidMember",
    "InvalidRequest",
    "Member",
    "Members",
    "MembersChanged",
    "MethodNotAllowed",
    "NotFound",
    "NothingPending",
    "OwnerPlacement",
    "PayloadTooLarge",
    "PeerAddress",
    "Retry",
    "RetryPolicy",
    "Ring",
    "RingPeer",
    "RingUnavailable",
    "Rotated",
    "ServerError",
    "TokenLookup",
    "TokenMapping",
    "Tokenized",
    "TokenizedMany",
    "TokenvaultError",
    "TooFewPeers",
    "Unauthenticated",
    "Unavailable",
    "UnknownMember",
    "Unreachable",
]
