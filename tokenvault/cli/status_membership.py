"""What `tokenvault status` concludes about the ring's membership from every peer's
GET /v1/admin/members (status_probe asks them): the version each peer is at, whether a change
is pending, and every transfer under way. Pure: no I/O.

Rules (docs/api.md, `status`):
- The membership shown is the answer with the highest version (the first peer in ring order
  among equals): a version spreads from the peers that decided it, so the highest is the
  newest. Its members and `stable` are that answer's.
- A peer answers the transfers into it alone (it is their target): the transfers are the union
  of every answer, sorted by owner then target; a peer that answered counts whether or not the
  ring shown lists it (a joining peer, when that ring came from a peer not knowing it yet).
- A pending change (members joining or leaving, transfers running) is no problem: it is shown,
  and the exit code does not change. Peers at different versions are a Note, not a Problem: a
  version reaches every peer within a heartbeat or two, so one status cannot tell a version
  spreading from a peer that does not hear the others; only repeated notes can.
- An owner whose transfer into a replica has not committed yet (FILLING_STATES) has that
  replica `filling`: it is still being copied, so its convergence is judged without it
  (status_verdict). A state this version does not know fills nothing: judged as usual.
"""

from __future__ import annotations

from typing import Any

from tokenvault.cli.json_values import float_or_none, int_or_none, list_or_empty
from tokenvault.cli.status_model import MemberEntry, MembershipStatus, Note, TransferStatus

COMMITTED = "committed"
FILLING_STATES = ("epochs", "copying", "verifying")  # before the commit: the target is not full


def membership_status(
    answers: dict[str, dict[str, Any]], peer_ids: list[str]
) -> MembershipStatus | None:
    """The membership from the members answers by peer id (the ring's peers in `peer_ids`
    order); None when no peer answered one with a version."""
    versions = {peer_id: _version(answers.get(peer_id)) for peer_id in peer_ids}
    for peer_id, answer in answers.items():  # a peer that answered but the ring does not list
        versions.setdefault(peer_id, _version(answer))
    known = [peer_id for peer_id, version in versions.items() if version is not None]
    if not known:
        return None
    newest = answers[max(known, key=lambda peer_id: versions[peer_id] or 0)]
    transfers = [
        _transfer(entry)
        for answer in answers.values()
        for entry in list_or_empty(answer.get("transfers"))
        if isinstance(entry, dict)
    ]
    return MembershipStatus(
        version=int(newest["version"]),
        stable=newest.get("stable") is True,
        members=[_member(m) for m in list_or_empty(newest.get("members")) if isinstance(m, dict)],
        versions=versions,
        transfers=sorted(transfers, key=lambda t: (t.owner, t.target)),
    )


def filling_replicas(membership: MembershipStatus | None) -> dict[str, list[str]]:
    """owner -> the replicas a transfer into them still fills (not committed yet)."""
    filling: dict[str, list[str]] = {}
    for transfer in [] if membership is None else membership.transfers:
        if transfer.state in FILLING_STATES:
            filling.setdefault(transfer.owner, []).append(transfer.target)
    return filling


def membership_notes(membership: MembershipStatus | None) -> list[Note]:
    """A Note when the peers that answered are at different versions."""
    if membership is None:
        return []
    at: dict[int, list[str]] = {}
    for peer_id, version in membership.versions.items():
        if version is not None:
            at.setdefault(version, []).append(peer_id)
    if len(at) < 2:
        return []
    behind = sorted(
        peer for version, peers in at.items() if version < membership.version for peer in peers
    )
    readings = "; ".join(
        f"{', '.join(at[version])} at {version}" for version in sorted(at, reverse=True)
    )
    message = (
        f"peers at different ring versions ({readings}): a new version reaches every peer within"
        " a heartbeat or two; if the next status still says so, the peers behind"
        f" ({', '.join(behind)}) do not hear the others (see their logs)"
    )
    return [Note("membership", message)]


def pending_changes(membership: MembershipStatus) -> list[MemberEntry]:
    """The members a pending change adds (joining) or takes away (leaving)."""
    return [member for member in membership.members if member.state != "active"]


def _transfer(entry: dict[str, Any]) -> TransferStatus:
    state = str(entry.get("state", "?"))
    bytes_moved = int_or_none(entry.get("bytes_moved"))
    rate = float_or_none(entry.get("rate_bytes_s"))
    eta = float_or_none(entry.get("eta_s"))
    return TransferStatus(
        owner=str(entry.get("owner", "?")),
        target=str(entry.get("target", "?")),
        from_replicas=[str(p) for p in list_or_empty(entry.get("from"))],
        to_replicas=[str(p) for p in list_or_empty(entry.get("to"))],
        version=int_or_none(entry.get("version")),
        state=state,
        source=str(entry["source"]) if entry.get("source") else None,
        mappings_moved=int_or_none(entry.get("mappings_moved")),
        bytes_moved=bytes_moved,
        rate_bytes_s=rate,
        eta_s=eta,
        done_fraction=_done_fraction(state, bytes_moved, rate, eta),
    )


def _done_fraction(
    state: str, bytes_moved: int | None, rate_bytes_s: float | None, eta_s: float | None
) -> float | None:
    """How far a transfer is, estimated from what it moved and what its rate and eta leave."""
    if state == COMMITTED:
        return 1.0
    if bytes_moved is None or rate_bytes_s is None or eta_s is None:
        return None
    total = bytes_moved + rate_bytes_s * eta_s
    return round(bytes_moved / total, 3) if total > 0 else None


def _member(entry: dict[str, Any]) -> MemberEntry:
    return MemberEntry(
        id=str(entry.get("id", "?")),
        address=str(entry.get("address", "?")),
        state=str(entry.get("state", "?")),
    )


def _version(answer: dict[str, Any] | None) -> int | None:
    return None if answer is None else int_or_none(answer.get("version"))
