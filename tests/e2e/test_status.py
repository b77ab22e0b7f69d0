"""`tokenvault status` against real peer processes: a healthy cluster exits 0 and its --json
agrees with its table; with one peer paused (SIGSTOP) or killed (SIGKILL, the first peer of
cluster.toml) it answers in under STATUS_WALL_S_MAX, the process's start included, and exits 3
naming that peer."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Cluster
from tokenvault.cli.status_model import EXIT_HEALTHY, EXIT_PEERS

pytestmark = pytest.mark.e2e

STATUS_WALL_S_MAX = 3.0  # issue 13's acceptance: with a peer paused, an answer in under 3 s
# of which the probes' own part (the peers' 2 s wait for a silent replica, and some margin); the
# rest is the command's start (about 0.5 s idle, far more on a loaded machine)
STATUS_PROBES_S_MAX = 2.5
HEALTHY_WITHIN_S = 20.0  # a fresh cluster: every peer serving, a first write spread everywhere


def _status(cluster: Cluster, *extra: str) -> tuple[int, str, float]:
    """Runs `tokenvault status --dir` as an operator would; its exit code, stdout, seconds."""
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "tokenvault", "status", "--dir", str(cluster.directory), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode in (0, 3, 4, 5), completed.stderr
    return completed.returncode, completed.stdout, time.monotonic() - started


def _wait_healthy(cluster: Cluster) -> dict[str, Any]:
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while True:
        code, out, _ = _status(cluster, "--json")
        document: dict[str, Any] = json.loads(out)
        if code == EXIT_HEALTHY or time.monotonic() > deadline:
            assert code == EXIT_HEALTHY, document["problems"]
            return document
        time.sleep(0.2)


def _table_rows(out: str, header: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    end = lines.index("", start)
    return [line.split() for line in lines[start + 1 : end]]


def test_a_healthy_converged_cluster_exits_0_and_its_json_agrees(cluster: Cluster) -> None:
    values = [{"ssn": f"123-45-{n:04d}"} for n in range(3)]
    answer = httpx.post(
        cluster.url("n2") + "/v1/tokenize",
        json={"records": values},
        headers=cluster.headers("alice"),
        verify=cluster.verify,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text

    document = _wait_healthy(cluster)
    code, out, _ = _status(cluster)

    assert code == EXIT_HEALTHY
    assert out.splitlines()[-1].startswith("healthy (exit 0): 3 peers up and serving")
    assert document["healthy"] is True and document["problems"] == []
    assert [p["state"] for p in document["peers"]] == ["up", "up", "up"]
    assert [row[:3] for row in _table_rows(out, "ID")] == [
        [p["id"], p["address"], p["state"]] for p in document["peers"]
    ]
    # the membership: cluster.toml's peers, version 1, every peer at it (the RING column, last)
    membership = document["membership"]
    assert (membership["version"], membership["stable"]) == (1, True)
    assert membership["versions"] == dict.fromkeys(cluster.peer_ids, 1)
    assert [row[-1] for row in _table_rows(out, "ID")] == ["1", "1", "1"]
    assert "members: ring version 1, stable (3 active)" in out.splitlines()
    alice = next(o for o in document["owners"] if o["owner"] == "alice")
    assert alice["converged"] is True
    assert sorted(r["peer"] for r in alice["replicas"]) == cluster.peer_ids
    assert {r["token_count"] for r in alice["replicas"]} == {len(values)}
    assert len({r["digest"] for r in alice["replicas"]}) == 1
    alice_rows = [row for row in _table_rows(out, "OWNER") if row[0] == "alice"]
    assert [(row[2], row[5], row[6]) for row in alice_rows] == [
        (r["peer"], str(r["token_count"]), r["digest"][:8]) for r in alice["replicas"]
    ]


def test_a_paused_peer_answers_fast_and_exits_3_naming_it(cluster: Cluster) -> None:
    _wait_healthy(cluster)
    cluster.pause("n3")

    code, out, elapsed_s = _status(cluster)

    assert code == EXIT_PEERS, out
    probes_s = float(out.split(" answered in ")[1].split(" s)")[0])
    assert probes_s < STATUS_PROBES_S_MAX, out
    assert elapsed_s < STATUS_WALL_S_MAX, (elapsed_s, out)
    n3 = next(row for row in _table_rows(out, "ID") if row[0] == "n3")
    assert n3[2] in ("unreachable", "down"), out  # down once the others held it so for 4 s
    assert any(line.startswith("  n3 ") for line in out.splitlines()), out
    cluster.resume("n3")


def test_the_first_peer_killed_answers_fast_and_exits_3_naming_it(cluster: Cluster) -> None:
    _wait_healthy(cluster)
    cluster.kill("n1")

    code, out, elapsed_s = _status(cluster, "--json")

    assert code == EXIT_PEERS
    document = json.loads(out)
    assert document["elapsed_s"] < STATUS_PROBES_S_MAX, document["elapsed_s"]
    assert elapsed_s < STATUS_WALL_S_MAX, (elapsed_s, document["elapsed_s"])
    assert document["ring"]["seen_by"] in ("n2", "n3")
    n1 = document["peers"][0]
    assert (n1["id"], n1["answered"]) == ("n1", False)
    assert n1["state"] in ("unreachable", "down")
    assert "cannot connect" in n1["error"]
    assert document["problems"][0]["subject"] == "n1"
    assert {p["subject"] for p in document["problems"][1:]} <= {"alice", "bob"}
