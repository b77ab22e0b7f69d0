"""The `tokenvault` command line: make a cluster, run peers, and talk to them over HTTP.

Rules:
- `main(argv)` returns the exit code: 0 success, 1 a failure (one line on stderr), 2 bad usage or
  a bad configuration. It never prints a traceback for an expected failure (a CliError). The
  console script enters through tokenvault/entry.py, which sets the signals before this
  package loads and ends a Ctrl-C quietly with 130.
- API keys are never printed (`up`'s copy-paste example reads one from keys.json).
- A bare `tokenvault` prints the help and returns 2; `--version` prints the package's version.
- Client commands print the peer's JSON answer, indented, on stdout; an error answer's message
  goes to stderr. They are built on the client library (tokenvault.client): with --dir every
  peer is tried in turn; every attempt has a 10 s timeout (`status` has its own shorter ones).
- `up` owns the peer processes it starts: it restarts one that dies, and stops every one of them
  (SIGTERM, then SIGKILL after 10 s) on SIGINT, SIGTERM or SIGHUP, and on any way out of it; a
  peer another process runs is adopted, never signalled.

One module per concern: parser (the commands and their options), exits (exit codes and the error
line), cluster_files and cluster_commands (init, node, renew-certs), up, supervisor and
peer_processes (a local cluster), target and api_calls (where, as whom, one request),
client_commands, status and status_report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import httpx

from tokenvault.cli.exits import EXIT_USAGE, CliError, print_error
from tokenvault.cli.parser import Command, build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run one command; `transport` replaces the network for client commands (tests)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["sim"]:
        return _main_sim(arguments)
    parser = build_parser()
    if not arguments:  # a bare `tokenvault`: the help, and the exit code of bad usage
        parser.print_help()
        return EXIT_USAGE
    args = _parse(parser, arguments)
    if isinstance(args, int):
        return args
    command: Command = args.run
    try:
        return command(args, transport)
    except CliError as error:
        print_error(str(error))
        return error.exit_code


def _main_sim(arguments: list[str]) -> int:
    from tokenvault.sim.cli import add_sim_parser, run_sim_command  # lazily: peers never need it

    parser = argparse.ArgumentParser(prog="tokenvault")
    add_sim_parser(parser.add_subparsers(dest="command", required=True))
    args = _parse(parser, arguments)
    if isinstance(args, int):
        return args
    return run_sim_command(args)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code when argparse stops (--help, bad usage)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
