"""The text of `tokenvault status`, rendered from a ClusterStatus: a line on the ring, a table of
its peers, a warning when they read different configurations, the membership (its version,
a change pending, one progress line per transfer: status_transfers), a table of the owners'
replicas, then the notes and the verdict: `healthy` or the problems found, with the exit code.

Rules:
- Renders the ClusterStatus and nothing else (--json dumps the same record), so the two agree.
- A column holds one kind of thing: STATE alone says whether a peer answered; a value that is
  unknown (no answer) is "-", never a word in a numeric column.
- Tables are left-aligned columns two spaces apart, without trailing spaces; the owners' table
  has one row per replica, the owner repeated on each (grep-able).
"""

from __future__ import annotations

import json
from typing import TextIO

from tokenvault.cli.status_model import ClusterStatus, OwnerStatus, PeerStatus
from tokenvault.cli.status_transfers import print_membership

DIGEST_SHOWN_CHARS = 8
UNKNOWN = "-"


def print_status(status: ClusterStatus, out: TextIO) -> None:
    ring = status.ring
    answered = sum(1 for peer in status.peers if peer.answered)
    print(
        f"as seen by {ring.seen_by}: ring version {_text(ring.version)},"
        f" N={_text(ring.replicas)} W={_text(ring.write_quorum)} R={_text(ring.read_quorum)}"
        f" ({answered} of {_count(len(status.peers), 'peer')} answered"
        f" in {status.elapsed_s:.1f} s)",
        file=out,
    )
    versions = None if status.membership is None else status.membership.versions
    header: tuple[str, ...] = ("ID", "ADDRESS", "STATE", "FOR")
    if status.admin:
        header += ("SERVING", "HINTS HELD", "ANTI-ENTROPY")
    if versions is not None:  # last: the columns before keep their places
        header += ("RING",)
    rows = [header] + [_peer_row(peer, status.admin, versions) for peer in status.peers]
    _print_table(rows, out)
    if status.configuration_differs:
        groups = "; ".join(
            f"{', '.join(group.peers)} read {group.shown()}" for group in status.configurations
        )
        print(
            f"CONFIGURATION DIFFERS between peers ({groups}): they refuse each other's"
            " messages. Give every peer the same cluster.toml.",
            file=out,
        )
    if status.membership is not None:
        print("", file=out)
        print_membership(status.membership, out)
    if status.owners:
        print("", file=out)
        _print_table(_owner_rows(status.owners), out)
    print("", file=out)
    for note in status.notes:
        print(f"note: {note.message}", file=out)
    _print_verdict(status, out)


def print_status_json(status: ClusterStatus, out: TextIO) -> None:
    print(json.dumps(status.to_json(), indent=2, ensure_ascii=False), file=out)


def serving_text(peer: PeerStatus) -> str:
    """ "serving" (with why it is not ready, as /readyz says: a full disk, a failing store), or
    "recovering" with how far the recovery of a lost store went; "-" without its admin view."""
    if peer.serving is None:
        return UNKNOWN
    progress = peer.recovery
    if peer.serving != "recovering" or progress is None:
        if peer.ready is False and peer.readiness not in (None, peer.serving):
            return f"{peer.serving}, not ready: {peer.readiness}"
        return peer.serving
    total = progress.get("owners_total", "?")
    return (
        f"recovering ({progress.get('phase', '?')}: learned {progress.get('owners_learned', '?')}"
        f"/{total}, refilled {progress.get('owners_refilled', '?')}/{total})"
    )


def _peer_row(
    peer: PeerStatus, admin: bool, versions: dict[str, int | None] | None
) -> tuple[str, ...]:
    row: tuple[str, ...] = (
        peer.id,
        peer.address,
        peer.state,
        UNKNOWN if peer.for_s is None else f"{peer.for_s:.0f}s",
    )
    if admin:
        row += (serving_text(peer), _hints_text(peer), _anti_entropy_text(peer))
    if versions is not None:
        row += (_text(versions.get(peer.id)),)
    return row


def _hints_text(peer: PeerStatus) -> str:
    if peer.hints_held is None:
        return UNKNOWN
    return ", ".join(f"{held.hints} for {held.target}" for held in peer.hints_held) or "0"


def _anti_entropy_text(peer: PeerStatus) -> str:
    anti_entropy = peer.anti_entropy
    if anti_entropy is None:
        return UNKNOWN
    if not anti_entropy.enabled:
        return "off"
    last = anti_entropy.last_pass
    if last is None:
        up = "" if peer.uptime_s is None else f" (up {peer.uptime_s:.0f}s)"
        return f"no pass yet{up}"
    return f"{last.outcome} {last.finished_s_ago:.0f}s ago"


def _owner_rows(owners: list[OwnerStatus]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("OWNER", "CONVERGED", "REPLICA", "ANSWERED", "EPOCH", "TOKENS", "DIGEST", "HINTS FOR IT")
    ]
    for owner in owners:
        converged = {True: "yes", False: "NO", None: "unknown"}[owner.converged]
        if owner.filling:
            converged += f" ({', '.join(owner.filling)} filling)"
        if not owner.replicas:
            rows.append((owner.owner, converged, *(UNKNOWN,) * 6))
        for replica in owner.replicas:
            rows.append(
                (
                    owner.owner,
                    converged,
                    replica.peer,
                    "yes" if replica.answered else "no",
                    _text(replica.active_epoch),
                    _text(replica.token_count),
                    _text(None if replica.digest is None else replica.digest[:DIGEST_SHOWN_CHARS]),
                    _text(replica.hints_for_it),
                )
            )
    return rows


def _print_verdict(status: ClusterStatus, out: TextIO) -> None:
    if not status.problems:
        peers = _count(len(status.peers), "peer")
        checked = (
            f"{peers} up and serving, one configuration,"
            f" {_count(len(status.owners), 'owner')} converged"
            if status.admin
            else f"{peers} up, one ring (an owner key: no admin views)"
        )
        if status.membership is not None and not status.membership.stable:
            checked += (
                f"; a membership change in progress (ring version {status.membership.version})"
            )
        print(f"healthy (exit 0): {checked}", file=out)
        return
    print(f"{_count(len(status.problems), 'problem')} (exit {status.exit_code}):", file=out)
    for problem in status.problems:
        print(f"  {problem.message}", file=out)


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _text(value: object) -> str:
    return UNKNOWN if value is None else str(value)


def _print_table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
