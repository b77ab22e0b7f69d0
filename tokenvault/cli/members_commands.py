"""`tokenvault members show | add | remove | replace`: the ring's membership, and one change to
it (docs/membership.md §2, docs/operations.md "Growing and shrinking").

Rules:
- The admin key is the default with --dir (`--owner` is refused by the peer: 403). Requests go
  through the client library like every client command (api_calls.send): tried at the target's
  peers in turn; a change is safe to send again (the same change answers `already`), so a
  timeout or a 503 ring_unavailable is retried too, and an error that remains is exit code 1.
- A change returns once its joint version is decided: one line naming the change, the version
  and the owners that move (`--json`: the peer's answer). With --wait it then reads
  GET /v1/admin/members every WAIT_POLL_INTERVAL_S until the ring is stable at a later version
  with the change applied (the finish), or --timeout seconds passed (exit code 1, saying
  where the ring is).
- `show` prints the version and one line per member (`--json`: the peer's answer).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, TypeVar

import httpx

from tokenvault.cli.api_calls import send
from tokenvault.cli.exits import EXIT_OK, CliError
from tokenvault.cli.target import Target, target_of
from tokenvault.client import BadAnswer, Members, MembersChanged, calls
from tokenvault.client.results import decode_answer

WAIT_POLL_INTERVAL_S = 1.0
WAIT_TIMEOUT_S_DEFAULT = 3600.0


def members_show_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    target = target_of(args, admin_by_default=True)
    answer = send(target, calls.members_call(), transport)
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return EXIT_OK
    members = _decoded(answer, target, Members)
    print(describe_members(members))
    return EXIT_OK


def members_change_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    target = target_of(args, admin_by_default=True)
    action: str = args.action
    if action == "add":
        call = calls.members_change_call("add", args.member, address=args.address)
        changed_id = args.member
    elif action == "remove":
        call = calls.members_change_call("remove", args.member)
        changed_id = args.member
    else:
        call = calls.members_change_call(
            "replace", args.new, address=args.address, replaces=args.old
        )
        changed_id = args.new
    answer = send(target, call, transport)
    changed = _decoded(answer, target, MembersChanged)
    if args.json and not args.wait:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not args.json:
        print(describe_change(action, changed_id, changed))
    if not args.wait:
        return EXIT_OK
    finished = wait_for_finish(target, transport, args, changed_id)
    if args.json:
        print(json.dumps(finished, indent=2, ensure_ascii=False))
    else:
        members = _decoded(finished, target, Members)
        print(f"finished: ring version {members.version}, stable")
    return EXIT_OK


def wait_for_finish(
    target: Target,
    transport: httpx.BaseTransport | None,
    args: argparse.Namespace,
    changed_id: str,
) -> Any:
    """GET /v1/admin/members until the change is finished; its last answer. CliError once
    --timeout seconds passed."""
    deadline = time.monotonic() + args.timeout
    while True:
        answer = send(target, calls.members_call(), transport)
        members = _decoded(answer, target, Members)
        if is_finished(members, args.action, changed_id, args.old):
            return answer
        if time.monotonic() >= deadline:
            state = "stable" if members.stable else "a change pending"
            raise CliError(
                f"the change did not finish within {args.timeout:g} s: the ring is at version"
                f" {members.version}, {state}; the change goes on (members show)"
            )
        pause(WAIT_POLL_INTERVAL_S)


def pause(seconds: float) -> None:
    time.sleep(seconds)  # looked up at each call: tests replace it


def is_finished(members: Members, action: str, changed_id: str, old: str | None) -> bool:
    """The ring is stable with the change applied (a joint version is never stable)."""
    if not members.stable:
        return False
    states = {m.id: m.state for m in members.members}
    if action == "add":
        return states.get(changed_id) == "active"
    if action == "remove":
        return changed_id not in states
    return states.get(changed_id) == "active" and old not in states


def describe_members(members: Members) -> str:
    state = "stable" if members.stable else "a change pending"
    lines = [f"ring version {members.version}, {state}"]
    width = max(len(m.id) for m in members.members)
    for member in members.members:
        lines.append(f"  {member.id:<{width}}  {member.address}  {member.state}")
    if members.transfers:
        lines.append(f"  transfers: {len(members.transfers)}")
    return "\n".join(lines)


def describe_change(action: str, changed_id: str, changed: MembersChanged) -> str:
    what = {"add": "added", "remove": "removed", "replace": "replacing"}[action]
    already = " (already in)" if changed.outcome == "already" else ""
    moved = ", ".join(changed.moved_owners) or "none"
    phase = "stable" if changed.stable else "joint: transfers follow, then the finish"
    return (
        f"{changed_id} {what}{already}: ring version {changed.version} ({phase});"
        f" owners moving: {moved}"
    )


AnswerT = TypeVar("AnswerT")


def _decoded(answer: Any, target: Target, kind: type[AnswerT]) -> AnswerT:
    try:
        return decode_answer(answer, target.url, kind)
    except BadAnswer as error:
        raise CliError(str(error)) from None
