"""Tokenize throughput and latency on a local 3-peer cluster of real processes.

Usage: python bench/tokenize_bench.py [--clients 64] [--duration-s 10] [--records 1 100] [--tls]

Starts a fresh cluster (N=3, W=2, R=2) in a temporary directory, drives it with `--clients`
concurrent keep-alive connections spread over the three peers, each sending tokenize requests of
fresh values back to back, and prints per request size: requests/s, mappings/s, p50/p99 latency
and the peers' CPU (busy cores, and microseconds per mapping: less noisy than the rates on a
shared machine). With --tls the cluster is made by `init --tls`: clients speak HTTPS (trusting
the cluster CA, one handshake per client connection) and peers mutual TLS. A benchmark, not a
test: it asserts only that every answer was 200.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.harness import Cluster
from tokenvault.http.client import HttpConnection
from tokenvault.tls import client_context


async def drive(
    cluster: Cluster, clients: int, duration_s: float, records: int
) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    key = cluster.owner_keys["alice"]
    deadline = trio.current_time() + duration_s
    ssl_context = None if cluster.ca_path is None else client_context(cluster.ca_path)

    async def client(index: int) -> None:
        nonlocal failures
        host, port = cluster.address(cluster.peer_ids[index % 3])
        connection = HttpConnection(host, port, ssl_context=ssl_context)
        headers = (("authorization", f"Bearer {key}"), ("content-type", "application/json"))
        sequence = 0
        try:
            while trio.current_time() < deadline:
                batch = [
                    {"ssn": f"{records}-{index}-{sequence}-{k}", "note": "bench"}
                    for k in range(records)
                ]
                sequence += 1
                body = json.dumps({"records": batch}).encode()
                started = time.perf_counter()
                status, _ = await connection.request(
                    "POST", "/v1/tokenize", headers=headers, body=body, timeout_s=30.0
                )
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    failures += 1
        finally:
            await connection.aclose()

    cpu_before = sum(cluster.cpu_seconds(p) for p in cluster.peer_ids)
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(clients):
            nursery.start_soon(client, index)
    elapsed = time.perf_counter() - started
    peer_cpu_s = sum(cluster.cpu_seconds(p) for p in cluster.peer_ids) - cpu_before
    latencies.sort()
    count = len(latencies)
    return {
        "records_per_request": records,
        "requests": count,
        "failures": failures,
        "requests_per_s": count / elapsed,
        "mappings_per_s": count * records / elapsed,
        "p50_ms": 1000 * latencies[count // 2],
        "p99_ms": 1000 * latencies[min(count - 1, int(count * 0.99))],
        # CPU of the 3 peers together: busy cores, and CPU per mapping (less noisy than rates)
        "peer_cpu_cores": peer_cpu_s / elapsed,
        "peer_cpu_us_per_mapping": 1e6 * peer_cpu_s / max(1, count * records),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--records", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--anti-entropy", choices=("on", "off"), default="on")
    parser.add_argument("--tls", action="store_true", help="HTTPS and mutual TLS (init --tls)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(Path(directory) / "cluster", tls=args.tls)
        cluster.set_cluster_option(
            "anti_entropy_interval_s", 1.0 if args.anti_entropy == "on" else 0.0
        )
        try:
            cluster.start_all()
            for records in args.records:
                result = trio.run(drive, cluster, args.clients, args.duration_s, records)
                print(json.dumps({"anti_entropy": args.anti_entropy, "tls": args.tls, **result}))
                if result["failures"]:
                    return 1
        finally:
            cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
