"""GET and POST /v1/admin/members: the ring's membership, and the operator's changes to it
(docs/membership.md §2, docs/api.md "Membership").

Rules:
- Admin key only (an owner's key: 403), like every /v1/admin/* route; the body limits and
  admission are api.py's.
- GET answers this peer's learned membership: its version, every member (id, address, state),
  whether it is stable, and the transfers into this peer (transfer.py: each owner it fills,
  from which old replicas, how far).
- POST `{"action": "add"|"remove"|"replace", "id", "address", "replaces"}` is validated whole
  before anything is proposed: a malformed body, a missing, mistyped or foreign field is
  400 invalid_request; an id or address no member may have is 400 invalid_member. Bad input
  changes nothing.
- A valid change is proposed through this peer's ring register (Node.change_members) and
  answered once decided: 202 with the version learned then (the joint version of the change,
  or a later one when it was already in: `outcome` "already", which makes a retry safe);
  a refusal maps to its code (REFUSAL_ERRORS); no decision in the register's operation timeout
  (5 s) or contention is 503 ring_unavailable, which is indeterminate (the change may still be
  decided), and a peer that cannot propose (recovering, no member) 503 unavailable.
"""

from __future__ import annotations

from typing import Any

from tokenvault.config import parse_host_port
from tokenvault.http.errors import (
    AlreadyMember,
    ApiError,
    ChangePending,
    InvalidMember,
    InvalidRequest,
    NothingPending,
    RingUnavailable,
    TooFewPeers,
    Unavailable,
    UnknownMember,
    json_response,
)
from tokenvault.http.messages import Response
from tokenvault.node import MembersView, Node, TransferProgress
from tokenvault.quorum.effects import RingDone, RingOutcome
from tokenvault.ring.membership import (
    ADDRESS_LENGTH_MAX,
    AddMember,
    Member,
    RemoveMember,
    ReplaceMember,
    is_valid_peer_id,
)
from tokenvault.ring.transfer_plan import plan_transfers

ACTIONS = ("add", "remove", "replace")
# The fields each action takes besides "action" (every one required).
ACTION_FIELDS = {
    "add": ("id", "address"),
    "remove": ("id",),
    "replace": ("id", "address", "replaces"),
}
# A refused change's reason (ring/membership.ChangeRefused, ring_register.py) -> its error.
REFUSAL_ERRORS: dict[str, type[ApiError]] = {
    "invalid_member": InvalidMember,
    "unknown_member": UnknownMember,
    "change_pending": ChangePending,
    "already_member": AlreadyMember,
    "too_few_peers": TooFewPeers,
    "nothing_pending": NothingPending,
}
_UNAVAILABLE_TEXT = {
    "overloaded": "This peer has too many membership changes in flight; retry later.",
    "recovering": "This peer is recovering and proposes no change; try another peer.",
    "not_a_member": "This peer is not a member of the ring; try another peer.",
}
MemberChange = AddMember | RemoveMember | ReplaceMember


def members_answer(view: MembersView) -> dict[str, Any]:
    """The JSON of GET /v1/admin/members."""
    return {
        "version": view.version,
        "stable": all(m.state == "active" for m in view.members),
        "members": [_member(m) for m in view.members],
        "transfers": [_transfer(t) for t in view.transfers],
        "drained": view.drained,
        "drops": [
            {
                "owner": d.owner,
                "state": d.state,
                "mappings_held": d.mappings_held,
                "mappings_dropped": d.mappings_dropped,
            }
            for d in view.drops
        ],
    }


def _transfer(progress: TransferProgress) -> dict[str, Any]:
    view = progress.view
    return {
        "owner": view.owner,
        "from": list(view.sources),
        "to": list(progress.new_set),
        "target": view.target,
        "version": view.version,
        "state": view.state,
        "source": view.source,
        "mappings_moved": view.mappings_moved,
        "bytes_moved": view.bytes_moved,
        "rate_bytes_s": round(view.rate_bytes_s, 1),
        "eta_s": None if view.eta_s is None else round(view.eta_s, 1),
        "verified": view.verified,
    }


def parse_change(payload: dict[str, Any]) -> MemberChange:
    """The change a POST body asks for; InvalidRequest or InvalidMember, nothing changed."""
    action = payload.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise InvalidRequest("'action' must be one of: add, remove, replace.")
    wanted = ACTION_FIELDS[action]
    foreign = sorted(set(payload) - {"action", *wanted})
    if foreign:
        raise InvalidRequest(f"'{action}' takes no field {', '.join(map(repr, foreign))}.")
    values: dict[str, str] = {}
    for name in wanted:
        value = payload.get(name)
        if not isinstance(value, str):
            raise InvalidRequest(f"'{action}' needs '{name}', a string.")
        values[name] = value
    for name in ("id", "replaces"):
        if name in values and not is_valid_peer_id(values[name]):
            raise InvalidMember(f"'{name}' must be 1-32 letters, digits, '_' or '-'.")
    address = values.get("address")
    if address is not None and not _is_valid_address(address):
        raise InvalidMember(
            f"'address' must be host:port (at most {ADDRESS_LENGTH_MAX} printable characters)."
        )
    if action == "add":
        return AddMember(id=values["id"], address=values["address"])
    if action == "remove":
        return RemoveMember(id=values["id"])
    if values["id"] == values["replaces"]:
        raise InvalidMember("A member cannot replace itself: 'id' and 'replaces' are equal.")
    return ReplaceMember(old=values["replaces"], new=values["id"], address=values["address"])


def change_answer(done: RingDone, owners: list[str]) -> Response:
    """202 for a change decided (or already in), else the error its outcome means."""
    if done.outcome in (RingOutcome.CHANGED, RingOutcome.ALREADY):
        membership = done.membership
        return json_response(
            202,
            {
                "version": membership.version,
                "outcome": done.outcome.value,
                "stable": membership.stable,
                "members": [_member(m) for m in membership.members],
                "moved_owners": [move.owner for move in plan_transfers(membership, owners)],
            },
        )
    if done.outcome is RingOutcome.REFUSED:
        error = REFUSAL_ERRORS.get(done.reason)
        if error is not None:
            raise error()
        raise Unavailable(_UNAVAILABLE_TEXT.get(done.reason, "This peer cannot propose now."))
    raise RingUnavailable()  # timeout, contended: indeterminate


class MembersApi:
    """The handlers of /v1/admin/members on one peer (api.py routes and admits to them)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def show(self) -> Response:
        return json_response(200, members_answer(self._node.members_view()))

    async def change(self, payload: dict[str, Any]) -> Response:
        change = parse_change(payload)
        done = await self._node.change_members(change)
        return change_answer(done, [o.id for o in self._node.config.owners])


def _member(member: Member) -> dict[str, str]:
    return {"id": member.id, "address": member.address, "state": member.state}


def _is_valid_address(address: str) -> bool:
    return (
        len(address) <= ADDRESS_LENGTH_MAX
        and address.isprintable()
        and not any(c.isspace() for c in address)
        and parse_host_port(address) is not None
    )


__all__ = [
    "ACTIONS",
    "REFUSAL_ERRORS",
    "MembersApi",
    "change_answer",
    "members_answer",
    "parse_change",
]
