"""Cost in the size of the store: start-up, memory and 100-record tokenize rate of a 3-peer
cluster (N=3: every peer holds every mapping) holding --mappings mappings per peer, next to an
empty cluster, in one sitting.

How: two clusters are made under --dir (ports from --base-port: the full one at +10, the empty
one at +20). The full one decides its owner's epoch through the API (one tokenize), stops, and
its three stores are filled directly by a bulk loader that writes the records the API would
write (the production token maker, sealer and record encoder: tokens.py, sealing.py,
records.py); a sample of them is then detokenized through the API and must come back. Then:
- start-up: from `tokenvault node` process start to GET /readyz 200, per peer, both clusters;
- memory: VmRSS of every peer (/proc/PID/status) after start and after the load;
- rate: `tokenvault bench`'s load generator (wrk where installed, with its tv_tokenize
  script; 100 records per request, 64 connections, one peer) alternately against the empty and
  the full cluster, --rounds times, with the peers' CPU seconds (utime+stime) per 1,000 keys,
  the figure that moves least with a shared machine.
A progress line per step; a table at the end. A benchmark, not a test.

Example: python bench/scale_bench.py --dir /work/scale-data --mappings 5000000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx

from tokenvault.cli.bench.load import Load, choose_generator, run_load
from tokenvault.cli.bench.workloads import Shape
from tokenvault.cli.peer_processes import StopSignals, peer_command
from tokenvault.cluster_init import init_cluster
from tokenvault.config import load_config
from tokenvault.quorum.merkle import OwnerDigests
from tokenvault.quorum.messages import EpochValue, Mapping
from tokenvault.quorum.records import encode_mapping, mapping_key, read_active_epoch
from tokenvault.quorum.sealing import Sealer
from tokenvault.store.leveldb_store import LevelDBStore, open_leveldb

OWNER = "alice"
FIELD = "ssn"
LOAD_BATCH = 20_000  # mappings per LevelDB write batch of the bulk loader
READY_TIMEOUT_S = 120.0
SAMPLE = 100  # loaded tokens detokenized through the API
SETTLE_MAX_S = 300.0  # waiting for the full peers' background builds, at most
IDLE_CORES = 0.1  # a peer below this is taken as done with its background builds
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def progress(text: str) -> None:
    print(f"[scale] {text}", file=sys.stderr, flush=True)


@dataclass
class Bench:
    """One cluster of real peer processes under a directory."""

    name: str
    directory: Path
    base_port: int

    def __post_init__(self) -> None:
        self.config_path = self.directory / "cluster.toml"
        if not self.config_path.exists():  # else made (and loaded) before: --reuse
            init_cluster(self.directory, nodes=3, base_port=self.base_port, owners=(OWNER,))
        config = load_config(self.config_path)
        self.secret = config.secret
        self.stores = [peer.data_dir / "leveldb" for peer in config.peers]
        (self.directory / "logs").mkdir(exist_ok=True)
        self.key = json.loads((self.directory / "keys.json").read_text())["owners"][OWNER]
        self.peers = [peer.id for peer in config.peers]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started_wall: dict[str, float] = {}

    def url(self, peer: str) -> str:
        port = self.base_port + self.peers.index(peer) + 1
        return f"http://127.0.0.1:{port}"

    def restart(self, peer: str) -> float:
        """Stop one peer and start it again; seconds from its process start to /readyz 200."""
        process = self.processes.pop(peer)
        process.terminate()
        process.wait(timeout=30)
        return self.start((peer,))[peer]

    def start(self, peers: tuple[str, ...] = ()) -> dict[str, float]:
        """Start peers (all by default) at once; seconds from each process start to its
        /readyz 200 (peers started together also wait for each other's first answers)."""
        started: dict[str, float] = {}
        for peer in peers or self.peers:
            with open(self.directory / "logs" / f"{peer}.log", "ab") as log:
                started[peer] = time.monotonic()
                self.started_wall[peer] = time.time()
                self.processes[peer] = subprocess.Popen(
                    peer_command(self.config_path, peer),
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                )
        ready: dict[str, float] = {}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(ready) < len(started):
            assert time.monotonic() < deadline, f"{self.name}: peers not ready"
            for peer in started:
                if peer in ready:
                    continue
                try:
                    if httpx.get(self.url(peer) + "/readyz", timeout=1.0).status_code == 200:
                        ready[peer] = time.monotonic() - started[peer]
                except httpx.HTTPError:
                    pass
            time.sleep(0.01)
        return ready

    def opened_s(self, peer: str) -> tuple[float, float]:
        """Of the last start of peer, from its log: seconds from the process start to
        `peer_start` (interpreter, imports, store open, cores built) and to `peer_serving`."""
        text = (self.directory / "logs" / f"{peer}.log").read_text()
        events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        starts = [e["ts"] for e in events if e["event"] == "peer_start"]
        serving = [e["ts"] for e in events if e["event"] == "peer_serving"]
        began = self.started_wall[peer]
        return starts[-1] - began, serving[-1] - began

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(timeout=30)
        self.processes.clear()

    def cpu_s(self) -> float:
        total = 0
        for process in self.processes.values():
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / TICKS_PER_S

    def rss_mib(self) -> list[tuple[float, float]]:
        """(VmRSS, RssAnon) of every peer in MiB: RssAnon is the peer's own memory; the rest is
        file pages LevelDB maps (its tables), the page cache's to reclaim."""
        found = []
        for process in self.processes.values():
            status = Path(f"/proc/{process.pid}/status").read_text()
            sizes = dict(re.findall(r"^(VmRSS|RssAnon):\s+(\d+) kB", status, re.MULTILINE))
            found.append((int(sizes["VmRSS"]) / 1024, int(sizes["RssAnon"]) / 1024))
        return found

    def call(self, path: str, body: object) -> dict[str, object]:
        answer = httpx.post(
            self.url(self.peers[0]) + path,
            json=body,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30.0,
        )
        assert answer.status_code == 200, answer.text
        result: dict[str, object] = answer.json()
        return result


def value_of(index: int) -> str:
    return f"{index:09d}"


def active_epoch(bench: Bench) -> EpochValue:
    store = LevelDBStore(str(bench.stores[0]))
    try:
        return read_active_epoch(store, OWNER)
    finally:
        store.close()


def sample_of(bench: Bench, mappings: int) -> list[tuple[str, str]]:
    """SAMPLE of the loaded (token, value) pairs, spread over the whole load."""
    maker = Sealer(bench.secret).token_maker(OWNER, active_epoch(bench))
    step = max(1, mappings // SAMPLE)
    return [(maker.token(FIELD, value_of(i)), value_of(i)) for i in range(0, mappings, step)]


def bulk_load(bench: Bench, mappings: int) -> None:
    """Write `mappings` mappings of OWNER into every peer's store, as the API would."""
    sealer = Sealer(bench.secret)
    paths = bench.stores
    epoch = active_epoch(bench)
    maker = sealer.token_maker(OWNER, epoch)
    databases = [open_leveldb(str(path), paranoid=False) for path in paths]
    started = time.monotonic()
    try:
        for start in range(0, mappings, LOAD_BATCH):
            pairs = []
            for index in range(start, min(mappings, start + LOAD_BATCH)):
                value = value_of(index)
                token = maker.token(FIELD, value)
                mapping = Mapping(
                    owner=OWNER, token=token, value=value, field=FIELD, epoch=epoch.epoch
                )
                pairs.append((mapping_key(OWNER, token), encode_mapping(sealer, mapping)))
            for db in databases:
                with db.write_batch() as batch:
                    for key, record in pairs:
                        batch.put(key, record)
            done = start + len(pairs)
            if done % 500_000 < LOAD_BATCH or done == mappings:
                rate = done / (time.monotonic() - started)
                progress(f"bulk load: {done:,} of {mappings:,} mappings ({rate:,.0f}/s)")
    finally:
        for db in databases:
            db.close()


def filter_costs(path: Path, absent_reads: int = 100_000) -> dict[str, float]:
    """What the KeyFilter buys on this store: an absent key's read from LevelDB (its own bloom
    filter, 10 bits per key) next to the filter's answer, and the first scrub's pass that fills
    the filter (verify_page over every key), per key."""
    store = LevelDBStore(str(path))
    try:
        # Thread CPU time: a store just written compacts in LevelDB's own threads meanwhile.
        started = time.thread_time()
        counted = OwnerDigests().rebuild(store)
        digests_us = 1e6 * (time.thread_time() - started) / counted
        cursor = None
        started = time.thread_time()
        keys = 0
        while True:
            cursor = store.verify_page(cursor, 1_000)
            keys += 1_000
            if cursor is None:
                break
        scrub_us = 1e6 * (time.thread_time() - started) / keys
        assert store.key_filter_complete
        absent = [b"m\x00alice\x00tok_absent-%d" % i for i in range(absent_reads)]
        database = store._db
        started = time.thread_time()
        for key in absent:
            database.get(key, verify_checksums=True)
        leveldb_us = 1e6 * (time.thread_time() - started) / absent_reads
        started = time.thread_time()
        for key in absent:
            store.get(key)
        filter_us = 1e6 * (time.thread_time() - started) / absent_reads
    finally:
        store.close()
    return {
        "absent_get_leveldb_bloom_us": leveldb_us,
        "absent_get_key_filter_us": filter_us,
        "first_scrub_with_filter_fill_us_per_key": scrub_us,
        "digest_build_us_per_mapping": digests_us,
    }


def wrk(bench: Bench, seconds: int) -> dict[str, float]:
    """One run of 100-record tokenizes against the first peer (`tokenvault bench`'s generator:
    wrk where installed); keys/s and CPU per 1k keys."""
    load = Load(
        shape=Shape.TOKENVAULT_TOKENIZE,
        batch=100,
        urls=[bench.url(bench.peers[0])],
        connections=64,
        seconds=seconds,
        environment={"KEY": bench.key},
    )
    cpu_before = bench.cpu_s()
    with StopSignals() as stop, tempfile.TemporaryDirectory() as work_dir:
        figure = run_load(load, choose_generator("auto"), stop, Path(work_dir))
    cpu_s = bench.cpu_s() - cpu_before
    return {
        "keys_s": figure.keys_per_s,  # of requests answered 200
        "p99_ms": figure.p99_ms,
        "cpu_ms_per_1k_keys": 1e6 * cpu_s / max(1.0, figure.ok * 100.0),
        "not_ok": float(figure.not_ok),  # answered, not 200 (503: overloaded)
        "errors": float(figure.errors),  # the generator's own: timeouts, mostly
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="where both clusters go")
    parser.add_argument("--mappings", type=int, default=5_000_000, help="per peer")
    parser.add_argument("--base-port", type=int, default=7600)
    parser.add_argument("--rounds", type=int, default=2, help="empty/full alternations")
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--settle-s", type=float, default=10.0, help="after start, at least")
    parser.add_argument("--reuse", action="store_true", help="the full cluster loaded before")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("scale_bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    full_dir, empty_dir = args.dir / "full", args.dir / "empty"
    if args.reuse:
        full = Bench("full", full_dir, args.base_port + 10)
    else:
        shutil.rmtree(args.dir, ignore_errors=True)
        args.dir.mkdir(parents=True)
        full = Bench("full", full_dir, args.base_port + 10)
        progress("full cluster: deciding the epoch through the API")
        full.start()
        full.call("/v1/tokenize", {"records": [{FIELD: "warm-up"}]})
        full.stop()
        bulk_load(full, args.mappings)
    sample = sample_of(full, args.mappings)
    shutil.rmtree(empty_dir, ignore_errors=True)
    results: dict[str, object] = {"mappings_per_peer": args.mappings}
    results["filter"] = filter_costs(full.stores[0])
    progress(f"key filter against LevelDB's bloom filter: {results['filter']}")
    empty = Bench("empty", empty_dir, args.base_port + 20)
    try:
        for bench in (empty, full):
            ready = bench.start()
            results[f"{bench.name}_ready_s"] = ready
            results[f"{bench.name}_rss_mib_start"] = bench.rss_mib()
            progress(f"{bench.name}: ready in {max(ready.values()):.2f} s, RSS {bench.rss_mib()}")
        found = full.call("/v1/detokenize", {"tokens": [t for t, _ in sample]})["results"]
        assert isinstance(found, list)
        assert [r["value"] for r in found] == [v for _, v in sample], "a loaded token is lost"
        progress(f"full: {len(sample)} loaded tokens detokenize through the API")
        for bench in (empty, full):
            restarts, opened = [], []
            for _ in range(args.rounds):
                restarts.append(bench.restart(bench.peers[-1]))
                opened.append(bench.opened_s(bench.peers[-1]))
            results[f"{bench.name}_restart_ready_s"] = restarts
            results[f"{bench.name}_restart_start_and_serving_s"] = opened
            progress(f"{bench.name}: one peer restarted, ready in {restarts} s; {opened}")
        progress("settling: until the full peers idle (digest builds, first scrub filling)")
        time.sleep(args.settle_s)
        settled_by = time.monotonic() + SETTLE_MAX_S
        while time.monotonic() < settled_by:
            before = full.cpu_s()
            time.sleep(5.0)
            if (full.cpu_s() - before) / 5.0 < IDLE_CORES * len(full.peers):
                break
        results["settled_after_s"] = time.monotonic() - settled_by + SETTLE_MAX_S + args.settle_s
        runs: list[tuple[str, dict[str, float]]] = []
        for round_index in range(args.rounds):
            for bench in (empty, full):
                result = wrk(bench, args.seconds)
                runs.append((bench.name, result))
                progress(f"round {round_index + 1}: {bench.name}: {result}")
        results["runs"] = runs
        for bench in (empty, full):
            results[f"{bench.name}_rss_mib_after_load"] = bench.rss_mib()
    finally:
        empty.stop()
        full.stop()
    print(json.dumps(results, indent=1))
    print()
    print("| figure | empty | full |")
    print("| --- | --- | --- |")
    ready_e = max(results["empty_ready_s"].values())  # type: ignore[attr-defined]
    ready_f = max(results["full_ready_s"].values())  # type: ignore[attr-defined]
    print(f"| cluster start to /readyz 200, slowest peer | {ready_e:.2f} s | {ready_f:.2f} s |")
    cells = [
        " / ".join(f"{v:.2f} s" for v in cast(list[float], results[f"{name}_restart_ready_s"]))
        for name in ("empty", "full")
    ]
    print(f"| one peer restarted: start to /readyz 200 | {cells[0]} | {cells[1]} |")
    cells = [
        " / ".join(
            f"{a:.2f}+{b - a:.2f} s"
            for a, b in results[f"{name}_restart_start_and_serving_s"]  # type: ignore[attr-defined]
        )
        for name in ("empty", "full")
    ]
    print(f"| of which: to peer_start + to peer_serving | {cells[0]} | {cells[1]} |")
    for when in ("start", "after_load"):
        cells = []
        for name in ("empty", "full"):
            rss, anon = max(results[f"{name}_rss_mib_{when}"])  # type: ignore[call-overload]
            cells.append(f"{rss:.0f} MiB ({anon:.0f} MiB anon)")
        print(f"| VmRSS (RssAnon), largest peer, {when} | {cells[0]} | {cells[1]} |")
    for figure in ("keys_s", "cpu_ms_per_1k_keys"):
        cells = []
        for name in ("empty", "full"):
            values = [r[figure] for n, r in runs if n == name]
            cells.append(" / ".join(f"{v:,.0f}" for v in values))
        print(f"| 100-record tokenize {figure} (rounds) | {cells[0]} | {cells[1]} |")
    rate_e = sum(r["keys_s"] for n, r in runs if n == "empty")
    rate_f = sum(r["keys_s"] for n, r in runs if n == "full")
    print(f"\nfull/empty keys/s: {rate_f / rate_e:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
