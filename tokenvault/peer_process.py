"""Runs one peer as an operating-system process: the node, its HTTP server, and the signals
that stop it.

Rules: SIGTERM and SIGINT stop the peer cleanly (the store is closed on every way out); the
process logs `peer_start`, `peer_serving` and `peer_stop` as JSON lines.
"""

from __future__ import annotations

import functools
import signal

import trio

from tokenvault.config import ClusterConfig
from tokenvault.http.api import PublicApi
from tokenvault.http.server import serve_http
from tokenvault.node import Node


def run_node(config: ClusterConfig, peer_id: str) -> None:
    """Runs one peer in the foreground until SIGTERM or SIGINT."""
    trio.run(_serve_until_signal, config, peer_id)


async def _serve_until_signal(config: ClusterConfig, peer_id: str) -> None:
    node = Node(config, peer_id)
    api = PublicApi(node)
    recovered = node.store.scan(b"", limit=1)
    node.log.emit("peer_start", address=node.peer.address, store_empty=not recovered)
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                serve = functools.partial(serve_http, log=node.log)
                await nursery.start(serve, api, node.peer.host, node.peer.port)
                node.log.emit("peer_serving", address=node.peer.address)
                async for signum in signals:
                    node.log.emit("peer_stop", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        node.close()
