"""End-to-end: damaged and full disks under real peer processes (N=3, W=2, R=2).

- A peer stopped, its store damaged on disk (a cut or a corrupted write-ahead log, a corrupted
  table, a corrupted MANIFEST), and restarted: one clear log line naming the file, no traceback, and
  within DAMAGE_CONVERGENCE_S it holds every mapping again, without a manual step.
- A peer whose data directory is a small tmpfs, filled by tokenizing through the cluster: no
  client error, its /readyz 503 `disk_full` while full; the tmpfs grown, it takes writes again
  within FULL_DISK_RESUME_S without a restart, and every token detokenizes through every peer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Cluster
from tests.e2e.test_convergence import (
    OWNERS,
    assert_all_found,
    converged_everywhere,
    node_view,
    tokenize_batches,
    wait_for,
)
from tests.store.disk_faults import flip, grow_tmpfs, mount_tmpfs, unmount

pytestmark = pytest.mark.e2e

DAMAGE_CONVERGENCE_S = 60.0
FULL_DISK_RESUME_S = 30.0
TMPFS_SMALL = "4m"
TMPFS_GROWN = "64m"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "cluster", owners=OWNERS)
    try:
        yield running
    finally:
        running.close()


def _newest(store: Path, pattern: str) -> Path:
    found = sorted(store.glob(pattern), key=lambda p: p.stat().st_size)
    assert found, (pattern, sorted(p.name for p in store.iterdir()))
    return found[-1]  # the largest: the one that holds the mappings


def _cut_log(store: Path) -> tuple[str, str]:
    log = _newest(store, "*.log")
    size = log.stat().st_size
    assert size > 100
    log.write_bytes(log.read_bytes()[: size - 30])
    return "store_log_tail_dropped", log.name


def _corrupt_log(store: Path) -> tuple[str, str]:
    log = _newest(store, "*.log")
    flip(log, log.stat().st_size // 2, 16)  # a record's checksum or body, mid-file
    return "store_damaged", log.name


def _corrupt_table(store: Path) -> tuple[str, str]:
    table = _newest(store, "*.ldb")
    flip(table, table.stat().st_size // 3, 16)
    return "store_damaged", table.name


def _corrupt_manifest(store: Path) -> tuple[str, str]:
    manifest = _newest(store, "MANIFEST-*")
    flip(manifest, 0, 4)  # the first record's checksum
    return "store_damaged", manifest.name


DAMAGES: dict[str, Callable[[Path], tuple[str, str]]] = {
    "cut_log": _cut_log,
    "corrupt_log": _corrupt_log,
    "corrupt_table": _corrupt_table,
    "corrupt_manifest": _corrupt_manifest,
}
# Names of store lines: exactly one of them must appear per damage.
STORE_LINES = ("store_damaged", "store_log_tail_dropped")


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_store_is_named_once_and_refilled(cluster: Cluster, damage: str) -> None:
    cluster.start_all()
    store = cluster.directory / "data" / "n3" / "leveldb"
    with httpx.Client(timeout=10.0, trust_env=False, verify=cluster.verify) as http:
        tokens = tokenize_batches(http, cluster, cluster.peer_ids, damage)
        expected = {owner: len(tokens[owner]) for owner in OWNERS}
        assert cluster.stop("n3") == 0
        if damage == "corrupt_table":  # a start turns the log into a table: damage that
            cluster.start("n3")
            cluster.wait_ready("n3")
            assert cluster.stop("n3") == 0
        event, file = DAMAGES[damage](store)
        restarted_at = time.monotonic()
        cluster.start("n3")
        cluster.wait_ready("n3")
        converged_at, _ = wait_for(
            "every owner converged on every peer after the damage",
            lambda: converged_everywhere(http, cluster, expected),
            restarted_at + DAMAGE_CONVERGENCE_S,
        )
        print(f"\n[{damage}] converged {converged_at - restarted_at:.2f} s after the restart")
        for owner in OWNERS:
            assert_all_found(http, cluster, "n3", owner, sorted(tokens[owner]))
    lines = [e for e in cluster.log_events("n3") if e["event"] in STORE_LINES]
    assert len(lines) == 1, lines
    [line] = lines
    print(f"[{damage}] {line}")
    assert (line["event"], line["file"]) == (event, file)
    assert line["level"] == ("error" if event == "store_damaged" else "warning")
    assert "Traceback" not in cluster.log("n3")
    if event == "store_damaged":
        moved = store.parent / str(line["moved_to"])
        assert (moved / file).exists()  # moved aside whole, never deleted


# -- a full disk ------------------------------------------------------------------------------


def _readyz(http: httpx.Client, cluster: Cluster, peer: str) -> tuple[int, dict[str, object]]:
    answer = http.get(cluster.url(peer) + "/readyz")
    body: dict[str, object] = answer.json()
    return answer.status_code, body


def test_a_full_disk_fails_over_then_resumes_without_a_restart(cluster: Cluster) -> None:
    disk = cluster.directory / "data" / "n3"
    mount_tmpfs(disk, TMPFS_SMALL)
    try:
        cluster.start_all()
        with httpx.Client(timeout=10.0, trust_env=False, verify=cluster.verify) as http:
            assert _readyz(http, cluster, "n3")[0] == 200
            tokens: dict[str, list[str]] = {owner: [] for owner in OWNERS}
            batch = 0
            while _readyz(http, cluster, "n3")[0] == 200:
                owner = OWNERS[batch % 2]
                peer = cluster.peer_ids[batch % 3]
                records = [{"ssn": f"full-{batch:04d}-{row:03d}-{'x' * 200}"} for row in range(200)]
                answer = http.post(
                    cluster.url(peer) + "/v1/tokenize",
                    headers=cluster.headers(owner),
                    json={"records": records},
                )
                assert answer.status_code == 200, (peer, answer.text)  # no client error
                tokens[owner].extend(r["ssn"] for r in answer.json()["records"])
                batch += 1
                assert batch < 500, "the tmpfs never filled"
            status, body = _readyz(http, cluster, "n3")
            assert (status, body["reason"]) == (503, "disk_full"), body
            # Still full: writes through the full peer fail over to the other replicas.
            for index in range(3):
                answer = http.post(
                    cluster.url("n3") + "/v1/tokenize",
                    headers=cluster.headers("alice"),
                    json={"records": [{"ssn": f"while-full-{index}"}]},
                )
                assert answer.status_code == 200, answer.text
                tokens["alice"].append(answer.json()["records"][0]["ssn"])
            assert _readyz(http, cluster, "n3")[0] == 503
            lines = [e for e in cluster.log_events("n3") if e["event"] == "storage_error"]
            assert any(e.get("kind") == "disk_full" for e in lines), lines
            flushes_before = node_view(http, cluster, "n3")["store"]["flushes"]

            grown_at = time.monotonic()
            grow_tmpfs(disk, TMPFS_GROWN)
            ready_at, _ = wait_for(
                "n3 ready again after the tmpfs grew",
                lambda: (_readyz(http, cluster, "n3")[0] == 200, None),
                grown_at + FULL_DISK_RESUME_S,
            )
            print(f"\n[full disk] n3 ready {ready_at - grown_at:.2f} s after the tmpfs grew")
            answer = http.post(
                cluster.url("n1") + "/v1/tokenize",
                headers=cluster.headers("bob"),
                json={"records": [{"ssn": "after-the-disk-grew"}]},
            )
            assert answer.status_code == 200
            tokens["bob"].append(answer.json()["records"][0]["ssn"])
            view = node_view(http, cluster, "n3")["store"]
            assert view["writable"] is True and view["reopens"] >= 1
            assert view["flushes"] > flushes_before  # new writes land on its store
            # Nothing acknowledged lost: every token detokenizes through every peer.
            for peer in cluster.peer_ids:
                for owner in OWNERS:
                    assert_all_found(http, cluster, peer, owner, tokens[owner])
            assert cluster.pid("n3")  # the same process all along
        assert "Traceback" not in cluster.log("n3")
    finally:
        cluster.close()
        unmount(disk)
