"""`tokenvault init` writes a new cluster into a directory; `tokenvault node` runs one of its
peers in the foreground; `tokenvault renew-certs` issues new TLS certificates for its peers.

Rules:
- `init` prints where it wrote what, and how to start the peers; never an API key.
- `renew-certs` replaces peers' certificates and keys, and says that each peer must restart
  to use them (peers read their files only at start). A cluster without TLS, an unknown peer
  or an unusable CA key is exit code 2.
- `node` takes its settings from flags, else the environment, else the file (peer_settings.py);
  it checks the configuration, the peer id and, with TLS, the peer's own certificate and
  key (a bad one is exit code 2, like a bad configuration) before it loads the peer's code,
  which it imports lazily: the other commands start without it (and without cryptography).
  A failure to run the peer is one line and exit code 1 (peer_process.PeerStartFailed):
  another process runs it already (holds its data directory), its port is taken, its data
  directory cannot be used, or no store can be opened at all (not even a new, empty one in
  place of a damaged one).
  SIGTERM while the peer starts (before its own handler, which stops it cleanly, takes over)
  ends it at once with exit code 0.
"""

from __future__ import annotations

import argparse
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tokenvault.cli.cluster_files import init_errors, load_cluster_config, print_init_result
from tokenvault.cli.exits import EXIT_OK, EXIT_USAGE, CliError
from tokenvault.cluster_init import CONFIG_NAME, init_cluster, renew_peer_certificates
from tokenvault.config import ConfigError
from tokenvault.peer_settings import NodeFlags, resolve_peer_settings


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
            tls=args.tls,
        )
    print_init_result(result)
    first = result.peers[0].id
    print(f"start one peer:  tokenvault node --config {result.config_path} --id {first}")
    print(f"or all of them:  tokenvault up --dir {directory}")
    return EXIT_OK


def renew_certs_command(args: argparse.Namespace, _: httpx.BaseTransport | None) -> int:
    config = load_cluster_config(args.dir / CONFIG_NAME)
    peer_ids: list[str] = args.peer or []
    try:
        renewed = renew_peer_certificates(config, peer_ids, ca_key_path=args.ca_key)
    except ConfigError as error:
        raise CliError(f"renew-certs: {error}", EXIT_USAGE) from error
    except OSError as error:
        raise CliError(f"renew-certs: cannot write {error.filename}: {error.strerror}") from error
    assert config.tls is not None
    for peer_id, valid_until in renewed:
        print(
            f"peer {peer_id}: {config.tls.cert_path(peer_id)} and {config.tls.key_path(peer_id)},"
            f" valid until {valid_until:%Y-%m-%d}"
        )
    print("peers read their certificates at start: restart them, one at a time, to use these")
    return EXIT_OK


def node_command(args: argparse.Namespace, _: httpx.BaseTransport | None) -> int:
    previous = signal.signal(signal.SIGTERM, _exit_while_starting)
    try:
        return _run_node_command(args)
    finally:  # in-process callers (tests) get their handler back
        signal.signal(signal.SIGTERM, previous)


def _run_node_command(args: argparse.Namespace) -> int:
    flags = NodeFlags(
        config=args.config,
        peer_id=args.id,
        listen=args.listen,
        data_dir=args.data_dir,
        secret_file=args.secret_file,
        join=args.join,
        address=args.address,
    )
    try:
        settings = resolve_peer_settings(flags, os.environ)
    except ConfigError as error:
        raise CliError(str(error), EXIT_USAGE) from error
    config, peer_id = settings.config, settings.peer_id
    # Lazily: the client commands need none of this.
    from tokenvault.peer_process import PeerStartFailed, run_node
    from tokenvault.tls_certificates import load_peer_tls

    peer_tls = None
    if config.tls is not None:
        try:
            peer_tls = load_peer_tls(config.tls, peer_id, now=datetime.now(UTC))
        except ConfigError as error:
            raise CliError(f"[tls]: {error}", EXIT_USAGE) from error
    try:
        run_node(config, peer_id, peer_tls, settings.joining)
    except PeerStartFailed as error:
        raise CliError(str(error)) from None
    return EXIT_OK


def _exit_while_starting(signum: int, frame: object) -> None:
    """SIGTERM before the peer's own handler takes over (peer_process.py, once its store is open) or
    after it let go: exit 0 at once. A starting peer has acknowledged nothing, and its store
    recovers from an exit at any point as from a SIGKILL; without a handler, a container's
    PID 1 would ignore the signal until the runtime's SIGKILL."""
    os._exit(EXIT_OK)
