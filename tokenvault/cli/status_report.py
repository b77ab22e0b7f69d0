"""The text of `tokenvault status`: a line on the ring, a table of its peers, and with the
admin views a warning when the peers read different configurations and a table of the owners.

Rules:
- Renders what the peers answered and nothing else; a field of the ring or of a peer that is
  missing shows as "?" or empty. A ring that is not an object listing peers is a CliError.
- Tables are left-aligned columns two spaces apart, without trailing spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TextIO

from tokenvault.cli.exits import CliError


@dataclass(frozen=True)
class ClusterDetails:
    """What the admin views add to the ring: per peer its own view, per owner convergence."""

    nodes: dict[str, Any]  # peer id -> its /v1/admin/node answer, or None when unreachable
    owners: list[Any]  # /v1/admin/owners/{owner} answers


def print_status(answer: Any, out: TextIO, details: ClusterDetails | None = None) -> None:
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
        header += ("SERVING", "HINTS HELD", "ANTI-ENTROPY")
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


def _serving_text(node: dict[str, Any]) -> str:
    """ "serving" (with why it is not ready, as /readyz says: a full disk, a failing store), or
    "recovering" with how far the recovery of a lost store went."""
    state = str(node.get("state", "?"))
    progress = node.get("recovery")
    if state != "recovering" or not isinstance(progress, dict):
        if node.get("ready") is False and node.get("readiness") not in (None, state):
            return f"{state}, not ready: {node.get('readiness')}"
        return state
    total = progress.get("owners_total", "?")
    return (
        f"recovering ({progress.get('phase', '?')}: learned {progress.get('owners_learned', '?')}"
        f"/{total}, refilled {progress.get('owners_refilled', '?')}/{total})"
    )


def _node_columns(node: Any) -> tuple[str, str, str]:
    if not isinstance(node, dict):
        return ("unreachable", "", "")
    hints = node.get("hints", [])
    held = ", ".join(f"{h['hints']} for {h['target']}" for h in hints) or "0"
    last = (node.get("anti_entropy") or {}).get("last_pass")
    pass_text = "" if not last else f"{last['outcome']} {last['finished_s_ago']:.0f}s ago"
    return (_serving_text(node), held, pass_text)


def _print_table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
