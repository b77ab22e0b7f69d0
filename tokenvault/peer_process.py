"""Runs one peer as an operating-system process: the node, its HTTP server, and the signals
that stop it.

Rules: SIGTERM and SIGINT stop the peer cleanly (the store is closed on every way out); the
process logs `peer_start`, `peer_serving` and `peer_stop` as JSON lines (and `tls_certificate`,
its certificate's days left, a warning under CERTIFICATE_WARNING_DAYS). With TLS, the server
speaks HTTPS and the links mutual TLS, from the contexts the caller loaded (tls_certificates.py);
failed TLS handshakes (plain HTTP to the port, untrusted certificates, scanners) are counted,
and logged as one `tls_handshake_failed` line per TLS_FAILURE_LOG_INTERVAL_S at most.
"""

from __future__ import annotations

import functools
import signal
from datetime import UTC, datetime

import trio

from tokenvault.config import ClusterConfig
from tokenvault.http.api import PublicApi
from tokenvault.http.server import serve_http
from tokenvault.log import EventLog
from tokenvault.metrics import Metrics
from tokenvault.node import Node
from tokenvault.tls_certificates import PeerTls

TLS_FAILURE_LOG_INTERVAL_S = 60.0
CERTIFICATE_WARNING_DAYS = 30  # `tls_certificate` at start is a warning when expiry is nearer


def run_node(config: ClusterConfig, peer_id: str, peer_tls: PeerTls | None = None) -> None:
    """Runs one peer in the foreground until SIGTERM or SIGINT; `peer_tls` when TLS is on."""
    trio.run(_serve_until_signal, config, peer_id, peer_tls)


class TlsHandshakeFailures:
    """Counts failed handshakes; logs the first, then one summary line per interval."""

    def __init__(self, log: EventLog, metrics: Metrics) -> None:
        self._log = log
        self._metrics = metrics
        self._unlogged = 0
        self._logged_at: float | None = None
        metrics.describe(
            "tokenvault_tls_handshake_failures_total", "TLS handshakes that failed or timed out."
        )

    def __call__(self, reason: str, client: str) -> None:
        self._metrics.inc("tokenvault_tls_handshake_failures_total")
        self._unlogged += 1
        now = trio.current_time()
        if self._logged_at is not None and now - self._logged_at < TLS_FAILURE_LOG_INTERVAL_S:
            return
        self._logged_at = now
        self._log.emit(
            "tls_handshake_failed", failures=self._unlogged, last_reason=reason, client=client
        )
        self._unlogged = 0


async def _serve_until_signal(
    config: ClusterConfig, peer_id: str, peer_tls: PeerTls | None
) -> None:
    node = Node(config, peer_id, link_context=None if peer_tls is None else peer_tls.link_context)
    api = PublicApi(node)
    recovered = node.store.scan(b"", limit=1)
    node.log.emit(
        "peer_start", address=node.peer.address, store_empty=not recovered, tls=bool(peer_tls)
    )
    if peer_tls is not None:
        days_left = (peer_tls.not_valid_after - datetime.now(UTC)).days
        level = "warning" if days_left < CERTIFICATE_WARNING_DAYS else "info"
        node.log.emit("tls_certificate", level=level, expires_in_days=days_left)
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                serve = functools.partial(
                    serve_http,
                    ssl_context=None if peer_tls is None else peer_tls.server_context,
                    tls_handshake_failed=TlsHandshakeFailures(node.log, node.metrics),
                )
                await nursery.start(serve, api.handle, node.peer.host, node.peer.port)
                node.log.emit("peer_serving", address=node.peer.address)
                async for signum in signals:
                    node.log.emit("peer_stop", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        node.close()
