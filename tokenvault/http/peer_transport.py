"""Peer links: every message for one peer travels batched over a few keep-alive connections.

Rules:
- Messages are encoded when queued; one HTTP request carries all that is pending for the peer,
  up to `batch_bytes_max`, over at most `connections_per_peer` requests in flight.
- The queue is bounded (`queue_messages_max`): past it the oldest messages are dropped and
  counted. Losing a message is always safe: coordinators resend to replicas that are silent.
- A failed request drops its batch (counted) and the link backs off before trying again, so a
  dead peer costs little. The link never blocks its callers.
- Every batch is signed for its receiver by this peer's own key (http/peer_auth.py: sender,
  incarnation, sequence, timestamp, body digest; no reusable credential travels) and names the
  sender's cluster fingerprint (config.py); a peer whose configuration differs refuses it, and
  the batch counts as failed.
- With a `link_context` (TLS on), every connection is mutual TLS and must reach the peer it is
  for: the server's certificate names `peer_id` (client.py checks it).
- Measured choice: an h11 client on trio streams, not httpx, because httpx's pool bookkeeping
  capped peer traffic at a fraction of what the server can take on this machine.
"""

from __future__ import annotations

import collections
import ssl
from dataclasses import dataclass

import trio

from tokenvault.http.client import HttpConnection, PeerUnreachable
from tokenvault.http.peer_auth import PeerSigner
from tokenvault.http.peer_codec import encode_batch

PEER_MESSAGES_PATH = "/internal/v1/messages"


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerLinkLimits:
    connections_per_peer: int = 2
    batch_bytes_max: int = 8 * 1024 * 1024
    queue_messages_max: int = 100_000
    request_timeout_s: float = 5.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerLinkStatistics:
    peer_id: str
    queued_messages: int
    batches_sent: int
    messages_sent: int
    bytes_sent: int
    batches_failed: int
    messages_dropped: int
    last_failure_at: float | None


class PeerLink:
    def __init__(
        self,
        *,
        local_peer_id: str,
        peer_id: str,
        host: str,
        port: int,
        signer: PeerSigner,
        limits: PeerLinkLimits = PeerLinkLimits(),
        link_context: ssl.SSLContext | None = None,
    ) -> None:
        self._local_peer_id = local_peer_id
        self.peer_id = peer_id
        self._host = host
        self._port = port
        self._signer = signer
        self._headers = (("content-type", "application/json"),)
        self._limits = limits
        self._link_context = link_context
        self._queue: collections.deque[bytes] = collections.deque()
        self._wakeup = trio.Event()
        self._batches_sent = 0
        self._messages_sent = 0
        self._bytes_sent = 0
        self._batches_failed = 0
        self._messages_dropped = 0
        self._last_failure_at: float | None = None

    def send_nowait(self, encoded_message: bytes) -> None:
        if len(self._queue) >= self._limits.queue_messages_max:
            self._queue.popleft()
            self._messages_dropped += 1
        self._queue.append(encoded_message)
        self._wakeup.set()

    def statistics(self) -> PeerLinkStatistics:
        return PeerLinkStatistics(
            peer_id=self.peer_id,
            queued_messages=len(self._queue),
            batches_sent=self._batches_sent,
            messages_sent=self._messages_sent,
            bytes_sent=self._bytes_sent,
            batches_failed=self._batches_failed,
            messages_dropped=self._messages_dropped,
            last_failure_at=self._last_failure_at,
        )

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self._limits.connections_per_peer):
                nursery.start_soon(self._sender)

    def _take_batch(self) -> tuple[bytes, int]:
        parts: list[bytes] = []
        size = 0
        while self._queue and (
            not parts or size + len(self._queue[0]) <= self._limits.batch_bytes_max
        ):
            part = self._queue.popleft()
            parts.append(part)
            size += len(part) + 1
        return encode_batch(self._local_peer_id, parts), len(parts)

    async def _sender(self) -> None:
        connection = HttpConnection(
            self._host,
            self._port,
            ssl_context=self._link_context,
            server_peer_id=None if self._link_context is None else self.peer_id,
        )
        backoff_s = self._limits.backoff_initial_s
        try:
            while True:
                while not self._queue:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                body, count = self._take_batch()
                ok = await self._post(connection, body)
                if ok:
                    self._batches_sent += 1
                    self._messages_sent += count
                    self._bytes_sent += len(body)
                    backoff_s = self._limits.backoff_initial_s
                    continue
                self._batches_failed += 1
                self._messages_dropped += count
                self._last_failure_at = trio.current_time()
                await trio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._limits.backoff_max_s)
        finally:
            with trio.CancelScope(shield=True):
                await connection.aclose()

    async def _post(self, connection: HttpConnection, body: bytes) -> bool:
        try:
            status, _ = await connection.request(
                "POST",
                PEER_MESSAGES_PATH,
                headers=self._headers + self._signer.headers("POST", PEER_MESSAGES_PATH, body),
                body=body,
                timeout_s=self._limits.request_timeout_s,
            )
        except PeerUnreachable:
            return False
        return 200 <= status < 300
