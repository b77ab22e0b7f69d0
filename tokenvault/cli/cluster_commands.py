"""`tokenvault init` writes a new cluster into a directory; `tokenvault node` runs one of its
peers in the foreground.

Rules:
- `init` prints where it wrote what, and how to start the peers; never an API key.
- `node` checks the configuration and the peer id before it loads the peer's code, which it
  imports lazily: the other commands start without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx

from tokenvault.cli.cluster_files import init_errors, load_cluster_config, print_init_result
from tokenvault.cli.exits import EXIT_OK, EXIT_USAGE, CliError
from tokenvault.cluster_init import init_cluster
from tokenvault.config import ConfigError


def init_command(args: argparse.Namespace, _: httpx.BaseTransport | None) -> int:
    directory: Path = args.dir
    owners = [owner.strip() for owner in str(args.owners).split(",")]
    with init_errors(directory):
        result = init_cluster(
            directory,
            nodes=args.nodes,
            base_port=args.base_port,
            owners=owners,
            replicas=args.replicas,
            write_quorum=args.write_quorum,
            read_quorum=args.read_quorum,
        )
    print_init_result(result)
    first = result.peers[0].id
    print(f"start one peer:  tokenvault node --config {result.config_path} --id {first}")
    print(f"or all of them:  tokenvault up --dir {directory}")
    return EXIT_OK


def node_command(args: argparse.Namespace, _: httpx.BaseTransport | None) -> int:
    peer_id: str = args.id
    config = load_cluster_config(args.config)
    try:
        config.peer(peer_id)
    except ConfigError as error:
        raise CliError(str(error), EXIT_USAGE) from error
    from tokenvault.peer_process import run_node  # lazily: the client commands need none of it

    run_node(config, peer_id)
    return EXIT_OK
