"""`tokenvault status`: ask every peer at once for its ring and, with the admin key, its own view,
its membership (the ring version it is at, the transfers into it) and every owner's
convergence; print the table (or --json) and exit with a code that says whether the cluster is
healthy.

Rules:
- Peers asked: the --url (then the peers its ring lists), or with --dir every peer of
  cluster.toml; the ring is the first that answers. Probes are short and parallel
  (status_probe), so a paused or dead peer delays the answer by PROBE_READ_TIMEOUT_S at most, and
  an owner's inspection by its 2 s inspection timeout.
- Exit codes (status_verdict): 0 healthy; 3 a peer unreachable, down, suspect, recovering or not
  ready; 4 configuration differs; 5 an owner not converged; 1 when no peer gave a ring at all
  (nothing to judge), 2 bad usage. A membership change in progress changes none of them, and
  peers at different ring versions are a note (status_membership).
- With --dir the admin key is the default; an owner's key sees the ring only, which is not an
  error: its status judges the peers' states and rings alone.
- A progress line goes to stderr while answers are awaited, on a terminal only.
"""

from __future__ import annotations

import argparse
import sys

import httpx

from tokenvault.cli.cluster_files import load_cluster_config
from tokenvault.cli.exits import CliError
from tokenvault.cli.status_probe import Probed, probe_cluster
from tokenvault.cli.status_progress import ProgressLine
from tokenvault.cli.status_report import print_status, print_status_json
from tokenvault.cli.status_verdict import build_status
from tokenvault.cli.target import Target, target_of
from tokenvault.cluster_init import CONFIG_NAME


def status_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    target = target_of(args, admin_by_default=True)
    progress = ProgressLine(sys.stderr)
    try:
        probed = probe_cluster(target, _start_urls(args, target), transport, progress.update)
    finally:
        progress.clear()
    if probed.ring is None:
        raise CliError(_no_ring_message(probed))
    status = build_status(probed, target)
    if args.json:
        print_status_json(status, sys.stdout)
    else:
        print_status(status, sys.stdout)
    return status.exit_code


def _start_urls(args: argparse.Namespace, target: Target) -> list[str]:
    """The target's URL, and with --dir every peer of its cluster.toml."""
    urls = [target.url]
    if args.dir is not None:
        config = load_cluster_config(args.dir / CONFIG_NAME)
        urls += [target.at(peer.address).url for peer in config.peers]
    return urls


def _no_ring_message(probed: Probed) -> str:
    errors = [p.ring.error for p in probed.peers.values() if p.ring is not None and p.ring.error]
    return "no peer answered the ring: " + "; ".join(errors or ["no peer to ask"])
