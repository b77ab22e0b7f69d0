"""GET and POST /v1/admin/members on a real node (LevelDB in a temporary directory, requests
handed to `PublicApi.handle`): every error code of docs/api.md's membership table happens as
documented and changes nothing, a valid change answers 202 with the joint version and shows in
GET, a change repeated answers `already`, and a change with no majority of voters answers 503
ring_unavailable once the register's 5 s ran out (trio's autojump clock: no real wait).

Most tests run on a one-peer cluster (N = W = R = 1): its only voter decides a change alone.
`nothing_pending` cannot be asked for over HTTP (no action finishes a change): its mapping is
tested on `change_answer` directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.http.test_api_inputs import (
    Case,
    Vault,
    assert_refused_and_nothing_changed,
    error_of,
    start_vault,
)
from tests.http.test_api_inputs import vault as vault  # the fixture: a running one-peer node
from tokenvault.http.errors import ApiError
from tokenvault.http.members_api import REFUSAL_ERRORS, change_answer, members_answer
from tokenvault.node import MembersView, TransferProgress
from tokenvault.quorum.dropping import DropView
from tokenvault.quorum.effects import RingDone, RingOutcome
from tokenvault.quorum.transfer import TransferView
from tokenvault.ring.membership import bootstrap_membership

MEMBERS = "/v1/admin/members"
NOWHERE = "127.0.0.1:9"  # an added member's address: nothing listens there


async def post(vault: Vault, payload: Any) -> tuple[int, dict[str, Any]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = await vault.call("POST", MEMBERS, body, "admin")
    answer: dict[str, Any] = json.loads(response.body)
    return response.status, answer


async def show(vault: Vault) -> dict[str, Any]:
    response = await vault.call("GET", MEMBERS, key="admin")
    assert response.status == 200
    answer: dict[str, Any] = json.loads(response.body)
    return answer


def case(name: str, payload: Any) -> Case:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return (name, "POST", MEMBERS, body, "admin")


async def test_get_answers_the_learned_membership(vault: Vault) -> None:
    assert await show(vault) == {
        "version": 1,
        "stable": True,
        "members": [{"id": "n1", "address": "127.0.0.1:7401", "state": "active"}],
        "transfers": [],
        "drained": True,
        "drops": [],
    }
    assert (await vault.call("HEAD", MEMBERS, key="admin")).status == 200


async def test_admin_key_only(vault: Vault) -> None:
    for method in ("GET", "POST"):
        refused = await vault.call(method, MEMBERS, b'{"action": "remove", "id": "n1"}', "alice")
        assert refused.status == 403 and error_of(refused)["code"] == "forbidden"
        anonymous = await vault.call(method, MEMBERS, b"", None)
        assert anonymous.status == 401 and error_of(anonymous)["code"] == "unauthenticated"
    other = await vault.call("PUT", MEMBERS, b"", "admin")
    assert other.status == 405 and dict(other.headers) == {"allow": "GET, HEAD, POST"}
    assert (await show(vault))["version"] == 1


async def test_400_invalid_request_for_a_body_that_is_no_change(vault: Vault) -> None:
    cases = [
        case("not json", b"{add"),
        case("not an object", ["add"]),
        case("no action", {"id": "n2", "address": NOWHERE}),
        case("unknown action", {"action": "grow", "id": "n2"}),
        case("action not a string", {"action": 1, "id": "n2"}),
        case("add without address", {"action": "add", "id": "n2"}),
        case("id not a string", {"action": "add", "id": 2, "address": NOWHERE}),
        case("remove with an address", {"action": "remove", "id": "n1", "address": NOWHERE}),
        case("replace without replaces", {"action": "replace", "id": "n2", "address": NOWHERE}),
        case("an unknown field", {"action": "remove", "id": "n1", "force": True}),
    ]
    await assert_refused_and_nothing_changed(vault, cases, 400, "invalid_request")
    assert (await show(vault))["version"] == 1


async def test_400_invalid_member_for_an_id_or_address_no_member_may_have(vault: Vault) -> None:
    cases = [
        case("id with a space", {"action": "add", "id": "n 2", "address": NOWHERE}),
        case("id too long", {"action": "add", "id": "n" * 33, "address": NOWHERE}),
        case("address without port", {"action": "add", "id": "n2", "address": "127.0.0.1"}),
        case("port 0", {"action": "add", "id": "n2", "address": "127.0.0.1:0"}),
        case("address with a space", {"action": "add", "id": "n2", "address": "a b:7"}),
        case("address too long", {"action": "add", "id": "n2", "address": "h" * 251 + ":7401"}),
        case("bad replaces", {"action": "replace", "id": "n2", "address": NOWHERE, "replaces": ""}),
        case(
            "replaces itself",
            {"action": "replace", "id": "n1", "address": NOWHERE, "replaces": "n1"},
        ),
    ]
    await assert_refused_and_nothing_changed(vault, cases, 400, "invalid_member")
    assert (await show(vault))["version"] == 1


async def test_404_unknown_member_for_a_change_naming_no_member(vault: Vault) -> None:
    cases = [
        case("remove", {"action": "remove", "id": "n9"}),
        case("replace", {"action": "replace", "id": "n2", "address": NOWHERE, "replaces": "n9"}),
    ]
    await assert_refused_and_nothing_changed(vault, cases, 404, "unknown_member")


async def test_409_too_few_peers_and_already_member(vault: Vault) -> None:
    await assert_refused_and_nothing_changed(
        vault,
        [case("remove the only peer", {"action": "remove", "id": "n1"})],
        409,
        "too_few_peers",
    )
    other_address = case("n1 again", {"action": "add", "id": "n1", "address": NOWHERE})
    await assert_refused_and_nothing_changed(vault, [other_address], 409, "already_member")
    assert (await show(vault))["version"] == 1


async def test_an_add_is_decided_at_the_joint_version_and_idempotent(vault: Vault) -> None:
    status, answer = await post(vault, {"action": "add", "id": "n2", "address": NOWHERE})
    assert status == 202, answer
    assert (answer["version"], answer["outcome"], answer["stable"]) == (2, "changed", False)
    members = [{"id": "n1", "address": "127.0.0.1:7401", "state": "active"}]
    members.append({"id": "n2", "address": NOWHERE, "state": "joining"})
    assert answer["members"] == members
    assert (await show(vault)) == {
        "version": 2,
        "stable": False,
        "members": members,
        "transfers": [],
        "drained": False,
        "drops": [],
    }
    assert "n2" in vault.node.links  # the links follow the learned ring
    ring = json.loads((await vault.call("GET", "/v1/ring", key="admin")).body)
    assert [(p["id"], p["self"]) for p in ring["peers"]] == [("n1", True), ("n2", False)]
    again = await post(vault, {"action": "add", "id": "n2", "address": NOWHERE})
    assert again == (202, {**answer, "outcome": "already"})
    # one change at a time: another one waits for the finish
    pending = case("add n3", {"action": "add", "id": "n3", "address": "127.0.0.1:10"})
    await assert_refused_and_nothing_changed(vault, [pending], 409, "change_pending")
    assert (await show(vault))["version"] == 2


async def test_503_ring_unavailable_without_a_majority_of_the_voters(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """n1 of a 3-peer cluster whose other peers never run: no majority promises."""
    async with trio.open_nursery() as nursery:
        alone = await start_vault(tmp_path / "cluster", nursery, nodes=3, served_before=True)
        try:
            before = (await show(alone))["version"]
            status, answer = await post(alone, {"action": "add", "id": "n4", "address": NOWHERE})
            assert status == 503, answer
            assert answer["error"]["code"] == "ring_unavailable"
            assert (await show(alone))["version"] == before == 1
        finally:
            nursery.cancel_scope.cancel()
    alone.node.close()


def test_every_refusal_reason_maps_to_its_documented_error() -> None:
    membership = bootstrap_membership([("n1", "h:1")], replica_count=1, vnodes_per_peer=1)
    expected = {
        "invalid_member": (400, "invalid_member"),
        "unknown_member": (404, "unknown_member"),
        "change_pending": (409, "change_pending"),
        "already_member": (409, "already_member"),
        "too_few_peers": (409, "too_few_peers"),
        "nothing_pending": (409, "nothing_pending"),
        "overloaded": (503, "unavailable"),
        "recovering": (503, "unavailable"),
        "not_a_member": (503, "unavailable"),
    }
    assert set(REFUSAL_ERRORS) < set(expected)
    for reason, (status, code) in expected.items():
        done = RingDone(
            op_id="o", outcome=RingOutcome.REFUSED, membership=membership, reason=reason
        )
        with pytest.raises(ApiError) as raised:
            change_answer(done, [])
        assert (raised.value.status, raised.value.code) == (status, code), reason
    for outcome in (RingOutcome.TIMEOUT, RingOutcome.CONTENDED):
        done = RingDone(op_id="o", outcome=outcome, membership=membership)
        with pytest.raises(ApiError) as raised:
            change_answer(done, [])
        assert (raised.value.status, raised.value.code) == (503, "ring_unavailable")


async def test_a_member_address_no_resolver_takes_fails_its_link_not_the_peer(
    vault: Vault,
) -> None:
    """An address is any printable host:port; one whose name IDNA cannot encode (a label over
    63 characters) made the link's task raise UnicodeError, which ended the whole peer."""
    address = "h" * 100 + ".example:7401"
    status, _ = await post(vault, {"action": "add", "id": "n2", "address": address})
    assert status == 202
    await trio.testing.wait_all_tasks_blocked()  # the link tried to send n2 the new ring
    assert vault.node.links["n2"].statistics().batches_failed >= 1
    assert (await show(vault))["version"] == 2  # and the peer still serves


async def test_a_replace_is_decided_with_the_old_member_leaving(vault: Vault) -> None:
    body = {"action": "replace", "id": "n2", "address": NOWHERE, "replaces": "n1"}
    status, answer = await post(vault, body)
    assert status == 202, answer
    assert (answer["version"], answer["outcome"]) == (2, "changed")
    assert answer["members"] == [
        {"id": "n1", "address": "127.0.0.1:7401", "state": "leaving"},
        {"id": "n2", "address": NOWHERE, "state": "joining"},
    ]
    assert answer["moved_owners"] == ["alice", "bob"]  # n1 held every owner: all move to n2
    assert await post(vault, body) == (202, {**answer, "outcome": "already"})


async def test_413_for_a_body_over_the_public_limit(vault: Vault) -> None:
    padding = " " * (1024 * 1024)
    body = ('{"action": "remove", "id": "n1"' + padding + "}").encode()
    await assert_refused_and_nothing_changed(
        vault, [("over 1 MiB", "POST", MEMBERS, body, "admin")], 413, "payload_too_large"
    )


def test_a_transfer_and_a_drop_are_shown_with_their_progress() -> None:
    view = TransferView(
        version=2,
        owner="alice",
        target="n4",
        sources=("n1", "n2", "n3"),
        source="n2",
        state="copying",
        running=True,
        mappings_moved=1200,
        bytes_moved=310_000,
        rate_bytes_s=98_000.04,
        eta_s=None,
        verified=0,
        conflicts=0,
    )
    membership = bootstrap_membership([("n1", "h:1")], replica_count=1, vnodes_per_peer=1)
    progress = TransferProgress(view=view, new_set=("n4", "n1", "n2"))
    drop = DropView(owner="bob", state="dropping", mappings_held=700, mappings_dropped=500)
    shown = members_answer(
        MembersView(
            version=2,
            members=membership.members,
            transfers=(progress,),
            drained=False,
            drops=(drop,),
        )
    )
    assert shown["drained"] is False
    assert shown["drops"] == [
        {"owner": "bob", "state": "dropping", "mappings_held": 700, "mappings_dropped": 500}
    ]
    assert shown["transfers"] == [
        {
            "owner": "alice",
            "from": ["n1", "n2", "n3"],
            "to": ["n4", "n1", "n2"],
            "target": "n4",
            "version": 2,
            "state": "copying",
            "source": "n2",
            "mappings_moved": 1200,
            "bytes_moved": 310_000,
            "rate_bytes_s": 98_000.0,
            "eta_s": None,
            "verified": 0,
        }
    ]
