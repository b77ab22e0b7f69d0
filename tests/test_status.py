"""`tokenvault status` against a fake 3-peer cluster (httpx.MockTransport, no sockets): what it
asks, the table, --json, and the exit codes of docs/api.md.

The fake answers per peer (by port) as real peers would; a paused peer raises a read timeout, a
dead one a refused connection, as httpx does against real sockets.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokenvault.cli import main
from tokenvault.cli.status_membership import membership_status
from tokenvault.cli.status_model import (
    EXIT_CONFIGURATION,
    EXIT_HEALTHY,
    EXIT_NOT_CONVERGED,
    EXIT_PEERS,
    STATUS_FORMAT,
    TransferStatus,
)
from tokenvault.cli.status_probe import (
    INSPECT_READ_TIMEOUT_S,
    PROBE_CONNECT_TIMEOUT_S,
    PROBE_READ_TIMEOUT_S,
    PeerProbe,
    Probed,
)
from tokenvault.cli.status_progress import PROGRESS_DELAY_S, ProgressLine
from tokenvault.cli.status_transfers import print_membership, progress_bar, transfer_line
from tokenvault.cluster_init import load_keys

PEERS = ("n1", "n2", "n3")
OWNERS = ("alice", "bob")
FINGERPRINT = "3f1c0e9a5b7d2e4f6a8c1b3d5e7f9a0b"
DIGEST = "2402f0f5080cf82e44826a8ffd777203"


def _address(peer_id: str) -> str:
    return f"127.0.0.1:{7400 + int(peer_id[1:])}"


class FakeCluster:
    """Three peers n1..n3 at 127.0.0.1:7401..7403 (as `init --base-port 7400` makes them),
    healthy and converged until a test changes them; remembers every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._lock = threading.Lock()
        self.paused: set[str] = set()
        self.dead: set[str] = set()
        self.views: dict[tuple[str, str], str] = {}  # (holder, peer) -> state, else "up"
        self.nodes: dict[str, dict[str, Any]] = {p: _node(p) for p in PEERS}
        self.rings: dict[str, dict[str, Any]] = {p: _ring(p) for p in PEERS}
        self.members: dict[str, dict[str, Any]] = {p: _members() for p in PEERS}
        self.replicas: dict[tuple[str, str], dict[str, Any]] = {}  # (owner, peer) -> changes
        self.answers: dict[tuple[str, str], httpx.Response] = {}  # (peer, path) -> answer
        self.barrier: threading.Barrier | None = None  # ring requests wait here when set

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def kill(self, peer_id: str) -> None:
        """Dead: refuses connections, and the others hold it down."""
        self.dead.add(peer_id)
        for holder in PEERS:
            if holder != peer_id:
                self.views[holder, peer_id] = "down"

    def paths(self, peer_id: str) -> list[str]:
        return [r.url.path for r in self.requests if r.url.port == 7400 + int(peer_id[1:])]

    def _handle(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
        peer_id = f"n{request.url.port - 7400}" if request.url.port else "?"
        if peer_id in self.dead or peer_id not in PEERS:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if peer_id in self.paused:
            raise httpx.ReadTimeout("timed out", request=request)
        path = request.url.path
        if (peer_id, path) in self.answers:
            return self.answers[peer_id, path]
        if path == "/v1/ring":
            if self.barrier is not None:
                self.barrier.wait(timeout=5)
            return httpx.Response(200, json=self._ring_of(peer_id))
        if path == "/v1/admin/node":
            return httpx.Response(200, json={**self.nodes[peer_id], "peers": []})
        if path == "/v1/admin/members":
            return httpx.Response(200, json=self.members[peer_id])
        if path.startswith("/v1/admin/owners/"):
            return httpx.Response(200, json=self._inspection(path.rsplit("/", 1)[1]))
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "No."}})

    def _ring_of(self, holder: str) -> dict[str, Any]:
        ring = self.rings[holder]
        peers = [
            {**p, "state": self.views.get((holder, p["id"]), p["state"])} for p in ring["peers"]
        ]
        return {**ring, "peers": peers}

    def _inspection(self, owner: str) -> dict[str, Any]:
        replicas: list[dict[str, Any]] = []
        for peer_id in ("n2", "n1", "n3"):  # the preference list, not the peers' order
            if peer_id in self.dead or peer_id in self.paused:
                replicas.append({"peer": peer_id, "reachable": False})
                continue
            replica = {
                "peer": peer_id,
                "reachable": True,
                "active_epoch": 4,
                "active_epoch_id": "5d0c8e2b7a41",
                "token_count": 5,
                "digest": DIGEST,
                "complete": True,
            }
            replicas.append({**replica, **self.replicas.get((owner, peer_id), {})})
        answered = [r for r in replicas if r["reachable"]]
        epochs_agree = len(answered) == 3 and len({r["active_epoch"] for r in answered}) == 1
        converged = epochs_agree and len({r["digest"] for r in answered}) == 1
        return {
            "owner": owner,
            "replicas": replicas,
            "converged": converged,
            "epochs_agree": epochs_agree,
        }


def _ring(holder: str) -> dict[str, Any]:
    return {
        "peer": holder,
        "version": "af1737aecef992e7",
        "replicas": 3,
        "write_quorum": 2,
        "read_quorum": 2,
        "peers": [
            {"id": p, "address": _address(p), "state": "up", "for_s": 30.0, "self": p == holder}
            for p in PEERS
        ],
    }


def _members(version: int = 1, states: dict[str, str] | None = None) -> dict[str, Any]:
    """GET /v1/admin/members: every peer active at `version` unless `states` says otherwise."""
    states = states or {}
    members = [
        {"id": p, "address": _address(p), "state": states.get(p, "active")}
        for p in (*PEERS, *states.keys() - set(PEERS))
    ]
    return {
        "version": version,
        "stable": all(m["state"] == "active" for m in members),
        "members": members,
        "transfers": [],
    }


def _transfer(owner: str, target: str, **changes: Any) -> dict[str, Any]:
    """One transfer into `target`, as its GET /v1/admin/members lists it."""
    return {
        "owner": owner,
        "from": ["n1", "n2", "n3"],
        "to": ["n1", "n2", "n4"],
        "target": target,
        "version": 2,
        "state": "copying",
        "source": "n1",
        "mappings_moved": 1200,
        "bytes_moved": 300_000,
        "rate_bytes_s": 100_000.0,
        "eta_s": 9.0,
        "verified": 0,
        **changes,
    }


def _node(peer_id: str) -> dict[str, Any]:
    return {
        "peer": peer_id,
        "ready": True,
        "readiness": "serving",
        "address": _address(peer_id),
        "cluster_fingerprint": FINGERPRINT,
        "uptime_s": 30.0,
        "state": "serving",
        "recovery": {"phase": "serving", "owners_total": 2, "owners_learned": 0},
        "owners": list(OWNERS),
        "anti_entropy": {
            "enabled": True,
            "last_pass": {"outcome": "in_sync", "finished_s_ago": 0.4},
        },
        "hints": [],
    }


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENVAULT_KEY", raising=False)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    assert main(["init", "--nodes", "3", "--base-port", "7400", "--dir", str(tmp_path)]) == 0
    return tmp_path


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


def _status(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["status", "--dir", str(directory), *extra], transport=cluster.transport())
    return code, capsys.readouterr().out.splitlines()


def _status_json(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict[str, Any]]:
    code, lines = _status(directory, cluster, capsys, "--json", *extra)
    document: dict[str, Any] = json.loads("\n".join(lines))
    assert document["exit_code"] == code
    return code, document


def _rows(lines: list[str], header: str) -> list[list[str]]:
    """The rows of the table whose header line starts with `header`, split into cells."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows: list[list[str]] = []
    for line in lines[start:]:
        if not line:
            break
        rows.append(_cells(line, lines[start]))
    return rows


def _cells(line: str, header: str) -> list[str]:
    """Cuts a table line where its header's columns start (a cell may hold single spaces)."""
    starts = [0] + [
        i + 2 for i in range(len(header) - 2) if header[i : i + 2] == "  " and header[i + 2] != " "
    ]
    ends = [*starts[1:], len(line) + 1]
    return [line[start:end].strip() for start, end in zip(starts, ends, strict=True)]


# -- a healthy cluster ----------------------------------------------------------------------------


def test_a_healthy_converged_cluster_exits_0(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _status(directory, cluster, capsys)

    assert code == EXIT_HEALTHY
    assert lines[0].startswith("as seen by n")
    assert "ring version af1737aecef992e7, N=3 W=2 R=2 (3 of 3 peers answered in" in lines[0]
    assert _rows(lines, "ID") == [
        ["ID", "ADDRESS", "STATE", "FOR", "SERVING", "HINTS HELD", "ANTI-ENTROPY", "RING"],
        ["n1", "127.0.0.1:7401", "up", "30s", "serving", "0", "in_sync 0s ago", "1"],
        ["n2", "127.0.0.1:7402", "up", "30s", "serving", "0", "in_sync 0s ago", "1"],
        ["n3", "127.0.0.1:7403", "up", "30s", "serving", "0", "in_sync 0s ago", "1"],
    ]
    assert "members: ring version 1, stable (3 active)" in lines
    owners = _rows(lines, "OWNER")
    assert owners[0] == [
        "OWNER",
        "CONVERGED",
        "REPLICA",
        "ANSWERED",
        "EPOCH",
        "TOKENS",
        "DIGEST",
        "HINTS FOR IT",
    ]
    assert owners[1:4] == [
        ["alice", "yes", peer, "yes", "4", "5", DIGEST[:8], "0"] for peer in ("n2", "n1", "n3")
    ]
    assert [row[:3] for row in owners[4:]] == [["bob", "yes", p] for p in ("n2", "n1", "n3")]
    assert lines[-1] == (
        "healthy (exit 0): 3 peers up and serving, one configuration, 2 owners converged"
    )


def test_every_peer_is_asked_with_short_timeouts_and_the_admin_key(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    _status(directory, cluster, capsys)

    admin_key = load_keys(directory / "keys.json").admin
    assert {r.headers["authorization"] for r in cluster.requests} == {f"Bearer {admin_key}"}
    for peer_id in PEERS:
        assert cluster.paths(peer_id).count("/v1/ring") == 1
        assert cluster.paths(peer_id).count("/v1/admin/node") == 1
        assert cluster.paths(peer_id).count("/v1/admin/members") == 1
    owner_requests = [r for r in cluster.requests if r.url.path.startswith("/v1/admin/owners/")]
    assert sorted(r.url.path for r in owner_requests) == [
        "/v1/admin/owners/alice",
        "/v1/admin/owners/bob",
    ]
    assert len({r.url.port for r in owner_requests}) == 1  # at the peer whose admin view came
    for request in cluster.requests:
        timeout = request.extensions["timeout"]
        assert timeout["connect"] == PROBE_CONNECT_TIMEOUT_S
        inspection = request.url.path.startswith("/v1/admin/owners/")
        assert timeout["read"] == (INSPECT_READ_TIMEOUT_S if inspection else PROBE_READ_TIMEOUT_S)


def test_the_peers_are_asked_at_once(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each ring request waits until all three are in flight: asked one after the other, the
    barrier would break (after 5 s) and no ring would come."""
    cluster.barrier = threading.Barrier(3)
    code, _ = _status(directory, cluster, capsys)
    assert code == EXIT_HEALTHY
    assert not cluster.barrier.broken


# -- peers that do not answer -------------------------------------------------------------------


def test_a_paused_peer_is_unreachable_exit_3_and_no_word_in_a_numeric_column(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.paused.add("n3")
    code, lines = _status(directory, cluster, capsys)

    assert code == EXIT_PEERS  # its owners are not converged either, the peer comes first
    peers = _rows(lines, "ID")
    assert peers[3] == ["n3", "127.0.0.1:7403", "unreachable", "-", "-", "-", "-", "-"]
    alice = [row for row in _rows(lines, "OWNER") if row[0] == "alice"]
    assert alice[2] == ["alice", "NO", "n3", "no", "-", "-", "-", "0"]
    assert "3 problems (exit 3):" in lines
    assert (
        f"  n3 unreachable: no answer from http://127.0.0.1:7403 within {PROBE_READ_TIMEOUT_S} s"
        in lines
    )
    assert "  alice not converged: n3 did not answer" in lines


def test_a_dead_peer_held_down_is_down(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.kill("n2")
    cluster.nodes["n1"]["hints"] = [{"target": "n2", "hints": 4, "bytes": 100, "in_flight": 0}]
    cluster.nodes["n3"]["hints"] = [{"target": "n2", "hints": 1, "bytes": 10, "in_flight": 1}]
    code, lines = _status(directory, cluster, capsys)

    assert code == EXIT_PEERS
    peers = _rows(lines, "ID")
    assert peers[1][5] == "4 for n2"
    assert peers[2] == ["n2", "127.0.0.1:7402", "down", "30s", "-", "-", "-", "-"]
    assert (
        [row[2:] for row in _rows(lines, "OWNER")[1:4]]
        == [
            ["n2", "no", "-", "-", "-", "5"],  # the hints n1 and n3 hold for n2
            ["n1", "yes", "4", "5", DIGEST[:8], "0"],
            ["n3", "yes", "4", "5", DIGEST[:8], "0"],
        ]
    )
    problem = next(line for line in lines if line.startswith("  n2 "))
    assert problem.startswith("  n2 down as n1, n3 see it; cannot connect to http://127.0.0.1:7402")


def test_the_first_peer_dead_the_ring_comes_from_another(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.kill("n1")
    code, lines = _status(directory, cluster, capsys)
    assert code == EXIT_PEERS
    assert lines[0].startswith(("as seen by n2", "as seen by n3"))
    assert "(2 of 3 peers answered in" in lines[0]
    assert _rows(lines, "ID")[1][:3] == ["n1", "127.0.0.1:7401", "down"]


def test_no_ring_at_all_exits_1_naming_each_peer_without_the_key(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.kill("n1")
    cluster.paused.update({"n2", "n3"})
    capsys.readouterr()
    code = main(["status", "--dir", str(directory)], transport=cluster.transport())

    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("tokenvault: no peer answered the ring: ")
    assert "cannot connect to http://127.0.0.1:7401" in captured.err
    assert "no answer from http://127.0.0.1:7403 within" in captured.err
    assert load_keys(directory / "keys.json").admin not in captured.err


def test_a_ring_that_lists_no_peers_is_no_ring(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    for peer_id in PEERS:
        cluster.answers[peer_id, "/v1/ring"] = httpx.Response(200, json={"peers": "none"})
    capsys.readouterr()
    assert main(["status", "--dir", str(directory)], transport=cluster.transport()) == 1
    assert "answered a ring that lists no peers" in capsys.readouterr().err


def test_a_wrong_key_exits_1_with_the_peers_answer(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = httpx.Response(
        401, json={"error": {"code": "unauthenticated", "message": "The key is not known."}}
    )
    for peer_id in PEERS:
        for path in ("/v1/ring", "/v1/admin/node"):
            cluster.answers[peer_id, path] = refused
    code = main(["status", "--url", "127.0.0.1:7401", "--key", "k"], transport=cluster.transport())
    assert code == 1
    assert "401 unauthenticated: The key is not known." in capsys.readouterr().err


# -- the peers' own states --------------------------------------------------------------------


def test_a_suspect_peer_is_named_with_who_holds_it(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.views["n2", "n3"] = "suspect"
    code, lines = _status(directory, cluster, capsys)
    assert code == EXIT_PEERS
    assert _rows(lines, "ID")[3][:3] == ["n3", "127.0.0.1:7403", "suspect"]
    assert "  n3 suspect as n2 see it" in lines


def test_a_recovering_peer_shows_its_progress(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.nodes["n1"].update(
        state="recovering",
        ready=False,
        readiness="recovering",
        recovery={
            "phase": "recovering",
            "owners_total": 2,
            "owners_learned": 2,
            "owners_refilled": 1,
        },
    )
    code, lines = _status(directory, cluster, capsys)
    assert code == EXIT_PEERS
    row = _rows(lines, "ID")[1]
    assert row[2] == "recovering"
    assert row[4] == "recovering (recovering: learned 2/2, refilled 1/2)"
    assert "  n1 recovering a lost store" in lines


def test_a_serving_peer_that_is_not_ready_says_why(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.nodes["n2"].update(ready=False, readiness="disk_full")
    code, lines = _status(directory, cluster, capsys)
    assert code == EXIT_PEERS
    row = _rows(lines, "ID")[2]
    assert row[2] == "up"
    assert row[4] == "serving, not ready: disk_full"
    assert "  n2 not ready: disk_full" in lines


def test_anti_entropy_before_a_first_pass_and_when_off(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.nodes["n1"]["anti_entropy"] = {"enabled": True, "last_pass": None}
    cluster.nodes["n1"]["uptime_s"] = 3.2
    cluster.nodes["n2"]["anti_entropy"] = {"enabled": False, "last_pass": None}
    cluster.nodes["n3"]["anti_entropy"] = {
        "enabled": True,
        "last_pass": {"outcome": "timed_out", "finished_s_ago": 12.4},
    }
    code, lines = _status(directory, cluster, capsys)
    assert code == EXIT_HEALTHY  # anti-entropy is shown, never a problem
    assert [row[6] for row in _rows(lines, "ID")[1:]] == [
        "no pass yet (up 3s)",
        "off",
        "timed_out 12s ago",
    ]


def test_hints_held_are_shown_and_are_no_problem(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.nodes["n1"]["hints"] = [
        {"target": "n2", "hints": 2, "bytes": 1, "in_flight": 0},
        {"target": "n3", "hints": 1, "bytes": 1, "in_flight": 0},
    ]
    code, lines = _status(directory, cluster, capsys)
    assert code == EXIT_HEALTHY
    assert _rows(lines, "ID")[1][5] == "2 for n2, 1 for n3"
    assert [row[7] for row in _rows(lines, "OWNER")[1:4]] == ["2", "0", "1"]


# -- configuration and convergence ----------------------------------------------------------


def test_configuration_differs_exits_4_before_anything_else(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.nodes["n3"]["cluster_fingerprint"] = "8b2d4c61" + "0" * 24
    cluster.views["n1", "n3"] = "down"  # they refuse each other's messages
    cluster.replicas["alice", "n3"] = {"digest": "0" * 32, "token_count": 4}
    code, lines = _status(directory, cluster, capsys)

    assert code == EXIT_CONFIGURATION
    assert (
        "CONFIGURATION DIFFERS between peers (n1, n2 read 3f1c0e9a; n3 read 8b2d4c61):"
        " they refuse each other's messages. Give every peer the same cluster.toml."
    ) in lines
    assert "3 problems (exit 4):" in lines


def test_replicas_that_differ_exit_5(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.replicas["bob", "n1"] = {"digest": "0" * 32, "token_count": 4, "active_epoch": 3}
    code, lines = _status(directory, cluster, capsys)

    assert code == EXIT_NOT_CONVERGED
    bob = [row for row in _rows(lines, "OWNER") if row[0] == "bob"]
    assert [row[1:7] for row in bob] == [
        ["NO", "n2", "yes", "4", "5", DIGEST[:8]],
        ["NO", "n1", "yes", "3", "4", "00000000"],
        ["NO", "n3", "yes", "4", "5", DIGEST[:8]],
    ]
    assert "1 problem (exit 5):" in lines
    assert (
        "  bob not converged: replicas differ (n2 5 tokens, n1 4 tokens, n3 5 tokens);"
        " epochs differ (n2 4, n1 3, n3 4)"
    ) in lines


def test_an_inspection_without_answer_is_not_converged(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    unavailable = httpx.Response(503, json={"error": {"code": "unavailable", "message": "Busy."}})
    for peer_id in PEERS:
        cluster.answers[peer_id, "/v1/admin/owners/alice"] = unavailable
    code, lines = _status(directory, cluster, capsys)

    assert code == EXIT_NOT_CONVERGED
    assert [row for row in _rows(lines, "OWNER") if row[0] == "alice"] == [
        ["alice", "unknown", "-", "-", "-", "-", "-", "-"]
    ]
    problem = next(line for line in lines if line.startswith("  alice"))
    assert problem.startswith("  alice: convergence unknown: http://127.0.0.1:740")
    assert problem.endswith("answered 503 unavailable: Busy.")


# -- the membership --------------------------------------------------------------------------


def _a_change_in_progress(cluster: FakeCluster) -> None:
    """n3 leaving at ring version 2: alice moves to n1 (copying; its replica there holds part of
    it), bob to n2 (committed)."""
    for peer_id in PEERS:
        cluster.members[peer_id] = _members(2, {"n3": "leaving"})
    cluster.members["n1"]["transfers"] = [_transfer("alice", "n1")]
    cluster.members["n2"]["transfers"] = [
        _transfer("bob", "n2", state="committed", eta_s=0.0, rate_bytes_s=0.0)
    ]
    cluster.replicas["alice", "n1"] = {"token_count": 2, "digest": "77" * 16}


def test_a_change_in_progress_is_shown_and_no_problem(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    _a_change_in_progress(cluster)
    code, lines = _status(directory, cluster, capsys)

    assert code == EXIT_HEALTHY
    assert [row[-1] for row in _rows(lines, "ID")] == ["RING", "2", "2", "2"]
    start = lines.index("members: ring version 2, a change pending: n3 leaving (2 transfers)")
    assert lines[start + 1 : start + 3] == [
        "  alice into n1 (n1, n2, n3 -> n1, n2, n4): copying, 1200 mappings, 300.0 kB moved,"
        " 100.0 kB/s, eta 9s",
        "  bob into n2 (n1, n2, n3 -> n1, n2, n4): committed, 1200 mappings, 300.0 kB moved",
    ]
    # alice's replica on n1 is still being filled: judged without it; bob's committed: with it
    owners = _rows(lines, "OWNER")
    assert {row[1] for row in owners if row[0] == "alice"} == {"yes (n1 filling)"}
    assert {row[1] for row in owners if row[0] == "bob"} == {"yes"}
    assert not any(line.startswith("note:") for line in lines)
    assert lines[-1] == (
        "healthy (exit 0): 3 peers up and serving, one configuration, 2 owners converged;"
        " a membership change in progress (ring version 2)"
    )


def test_a_filling_replica_does_not_hide_the_others_differing(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    _a_change_in_progress(cluster)
    cluster.replicas["alice", "n2"] = {"token_count": 4, "digest": "66" * 16}
    code, lines = _status(directory, cluster, capsys)

    assert code == EXIT_NOT_CONVERGED
    assert "  alice not converged: replicas differ (n2 4 tokens, n3 5 tokens)" in lines


def test_json_holds_the_membership_and_the_transfers(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    _a_change_in_progress(cluster)
    code, document = _status_json(directory, cluster, capsys)

    assert code == EXIT_HEALTHY
    membership = document["membership"]
    assert (membership["version"], membership["stable"]) == (2, False)
    assert membership["versions"] == {"n1": 2, "n2": 2, "n3": 2}
    assert membership["members"][2] == {"id": "n3", "address": "127.0.0.1:7403", "state": "leaving"}
    assert membership["transfers"][0] == {
        "owner": "alice",
        "target": "n1",
        "from_replicas": ["n1", "n2", "n3"],
        "to_replicas": ["n1", "n2", "n4"],
        "version": 2,
        "state": "copying",
        "source": "n1",
        "mappings_moved": 1200,
        "bytes_moved": 300000,
        "rate_bytes_s": 100000.0,
        "eta_s": 9.0,
        "done_fraction": 0.25,  # 300 kB moved, 900 kB left at 100 kB/s for 9 s
    }
    assert membership["transfers"][1]["done_fraction"] == 1.0
    assert [o["filling"] for o in document["owners"]] == [["n1"], []]
    assert document["notes"] == []


def test_peers_at_different_ring_versions_are_a_note_not_a_problem(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.members["n1"] = cluster.members["n2"] = _members(3, {"n4": "active"})
    code, lines = _status(directory, cluster, capsys)
    _, document = _status_json(directory, cluster, capsys)

    assert code == EXIT_HEALTHY
    assert [row[-1] for row in _rows(lines, "ID")] == ["RING", "3", "3", "1"]
    assert "members: ring version 3, stable (4 active)" in lines
    note = (
        "peers at different ring versions (n1, n2 at 3; n3 at 1): a new version reaches every"
        " peer within a heartbeat or two; if the next status still says so, the peers behind"
        " (n3) do not hear the others (see their logs)"
    )
    assert lines[-2:] == [
        f"note: {note}",
        "healthy (exit 0): 3 peers up and serving, one configuration, 2 owners converged",
    ]
    assert document["notes"] == [{"subject": "membership", "message": note}]
    assert document["problems"] == []


def test_a_peer_whose_members_view_does_not_answer_has_no_ring_version(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.answers["n2", "/v1/admin/members"] = httpx.Response(503, json={})
    code, lines = _status(directory, cluster, capsys)
    assert code == EXIT_HEALTHY
    assert [row[-1] for row in _rows(lines, "ID")] == ["RING", "1", "-", "1"]


def test_the_transfers_into_a_peer_the_ring_shown_does_not_list_yet_are_shown(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """n3 joins: n1 (asked first, its ring shown) does not know it yet, n2 does; n3 is asked
    because n2's ring lists it, and its transfer is shown."""
    cluster.rings["n1"]["peers"] = cluster.rings["n1"]["peers"][:2]
    cluster.members["n1"] = {**_members(1), "members": _members(1)["members"][:2]}
    for peer_id in ("n2", "n3"):
        cluster.members[peer_id] = _members(2, {"n3": "joining"})
    cluster.members["n3"]["transfers"] = [_transfer("alice", "n3")]
    code = main(["status", "--url", "127.0.0.1:7401", "--key", "k"], transport=cluster.transport())
    lines = capsys.readouterr().out.splitlines()

    assert code == EXIT_HEALTHY
    assert [row[0] for row in _rows(lines, "ID")] == ["ID", "n1", "n2"]
    assert "members: ring version 2, a change pending: n3 joining (1 transfer)" in lines
    assert any(line.startswith("  alice into n3 (") for line in lines)
    assert any(line.startswith("note: peers at different ring versions (n2, n3 at 2; n1 at 1)")
               for line in lines)  # fmt: skip


def test_transfer_progress_is_a_bar_on_a_terminal_and_plain_text_otherwise() -> None:
    membership = membership_status(
        {"n1": {**_members(2, {"n4": "joining"}), "transfers": [_transfer("alice", "n4")]}},
        ["n1"],
    )
    assert membership is not None
    terminal, pipe = _Terminal(), io.StringIO()
    print_membership(membership, terminal)
    print_membership(membership, pipe)

    assert terminal.getvalue().splitlines() == [
        "members: ring version 2, a change pending: n4 joining (1 transfer)",
        "  alice into n4 (n1, n2, n3 -> n1, n2, n4) [#####---------------]  25% copying,"
        " 1200 mappings, 300.0 kB moved, 100.0 kB/s, eta 9s",
    ]
    assert pipe.getvalue().splitlines()[1] == (
        "  alice into n4 (n1, n2, n3 -> n1, n2, n4): copying, 1200 mappings, 300.0 kB moved,"
        " 100.0 kB/s, eta 9s"
    )
    assert "\x1b" not in terminal.getvalue()
    unknown = TransferStatus(**{**asdict(membership.transfers[0]), "eta_s": None})
    assert transfer_line(unknown, bar=True).endswith("eta unknown")  # no estimate: no bar
    assert "[" not in transfer_line(replace(unknown, done_fraction=None), bar=True)
    assert progress_bar(1.0) == "[####################] 100%"


# -- an owner key, --url ----------------------------------------------------------------------


def test_an_owner_key_sees_the_ring_only(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    forbidden = httpx.Response(
        403, json={"error": {"code": "forbidden", "message": "Only the admin key may see this."}}
    )
    for peer_id in PEERS:
        cluster.answers[peer_id, "/v1/admin/node"] = forbidden
        cluster.answers[peer_id, "/v1/admin/members"] = forbidden
    code, lines = _status(directory, cluster, capsys, "--owner", "alice")

    assert code == EXIT_HEALTHY
    assert _rows(lines, "ID")[0] == ["ID", "ADDRESS", "STATE", "FOR"]
    assert not any(line.startswith("OWNER") for line in lines)
    assert not any("/v1/admin/owners/" in r.url.path for r in cluster.requests)
    assert lines[-1] == "healthy (exit 0): 3 peers up, one ring (an owner key: no admin views)"

    cluster.kill("n3")
    code, lines = _status(directory, cluster, capsys, "--owner", "alice")
    assert code == EXIT_PEERS
    assert _rows(lines, "ID")[3] == ["n3", "127.0.0.1:7403", "down", "30s"]


def test_an_owner_key_sees_rings_that_differ_as_configuration_differs(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    forbidden = httpx.Response(403, json={"error": {"code": "forbidden", "message": "No."}})
    for peer_id in PEERS:
        cluster.answers[peer_id, "/v1/admin/node"] = forbidden
        cluster.answers[peer_id, "/v1/admin/members"] = forbidden
    cluster.rings["n2"]["version"] = "0123456789abcdef"
    code, lines = _status(directory, cluster, capsys, "--owner", "bob")
    assert code == EXIT_CONFIGURATION
    assert (
        "  configuration differs (n1, n3 read ring af1737aecef992e7; n2 read ring"
        " 0123456789abcdef): the peers refuse each other's messages; give every peer the same"
        " cluster.toml"
    ) in lines


def test_url_asks_that_peer_then_the_peers_its_ring_lists(
    cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["status", "--url", "127.0.0.1:7402", "--key", "k"], transport=cluster.transport())

    assert code == EXIT_HEALTHY
    assert cluster.requests[0].url.port == 7402
    assert capsys.readouterr().out.startswith("as seen by n2:")
    for peer_id in PEERS:
        assert cluster.paths(peer_id).count("/v1/ring") == 1
        assert cluster.paths(peer_id).count("/v1/admin/node") == 1


# -- --json -------------------------------------------------------------------------------------


def test_json_holds_what_the_table_shows(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.paused.add("n3")
    cluster.nodes["n1"]["hints"] = [{"target": "n3", "hints": 2, "bytes": 1, "in_flight": 0}]
    code, lines = _status(directory, cluster, capsys)
    json_code, document = _status_json(directory, cluster, capsys)

    assert json_code == code == EXIT_PEERS
    admin_key = load_keys(directory / "keys.json").admin
    assert admin_key not in "\n".join(lines) and admin_key not in json.dumps(document)
    assert document["format"] == STATUS_FORMAT
    assert document["healthy"] is False
    assert document["admin"] is True
    assert set(document) == {
        "format",
        "healthy",
        "ring",
        "admin",
        "peers",
        "configuration_differs",
        "configurations",
        "owners",
        "membership",
        "problems",
        "notes",
        "exit_code",
        "elapsed_s",
    }
    assert {k: document["ring"][k] for k in ("version", "replicas", "write_quorum")} == {
        "version": "af1737aecef992e7",
        "replicas": 3,
        "write_quorum": 2,
    }
    table = _rows(lines, "ID")[1:]
    assert [[p["id"], p["address"], p["state"]] for p in document["peers"]] == [
        row[:3] for row in table
    ]
    n3 = document["peers"][2]
    assert n3["answered"] is False and n3["hints_held"] is None and n3["for_s"] is None
    assert "no answer from http://127.0.0.1:7403" in n3["error"]
    assert document["peers"][0]["hints_held"] == [{"target": "n3", "hints": 2}]
    assert document["peers"][0]["anti_entropy"] == {
        "enabled": True,
        "last_pass": {"outcome": "in_sync", "finished_s_ago": 0.4},
    }
    owner_rows = _rows(lines, "OWNER")[1:]
    assert [
        [o["owner"], r["peer"], "yes" if r["answered"] else "no", str(r["hints_for_it"])]
        for o in document["owners"]
        for r in o["replicas"]
    ] == [[row[0], row[2], row[3], row[7]] for row in owner_rows]
    assert document["owners"][0]["replicas"][1] == {
        "peer": "n1",
        "answered": True,
        "active_epoch": 4,
        "active_epoch_id": "5d0c8e2b7a41",
        "token_count": 5,
        "digest": DIGEST,
        "hints_for_it": 0,
    }
    assert [p["message"] for p in document["problems"]] == [
        line.strip() for line in lines[lines.index("3 problems (exit 3):") + 1 :]
    ]
    assert [(p["exit_code"], p["subject"]) for p in document["problems"]] == [
        (EXIT_PEERS, "n3"),
        (EXIT_NOT_CONVERGED, "alice"),
        (EXIT_NOT_CONVERGED, "bob"),
    ]


def test_json_of_a_healthy_cluster(
    directory: Path, cluster: FakeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, document = _status_json(directory, cluster, capsys)
    assert code == EXIT_HEALTHY
    assert document["healthy"] is True
    assert document["problems"] == []
    assert document["configuration_differs"] is False
    assert document["configurations"] == [
        {"kind": "cluster_fingerprint", "read": FINGERPRINT, "peers": list(PEERS)}
    ]
    assert [o["converged"] for o in document["owners"]] == [True, True]


# -- the progress line --------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _waiting(elapsed_s: float) -> Probed:
    probed = Probed(elapsed_s=elapsed_s)
    probed.peers["http://127.0.0.1:7401"] = PeerProbe(url="http://127.0.0.1:7401")
    return probed


def test_progress_shows_on_a_terminal_after_a_moment_and_is_cleared() -> None:
    terminal = _Terminal()
    progress = ProgressLine(terminal)
    progress.update(_waiting(PROGRESS_DELAY_S / 2))
    assert terminal.getvalue() == ""  # a quick answer shows no progress

    progress.update(_waiting(1.2))
    assert terminal.getvalue() == (
        "\r\x1b[Ktokenvault status: asked 1 peer, waiting for http://127.0.0.1:7401 (1.2 s)"
    )
    progress.clear()
    assert terminal.getvalue().endswith("\r\x1b[K")


def test_no_progress_when_stderr_is_not_a_terminal() -> None:
    pipe = io.StringIO()
    progress = ProgressLine(pipe)
    progress.update(_waiting(1.2))
    progress.clear()
    assert pipe.getvalue() == ""
