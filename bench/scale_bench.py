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
- rate: wrk (`/work/shared/perf/tv_tokenize.lua`, 100 records per request, 64 connections, one
  peer) alternately against the empty and the full cluster, --rounds times, with the peers' CPU
  seconds (utime+stime) per 1,000 keys, the figure that moves least with a shared machine.
A progress line per step; a table at the end. Needs wrk. A benchmark, not a test.

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
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tokenvault.cli.peer_processes import peer_command
from tokenvault.cluster_init import init_cluster
from tokenvault.config import load_config
from tokenvault.quorum.messages import Mapping
from tokenvault.quorum.records import encode_mapping, mapping_key, read_active_epoch
from tokenvault.quorum.sealing import Sealer
from tokenvault.store.leveldb_store import LevelDBStore, open_leveldb

OWNER = "alice"
FIELD = "ssn"
LOAD_BATCH = 20_000  # mappings per LevelDB write batch of the bulk loader
READY_TIMEOUT_S = 120.0
SAMPLE = 100  # loaded tokens detokenized through the API
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
WRK_SCRIPT = Path("/work/shared/perf/tv_tokenize.lua")


def progress(text: str) -> None:
    print(f"[scale] {text}", file=sys.stderr, flush=True)


@dataclass
class Bench:
    """One cluster of real peer processes under a directory."""

    name: str
    directory: Path
    base_port: int

    def __post_init__(self) -> None:
        self.init = init_cluster(self.directory, nodes=3, base_port=self.base_port, owners=(OWNER,))
        (self.directory / "logs").mkdir(exist_ok=True)
        self.key = json.loads((self.directory / "keys.json").read_text())["owners"][OWNER]
        self.peers = [p.id for p in self.init.peers]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

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
                self.processes[peer] = subprocess.Popen(
                    peer_command(self.init.config_path, peer),
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

    def rss_mib(self) -> list[float]:
        found = []
        for process in self.processes.values():
            status = Path(f"/proc/{process.pid}/status").read_text()
            match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            assert match is not None
            found.append(int(match.group(1)) / 1024)
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


def bulk_load(bench: Bench, mappings: int) -> list[tuple[str, str]]:
    """Write `mappings` mappings of OWNER into every peer's store, as the API would; returns a
    sample of (token, value) to detokenize."""
    config = load_config(bench.init.config_path)
    sealer = Sealer(config.secret)
    paths = [bench.directory / p.data_dir / "leveldb" for p in bench.init.peers]
    store = LevelDBStore(str(paths[0]))
    try:
        epoch = read_active_epoch(store, OWNER)
    finally:
        store.close()
    maker = sealer.token_maker(OWNER, epoch)
    databases = [open_leveldb(str(path), paranoid=False) for path in paths]
    sample: list[tuple[str, str]] = []
    step = max(1, mappings // SAMPLE)
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
                if index % step == 0:
                    sample.append((token, value))
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
    return sample


def filter_costs(path: Path, absent_reads: int = 100_000) -> dict[str, float]:
    """What the KeyFilter buys on this store: an absent key's read from LevelDB (its own bloom
    filter, 10 bits per key) next to the filter's answer, and the first scrub's pass that fills
    the filter (verify_page over every key), per key."""
    store = LevelDBStore(str(path))
    try:
        cursor = None
        started = time.process_time()
        keys = 0
        while True:
            cursor = store.verify_page(cursor, 1_000)
            keys += 1_000
            if cursor is None:
                break
        scrub_us = 1e6 * (time.process_time() - started) / keys
        assert store.key_filter_complete
        absent = [b"m\x00alice\x00tok_absent-%d" % i for i in range(absent_reads)]
        database = store._db
        started = time.process_time()
        for key in absent:
            database.get(key, verify_checksums=True)
        leveldb_us = 1e6 * (time.process_time() - started) / absent_reads
        started = time.process_time()
        for key in absent:
            store.get(key)
        filter_us = 1e6 * (time.process_time() - started) / absent_reads
    finally:
        store.close()
    return {
        "absent_get_leveldb_bloom_us": leveldb_us,
        "absent_get_key_filter_us": filter_us,
        "first_scrub_with_filter_fill_us_per_key": scrub_us,
    }


def wrk(bench: Bench, seconds: int) -> dict[str, float]:
    """One wrk run of 100-record tokenizes against the first peer; keys/s and CPU per 1k keys."""
    environment = {**os.environ, "BATCH": "100", "KEY": bench.key}
    cpu_before = bench.cpu_s()
    url = bench.url(bench.peers[0]) + "/v1/tokenize"
    finished = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(WRK_SCRIPT), url],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    cpu_s = bench.cpu_s() - cpu_before
    line = next(x for x in finished.stdout.splitlines() if x.startswith("RESULT"))
    fields = dict(item.split("=") for item in line.split()[1:])
    keys = float(fields["ok"]) * 100
    assert float(fields["not_ok"]) == 0 and float(fields["errors"]) == 0, line
    return {
        "keys_s": float(fields["keys_s"]),
        "p99_ms": float(fields["p99_ms"]),
        "cpu_ms_per_1k_keys": 1e6 * cpu_s / keys,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="where both clusters go")
    parser.add_argument("--mappings", type=int, default=5_000_000, help="per peer")
    parser.add_argument("--base-port", type=int, default=7600)
    parser.add_argument("--rounds", type=int, default=2, help="empty/full alternations")
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--settle-s", type=float, default=30.0, help="after start, before load")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("scale_bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    full_dir, empty_dir = args.dir / "full", args.dir / "empty"
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    full = Bench("full", full_dir, args.base_port + 10)
    progress("full cluster: deciding the epoch through the API")
    full.start()
    full.call("/v1/tokenize", {"records": [{FIELD: "warm-up"}]})
    full.stop()
    sample = bulk_load(full, args.mappings)
    results: dict[str, object] = {"mappings_per_peer": args.mappings}
    results["filter"] = filter_costs(full.directory / full.init.peers[0].data_dir / "leveldb")
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
            restarts = [bench.restart(bench.peers[-1]) for _ in range(args.rounds)]
            results[f"{bench.name}_restart_ready_s"] = restarts
            progress(f"{bench.name}: one peer restarted, ready in {restarts} s")
        progress(f"settling {args.settle_s:.0f} s (background digest builds, first scrub)")
        time.sleep(args.settle_s)
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
        " / ".join(f"{v:.2f} s" for v in results[f"{name}_restart_ready_s"])  # type: ignore[attr-defined]
        for name in ("empty", "full")
    ]
    print(f"| one peer restarted: start to /readyz 200 | {cells[0]} | {cells[1]} |")
    for when in ("start", "after_load"):
        rss_e = max(results[f"empty_rss_mib_{when}"])  # type: ignore[call-overload]
        rss_f = max(results[f"full_rss_mib_{when}"])  # type: ignore[call-overload]
        print(f"| RSS, largest peer, {when} | {rss_e:.0f} MiB | {rss_f:.0f} MiB |")
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
