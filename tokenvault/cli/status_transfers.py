"""The membership part of `tokenvault status`'s text: the ring version and whether a change is
pending, then one line per transfer under way: its owner and target, the old and new replica
sets, its state, what it moved, its rate and the time it has left.

Rules:
- On a terminal (the output's isatty) a transfer whose progress is known (status_membership's
  estimate) gets a bar of BAR_WIDTH characters and its percentage; otherwise, and in a pipe or a
  log, the same line without them: plain text, no control characters either way.
- Sizes are in decimal units (kB, MB: 10^3, 10^6 bytes), as `transfer_rate_mb_s` is; an unknown
  value is "-", a time left that the peer cannot tell yet "eta unknown".
"""

from __future__ import annotations

from typing import TextIO

from tokenvault.cli.status_membership import pending_changes
from tokenvault.cli.status_model import MembershipStatus, TransferStatus

BAR_WIDTH = 20
_UNITS = ((10**9, "GB"), (10**6, "MB"), (10**3, "kB"))


def print_membership(membership: MembershipStatus, out: TextIO) -> None:
    print(membership_line(membership), file=out)
    bar = out.isatty()
    for transfer in membership.transfers:
        print(f"  {transfer_line(transfer, bar=bar)}", file=out)


def membership_line(membership: MembershipStatus) -> str:
    """`members: ring version 2, a change pending: n4 joining (1 transfer)`, or `stable`."""
    line = f"members: ring version {membership.version}"
    if membership.stable:
        return f"{line}, stable ({len(membership.members)} active)"
    changes = ", ".join(f"{m.id} {m.state}" for m in pending_changes(membership))
    count = len(membership.transfers)
    return (
        f"{line}, a change pending: {changes or 'no member joining or leaving'}"
        f" ({count} transfer{'' if count == 1 else 's'})"
    )


def transfer_line(transfer: TransferStatus, *, bar: bool) -> str:
    """`alice into n4 (n1, n2, n3 -> n4, n1, n2): copying, 1200 mappings, 310.0 kB moved,
    98.0 kB/s, eta 4s`; with `bar`, `[#####...]  25% ` before the state when known."""
    sets = f"{', '.join(transfer.from_replicas)} -> {', '.join(transfer.to_replicas)}"
    head = f"{transfer.owner} into {transfer.target} ({sets})"
    moved = f"{_number(transfer.mappings_moved)} mappings, {_size(transfer.bytes_moved)} moved"
    tail = f"{transfer.state}, {moved}"
    if transfer.state != "committed":
        tail += f", {_size(transfer.rate_bytes_s)}/s, {_eta(transfer.eta_s)}"
    if bar and transfer.done_fraction is not None:
        return f"{head} {progress_bar(transfer.done_fraction)} {tail}"
    return f"{head}: {tail}"


def progress_bar(fraction: float) -> str:
    """`[#####---------------]  25%`: BAR_WIDTH characters, then the percentage."""
    bounded = min(max(fraction, 0.0), 1.0)
    filled = round(bounded * BAR_WIDTH)
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {bounded * 100:3.0f}%"


def _size(size_bytes: float | None) -> str:
    if size_bytes is None:
        return "-"
    for unit_bytes, unit in _UNITS:
        if size_bytes >= unit_bytes:
            return f"{size_bytes / unit_bytes:.1f} {unit}"
    return f"{size_bytes:.0f} B"


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def _eta(eta_s: float | None) -> str:
    return "eta unknown" if eta_s is None else f"eta {eta_s:.0f}s"
