"""Elastic membership on real processes (docs/membership.md, issue 14): a 3-peer cluster, and a
fourth peer started with `node --join` on an empty data directory. It asks the bootstrap peers
to add it, the cluster decides the joint version (2) with n4 `joining`, the transfers into n4
commit, and the finish (version 3) makes it `active`: every peer learns it, and `tokenvault
members show` says so through any peer, n4's own included. (Under client load, with removes
and replaces: test_membership_load.py.)

Plain HTTP only: a joining peer's TLS certificate is not issued by `init --tls` or
`renew-certs` yet (they know cluster.toml's peers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Cluster

pytestmark = pytest.mark.e2e

FINISH_TIMEOUT_S = 60.0  # a join, transfers of an empty cluster and the finish, 2 busy cores


def members(cluster: Cluster, peer: str) -> dict[str, Any] | None:
    """GET /v1/admin/members at `peer`, or None while it does not answer."""
    try:
        answer = httpx.get(
            cluster.url(peer) + "/v1/admin/members",
            headers=cluster.admin_headers(),
            timeout=2.0,
            verify=cluster.verify,
        )
    except httpx.HTTPError:
        return None
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def wait_for_version(cluster: Cluster, peer: str, version: int, timeout_s: float) -> dict[str, Any]:
    """Polls `peer` until it learned `version` (bounded); its last answer."""
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = members(cluster, peer)
        if seen is not None and seen["version"] >= version:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{peer} did not learn ring version {version} in {timeout_s} s: {seen}")


def members_show(cluster: Cluster, peer: str) -> dict[str, Any]:
    """`tokenvault members show --json` against one peer (the admin key from the environment)."""
    env = {**os.environ, "TOKENVAULT_KEY": cluster.admin_key}
    command = [sys.executable, "-m", "tokenvault", "members", "show", "--json"]
    result = subprocess.run(
        [*command, "--url", cluster.url(peer)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    shown: dict[str, Any] = json.loads(result.stdout)
    return shown


@pytest.fixture
def plain(cluster: Cluster) -> Cluster:
    if cluster.tls:
        pytest.skip("a joining peer has no TLS certificate yet (init --tls issues the file's)")
    return cluster


def test_a_peer_started_with_join_is_added_then_active(plain: Cluster) -> None:
    c = plain
    c.start_joining("n4")
    address = c.reserve_address("n4")
    finished = wait_for_version(c, "n1", 3, FINISH_TIMEOUT_S)
    states = {m["id"]: (m["address"], m["state"]) for m in finished["members"]}
    assert states == {
        "n1": (c.url("n1").removeprefix("http://"), "active"),
        "n2": (c.url("n2").removeprefix("http://"), "active"),
        "n3": (c.url("n3").removeprefix("http://"), "active"),
        "n4": (address, "active"),
    }
    assert (finished["version"], finished["stable"]) == (3, True)
    for peer in ("n1", "n2", "n3", "n4"):  # every peer learned it, the new one too
        wait_for_version(c, peer, 3, FINISH_TIMEOUT_S)
        shown = members_show(c, peer)
        assert (shown["version"], shown["stable"]) == (3, True), peer
        assert {m["id"]: m["state"] for m in shown["members"]}["n4"] == "active", peer
    # n1 went through the joint version (n4 joining: not stable) before the finish
    applied = [
        (e["version"], e["stable"]) for e in c.log_events("n1") if e["event"] == "ring_applied"
    ]
    assert applied[:2] == [(2, 0), (3, 1)], applied
    for peer in ("n1", "n2", "n3", "n4"):
        assert not [e for e in c.log_events(peer) if e.get("level") == "error"], peer
