"""What the sync Client and the AsyncClient share: their peers, key, TLS trust, retry policy,
the peer to start with, and how a typed answer is made from JSON.

Rules:
- Peers are base URLs, tried in the order given; a bare host:port gets https:// when a CA is
  trusted (`ca_path`, or an ssl.SSLContext as `verify`), else http://.
- A request starts at the peer that answered the client last (any answer but a 503), so a dead
  peer costs one failed attempt per client, not one per request.
- The key must be printable ASCII (it goes into a header); it is kept in the HTTP client's
  default headers only. No repr, error or report shows it.
- `from_cluster_dir` reads a directory made by `tokenvault init` (cluster_dir.py).
"""

from __future__ import annotations

import os
import random
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import httpx

from tokenvault.client.calls import Call
from tokenvault.client.cluster_dir import cluster_access
from tokenvault.client.exchange import AttemptObserver, Attempts, peer_url
from tokenvault.client.failover import RetryPolicy
from tokenvault.client.results import Tokenized, TokenizedMany
from tokenvault.tls import client_context

__all__ = ["ClientBase", "merge_tokenized"]


class ClientBase:
    def __init__(
        self,
        peers: str | Sequence[str],
        key: str,
        *,
        ca_path: str | os.PathLike[str] | None = None,
        verify: ssl.SSLContext | bool = True,
        policy: RetryPolicy | None = None,
        on_attempt: AttemptObserver | None = None,
        jitter: random.Random | None = None,
    ) -> None:
        listed = [peers] if isinstance(peers, str) else list(peers)
        if not listed:
            raise ValueError("a client needs at least one peer URL")
        if not key or not key.isascii() or not key.isprintable():
            raise ValueError("the API key must be non-empty printable ASCII")
        if ca_path is not None:
            verify = client_context(Path(ca_path))  # ConfigError when unreadable
        https = isinstance(verify, ssl.SSLContext)
        self.peers: tuple[str, ...] = tuple(peer_url(peer, https=https) for peer in listed)
        self.policy = policy or RetryPolicy()
        self._verify = verify
        self._key = key
        self._on_attempt = on_attempt
        self._jitter = jitter or random.Random()
        self._preferred = 0
        self.last_peer: str | None = None  # the peer that answered the last request

    @classmethod
    def from_cluster_dir(
        cls,
        directory: str | os.PathLike[str],
        *,
        owner: str | None = None,
        admin: bool = False,
        **options: Any,
    ) -> Self:
        """Every peer of a cluster made by `tokenvault init`, with a key from its keys.json:
        `owner`'s, the admin key with `admin`, else the first owner's. `options` as __init__."""
        access = cluster_access(directory, owner=owner, admin=admin)
        return cls(access.peers, access.key, ca_path=access.ca_path, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(peers={self.peers!r})"

    def _http_options(self) -> dict[str, Any]:
        """The keyword arguments of the pooled httpx client (one per Client)."""
        return {
            "headers": {"Authorization": f"Bearer {self._key}", "Accept": "application/json"},
            "timeout": httpx.Timeout(self.policy.timeout_s, connect=self.policy.connect_timeout_s),
            "verify": self._verify,
        }

    def _attempts(self, call: Call) -> Attempts:
        return Attempts(
            call, self.peers, self._preferred, self.policy, self._jitter, self._on_attempt
        )

    def _answered(self, attempts: Attempts) -> str:
        """Remembers the peer that answered: the next request starts there."""
        self._preferred = attempts.peer_index
        self.last_peer = self.peers[attempts.peer_index]
        return self.last_peer

    @staticmethod
    def _headers(call: Call) -> dict[str, str]:
        return {} if call.body is None else {"Content-Type": "application/json"}


def merge_tokenized(parts: Sequence[Tokenized]) -> TokenizedMany:
    """The answers of consecutive tokenize requests as one, in order."""
    return TokenizedMany(
        records=[record for part in parts for record in part.records],
        epochs=tuple(part.epoch for part in parts),
        fields_left=tuple(sorted({name for part in parts for name in part.fields_left})),
    )
