"""A Node over a store that fails: damage found while it runs replaces the store and the core
(one `store_damaged` line naming the file, a new empty store, the peer serves on); a full disk
makes /readyz answer 503 `disk_full` with one throttled `storage_error` line naming ENOSPC, and
the peer takes writes again by itself once space returns. In process, on real LevelDB."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from tests.store.disk_faults import flip, grow_tmpfs, tmpfs
from tokenvault.cluster_init import init_cluster, load_keys
from tokenvault.config import load_config
from tokenvault.http.api import PublicApi
from tokenvault.http.server import Request, RequestHead, Response
from tokenvault.log import EventLog
from tokenvault.node import Node
from tokenvault.quorum.records import MAPPING_PREFIX

WAIT_S = 20.0  # a safety net; the conditions come true in well under a second


@dataclass
class Peer:
    node: Node
    api: PublicApi
    keys: dict[str, str]
    log: io.StringIO

    async def call(
        self, method: str, path: str, body: object = None, key: str | None = None
    ) -> Response:
        headers = {} if key is None else {"authorization": f"Bearer {self.keys[key]}"}
        head = RequestHead(method=method, path=path, query="", headers=headers, client="t:1")
        raw = b"" if body is None else json.dumps(body).encode()
        return await self.api.handle(Request(head=head, body=raw))

    async def tokenize(self, value: str) -> Response:
        return await self.call("POST", "/v1/tokenize", {"records": [{"ssn": value}]}, "alice")

    def events(self, name: str) -> list[dict[str, object]]:
        lines = [json.loads(line) for line in self.log.getvalue().splitlines()]
        return [line for line in lines if line["event"] == name]


def _new_cluster(directory: Path) -> Path:
    init = init_cluster(
        directory, nodes=1, base_port=7400, replicas=1, write_quorum=1, read_quorum=1
    )
    return init.config_path


@asynccontextmanager
async def _running(config_path: Path, *, scrub_interval_s: float = 600.0) -> AsyncIterator[Peer]:
    keys = load_keys(config_path.parent / "keys.json")
    log = io.StringIO()
    node = Node(
        load_config(config_path),
        "n1",
        log=EventLog("n1", log),
        scrub_interval_s=scrub_interval_s,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            yield Peer(node, PublicApi(node), {**keys.owners, "admin": keys.admin}, log)
        finally:
            nursery.cancel_scope.cancel()
    node.close()


async def _until(condition: object) -> None:
    assert callable(condition)
    with trio.fail_after(WAIT_S):
        while not condition():
            await trio.sleep(0.01)


async def test_damage_found_while_running_replaces_the_store_and_the_peer_serves_on(
    tmp_path: Path,
) -> None:
    config_path = _new_cluster(tmp_path / "cluster")
    data_dir = tmp_path / "cluster" / "data" / "n1"
    async with _running(config_path) as peer:
        tokens = []
        for index in range(200):
            answer = await peer.tokenize(f"123-45-{index:04d}")
            assert answer.status == 200
            tokens.append(json.loads(answer.body)["records"][0]["ssn"])
    # The next open turns the log into a table; damage that table's first block.
    async with _running(config_path) as peer:
        table = sorted((data_dir / "leveldb").glob("*.ldb"))[0]
        flip(table, 64, 16)
        answers = [
            await peer.call("POST", "/v1/detokenize", {"tokens": tokens}, "alice") for _ in range(2)
        ]
        assert answers[0].status == 503  # the read met the damage: the store failed it
        await _until(lambda: peer.node.stores_replaced == 1)
        [line] = peer.events("store_damaged")
        assert line["level"] == "error"
        assert (line["file"], line["found"]) == (table.name, "running")
        assert line["reason"] == "block checksum mismatch"
        assert str(line["moved_to"]).startswith("leveldb.damaged-")
        assert (data_dir / str(line["moved_to"]) / table.name).exists()
        assert "123-45" not in peer.log.getvalue()
        # A new, empty store: the peer serves and takes writes again.
        assert (await peer.call("GET", "/readyz")).status == 200
        assert (await peer.tokenize("987-65-4321")).status == 200
        assert peer.node.store.scan(b"", limit=1_000) != []
        node_view = json.loads((await peer.call("GET", "/v1/admin/node", key="admin")).body)
        assert node_view["store"]["replaced"] == 1
    assert "Traceback" not in peer.log.getvalue()


async def test_a_scrub_finds_damage_nobody_reads_and_replaces_the_store(tmp_path: Path) -> None:
    config_path = _new_cluster(tmp_path / "cluster")
    data_dir = tmp_path / "cluster" / "data" / "n1"
    async with _running(config_path) as peer:
        for index in range(100):
            assert (await peer.tokenize(f"123-45-{index:04d}")).status == 200
    async with _running(config_path, scrub_interval_s=0.05) as peer:
        await _until(lambda: peer.node.scrubs >= 1)  # a whole pass: nothing found
        assert peer.node.stores_replaced == 0
        table = sorted((data_dir / "leveldb").glob("*.ldb"))[0]
        flip(table, 64, 16)
        await _until(lambda: peer.node.stores_replaced == 1)
        [line] = peer.events("store_damaged")
        assert (line["file"], line["found"]) == (table.name, "running")
        assert (await peer.call("GET", "/readyz")).status == 200


async def test_a_peer_serves_before_its_key_filter_and_digests_are_built(tmp_path: Path) -> None:
    """Nothing scans the store before the peer serves: the key filter is filled by the first
    scrub and the digests by a build of their own, after; the mappings answer throughout."""
    config_path = _new_cluster(tmp_path / "cluster")
    async with _running(config_path) as peer:
        values = {"records": [{"ssn": f"123-45-{index:04d}"} for index in range(300)]}
        answer = await peer.call("POST", "/v1/tokenize", values, "alice")
        assert answer.status == 200
        tokens = [r["ssn"] for r in json.loads(answer.body)["records"]]
    async with _running(config_path) as peer:
        assert (await peer.call("GET", "/readyz")).status == 200
        assert not peer.node.store.key_filter_complete  # the first scrub has not run yet
        found = await peer.call("POST", "/v1/detokenize", {"tokens": tokens}, "alice")
        assert all(r["found"] for r in json.loads(found.body)["results"])
        await _until(lambda: peer.node.core.replica.digests.complete)
        assert peer.node.core.replica.digests.count("alice") == 300
        await _until(lambda: peer.node.store.key_filter_complete and peer.node.scrubs == 1)
        assert (await peer.tokenize("987-65-4321")).status == 200
        found = await peer.call("POST", "/v1/detokenize", {"tokens": tokens}, "alice")
        assert all(r["found"] for r in json.loads(found.body)["results"])


async def test_damage_at_open_is_one_line_and_an_empty_store(tmp_path: Path) -> None:
    config_path = _new_cluster(tmp_path / "cluster")
    data_dir = tmp_path / "cluster" / "data" / "n1"
    async with _running(config_path) as peer:
        assert (await peer.tokenize("123-45-6789")).status == 200
    manifest = sorted((data_dir / "leveldb").glob("MANIFEST-*"))[0]
    manifest.write_bytes(b"\x00" * manifest.stat().st_size)
    async with _running(config_path) as peer:
        [line] = peer.events("store_damaged")
        assert (line["file"], line["found"]) == (manifest.name, "open")
        assert peer.node.store.scan(MAPPING_PREFIX, limit=1) == []  # a new store: no mapping
        assert (await peer.call("GET", "/readyz")).status == 200
        metrics = (await peer.call("GET", "/metrics")).body.decode()
        assert "tokenvault_stores_replaced_total 1" in metrics


def _counter(peer: Peer, name: str) -> float:
    for line in peer.node.metrics.render().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_a_full_disk_makes_the_peer_unready_until_space_returns(tmp_path: Path) -> None:
    config_path = _new_cluster(tmp_path / "cluster")
    with tmpfs(tmp_path / "cluster" / "data" / "n1", "1m") as disk:
        async with _running(config_path) as peer:
            assert (await peer.call("GET", "/readyz")).status == 200
            acknowledged: list[str] = []
            failures = 0
            index = 0
            while failures < 2:
                values = [{"ssn": f"{index:03d}-{row:06d}"} for row in range(200)]
                answer = await peer.call("POST", "/v1/tokenize", {"records": values}, "alice")
                index += 1
                if answer.status == 200:
                    assert failures == 0
                    acknowledged.extend(r["ssn"] for r in json.loads(answer.body)["records"])
                else:
                    assert answer.status == 503
                    failures += 1
                assert index < 2_000, "the tmpfs never filled"
            ready = await peer.call("GET", "/readyz")
            assert ready.status == 503
            assert dict(ready.headers)["retry-after"] == "1"
            body = json.loads(ready.body)
            assert (body["ready"], body["reason"]) == (False, "disk_full")
            assert body["error"]["code"] == "unavailable"
            metrics = (await peer.call("GET", "/metrics")).body.decode()
            assert "tokenvault_store_writable 0" in metrics
            await _until(lambda: _counter(peer, "tokenvault_storage_errors_total") >= 5)
            named = [e for e in peer.events("storage_error") if e.get("kind") == "disk_full"]
            assert 1 <= len(named) < 5  # throttled: one line per STORAGE_LOG_INTERVAL_S
            assert named[0]["reason"] == "No space left on device"
            grow_tmpfs(disk, "32m")
            await _until(lambda: peer.node.readiness().ready)
            assert (await peer.tokenize("555-55-5555")).status == 200
            assert peer.events("store_writable")
            for start in range(0, len(acknowledged), 1_000):
                page = {"tokens": acknowledged[start : start + 1_000]}
                found = await peer.call("POST", "/v1/detokenize", page, "alice")
                assert found.status == 200
                assert all(r["found"] for r in json.loads(found.body)["results"])
        assert "Traceback" not in peer.log.getvalue()


def test_a_store_that_cannot_be_opened_at_all_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    """Not damage (a store LevelDB cannot even create): `tokenvault node` says so in one line."""
    config_path = _new_cluster(tmp_path / "cluster")
    data_dir = tmp_path / "cluster" / "data" / "n1"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "leveldb").write_text("not a directory")
    finished = subprocess.run(
        [sys.executable, "-m", "tokenvault", "node", "--config", str(config_path), "--id", "n1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 1
    errors = [line for line in finished.stderr.splitlines() if not line.startswith("{")]
    assert errors == [
        "tokenvault: peer n1: no store could be opened: cannot open the LevelDB store:"
        " Not a directory"
    ], finished.stderr
    assert "Traceback" not in finished.stderr
