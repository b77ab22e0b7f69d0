"""A transfer killed half-way resumes from its cursor, not from zero (issue 14, acceptance 2
and 3; docs/membership.md §3 "A transfer", §7), on real processes.

A 3-peer cluster (N=3, W=2) holds MAPPINGS mappings of one owner that moves when n4 joins;
`transfer_rate_mb_s` is low enough that the transfer into n4 takes several seconds. n4 joins,
and once its transfer is copying with a good part of the first pass durable, one side is killed
with SIGKILL:
- the target (n4), restarted with the same command: its transfer goes on from the durable
  record (mappings_moved, bytes_moved and the cursor are written in the batch of each page);
- the source the pass reads: n4 moves to another old replica from the same cursor.
Then the transfer commits, the change finishes (ring version 3, n4 active), and every value
detokenizes through n4.

The measure, from the transfer's own counters and n4's `transfer_page` log lines (both runs of
n4 write the same log): the design reads N - W + 1 = 2 whole passes (the second verifies), so
a clean transfer reads exactly 2 x B bytes, B the owner's sealed records (one whole pass,
measured as the bytes of the last pass). `reread` = every page byte n4 logged - 2 x B (- the
pass the source's death cut, for the source case) is what the kill cost: at most the pages
read but not yet durable when it died (a page or two), where a restart from zero re-reads
everything durable before the kill (the `bytes_moved` n4 answers after its restart). And
n4 stores every mapping exactly once: its final `mappings_moved` is MAPPINGS.

Plain HTTP (a joining peer has no TLS certificate yet). Polling is bounded, no fixed sleeps;
`Cluster.close` kills every process on the way out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Cluster
from tokenvault.config import load_config
from tokenvault.quorum.messages import TRANSFER_PAGE_MAPPINGS_MAX
from tokenvault.ring.membership import AddMember, apply_change, bootstrap_membership
from tokenvault.ring.transfer_plan import plan_transfers

pytestmark = pytest.mark.e2e

MAPPINGS = 24_000
BATCH = 1_000  # records per tokenize request (the API's limit)
RATE_MB_S = 0.4  # a whole pass of MAPPINGS (about 61 bytes each) takes about 4 s
KILL_AT = MAPPINGS // 3  # mappings_moved at which a side is killed (well into pass 1)
PAGE_MAPPINGS = TRANSFER_PAGE_MAPPINGS_MAX  # at most this many mappings a page
CANDIDATE_OWNERS = ("alice", "bob", "carol", "dave", "erin", "frank")
POLL_S = 0.05
TRANSFER_BOUND_S = 60.0  # a transfer of 2 passes at RATE_MB_S on 2 busy cores, and the finish


def owners_moving_to_n4(cluster: Cluster) -> tuple[str, ...]:
    """The cluster's owners whose replicas change when n4 is added, each to n4 (placement
    does not depend on n4's address)."""
    config = load_config(cluster.init.config_path)
    base = bootstrap_membership(
        ((p.id, p.address) for p in config.peers),
        replica_count=config.quorum.replica_count,
        vnodes_per_peer=config.vnodes_per_peer,
    )
    joint = apply_change(base, AddMember(id="n4", address="127.0.0.1:1"))
    moves = plan_transfers(joint, (o.id for o in config.owners))
    assert all(move.targets == ("n4",) for move in moves)
    return tuple(move.owner for move in moves)


def new_cluster(tmp_path: Path) -> tuple[Cluster, str]:
    cluster = Cluster(tmp_path / "cluster", owners=CANDIDATE_OWNERS)
    moving = owners_moving_to_n4(cluster)
    assert moving, f"none of {CANDIDATE_OWNERS} moves to n4"
    owner = moving[0]
    cluster.set_cluster_option("transfer_rate_mb_s", RATE_MB_S)
    return cluster, owner


def load(cluster: Cluster, owner: str, http: httpx.Client) -> dict[str, str]:
    """MAPPINGS fresh values tokenized through the three peers in turn: token -> value."""
    tokens: dict[str, str] = {}
    for batch in range(MAPPINGS // BATCH):
        values = [f"{batch:03d}-{k:04d}-transfer-resume" for k in range(BATCH)]
        peer = cluster.peer_ids[batch % 3]
        answer = http.post(
            cluster.url(peer) + "/v1/tokenize",
            headers=cluster.headers(owner),
            json={"records": [{"ssn": v} for v in values]},
        )
        assert answer.status_code == 200, answer.text
        for value, record in zip(values, answer.json()["records"], strict=True):
            tokens[record["ssn"]] = value
    assert len(tokens) == MAPPINGS
    wait_converged(cluster, owner, http)
    return tokens


def wait_converged(cluster: Cluster, owner: str, http: httpx.Client) -> None:
    """Until every replica holds the same mappings of `owner` (equal digests): then every
    whole pass reads the same bytes, whichever old replica it reads."""
    deadline = time.monotonic() + TRANSFER_BOUND_S
    view = None
    while time.monotonic() < deadline:
        answer = http.get(
            cluster.url("n1") + f"/v1/admin/owners/{owner}", headers=cluster.admin_headers()
        )
        view = answer.json()
        if view.get("converged") is True:
            return
        time.sleep(POLL_S)
    raise AssertionError(f"{owner} not converged in {TRANSFER_BOUND_S} s: {view}")


def transfer_into_n4(cluster: Cluster, http: httpx.Client, owner: str) -> dict[str, Any] | None:
    """n4's view of its transfer of `owner`, or None while n4 does not answer or has none (the
    cluster's other owners, empty, move too)."""
    try:
        answer = http.get(cluster.url("n4") + "/v1/admin/members", headers=cluster.admin_headers())
    except httpx.HTTPError:
        return None
    assert answer.status_code == 200, answer.text
    transfers: list[dict[str, Any]] = answer.json()["transfers"]
    assert all(t["target"] == "n4" and t["version"] == 2 for t in transfers), transfers
    mine = [t for t in transfers if t["owner"] == owner]
    return mine[0] if mine else None


def wait_transfer(
    cluster: Cluster,
    http: httpx.Client,
    owner: str,
    done: Callable[[dict[str, Any]], bool],
    what: str,
) -> dict[str, Any]:
    deadline = time.monotonic() + TRANSFER_BOUND_S
    seen = None
    while time.monotonic() < deadline:
        seen = transfer_into_n4(cluster, http, owner)
        if seen is not None and done(seen):
            return seen
        time.sleep(POLL_S)
    raise AssertionError(f"the transfer into n4 did not get {what} in {TRANSFER_BOUND_S} s: {seen}")


def wait_stable(cluster: Cluster, http: httpx.Client) -> None:
    """Until n1 learned the finish: version 3, n4 active."""
    deadline = time.monotonic() + TRANSFER_BOUND_S
    view = None
    while time.monotonic() < deadline:
        view = http.get(cluster.url("n1") + "/v1/admin/members", headers=cluster.admin_headers())
        body = view.json()
        if body["version"] >= 3 and body["stable"]:
            assert {m["id"]: m["state"] for m in body["members"]}["n4"] == "active"
            return
        time.sleep(POLL_S)
    raise AssertionError(f"the change did not finish in {TRANSFER_BOUND_S} s: {view}")


def pages(cluster: Cluster, owner: str) -> list[dict[str, Any]]:
    """n4's transfer_page, transfer_pass and transfer_committed lines of `owner`, both runs,
    in order."""
    names = ("transfer_page", "transfer_pass", "transfer_committed")
    return [e for e in cluster.log_events("n4") if e["event"] in names and e.get("owner") == owner]


def pass_bytes(events: list[dict[str, Any]]) -> list[int]:
    """The bytes of the pages of each pass, in order (a pass ends with transfer_pass, the last
    with transfer_committed)."""
    passes, current = [], 0
    for event in events:
        if event["event"] == "transfer_page":
            current += int(event["bytes"])
        else:
            passes.append(current)
            current = 0
    assert current == 0, "pages after the commit"
    return passes


def page_bytes_max(events: list[dict[str, Any]]) -> int:
    return max(int(e["bytes"]) for e in events if e["event"] == "transfer_page")


def detokenize_through_n4(
    cluster: Cluster, owner: str, http: httpx.Client, tokens: dict[str, str]
) -> None:
    listed = list(tokens)
    for start in range(0, len(listed), BATCH):
        asked = listed[start : start + BATCH]
        answer = http.post(
            cluster.url("n4") + "/v1/detokenize",
            headers=cluster.headers(owner),
            json={"tokens": asked},
        )
        assert answer.status_code == 200, answer.text
        for token, result in zip(asked, answer.json()["results"], strict=True):
            assert result["found"] and result["value"] == tokens[token], token[:8]


def half_way(
    cluster: Cluster, owner: str, http: httpx.Client
) -> tuple[dict[str, str], dict[str, Any]]:
    """Starts the cluster, loads it, starts n4 with --join, and waits until the transfer of
    `owner` into n4 is copying with KILL_AT mappings moved: the tokens, and that view."""
    cluster.start_all()
    tokens = load(cluster, owner, http)
    cluster.start_joining("n4")

    def copying_half_way(view: dict[str, Any]) -> bool:
        return bool(view["state"] == "copying" and view["mappings_moved"] >= KILL_AT)

    before = wait_transfer(cluster, http, owner, copying_half_way, "half-way")
    assert before["mappings_moved"] < MAPPINGS, "the kill came too late: lower RATE_MB_S"
    assert before["owner"] == owner and before["target"] == "n4"
    assert before["to"] != before["from"] and "n4" in before["to"], before
    # the change is held at its joint version while the transfer runs; another one is refused
    joint = http.get(cluster.url("n1") + "/v1/admin/members", headers=cluster.admin_headers())
    body = joint.json()
    assert (body["version"], body["stable"]) == (2, False), body
    assert {m["id"]: m["state"] for m in body["members"]}["n4"] == "joining"
    refused = http.post(
        cluster.url("n2") + "/v1/admin/members",
        headers=cluster.admin_headers(),
        json={"action": "remove", "id": "n3"},
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "change_pending"
    return tokens, before


def test_a_target_killed_half_way_resumes_from_its_cursor(tmp_path: Path) -> None:
    cluster, owner = new_cluster(tmp_path)
    try:
        with httpx.Client(timeout=30.0, trust_env=False) as http:
            tokens, before = half_way(cluster, owner, http)
            cluster.kill("n4")
            cluster.start("n4")  # the same command: --join on the same address and data dir
            after = wait_transfer(cluster, http, owner, lambda v: True, "shown after the restart")
            assert after["state"] in ("copying", "verifying"), after  # never from the start
            # the durable record: at most the pages not yet synced at the kill are lost
            assert after["mappings_moved"] >= before["mappings_moved"] - 2 * PAGE_MAPPINGS > 0
            assert after["bytes_moved"] > 0
            committed = wait_transfer(
                cluster, http, owner, lambda v: v["state"] == "committed", "done"
            )
            wait_stable(cluster, http)
            detokenize_through_n4(cluster, owner, http, tokens)
        events = pages(cluster, owner)
        passes = pass_bytes(events)
        assert len(passes) == committed["verified"] == 2, passes  # N - W + 1 whole passes
        whole = passes[-1]  # B: the owner's records, read whole once
        reread = sum(passes) - 2 * whole
        assert committed["mappings_moved"] == MAPPINGS  # each mapping stored once
        assert committed["bytes_moved"] == 2 * whole  # each page counted once, durably
        # from the cursor: only what was not durable at the kill is read again, far less than
        # what a restart from zero would read again (everything durable before the kill)
        assert 0 <= reread <= 2 * page_bytes_max(events), (passes, reread)
        assert reread < after["bytes_moved"], (passes, reread, after)
        print(
            f"target killed at {before['mappings_moved']}/{MAPPINGS} mappings: resumed at "
            f"{after['mappings_moved']}; read {sum(passes)} B for 2 passes of {whole} B "
            f"({sum(passes) / (2 * whole):.3f}x; re-read {reread} B)"
        )
    finally:
        cluster.close()


def test_a_source_killed_half_way_is_replaced_from_the_same_cursor(tmp_path: Path) -> None:
    cluster, owner = new_cluster(tmp_path)
    try:
        with httpx.Client(timeout=30.0, trust_env=False) as http:
            tokens, before = half_way(cluster, owner, http)
            source = before["source"]
            assert source in before["from"], before
            cluster.kill(source)
            moved_on = wait_transfer(
                cluster,
                http,
                owner,
                lambda v: v["source"] not in ("", source) and v["mappings_moved"] > KILL_AT,
                "another source",
            )
            assert moved_on["state"] == "copying", moved_on  # the same pass goes on
            cluster.start(source)
            cluster.wait_ready(source)
            committed = wait_transfer(
                cluster, http, owner, lambda v: v["state"] == "committed", "done"
            )
            wait_stable(cluster, http)
            detokenize_through_n4(cluster, owner, http, tokens)
        events = pages(cluster, owner)
        replaced = [
            e
            for e in cluster.log_events("n4")
            if e["event"] == "transfer_source_replaced" and e.get("owner") == owner
        ]
        assert [e["was"] for e in replaced] == [source], replaced
        passes = pass_bytes(events)
        # the cut pass covers the range but no single replica: two whole passes follow
        assert len(passes) == 3 and committed["verified"] == 2, passes
        whole = passes[-1]
        assert committed["mappings_moved"] == MAPPINGS
        # the cut pass went on from the same cursor: it read the range once, not its first
        # part twice (a restart from zero would add every byte read before the kill)
        cut_extra = passes[0] - whole
        assert abs(cut_extra) <= page_bytes_max(events), (passes, cut_extra)
        assert cut_extra < before["bytes_moved"], (passes, before)
        print(
            f"source {source} killed at {before['mappings_moved']}/{MAPPINGS} mappings; the cut "
            f"pass read {passes[0]} B for {whole} B of records; passes {passes}"
        )
    finally:
        cluster.close()
