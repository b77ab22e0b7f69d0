"""The argument parser of the `tokenvault` command line: its commands, their options and help.

Rules:
- Parsing does no I/O and imports no peer code; each command's parser sets `run`, the Command
  that carries it out.
- `sim` is listed for --help only: `main` hands it to the simulator's own parser, so that a
  peer never imports the simulator.
- Client commands share one set of connection options (--url, --key, --dir, --cacert, --owner,
  --admin).
"""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import httpx

from tokenvault.cli.bench.workloads import WORKLOAD_NAMES, Workload, parse_workloads
from tokenvault.cli.client_commands import (
    detokenize_command,
    epoch_command,
    ring_command,
    rotate_command,
    tokenize_command,
)
from tokenvault.cli.cluster_commands import init_command, node_command, renew_certs_command
from tokenvault.cli.members_commands import (
    WAIT_TIMEOUT_S_DEFAULT,
    members_change_command,
    members_show_command,
)
from tokenvault.cli.status import status_command
from tokenvault.cli.target import KEY_ENVIRONMENT_VARIABLE
from tokenvault.cli.up import (
    UP_DEFAULT_BASE_PORT,
    UP_DEFAULT_DIR,
    UP_DEFAULT_NODES,
    UP_DEFAULT_OWNERS,
    up_command,
)

# Carries out one parsed command; `transport` replaces the network of client commands (tests).
Command = Callable[[argparse.Namespace, httpx.BaseTransport | None], int]

_FIELD_DEFAULT = "ssn"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenvault",
        description="A distributed token vault: make a cluster, run its peers, use its API.",
        epilog="`tokenvault COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_cluster_commands(commands)
    _add_client_commands(commands)
    _add_members_command(commands)
    _add_bench_command(commands)
    commands.add_parser(
        "sim",
        help="run the deterministic simulator (tokenvault sim --help)",
        description="The deterministic simulator: tokenvault sim --help.",
        add_help=False,
    )
    return parser


def _add_cluster_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = commands.add_parser(
        "init",
        help="write a new cluster into a directory",
        description=(
            "Write a new cluster into DIR: cluster.toml, the secret, keys.json (the API keys,"
            " mode 0600) and with --tls a private CA and a certificate per peer. Peer i is n<i>"
            " on 127.0.0.1:(BASE_PORT + i). It never overwrites a cluster (exit code 1); bad"
            " parameters are exit code 2, and nothing is written."
        ),
    )
    init.add_argument("--nodes", type=int, required=True, help="number of peers")
    init.add_argument(
        "--base-port", type=int, required=True, help="peer i listens on BASE_PORT + i"
    )
    init.add_argument("--dir", type=Path, required=True, help="directory to write the cluster to")
    _add_cluster_shape(init)
    init.add_argument(
        "--tls",
        action="store_true",
        help="make a private CA and a certificate per peer: HTTPS, and mutual TLS between peers",
    )
    init.set_defaults(run=init_command)

    renew = commands.add_parser(
        "renew-certs",
        help="issue new TLS certificates for the peers from the cluster's CA (then restart them)",
        description=(
            "Issue a new certificate and key for each --peer (every peer by default) from the"
            " cluster CA, for its address in cluster.toml, and replace its files. Peers read"
            " them at start: restart each renewed peer, one at a time."
        ),
    )
    renew.add_argument("--dir", type=Path, required=True, help="a cluster made by init --tls")
    renew.add_argument(
        "--peer", action="append", metavar="ID", help="only this peer (repeatable; default: all)"
    )
    renew.add_argument(
        "--ca-key", type=Path, metavar="PEM", help="the CA's private key (DIR/tls/ca.key)"
    )
    renew.set_defaults(run=renew_certs_command)

    node = commands.add_parser(
        "node",
        help="run one peer in the foreground",
        description=(
            "Run one peer of the cluster in --config in the foreground: serve the HTTP API,"
            " log JSON lines to stderr, recover whatever its data directory holds. SIGTERM or"
            " SIGINT stops it cleanly. Each option wins over its environment variable, which"
            " wins over cluster.toml. A new peer joins a running cluster with --join --address"
            " (docs/operations.md, Growing and shrinking)."
        ),
    )
    node.add_argument("--config", type=Path, help="the cluster.toml ($TOKENVAULT_CONFIG)")
    node.add_argument("--id", help="this peer's id in the configuration ($TOKENVAULT_ID)")
    node.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="bind here instead of the peer's address, e.g. 0.0.0.0:7600 ($TOKENVAULT_LISTEN)",
    )
    node.add_argument(
        "--data-dir", type=Path, help="the peer's data directory ($TOKENVAULT_DATA_DIR)"
    )
    node.add_argument(
        "--secret-file", type=Path, help="the cluster secret's file ($TOKENVAULT_SECRET_FILE)"
    )
    node.add_argument(
        "--join",
        action="store_true",
        help=(
            "a new peer, not in the configuration: start on an empty data directory and ask"
            " the cluster to add it at --address ($TOKENVAULT_JOIN=1)"
        ),
    )
    node.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="with --join: where the other peers reach this one ($TOKENVAULT_ADDRESS)",
    )
    node.set_defaults(run=node_command)

    up = commands.add_parser(
        "up",
        help="run a local cluster: init if needed, start every peer, stop all on Ctrl-C",
        description=(
            "The one-command local cluster: init DIR when it holds none (owners alice and bob),"
            " start every peer as its own process, print a banner with the addresses, the key"
            " file and a copy-paste example, and stop every peer on Ctrl-C. Run again, it"
            " reuses DIR and its data."
        ),
    )
    up.add_argument("--nodes", type=int, help=f"peers of a new cluster ({UP_DEFAULT_NODES})")
    up.add_argument(
        "--dir", type=Path, default=UP_DEFAULT_DIR, help=f"cluster directory ({UP_DEFAULT_DIR})"
    )
    up.add_argument(
        "--base-port", type=int, help=f"ports of a new cluster ({UP_DEFAULT_BASE_PORT} + i)"
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="make a new cluster with TLS (as init --tls); a cluster in --dir keeps its own",
    )
    up.set_defaults(run=up_command)


def _add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    as_owner = "act as this owner: its key from --dir's keys.json (default: the first owner)"
    tokenize = commands.add_parser(
        "tokenize",
        parents=[_connection_options(as_owner)],
        help="replace values by tokens",
        description=(
            "Tokenize one record {FIELD: VALUE} per VALUE, or send a raw request body. A FIELD"
            " the owner has not configured is refused (exit code 2): with --dir before anything"
            " is sent, else when the answer says the peer left it as given."
        ),
    )
    source = tokenize.add_mutually_exclusive_group(required=True)
    source.add_argument("values", nargs="*", default=[], metavar="VALUE", help="values to tokenize")
    source.add_argument("--json", help='raw request body, e.g. \'{"records": [{"ssn": "..."}]}\'')
    source.add_argument("--file", type=Path, help="read the raw request body from a file (- stdin)")
    tokenize.add_argument(
        "--field", default=_FIELD_DEFAULT, help=f"field of each VALUE ({_FIELD_DEFAULT})"
    )
    tokenize.set_defaults(run=tokenize_command)

    detokenize = commands.add_parser(
        "detokenize",
        parents=[_connection_options(as_owner)],
        help="look tokens up",
        description="Look up each TOKEN: its value, field and epoch, or found: false.",
    )
    detokenize.add_argument("tokens", nargs="+", metavar="TOKEN")
    detokenize.set_defaults(run=detokenize_command)

    rotate = commands.add_parser(
        "rotate",
        parents=[_connection_options(as_owner)],
        help="move the owner to a new epoch",
        description=(
            "Move the owner to a new epoch: new tokens from then on; old tokens still"
            " detokenize. With --expected-epoch it rotates only from that epoch and is retried"
            " at other peers like any request; without, it goes to another peer only when the"
            " first could not be reached at all (sent twice, it could rotate twice)."
        ),
    )
    rotate.add_argument(
        "--expected-epoch",
        type=int,
        help="rotate only if this is still the active epoch (safe to retry)",
    )
    rotate.set_defaults(run=rotate_command)

    epoch = commands.add_parser(
        "epoch",
        parents=[_connection_options(as_owner)],
        help="show the owner's active epoch",
        description="Show the owner's active epoch.",
    )
    epoch.set_defaults(run=epoch_command)

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
        description=(
            "Show the ring as the peer that answers sees it: peers and their states, N, W, R;"
            " with --owner, that owner's ring position and preference list."
        ),
    )
    ring.set_defaults(run=ring_command)

    status = commands.add_parser(
        "status",
        parents=[_connection_options("use this owner's key instead of the admin key")],
        help="show the peers and their states (with --dir, uses the admin key)",
        description=(
            "Show the ring as a table of peers; with the admin key (the default with --dir)"
            " also every peer's own view and every owner's convergence."
        ),
    )
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(run=status_command)


def _add_members_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    as_owner = "use this owner's key instead of the admin key (the peer refuses it: 403)"
    members = commands.add_parser(
        "members",
        help="show or change the ring's members (admin key; with --dir, the default)",
        description=(
            "Show the ring's members, or change them one at a time: add a peer, remove one,"
            " replace one (a dead machine) by a new one. A change returns once the cluster"
            " decided its joint version; --wait waits for the finish (its transfers done)."
            " docs/operations.md, Growing and shrinking."
        ),
    )
    actions = members.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        parents=[_connection_options(as_owner)],
        help="the ring's version and members",
        description="The ring's version and every member, with its state, as a peer learned it.",
    )
    show.add_argument("--json", action="store_true", help="print the peer's answer")
    show.set_defaults(run=members_show_command)
    add = actions.add_parser(
        "add",
        parents=[_connection_options(as_owner), _change_options()],
        help="add a peer at its address (start it with node --join)",
        description="Add peer ID, reached at ADDRESS (host:port), to the ring.",
    )
    add.add_argument("member", metavar="ID")
    add.add_argument("address", metavar="ADDRESS", help="host:port of the new peer")
    add.set_defaults(run=members_change_command, old=None)
    remove = actions.add_parser(
        "remove",
        parents=[_connection_options(as_owner), _change_options()],
        help="remove a peer: its owners move to the others",
        description="Remove peer ID from the ring; with --wait, return once it can be stopped.",
    )
    remove.add_argument("member", metavar="ID")
    remove.set_defaults(run=members_change_command, old=None)
    replace = actions.add_parser(
        "replace",
        parents=[_connection_options(as_owner), _change_options()],
        help="replace a peer (a dead machine) by a new one",
        description=(
            "NEW, reached at ADDRESS, takes OLD's place: exactly OLD's owners move, to NEW"
            " alone, filled from the surviving replicas. Start NEW with node --join."
        ),
    )
    replace.add_argument("old", metavar="OLD")
    replace.add_argument("new", metavar="NEW")
    replace.add_argument("address", metavar="ADDRESS", help="host:port of NEW")
    replace.set_defaults(run=members_change_command)


def _change_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--wait",
        action="store_true",
        help="wait until the change is finished (stable, its transfers done)",
    )
    parent.add_argument(
        "--timeout",
        type=float,
        default=WAIT_TIMEOUT_S_DEFAULT,
        metavar="SECONDS",
        help="with --wait: give up after this long (exit code 1; %(default)g)",
    )
    parent.add_argument("--json", action="store_true", help="print the peer's answer")
    return parent


def _add_bench_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure tokenvault against etcd side by side, with wrk where installed",
        description=(
            "Start a fresh 3-peer cluster (N=3, W=2, R=2) and measure each workload with an"
            " external load generator (wrk -t1, fresh values per request; a Python fallback,"
            " said in the report, where wrk is not installed), stop it, then do the same"
            " against a fresh 3-member etcd (put-if-absent transactions, linearizable range"
            " reads) when etcd is installed, round after round. A progress line per figure goes"
            " to stderr, the table (or --json) to stdout; exit code 1 if any figure had"
            " failures. Workloads: " + ", ".join(WORKLOAD_NAMES) + "."
        ),
    )
    bench.add_argument(
        "--seconds", type=_positive_int, default=10, help="seconds per figure (%(default)s)"
    )
    bench.add_argument(
        "--rounds",
        type=_positive_int,
        default=1,
        help="rounds, each tokenvault then etcd (%(default)s)",
    )
    bench.add_argument(
        "--connections",
        type=_positive_int,
        default=64,
        help="keep-alive connections per figure; spread workloads share them out (%(default)s)",
    )
    bench.add_argument(
        "--workloads",
        type=_workloads,
        default=parse_workloads(",".join(WORKLOAD_NAMES)),
        metavar="LIST",
        help="comma-separated subset of the workloads (default: all)",
    )
    bench.add_argument("--no-etcd", action="store_true", help="measure tokenvault alone")
    bench.add_argument(
        "--load-generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="wrk, the Python fallback, or auto: wrk where installed (%(default)s)",
    )
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument(
        "--work-dir",
        type=Path,
        help="keep the clusters, logs and tokens here (default: a temporary directory)",
    )
    running = bench.add_argument_group(
        "a running cluster instead of a fresh one (tokenvault side only; it gets 20,000 tokens"
        " for detokenize)"
    )
    running.add_argument("--url", help="a peer's URL, e.g. http://127.0.0.1:7401")
    running.add_argument(
        "--key",
        help=f"an owner's API key (default: ${KEY_ENVIRONMENT_VARIABLE})",
    )
    running.add_argument("--dir", type=Path, help="a cluster made by init: its peers and keys")
    running.add_argument("--owner", metavar="NAME", help="with --dir: act as this owner")
    running.add_argument("--cacert", type=Path, metavar="PEM", help="trust this CA for https://")
    bench.set_defaults(run=_bench_command, admin=False)


def _version() -> str:
    """The installed package's version (its metadata), or "unknown" outside an install."""
    try:
        return importlib.metadata.version("tokenvault")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _bench_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    from tokenvault.cli.bench.command import bench_command  # lazily: heavy, and bench only

    return bench_command(args, transport)


def _workloads(text: str) -> tuple[Workload, ...]:
    try:
        return parse_workloads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


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
        "--dir",
        type=Path,
        help="a cluster made by init: its peers (tried in turn), keys from keys.json",
    )
    group.add_argument(
        "--cacert",
        type=Path,
        metavar="PEM",
        help="trust this CA for https:// (default with --dir: the cluster's tls/ca.pem)",
    )
    who = group if owner_is_subject else group.add_mutually_exclusive_group()
    who.add_argument("--owner", metavar="NAME", help=owner_help)
    who.add_argument("--admin", action="store_true", help="with --dir: use the admin key")
    parent.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say on stderr which peer answered, and which attempts failed and why",
    )
    return parent
