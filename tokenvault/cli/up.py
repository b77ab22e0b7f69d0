"""`tokenvault up`: run a whole local cluster in the foreground, keep its peers running, and stop
them on Ctrl-C.

Rules:
- The directory's cluster is reused when it has a cluster.toml; otherwise a new one is made
  (UP_DEFAULT_NODES peers from UP_DEFAULT_BASE_PORT + 1, N=min(3, nodes), majority quorums).
  --nodes and --base-port only shape a new cluster: with an existing one they are ignored, said
  on stderr. --tls makes the new cluster with TLS; asked of an existing cluster without TLS it
  is refused (exit code 2), never silently ignored.
- One `up` per cluster directory: it holds DIR/up.pid locked (pid_lock.py) while it runs; a
  second one is refused in one line naming the first one's pid.
- TLS is whatever cluster.toml says: health checks and the banner use https:// and its CA.
  Without TLS the banner says, in one WARNING line, that traffic is unencrypted.
- Peers are placed, started, restarted and stopped as supervisor.py says: a peer another
  process already runs is adopted (watched, left running at the end), a port taken by anything
  else is refused before any peer starts; peers log into the directory's logs/ folder.
- The banner's examples run as printed, from any directory: absolute paths, this very
  `tokenvault` (or `python -m tokenvault`), and a shell line that reads the owner's key from
  keys.json; no output of the command line prints a key.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import httpx

from tokenvault.cli.cluster_files import (
    cluster_client_context,
    init_errors,
    load_cluster_config,
    print_init_result,
)
from tokenvault.cli.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError, print_error
from tokenvault.cli.peer_processes import StopSignals, wait_until_healthy
from tokenvault.cli.supervisor import Supervisor
from tokenvault.cluster_init import CONFIG_NAME, KEYS_NAME, ClusterKeys, init_cluster, load_keys
from tokenvault.config import ClusterConfig, ConfigError
from tokenvault.pid_lock import PidLock, PidLockHeld, acquire_pid_lock
from tokenvault.quorum.quorum_config import majority

UP_DEFAULT_NODES = 3
UP_DEFAULT_BASE_PORT = 7400
UP_DEFAULT_DIR = Path("tokenvault-cluster")
UP_DEFAULT_OWNERS = ("alice", "bob")
LOGS_DIR_NAME = "logs"
UP_PID_FILE_NAME = "up.pid"


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
    logs_dir = directory / LOGS_DIR_NAME
    logs_dir.mkdir(mode=0o700, exist_ok=True)
    up_lock = _lock_cluster(directory)
    try:
        supervisor = Supervisor(config.peers, config_path.resolve(), logs_dir, tls_context)
        with StopSignals() as stop:
            try:
                supervisor.start()
                adopted = [entry.peer for entry in supervisor.adopted]
                if not wait_until_healthy(
                    supervisor.children, stop, logs_dir, tls_context, adopted=adopted
                ):
                    return EXIT_OK if stop.count else EXIT_FAILURE
                _print_banner(config, keys, directory, logs_dir, supervisor)
                return supervisor.run(stop)
            finally:
                supervisor.stop(stop)
    finally:
        up_lock.release()


def _lock_cluster(directory: Path) -> PidLock:
    try:
        return acquire_pid_lock(directory / UP_PID_FILE_NAME)
    except PidLockHeld as held:
        other = "another tokenvault up" + ("" if held.pid is None else f" (pid {held.pid})")
        raise CliError(
            f"{other} runs the cluster in {directory}: stop it first (Ctrl-C where it runs)"
        ) from None
    except OSError as error:
        raise CliError(f"cannot write {error.filename}: {error.strerror}") from None


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


def _print_banner(
    config: ClusterConfig,
    keys: ClusterKeys | None,
    directory: Path,
    logs_dir: Path,
    supervisor: Supervisor,
) -> None:
    first = config.peers[0]
    scheme = "http" if config.tls is None else "https"
    directory = directory.resolve()
    print()
    print(f"tokenvault cluster {config.name!r} is up: {len(config.peers)} peers")
    for entry in supervisor.peers:
        pid = f"  pid {entry.pid}" if entry.pid is not None else ""
        by_hand = "  (not started by up: left running at the end)" if entry.adopted else ""
        print(f"  {entry.peer.id}  {scheme}://{entry.peer.address}{pid}{by_hand}")
    print(f"keys:  {directory / KEYS_NAME}  (mode 0600)")
    print(f"logs:  {logs_dir.resolve()}{os.sep}")
    curl_ca = ""
    if config.tls is None:
        print(
            "WARNING: plain HTTP: API keys, values and tokens cross the network unencrypted;"
            " for TLS, start a new cluster with --tls"
        )
    else:
        print(f"tls:   HTTPS and mutual TLS between peers; CA {config.tls.ca_path}")
        curl_ca = f" --cacert {shlex.quote(str(config.tls.ca_path))}"
    owner = next((o.id for o in config.owners if keys is not None and o.id in keys.owners), None)
    if owner is not None:
        body = json.dumps({"records": [{"ssn": "123-45-6789"}]}, separators=(",", ":"))
        print(f"try it, as {owner} (a shell reads {owner}'s key from keys.json):")
        print(f"  {_key_reading_line(directory / KEYS_NAME, owner)}")
        print(
            f'  curl -s -H "Authorization: Bearer $KEY" -d {shlex.quote(body)}{curl_ca}'
            f" {scheme}://{first.address}/v1/tokenize"
        )
        print(f"  {_this_cli()} tokenize --dir {shlex.quote(str(directory))} 123-45-6789")
    if supervisor.adopted:
        left = ", ".join(entry.peer.id for entry in supervisor.adopted)
        print(f"up restarts a peer that dies; Ctrl-C stops every peer up started (not {left}).")
    else:
        print("up restarts a peer that dies; Ctrl-C stops every peer.", flush=True)
    sys.stdout.flush()


def _key_reading_line(keys_path: Path, owner: str) -> str:
    """A POSIX shell line that sets KEY to the owner's key, read from keys.json."""
    owners = '["owners"]'
    read_key = f"import json,sys; print(json.load(open(sys.argv[1])){owners}[{json.dumps(owner)}])"
    return f"KEY=$(python3 -c {shlex.quote(read_key)} {shlex.quote(str(keys_path))})"


def _this_cli() -> str:
    """The command that runs this very tokenvault from any directory: `tokenvault` when the
    shell finds this one, else its absolute path, else `python -m tokenvault`."""
    program = Path(sys.argv[0])
    if program.name == "tokenvault" and program.exists():
        found = shutil.which("tokenvault")
        if found is not None and Path(found).resolve() == program.resolve():
            return "tokenvault"
        return shlex.quote(str(program.absolute()))
    return f"{shlex.quote(sys.executable)} -m tokenvault"
