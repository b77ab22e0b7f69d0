"""The `tokenvault` command line: make a cluster, run peers, and talk to them over HTTP.

Rules:
- `main(argv)` returns the exit code: 0 success, 1 a failure (one line on stderr), 2 bad usage or
  a bad configuration. It never prints a traceback for an expected failure.
- API keys are never printed, except the one in `up`'s copy-paste example, which is its purpose.
- Client commands print the peer's JSON answer, indented, on stdout; an error answer's message
  goes to stderr. Every request has a 10 s timeout.
- `up` owns the peer processes it starts: it stops every one of them (SIGTERM, then SIGKILL after
  10 s) on SIGINT, SIGTERM or SIGHUP, and on any way out of it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from tokenvault.cluster_init import (
    CONFIG_NAME,
    KEYS_NAME,
    ClusterKeys,
    InitError,
    InitResult,
    init_cluster,
    load_keys,
)
from tokenvault.config import ClusterConfig, ConfigError, PeerConfig, load_config
from tokenvault.quorum.quorum_config import majority

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
REQUEST_TIMEOUT_S = 10.0
UP_DEFAULT_NODES = 3
UP_DEFAULT_BASE_PORT = 7400
UP_DEFAULT_DIR = Path("tokenvault-cluster")
UP_DEFAULT_OWNERS = ("alice", "bob")
UP_READY_TIMEOUT_S = 30.0
UP_HEALTH_POLL_INTERVAL_S = 0.2
UP_HEALTH_REQUEST_TIMEOUT_S = 1.0
UP_SUPERVISE_INTERVAL_S = 0.25
UP_STOP_TIMEOUT_S = 10.0
LOGS_DIR_NAME = "logs"
KEY_ENVIRONMENT_VARIABLE = "TOKENVAULT_KEY"
_FIELD_DEFAULT = "ssn"


class CliError(Exception):
    """An expected failure: its message is printed as one line, and main returns exit_code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run one command; `transport` replaces the network for client commands (tests)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["sim"]:
        return _main_sim(arguments)
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    command: Callable[[argparse.Namespace, httpx.BaseTransport | None], int] = args.run
    try:
        return command(args, transport)
    except CliError as error:
        _print_error(str(error))
        return error.exit_code


# -- argument parsing ------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenvault",
        description="A distributed token vault: make a cluster, run its peers, use its API.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="write a new cluster into a directory")
    init.add_argument("--nodes", type=int, required=True, help="number of peers")
    init.add_argument(
        "--base-port", type=int, required=True, help="peer i listens on BASE_PORT + i"
    )
    init.add_argument("--dir", type=Path, required=True, help="directory to write the cluster to")
    _add_cluster_shape(init)
    init.set_defaults(run=_run_init)

    node = commands.add_parser("node", help="run one peer in the foreground")
    node.add_argument("--config", type=Path, required=True, help="the cluster.toml")
    node.add_argument("--id", required=True, help="this peer's id in the configuration")
    node.set_defaults(run=_run_node)

    up = commands.add_parser(
        "up", help="run a local cluster: init if needed, start every peer, stop all on Ctrl-C"
    )
    up.add_argument("--nodes", type=int, help=f"peers of a new cluster ({UP_DEFAULT_NODES})")
    up.add_argument(
        "--dir", type=Path, default=UP_DEFAULT_DIR, help=f"cluster directory ({UP_DEFAULT_DIR})"
    )
    up.add_argument(
        "--base-port", type=int, help=f"ports of a new cluster ({UP_DEFAULT_BASE_PORT} + i)"
    )
    up.set_defaults(run=_run_up)

    as_owner = "act as this owner: its key from --dir's keys.json (default: the first owner)"
    tokenize = commands.add_parser(
        "tokenize",
        parents=[_connection_options(as_owner)],
        help="replace values by tokens",
        description="Tokenize one record per VALUE, or send a raw request body.",
    )
    source = tokenize.add_mutually_exclusive_group(required=True)
    source.add_argument("values", nargs="*", default=[], metavar="VALUE", help="values to tokenize")
    source.add_argument("--json", help='raw request body, e.g. \'{"records": [{"ssn": "..."}]}\'')
    source.add_argument("--file", type=Path, help="read the raw request body from a file (- stdin)")
    tokenize.add_argument(
        "--field", default=_FIELD_DEFAULT, help=f"field of each VALUE ({_FIELD_DEFAULT})"
    )
    tokenize.set_defaults(run=_run_tokenize)

    detokenize = commands.add_parser(
        "detokenize", parents=[_connection_options(as_owner)], help="look tokens up"
    )
    detokenize.add_argument("tokens", nargs="+", metavar="TOKEN")
    detokenize.set_defaults(run=_run_detokenize)

    rotate = commands.add_parser(
        "rotate", parents=[_connection_options(as_owner)], help="move the owner to a new epoch"
    )
    rotate.add_argument(
        "--expected-epoch",
        type=int,
        help="rotate only if this is still the active epoch (safe to retry)",
    )
    rotate.set_defaults(run=_run_rotate)

    epoch = commands.add_parser(
        "epoch", parents=[_connection_options(as_owner)], help="show the owner's active epoch"
    )
    epoch.set_defaults(run=_run_epoch)

    ring = commands.add_parser(
        "ring",
        parents=[
            _connection_options(
                "show this owner's ring position and preference list (with --dir, as that"
                " owner unless --admin)",
                owner_is_subject=True,
            )
        ],
        help="show the ring as a peer sees it",
    )
    ring.set_defaults(run=_run_ring)

    status = commands.add_parser(
        "status",
        parents=[_connection_options("use this owner's key instead of the admin key")],
        help="show the peers and their states (with --dir, uses the admin key)",
    )
    status.set_defaults(run=_run_status)

    # Listed for --help only: `main` hands `sim` to the simulator's own parser, so that a peer
    # never imports the simulator.
    commands.add_parser(
        "sim", help="run the deterministic simulator (tokenvault sim --help)", add_help=False
    )
    return parser


def _main_sim(arguments: list[str]) -> int:
    from tokenvault.sim.cli import add_sim_parser, run_sim_command

    parser = argparse.ArgumentParser(prog="tokenvault")
    add_sim_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    return run_sim_command(args)


def _add_cluster_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--owners",
        default=",".join(UP_DEFAULT_OWNERS),
        help="comma-separated owner ids (%(default)s)",
    )
    parser.add_argument("--replicas", type=int, default=3, help="N, copies of each owner's data")
    parser.add_argument("--write-quorum", type=int, default=2, help="W, durable acks per write")
    parser.add_argument("--read-quorum", type=int, default=2, help="R, replicas consulted per read")


def _connection_options(
    owner_help: str, *, owner_is_subject: bool = False
) -> argparse.ArgumentParser:
    """--url/--key/--dir, and which key of --dir to use: --owner NAME or --admin.

    Where the owner is the subject of the command (ring), --owner and --admin go together.
    """
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--url", help="a peer's URL, e.g. http://127.0.0.1:7401")
    group.add_argument(
        "--key",
        help=f"API key (default: ${KEY_ENVIRONMENT_VARIABLE}; arguments are visible to others)",
    )
    group.add_argument(
        "--dir", type=Path, help="a cluster made by init: its first peer's URL, keys from keys.json"
    )
    who = group if owner_is_subject else group.add_mutually_exclusive_group()
    who.add_argument("--owner", metavar="NAME", help=owner_help)
    who.add_argument("--admin", action="store_true", help="with --dir: use the admin key")
    return parent


# -- init and node ---------------------------------------------------------------------------


def _run_init(args: argparse.Namespace, _: httpx.BaseTransport | None) -> int:
    directory: Path = args.dir
    owners = [owner.strip() for owner in str(args.owners).split(",")]
    with _init_errors(directory):
        result = init_cluster(
            directory,
            nodes=args.nodes,
            base_port=args.base_port,
            owners=owners,
            replicas=args.replicas,
            write_quorum=args.write_quorum,
            read_quorum=args.read_quorum,
        )
    _print_init_result(result)
    first = result.peers[0].id
    print(f"start one peer:  tokenvault node --config {result.config_path} --id {first}")
    print(f"or all of them:  tokenvault up --dir {directory}")
    return EXIT_OK


@contextlib.contextmanager
def _init_errors(directory: Path) -> Iterator[None]:
    try:
        yield
    except InitError as error:
        raise CliError(f"init: {error}") from error
    except OSError as error:
        where = error.filename or directory
        raise CliError(f"init: cannot write {where}: {error.strerror}") from error


def _print_init_result(result: InitResult) -> None:
    print(f"wrote a new cluster into {result.directory}")
    print(f"  config:  {result.config_path}")
    print(f"  keys:    {result.keys_path}  (mode 0600: the API keys, keep it private)")
    print(f"  secret:  {result.secret_path}  (mode 0600)")
    print(f"  owners:  {', '.join(result.owners)}")
    for peer in result.peers:
        print(f"  peer {peer.id}: {peer.address}, data in {peer.data_dir}")


def _run_node(args: argparse.Namespace, _: httpx.BaseTransport | None) -> int:
    peer_id: str = args.id
    config = _load_config(args.config)
    try:
        config.peer(peer_id)
    except ConfigError as error:
        raise CliError(str(error), EXIT_USAGE) from error
    from tokenvault.peer_process import run_node  # lazily: the client commands need none of it

    run_node(config, peer_id)
    return EXIT_OK


def _load_config(path: Path) -> ClusterConfig:
    try:
        return load_config(path)
    except ConfigError as error:
        raise CliError(str(error), EXIT_USAGE) from error


# -- up --------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class _Child:
    peer: PeerConfig
    process: subprocess.Popen[bytes]
    log_path: Path
    healthy: bool = False
    exit_reported: bool = False


@dataclass(slots=True)
class _StopSignals:
    """Counts SIGINT/SIGTERM/SIGHUP while active instead of dying; restores handlers on exit."""

    count: int = 0
    _previous: dict[int, Any] = field(default_factory=dict)

    def __enter__(self) -> _StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if signum is not None:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        self.count += 1


def _run_up(args: argparse.Namespace, _: httpx.BaseTransport | None) -> int:
    directory: Path = args.dir
    config_path = directory / CONFIG_NAME
    if config_path.exists():
        print(f"reusing the cluster in {directory}")
        if args.nodes is not None or args.base_port is not None:
            _print_error("--nodes and --base-port only shape a new cluster; they are ignored here")
    else:
        nodes = UP_DEFAULT_NODES if args.nodes is None else args.nodes
        replicas = min(3, max(nodes, 1))
        with _init_errors(directory):
            result = init_cluster(
                directory,
                nodes=nodes,
                base_port=UP_DEFAULT_BASE_PORT if args.base_port is None else args.base_port,
                owners=UP_DEFAULT_OWNERS,
                replicas=replicas,
                write_quorum=majority(replicas),
                read_quorum=majority(replicas),
            )
        _print_init_result(result)
    config = _load_config(config_path)
    keys = _load_keys_or_none(directory / KEYS_NAME)
    _check_ports_free(config)
    logs_dir = directory / LOGS_DIR_NAME
    logs_dir.mkdir(mode=0o700, exist_ok=True)

    children: list[_Child] = []
    with _StopSignals() as stop:
        try:
            for peer in config.peers:
                children.append(_start_peer(peer, config_path.resolve(), logs_dir))
            if not _wait_until_healthy(children, stop, logs_dir):
                return EXIT_OK if stop.count else EXIT_FAILURE
            _print_banner(config, keys, directory, logs_dir)
            return _supervise(children, stop)
        finally:
            _stop_peers(children, stop)


def _load_keys_or_none(path: Path) -> ClusterKeys | None:
    try:
        return load_keys(path)
    except ConfigError as error:
        _print_error(f"{error}; the banner will show no example")
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


def _start_peer(peer: PeerConfig, config_path: Path, logs_dir: Path) -> _Child:
    log_path = logs_dir / f"{peer.id}.log"
    command = [
        sys.executable,
        "-m",
        "tokenvault",
        "node",
        "--config",
        str(config_path),
        "--id",
        peer.id,
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=_child_environment(),
            # Its own session: a terminal's Ctrl-C reaches only `up`, which stops peers in order.
            start_new_session=True,
        )
    return _Child(peer=peer, process=process, log_path=log_path)


def _child_environment() -> dict[str, str]:
    """Our environment; from a source checkout, with the checkout importable by the child."""
    environment = dict(os.environ)
    package_root = Path(__file__).resolve().parent.parent
    if package_root.name not in ("site-packages", "dist-packages"):
        existing = environment.get("PYTHONPATH")
        environment["PYTHONPATH"] = (
            f"{package_root}{os.pathsep}{existing}" if existing else str(package_root)
        )
    return environment


def _wait_until_healthy(children: list[_Child], stop: _StopSignals, logs_dir: Path) -> bool:
    deadline = time.monotonic() + UP_READY_TIMEOUT_S
    with httpx.Client(timeout=UP_HEALTH_REQUEST_TIMEOUT_S, trust_env=False) as client:
        while not stop.count:
            for child in children:
                code = child.process.poll()
                if code is not None:
                    _print_error(
                        f"peer {child.peer.id} exited with code {code} while starting;"
                        f" see {child.log_path}"
                    )
                    return False
                if not child.healthy:
                    child.healthy = _answers_health(client, child.peer)
            if all(child.healthy for child in children):
                return True
            if time.monotonic() >= deadline:
                waiting = ", ".join(c.peer.id for c in children if not c.healthy)
                _print_error(
                    f"peers {waiting} did not answer /healthz within {UP_READY_TIMEOUT_S:.0f} s;"
                    f" see the logs in {logs_dir}"
                )
                return False
            time.sleep(UP_HEALTH_POLL_INTERVAL_S)
    return False


def _answers_health(client: httpx.Client, peer: PeerConfig) -> bool:
    try:
        return client.get(f"http://{peer.address}/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def _print_banner(
    config: ClusterConfig, keys: ClusterKeys | None, directory: Path, logs_dir: Path
) -> None:
    first = config.peers[0]
    print()
    print(f"tokenvault cluster {config.name!r} is up: {len(config.peers)} peers")
    for peer in config.peers:
        print(f"  {peer.id}  http://{peer.address}")
    print(f"keys:  {directory / KEYS_NAME}  (mode 0600)")
    print(f"logs:  {logs_dir}{os.sep}")
    owner = next((o.id for o in config.owners if keys is not None and o.id in keys.owners), None)
    if keys is not None and owner is not None:
        body = json.dumps({"records": [{"ssn": "123-45-6789"}]}, separators=(",", ":"))
        print(f"try it, as {owner}:")
        print(
            f'  curl -s -H "Authorization: Bearer {keys.owners[owner]}"'
            f" -d '{body}' http://{first.address}/v1/tokenize"
        )
        print(f"  tokenvault tokenize --dir {directory} 123-45-6789")
    print("Ctrl-C stops every peer.", flush=True)


def _supervise(children: list[_Child], stop: _StopSignals) -> int:
    while not stop.count:
        for child in children:
            code = child.process.poll()
            if code is not None and not child.exit_reported:
                child.exit_reported = True
                _print_error(
                    f"peer {child.peer.id} exited on its own with code {code};"
                    f" see {child.log_path}. The other peers keep running."
                )
        if all(child.exit_reported for child in children):
            _print_error("every peer has exited")
            return EXIT_FAILURE
        time.sleep(UP_SUPERVISE_INTERVAL_S)
    return EXIT_OK


def _stop_peers(children: list[_Child], stop: _StopSignals) -> None:
    running = [child for child in children if child.process.poll() is None]
    if not running:
        return
    print(f"stopping {', '.join(c.peer.id for c in running)} ...", flush=True)
    signals_before = stop.count
    for child in running:
        child.process.terminate()  # a no-op if it has just exited
    deadline = time.monotonic() + UP_STOP_TIMEOUT_S
    while (
        any(child.process.poll() is None for child in running)
        and time.monotonic() < deadline
        and stop.count <= signals_before + 1  # Ctrl-C twice more: stop waiting
    ):
        time.sleep(0.05)
    for child in running:
        if child.process.poll() is None:
            _print_error(f"peer {child.peer.id} did not stop in time: killing it")
            child.process.kill()
            child.process.wait()
    print("stopped every peer", flush=True)


# -- client commands -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    key: str

    def __repr__(self) -> str:
        return f"_Target(url={self.url!r})"


def _run_tokenize(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    if args.json is not None:
        body = _raw_body(str(args.json).encode(), "--json")
    elif args.file is not None:
        body = _raw_body(_read_body_file(args.file), str(args.file))
    else:
        records = [{args.field: value} for value in args.values]
        body = json.dumps({"records": records}).encode()
    return _call(_target(args), "POST", "/v1/tokenize", body, transport)


def _run_detokenize(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    body = json.dumps({"tokens": list(args.tokens)}).encode()
    return _call(_target(args), "POST", "/v1/detokenize", body, transport)


def _run_rotate(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    expected: int | None = args.expected_epoch
    body = None if expected is None else json.dumps({"expected_epoch": expected}).encode()
    return _call(_target(args), "POST", "/v1/epoch/rotate", body, transport)


def _run_epoch(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    return _call(_target(args), "GET", "/v1/epoch", None, transport)


def _run_ring(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    path = "/v1/ring"
    if args.owner is not None:
        path = f"/v1/ring/owners/{urllib.parse.quote(args.owner, safe='')}"
    return _call(_target(args), "GET", path, None, transport)


def _run_status(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    target = _target(args, admin_by_default=True)
    answer = _request(target, "GET", "/v1/ring", None, transport)
    _print_status(answer, sys.stdout, _cluster_details(target, answer, transport))
    return EXIT_OK


@dataclass(frozen=True)
class _ClusterDetails:
    """What the admin views add to the ring: per peer its own view, per owner convergence."""

    nodes: dict[str, Any]  # peer id -> its /v1/admin/node answer, or None when unreachable
    owners: list[Any]  # /v1/admin/owners/{owner} answers


def _cluster_details(
    target: _Target, ring: Any, transport: httpx.BaseTransport | None
) -> _ClusterDetails | None:
    """None unless the key is the admin key (an owner key sees the ring only)."""
    try:
        first = _request(target, "GET", "/v1/admin/node", None, transport)
    except CliError:
        return None
    nodes: dict[str, Any] = {}
    for peer in ring.get("peers", []) if isinstance(ring, dict) else []:
        peer_id, address = str(peer.get("id", "?")), str(peer.get("address", ""))
        if peer_id == first.get("peer"):
            nodes[peer_id] = first
            continue
        try:
            nodes[peer_id] = _request(
                _Target(url=f"http://{address}", key=target.key),
                "GET",
                "/v1/admin/node",
                None,
                transport,
            )
        except CliError:
            nodes[peer_id] = None
    owners = [
        _request(target, "GET", f"/v1/admin/owners/{owner}", None, transport)
        for owner in first.get("owners", [])
    ]
    return _ClusterDetails(nodes=nodes, owners=owners)


def _raw_body(data: bytes, source: str) -> bytes:
    try:
        json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CliError(f"{source} is not valid JSON: {error}", EXIT_USAGE) from error
    return data


def _read_body_file(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}", EXIT_USAGE) from error


def _target(args: argparse.Namespace, *, admin_by_default: bool = False) -> _Target:
    """The peer URL and API key: from --url/--key, else from the cluster in --dir."""
    url: str | None = args.url
    key: str | None = args.key
    directory: Path | None = args.dir
    if directory is not None:
        if url is None:
            config = _load_config(directory / CONFIG_NAME)
            url = f"http://{config.peers[0].address}"
        if key is None:
            key = _key_from_dir(directory, args, admin_by_default=admin_by_default)
    if key is None:
        key = os.environ.get(KEY_ENVIRONMENT_VARIABLE)
    if url is None or not key:
        raise CliError(
            f"say where and as whom: --url and --key (or ${KEY_ENVIRONMENT_VARIABLE}),"
            " or --dir of a cluster made by init",
            EXIT_USAGE,
        )
    if not key.isascii() or not key.isprintable():
        raise CliError("the API key must be printable ASCII", EXIT_USAGE)
    if "://" not in url:
        url = f"http://{url}"
    return _Target(url=url.rstrip("/"), key=key)


def _key_from_dir(directory: Path, args: argparse.Namespace, *, admin_by_default: bool) -> str:
    try:
        keys = load_keys(directory / KEYS_NAME)
    except ConfigError as error:
        raise CliError(str(error), EXIT_USAGE) from error
    owner: str | None = args.owner
    if args.admin or (owner is None and admin_by_default):
        return keys.admin
    if owner is None:
        if not keys.owners:
            raise CliError(f"{directory / KEYS_NAME} lists no owner; use --admin", EXIT_USAGE)
        return next(iter(keys.owners.values()))
    if owner not in keys.owners:
        raise CliError(f"no key for owner {owner!r} in {directory / KEYS_NAME}", EXIT_USAGE)
    return keys.owners[owner]


def _call(
    target: _Target,
    method: str,
    path: str,
    body: bytes | None,
    transport: httpx.BaseTransport | None,
) -> int:
    answer = _request(target, method, path, body, transport)
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return EXIT_OK


def _request(
    target: _Target,
    method: str,
    path: str,
    body: bytes | None,
    transport: httpx.BaseTransport | None,
) -> Any:
    """The JSON answer of a 2xx response; CliError for anything else."""
    headers = {"Authorization": f"Bearer {target.key}", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    url = target.url + path
    try:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S, transport=transport) as client:
            response = client.request(method, url, content=body, headers=headers)
    except (httpx.ConnectError, httpx.ConnectTimeout) as error:
        reason = str(error) or type(error).__name__
        raise CliError(f"cannot connect to {target.url}: {reason}") from error
    except httpx.TimeoutException as error:
        raise CliError(f"no answer from {target.url} within {REQUEST_TIMEOUT_S:.0f} s") from error
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise CliError(f"request to {target.url} failed: {error}") from error
    if not response.is_success:
        raise CliError(_error_line(response))
    try:
        return response.json()
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CliError(f"{target.url} answered {response.status_code} without JSON") from error


def _error_line(response: httpx.Response) -> str:
    """One line for an error answer: its status, code and message (the API's error shape)."""
    code, message = "", ""
    try:
        error = response.json().get("error", {})
        code, message = str(error.get("code", "")), str(error.get("message", ""))
    except (AttributeError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    line = f"{response.status_code} {code or response.reason_phrase}"
    if message:
        line += f": {message}"
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        line += f" (retry after {retry_after} s)"
    return line


def _print_status(answer: Any, out: TextIO, details: _ClusterDetails | None = None) -> None:
    if not isinstance(answer, dict):
        raise CliError("the ring answer is not a JSON object")
    peers = answer.get("peers")
    if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
        raise CliError("the ring answer lists no peers")
    print(
        f"as seen by {answer.get('peer', '?')}: ring version {answer.get('version', '?')},"
        f" N={answer.get('replicas', '?')} W={answer.get('write_quorum', '?')}"
        f" R={answer.get('read_quorum', '?')}",
        file=out,
    )
    header: tuple[str, ...] = ("ID", "ADDRESS", "STATE", "FOR")
    if details is not None:
        header += ("HINTS HELD", "ANTI-ENTROPY")
    rows: list[tuple[str, ...]] = [header]
    for peer in peers:
        since = peer.get("for_s")
        row: tuple[str, ...] = (
            str(peer.get("id", "?")),
            str(peer.get("address", "?")),
            str(peer.get("state", "?")),
            f"{since:.0f}s" if isinstance(since, int | float) else "",
        )
        if details is not None:
            row += _node_columns(details.nodes.get(str(peer.get("id"))))
        rows.append(row)
    _print_table(rows, out)
    if details is not None:
        _print_configuration_mismatch(details.nodes, out)
    if details is None or not details.owners:
        return
    print("", file=out)
    owner_rows: list[tuple[str, ...]] = [("OWNER", "CONVERGED", "EPOCHS", "TOKENS PER REPLICA")]
    for view in details.owners:
        replicas = view.get("replicas", [])
        owner_rows.append(
            (
                str(view.get("owner", "?")),
                "yes" if view.get("converged") else "NO",
                ",".join(str(r.get("active_epoch", "-")) for r in replicas),
                " ".join(
                    f"{r.get('peer')}={r['token_count'] if r.get('reachable') else 'unreachable'}"
                    for r in replicas
                ),
            )
        )
    _print_table(owner_rows, out)


def _print_configuration_mismatch(nodes: dict[str, Any], out: TextIO) -> None:
    """A warning when the peers that answered read different cluster configurations."""
    readers: dict[str, list[str]] = {}
    for peer_id, node in nodes.items():
        fingerprint = node.get("cluster_fingerprint") if isinstance(node, dict) else None
        if isinstance(fingerprint, str):
            readers.setdefault(fingerprint, []).append(peer_id)
    if len(readers) > 1:
        groups = "; ".join(
            f"{', '.join(sorted(ids))} read {fingerprint[:8]}"
            for fingerprint, ids in sorted(readers.items(), key=lambda item: sorted(item[1]))
        )
        print(
            f"CONFIGURATION DIFFERS between peers ({groups}): they refuse each other's"
            " messages. Give every peer the same cluster.toml.",
            file=out,
        )


def _node_columns(node: Any) -> tuple[str, str]:
    if not isinstance(node, dict):
        return ("unreachable", "")
    hints = node.get("hints", [])
    held = ", ".join(f"{h['hints']} for {h['target']}" for h in hints) or "0"
    last = (node.get("anti_entropy") or {}).get("last_pass")
    pass_text = "" if not last else f"{last['outcome']} {last['finished_s_ago']:.0f}s ago"
    return (held, pass_text)


def _print_table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )


# -- output ----------------------------------------------------------------------------------


def _print_error(message: str) -> None:
    print(f"tokenvault: {message}", file=sys.stderr, flush=True)
