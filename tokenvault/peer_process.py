"""Runs one peer as an operating-system process: the node, its HTTP server, and the signals
that stop it.

Rules: SIGTERM and SIGINT stop the peer cleanly (the store is closed on every way out); the
process logs `peer_start`, `peer_serving` and `peer_stop` as JSON lines. At start it raises
its soft descriptor limit (RLIMIT_NOFILE) to the hard limit, and its HTTP server serves no
more connections than the descriptors left beside the store's and the peer links' allow
(`server_limits`), so that a flood of clients cannot starve LevelDB or the links of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import resource
import signal

import trio

from tokenvault.config import ClusterConfig
from tokenvault.http.api import PublicApi
from tokenvault.http.peer_transport import PeerLinkLimits
from tokenvault.http.server import ServerLimits, serve_http
from tokenvault.node import Node

# Descriptors kept out of the HTTP server's reach: stdio, trio's own (epoll, wakeup pair),
# the listening sockets, and LevelDB's (lock, log, manifest, and its open tables: 16 MiB
# each, so this leaves room for about 3 GiB of tables per peer before LevelDB closes some).
FDS_RESERVED = 256
CONNECTIONS_MIN = 16  # served even under a descriptor limit too low for the reserve
# Where the hard limit is unlimited, the soft limit is raised this far (Linux refuses more
# than its nr_open, 1,048,576 by default).
FD_LIMIT_UNLIMITED_TARGET = 1024 * 1024


def run_node(config: ClusterConfig, peer_id: str) -> None:
    """Runs one peer in the foreground until SIGTERM or SIGINT."""
    fd_limit = raise_fd_limit()
    trio.run(_serve_until_signal, config, peer_id, fd_limit)


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


async def _serve_until_signal(config: ClusterConfig, peer_id: str, fd_limit: int) -> None:
    node = Node(config, peer_id)
    api = PublicApi(node)
    limits = server_limits(fd_limit, PeerLinkLimits().connections_per_peer * len(node.links))
    recovered = node.store.scan(b"", limit=1)
    node.log.emit(
        "peer_start",
        address=node.peer.address,
        store_empty=not recovered,
        fd_limit=fd_limit,
        connections_max=limits.connections_max,
    )
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                serve = functools.partial(serve_http, log=node.log)
                await nursery.start(serve, api, node.peer.host, node.peer.port, limits)
                node.log.emit("peer_serving", address=node.peer.address)
                async for signum in signals:
                    node.log.emit("peer_stop", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        node.close()
