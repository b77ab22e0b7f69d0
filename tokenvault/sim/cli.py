"""`tokenvault sim`: run the simulator for one seed, a sweep of seeds, or twice per seed to prove
that a run is deterministic.

Rules:
- Exit code 0 when every run passed (and, with --check-determinism, gave the same digest twice),
  1 when one did not, 2 for a bad configuration.
- Every run prints one line: seed, digest, PASS or FAIL, operations and their outcomes, virtual
  time and simulated operations per wall-clock second. A failing run also prints its fault mix,
  each violation with its operations and events, and the one-line command that replays it
  (with --shrink, also the smallest failing configuration found).
- This module is the simulator's only reader of a wall clock, and only to report speed: nothing
  it measures reaches a run, whose digest depends on its configuration alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from tokenvault.sim.config import SimConfig
from tokenvault.sim.runner import SimResult, run_simulation
from tokenvault.sim.shrink import shrink

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
_DEFAULTS = SimConfig(seed=1)


def add_sim_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the `sim` command to a command line's subparsers and return its parser."""
    parser = subparsers.add_parser(
        "sim",
        help="run the deterministic simulator (one seed, or a sweep)",
        description=(
            "Run the real cores on a simulated cluster with faults drawn from the seed, then"
            " check the history. The same seed gives the same run and digest, byte for byte."
        ),
    )
    parser.add_argument("--seed", type=int, default=1, help="the (first) seed (%(default)s)")
    parser.add_argument(
        "--seeds", type=int, default=1, help="how many seeds to run from --seed (%(default)s)"
    )
    parser.add_argument(
        "--peers", type=int, default=_DEFAULTS.peer_count, help="peers (%(default)s)"
    )
    parser.add_argument(
        "--owners", type=int, default=_DEFAULTS.owner_count, help="owners (%(default)s)"
    )
    parser.add_argument(
        "--ops",
        type=int,
        default=_DEFAULTS.operation_count,
        help="client operations per run (%(default)s)",
    )
    parser.add_argument(
        "--membership",
        type=int,
        default=_DEFAULTS.membership_changes,
        metavar="N",
        help="membership changes (joins, removes, replaces) drawn from the seed (%(default)s)",
    )
    parser.add_argument(
        "--check-determinism",
        action="store_true",
        help="run every seed twice and compare the digests",
    )
    parser.add_argument(
        "--no-full-convergence",
        action="store_true",
        help=(
            "do not require full convergence (all N replicas identical, one decided epoch, no"
            " hint pending) within the bound after healing; it is required by default"
        ),
    )
    parser.add_argument(  # the default since hinted handoff and anti-entropy: kept for old scripts
        "--require-full-convergence", action="store_true", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--trace", action="store_true", help="print every event of every run (for a replay)"
    )
    parser.add_argument(
        "--shrink",
        action="store_true",
        help="shrink a failing run (fewer owners, operations, peers) and print its replay",
    )
    return parser


def run_sim_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run what `add_sim_parser`'s arguments ask for; returns the exit code."""
    stream = sys.stdout if out is None else out
    if args.seeds < 1:
        print("tokenvault sim: --seeds must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        configs = [
            SimConfig(
                seed=seed,
                peer_count=args.peers,
                owner_count=args.owners,
                operation_count=args.ops,
                membership_changes=args.membership,
                require_full_convergence=not args.no_full_convergence,
            )
            for seed in range(args.seed, args.seed + args.seeds)
        ]
    except ValueError as error:
        print(f"tokenvault sim: {error}", file=sys.stderr)
        return EXIT_USAGE
    failed: list[SimConfig] = []
    operations = 0
    started = time.perf_counter()
    for config in configs:
        ok, result = _run_one(config, args, stream)
        operations += result.stats.attempts
        if not ok:
            failed.append(config)
    wall_s = time.perf_counter() - started
    if len(configs) > 1:
        rate = operations / wall_s if wall_s > 0 else 0.0
        runs = len(configs) * (2 if args.check_determinism else 1)
        print(
            f"sweep seeds {configs[0].seed}..{configs[-1].seed}: {len(configs)} seeds,"
            f" {len(failed)} failed, {runs} runs in {wall_s:.1f} s wall, {rate:.0f} ops/s",
            file=stream,
        )
        for config in failed:
            print(f"  failed seed {config.seed}: {config.replay_command()}", file=stream)
    return EXIT_FAILURE if failed else EXIT_OK


def _run_one(config: SimConfig, args: argparse.Namespace, out: TextIO) -> tuple[bool, SimResult]:
    started = time.perf_counter()
    result = run_simulation(config, keep_log=args.trace)
    wall_s = time.perf_counter() - started
    if args.trace:
        for line in result.log:
            print(line, file=out)
    print(_summary(result, wall_s), file=out)
    ok = result.passed
    if args.check_determinism:
        again = run_simulation(config)
        same = again.digest == result.digest
        verdict = "deterministic" if same else "NOT DETERMINISTIC: the digests differ"
        print(f"seed {config.seed} digest {again.digest} (second run) {verdict}", file=out)
        ok = ok and same
    if not result.passed:
        print(f"  faults: {result.mix}", file=out)
        for change in result.changes:
            print(f"  {change}", file=out)
        for violation in result.violations:
            print(_indent(violation.render()), file=out)
    if not ok:
        print(f"  replay: {config.replay_command()}", file=out)
    if args.shrink and not result.passed:
        shrunk = shrink(result)
        smallest = shrunk.smallest
        invariants = ", ".join(sorted({v.invariant for v in smallest.violations}))
        print(
            f"  shrunk in {shrunk.runs} runs to: {smallest.replay_command()}"
            f" (digest {smallest.digest}; {invariants})",
            file=out,
        )
    return ok, result


def _summary(result: SimResult, wall_s: float) -> str:
    stats = result.stats
    verdict = "PASS" if result.passed else f"FAIL ({len(result.violations)} violations)"
    rate = stats.attempts / wall_s if wall_s > 0 else 0.0
    return (
        f"seed {result.seed} digest {result.digest} {verdict}"
        f" ops {stats.operations} attempts {stats.attempts} (ok {stats.ok}, fail {stats.failed},"
        f" indeterminate {stats.indeterminate}) events {stats.events}"
        f" virtual {stats.virtual_s:.1f} s wall {wall_s:.3f} s {rate:.0f} ops/s"
        + (
            f" ring v{stats.ring_version} changes {stats.ring_changes_done}/{stats.ring_changes}"
            if stats.ring_changes
            else ""
        )
    )


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def main(argv: list[str] | None = None) -> int:
    """`python -m tokenvault.sim ARGS` is `tokenvault sim ARGS`."""
    parser = argparse.ArgumentParser(prog="tokenvault")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_sim_parser(subparsers)
    arguments = sys.argv[1:] if argv is None else argv
    return run_sim_command(parser.parse_args(["sim", *arguments]))
