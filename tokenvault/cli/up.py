"""`tokenvault up`: run a whole local cluster in the foreground, and stop it on Ctrl-C.

Rules:
- The directory's cluster is reused when it has a cluster.toml; otherwise a new one is made
  (UP_DEFAULT_NODES peers from UP_DEFAULT_BASE_PORT + 1, N=min(3, nodes), majority quorums).
  --nodes and --base-port only shape a new cluster: with an existing one they are ignored, said
  on stderr. --tls makes the new cluster with TLS; asked of an existing cluster without TLS it
  is refused (exit code 2), never silently ignored.
- TLS is whatever cluster.toml says: health checks and the banner use https:// and its CA.
  Without TLS the banner says, in one WARNING line, that traffic is unencrypted.
- Every peer's port is checked free before any peer starts; peers log into the directory's
  logs/ folder.
- The banner shows an owner's API key in a copy-paste example, which is its purpose; no other
  output of the command line prints a key.
- The peers are owned as peer_processes says: all of them stop on every way out.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

import httpx

from tokenvault.cli.cluster_files import (
    cluster_client_context,
    init_errors,
    load_cluster_config,
    print_init_result,
)
from tokenvault.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError, print_error
from tokenvault.cli.peer_processes import (
    PeerChild,
    StopSignals,
    start_peer,
    stop_peers,
    supervise,
    wait_until_healthy,
)
from tokenvault.cluster_init import CONFIG_NAME, KEYS_NAME, ClusterKeys, init_cluster, load_keys
from tokenvault.config import ClusterConfig, ConfigError
from tokenvault.quorum.quorum_config import majority

UP_DEFAULT_NODES = 3
UP_DEFAULT_BASE_PORT = 7400
UP_DEFAULT_DIR = Path("tokenvault-cluster")
UP_DEFAULT_OWNERS = ("alice", "bob")
LOGS_DIR_NAME = "logs"


def up_command(args: argparse.Namespace, _: httpx.BaseTransport | None) -> int:
    directory: Path = args.dir
    config_path = directory / CONFIG_NAME
    if config_path.exists():
        print(f"reusing the cluster in {directory}")
        if args.nodes is not None or args.base_port is not None:
            print_error("--nodes and --base-port only shape a new cluster; they are ignored here")
    else:
        _init_new_cluster(directory, args.nodes, args.base_port, tls=args.tls)
    config = load_cluster_config(config_path)
    if args.tls and config.tls is None:
        raise CliError(
            f"{config_path} has TLS off, and --tls only shapes a new cluster: use another"
            " --dir, or turn TLS on as docs/operations.md says",
            EXIT_USAGE,
        )
    tls_context = None if config.tls is None else cluster_client_context(config.tls.ca_path)
    keys = _load_keys_or_none(directory / KEYS_NAME)
    _check_ports_free(config)
    logs_dir = directory / LOGS_DIR_NAME
    logs_dir.mkdir(mode=0o700, exist_ok=True)

    children: list[PeerChild] = []
    with StopSignals() as stop:
        try:
            for peer in config.peers:
                children.append(start_peer(peer, config_path.resolve(), logs_dir))
            if not wait_until_healthy(children, stop, logs_dir, tls_context):
                return EXIT_OK if stop.count else EXIT_FAILURE
            _print_banner(config, keys, directory, logs_dir)
            return supervise(children, stop)
        finally:
            stop_peers(children, stop)


def _init_new_cluster(
    directory: Path, nodes: int | None, base_port: int | None, *, tls: bool
) -> None:
    nodes = UP_DEFAULT_NODES if nodes is None else nodes
    replicas = min(3, max(nodes, 1))
    with init_errors(directory):
        result = init_cluster(
            directory,
            nodes=nodes,
            base_port=UP_DEFAULT_BASE_PORT if base_port is None else base_port,
            owners=UP_DEFAULT_OWNERS,
            replicas=replicas,
            write_quorum=majority(replicas),
            read_quorum=majority(replicas),
            tls=tls,
        )
    print_init_result(result)


def _load_keys_or_none(path: Path) -> ClusterKeys | None:
    try:
        return load_keys(path)
    except ConfigError as error:
        print_error(f"{error}; the banner will show no example")
        return None


def _check_ports_free(config: ClusterConfig) -> None:
    for peer in config.peers:
        host = peer.host.removeprefix("[").removesuffix("]")
        try:
            with socket.create_server((host, peer.port)):
                pass
        except OSError as error:
            raise CliError(
                f"cannot listen on {peer.address} for peer {peer.id}: {error.strerror}"
                " (is a cluster already running there?)"
            ) from error


def _print_banner(
    config: ClusterConfig, keys: ClusterKeys | None, directory: Path, logs_dir: Path
) -> None:
    first = config.peers[0]
    scheme = "http" if config.tls is None else "https"
    print()
    print(f"tokenvault cluster {config.name!r} is up: {len(config.peers)} peers")
    for peer in config.peers:
        print(f"  {peer.id}  {scheme}://{peer.address}")
    print(f"keys:  {directory / KEYS_NAME}  (mode 0600)")
    print(f"logs:  {logs_dir}{os.sep}")
    curl_ca = ""
    if config.tls is None:
        print(
            "WARNING: plain HTTP: API keys, values and tokens cross the network unencrypted;"
            " for TLS, start a new cluster with --tls"
        )
    else:
        print(f"tls:   HTTPS and mutual TLS between peers; CA {config.tls.ca_path}")
        curl_ca = f" --cacert {config.tls.ca_path}"
    owner = next((o.id for o in config.owners if keys is not None and o.id in keys.owners), None)
    if keys is not None and owner is not None:
        body = json.dumps({"records": [{"ssn": "123-45-6789"}]}, separators=(",", ":"))
        print(f"try it, as {owner}:")
        print(
            f'  curl -s -H "Authorization: Bearer {keys.owners[owner]}"'
            f" -d '{body}'{curl_ca} {scheme}://{first.address}/v1/tokenize"
        )
        print(f"  tokenvault tokenize --dir {directory} 123-45-6789")
    print("Ctrl-C stops every peer.", flush=True)
