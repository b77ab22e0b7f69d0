"""A machine that dies while a membership change is pending, on real processes (issue 14,
docs/membership.md §4 and §7): n3 is killed and its data directory deleted, then n4 joins. The
joint version (n4 joining) is decided by n1 and n2, but the change cannot finish: every owner
moves (N = 3 peers, all on every list) and its transfer waits until every replica, n3 among
them, learned the version. `tokenvault members replace n3 n5 ADDRESS --wait` applies over the
pending change (n3 leaving, replaced: nothing waits for it any more), and one finish ends both:
n1, n2, n4 and n5 active, every token tokenized before detokenizes through each of them.

Plain mode only: TLS changes nothing here that test_membership_join.py does not cover.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import Cluster, running_cluster
from tests.e2e.test_cluster import detokenize, tokenize
from tests.e2e.test_membership_join import members, wait_for_version

pytestmark = pytest.mark.e2e

JOINT_TIMEOUT_S = 30.0
FINISH_TIMEOUT_S = 90.0  # transfers of every owner into two new peers, 2 busy cores
STALLED_S = 4.0  # heartbeats every 0.5 s: a finish would be proposed well within this


def tokenize_some(cluster: Cluster) -> dict[str, dict[str, str]]:
    """A few records of each owner through n1: per owner, token -> value."""
    held: dict[str, dict[str, str]] = {}
    for owner in ("alice", "bob"):
        records = [{"ssn": f"{owner}-{i:03d}"} for i in range(20)]
        answer = tokenize(cluster, "n1", owner, records)
        assert answer.status_code == 200, answer.text
        tokens = [r["ssn"] for r in answer.json()["records"]]
        held[owner] = {t: str(r["ssn"]) for t, r in zip(tokens, records, strict=True)}
    return held


def members_replace(cluster: Cluster, old: str, new: str, address: str) -> None:
    env = {**os.environ, "TOKENVAULT_KEY": cluster.admin_key}
    command = [sys.executable, "-m", "tokenvault", "members", "replace", old, new, address]
    command += ["--url", cluster.url("n1"), "--wait", "--timeout", str(FINISH_TIMEOUT_S)]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=FINISH_TIMEOUT_S + 30
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "finished" in result.stdout, result.stdout


def test_a_member_dead_mid_change_is_replaced_over_it_and_both_changes_finish(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path / "cluster") as cluster:
        held = tokenize_some(cluster)
        cluster.kill("n3")
        shutil.rmtree(cluster.data_dir("n3"))  # gone for good
        cluster.start_joining("n4")
        joint = wait_for_version(cluster, "n1", 2, JOINT_TIMEOUT_S)
        assert {m["id"]: m["state"] for m in joint["members"]}["n4"] == "joining"
        time.sleep(STALLED_S)
        stalled = members(cluster, "n1")
        assert stalled is not None and (stalled["version"], stalled["stable"]) == (2, False)
        address = cluster.reserve_address("n5")
        cluster.start_joining("n5")
        members_replace(cluster, "n3", "n5", address)
        final = wait_for_version(cluster, "n2", 4, FINISH_TIMEOUT_S)
        assert final["stable"] and final["version"] == 4
        assert {m["id"]: m["state"] for m in final["members"]} == {
            "n1": "active",
            "n2": "active",
            "n4": "active",
            "n5": "active",
        }
        for peer in ("n1", "n2", "n4", "n5"):
            wait_for_version(cluster, peer, 4, FINISH_TIMEOUT_S)
            for owner, values in held.items():
                answer = detokenize(cluster, peer, owner, list(values))
                assert answer.status_code == 200, (peer, answer.text)
                found = {r["token"]: r.get("value") for r in answer.json()["results"]}
                assert found == values, (peer, owner)
        applied = [
            (e["version"], e["stable"])
            for e in cluster.log_events("n1")
            if e["event"] == "ring_applied"
        ]
        assert applied == [(2, 0), (3, 0), (4, 1)], applied
