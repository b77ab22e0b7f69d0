"""`tokenvault status`: ask a peer for the ring, and with the admin key every peer for its own
view and every owner for its convergence, then print it all as status_report renders it.

Rules:
- With --dir the admin key is the default; an owner's key sees the ring only, which is not an
  error.
- The ring must be answered (or the command fails with exit code 1); a peer that cannot be
  asked for its own view is shown as unreachable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx

from tokenvault.cli.api_calls import request_json
from tokenvault.cli.exits import EXIT_OK, CliError
from tokenvault.cli.status_report import ClusterDetails, print_status
from tokenvault.cli.target import Target, target_of


def status_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    target = target_of(args, admin_by_default=True)
    answer = request_json(target, "GET", "/v1/ring", None, transport)
    print_status(answer, sys.stdout, _cluster_details(target, answer, transport))
    return EXIT_OK


def _cluster_details(
    target: Target, ring: Any, transport: httpx.BaseTransport | None
) -> ClusterDetails | None:
    """None unless the key is the admin key (an owner key sees the ring only)."""
    try:
        first = request_json(target, "GET", "/v1/admin/node", None, transport)
    except CliError:
        return None
    nodes: dict[str, Any] = {}
    for peer in ring.get("peers", []) if isinstance(ring, dict) else []:
        peer_id, address = str(peer.get("id", "?")), str(peer.get("address", ""))
        if peer_id == first.get("peer"):
            nodes[peer_id] = first
            continue
        try:
            nodes[peer_id] = request_json(
                target.at(address),
                "GET",
                "/v1/admin/node",
                None,
                transport,
            )
        except CliError:
            nodes[peer_id] = None
    owners = [
        request_json(target, "GET", f"/v1/admin/owners/{owner}", None, transport)
        for owner in first.get("owners", [])
    ]
    return ClusterDetails(nodes=nodes, owners=owners)
