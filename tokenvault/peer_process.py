"""Runs one peer as an operating-system process: the node, its HTTP server, and the signals
that stop it.

Rules: one process per peer: before it touches its data directory (created, mode 0700, if
missing) the peer locks the pid file in it (pid_lock.py) and holds it until it exits.
SIGTERM and SIGINT stop the peer cleanly (the store is closed on every way out). Expected
failures at start end it with PeerStartFailed, whose message the CLI prints as one line (exit 1):
another process holds the data directory, the directory cannot be made or locked, its address
cannot be listened on (taken, not local), or no store can be opened at all.
The process logs `peer_start`, `peer_serving` and `peer_stop` as JSON lines (and
`tls_certificate`, its certificate's days left, a warning under CERTIFICATE_WARNING_DAYS). With
TLS, the server speaks HTTPS and the links mutual TLS, from the contexts the caller loaded
(tls_certificates.py); failed TLS handshakes (plain HTTP to the port, untrusted certificates,
scanners) are counted, and logged as one `tls_handshake_failed` line per
TLS_FAILURE_LOG_INTERVAL_S at most. At start it raises its soft descriptor limit (RLIMIT_NOFILE)
to the hard limit, and its HTTP server serves no more connections than the descriptors left
beside the store's and the peer links' allow (`server_limits`), so that a flood of clients
cannot starve LevelDB or the links.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import resource
import signal
from datetime import UTC, datetime

import trio

from tokenvault.config import ClusterConfig, PeerConfig
from tokenvault.http.api import PublicApi
from tokenvault.http.peer_transport import PeerLinkLimits
from tokenvault.http.server import ServerLimits, serve_http
from tokenvault.log import EventLog, LogThrottle
from tokenvault.metrics import Metrics
from tokenvault.node import Node
from tokenvault.pid_lock import PidLock, PidLockHeld, acquire_pid_lock, peer_pid_path
from tokenvault.store.storage import StorageError
from tokenvault.tls_certificates import PeerTls

TLS_FAILURE_LOG_INTERVAL_S = 60.0
CERTIFICATE_WARNING_DAYS = 30  # `tls_certificate` at start is a warning when expiry is nearer

# Descriptors kept out of the HTTP server's reach: stdio, trio's own (epoll, wakeup pair),
# the listening sockets, and LevelDB's (lock, log, manifest, and its open tables: 16 MiB
# each, so this leaves room for about 3 GiB of tables per peer before LevelDB closes some).
FDS_RESERVED = 256
CONNECTIONS_MIN = 16  # served even under a descriptor limit too low for the reserve
JOINED_PEERS_PLANNED = 8  # peers that may join later: their links' descriptors are reserved
# Where the hard limit is unlimited, the soft limit is raised this far (Linux refuses more
# than its nr_open, 1,048,576 by default).
FD_LIMIT_UNLIMITED_TARGET = 1024 * 1024


class PeerStartFailed(Exception):
    """An expected failure that ends the peer: its message is one line, naming the peer."""


def run_node(
    config: ClusterConfig,
    peer_id: str,
    peer_tls: PeerTls | None = None,
    joining: PeerConfig | None = None,
) -> None:
    """Runs one peer in the foreground until SIGTERM or SIGINT; `peer_tls` when TLS is on;
    `joining`, its own entry when it is not in cluster.toml and joins (`node --join`).
    Raises PeerStartFailed for an expected failure (a damaged store is no failure: it is
    replaced, node.py)."""
    peer = joining if joining is not None else config.peer(peer_id)
    lock = lock_data_dir(peer)
    try:
        fd_limit = raise_fd_limit()
        trio.run(_serve_until_signal, config, peer_id, peer_tls, fd_limit, joining)
    except* StorageError as failures:
        raise PeerStartFailed(
            f"peer {peer_id}: no store could be opened: {failures.exceptions[0]}"
        ) from None
    except* PeerStartFailed as failures:
        raise failures.exceptions[0] from None
    finally:
        lock.release()


def lock_data_dir(peer: PeerConfig) -> PidLock:
    """Make the peer's data directory if missing, and lock its pid file for this process."""
    try:
        peer.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return acquire_pid_lock(peer_pid_path(peer.data_dir))
    except PidLockHeld as held:
        holder = "another process" if held.pid is None else f"another process (pid {held.pid})"
        raise PeerStartFailed(
            f"peer {peer.id}: {holder} holds {peer.data_dir} (is {peer.id} already running?)"
        ) from None
    except OSError as error:
        where = "" if error.filename in (None, str(peer.data_dir)) else f" ({error.filename})"
        raise PeerStartFailed(
            f"peer {peer.id}: cannot use the data directory {peer.data_dir}:"
            f" {error.strerror or error}{where}"
        ) from None


def listen_failed(error: OSError, peer: PeerConfig) -> PeerStartFailed:
    """The one line for an address the peer cannot listen on (where it binds: --listen, else
    its address)."""
    host, port = peer.listen_address
    return PeerStartFailed(
        f"peer {peer.id}: cannot listen on {host}:{port}: {error.strerror or error}"
    )


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard limit where allowed; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_LIMIT_UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        # Not allowed here (e.g. a hard limit above nr_open): serve within the limit as it is.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def server_limits(fd_limit: int, outgoing_connections: int) -> ServerLimits:
    """ServerLimits whose connections (served, and waiting for a slot) fit in ``fd_limit``
    beside FDS_RESERVED and the peer links' ``outgoing_connections``."""
    defaults = ServerLimits()
    spare = fd_limit - FDS_RESERVED - outgoing_connections - defaults.waiting_connections_max
    connections_max = max(CONNECTIONS_MIN, min(defaults.connections_max, spare))
    return dataclasses.replace(defaults, connections_max=connections_max)


class TlsHandshakeFailures:
    """Counts failed handshakes; logs the first, then one summary line per interval."""

    def __init__(self, log: EventLog, metrics: Metrics) -> None:
        self._log = log
        self._metrics = metrics
        self._throttle = LogThrottle(TLS_FAILURE_LOG_INTERVAL_S, clock_s=trio.current_time)
        metrics.counter(
            "tokenvault_tls_handshake_failures_total", "TLS handshakes that failed or timed out."
        )

    def __call__(self, reason: str, client: str) -> None:
        self._metrics.inc("tokenvault_tls_handshake_failures_total")
        held_back = self._throttle.allow()
        if held_back is None:
            return
        self._log.emit(
            "tls_handshake_failed", failures=held_back + 1, last_reason=reason, client=client
        )


async def _serve_until_signal(
    config: ClusterConfig,
    peer_id: str,
    peer_tls: PeerTls | None,
    fd_limit: int,
    joining: PeerConfig | None,
) -> None:
    node = Node(
        config,
        peer_id,
        link_context=None if peer_tls is None else peer_tls.link_context,
        joining=joining,
    )
    api = PublicApi(node)
    # Outgoing connections: the links of the ring as it grows, up to its members' limit.
    peers_max = max(len(node.links), len(config.peers) + JOINED_PEERS_PLANNED)
    limits = server_limits(fd_limit, PeerLinkLimits().connections_per_peer * peers_max)
    recovered = node.store.scan(b"", limit=1)
    node.log.emit(
        "peer_start",
        address=node.peer.address,
        joining=joining is not None,
        store_empty=not recovered,
        tls=bool(peer_tls),
        fd_limit=fd_limit,
        connections_max=limits.connections_max,
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
                    log=node.log,
                    ssl_context=None if peer_tls is None else peer_tls.server_context,
                    tls_handshake_failed=TlsHandshakeFailures(node.log, node.metrics),
                )
                listen_host, listen_port = node.peer.listen_address
                try:
                    await nursery.start(serve, api, listen_host, listen_port, limits)
                except OSError as error:  # taken, not a local address, a name that resolves not
                    raise listen_failed(error, node.peer) from None
                node.log.emit(
                    "peer_serving", address=node.peer.address, listen=f"{listen_host}:{listen_port}"
                )
                async for signum in signals:
                    node.log.emit("peer_stop", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        node.close()
