"""The transfer throttle on real processes: a transfer configured at X MB/s moves at most about
X MB/s, and what it costs the clients of the same cluster.

Usage: python bench/transfer_throttle_bench.py [--rates 1 5] [--pass-s 4] [--clients 16]
       [--baseline-s 5] [--keep DIR]

Per rate X, a fresh 3-peer cluster (N=3, W=2) with `transfer_rate_mb_s = X`: one owner that
moves when n4 joins is loaded with about X x pass-s MB of 2,000-byte values (so that one pass
reads for about pass-s seconds; the design reads N - W + 1 = 2 whole passes). Then a load
generator (`--clients` keep-alive connections over n1..n3, tokenize requests of 10 fresh
values of another owner, which does not move) runs for a warm-up second and `--baseline-s`
seconds: the steady rate. n4 is started with `--join`; n4's GET /v1/admin/members is read every
0.25 s until the transfer committed: its bytes_moved over time, from the first sample with
bytes moved to the committed one, is the transfer's rate; client requests completed in that
same window give the rate during the transfer. Printed, one JSON line per rate:
`transfer_rate_ratio` (measured bytes/s over X MB/s: at most about 1) and `client_ratio`
(client requests/s during the transfer over before it), with both rates, p99 latencies and
the transfer's bytes; and, as a control, `client_ratio_after`: the same load for
`--baseline-s` seconds once the change finished (4 peers, no transfer) over before it, and
the peers' busy cores in each window. The load generator shares the machine's cores with the
peers: compare ratios from one run, not absolute rates. A benchmark, not a test: it asserts
only that every client answer was 200 or 503 (retriable; counted) and the change finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.harness import Cluster
from tests.e2e.test_transfer_resume import CANDIDATE_OWNERS, owners_moving_to_n4
from tokenvault.http.client import HttpConnection

VALUE_BYTES = 2_000  # a sealed record of about 2 KB: a page is about 500 of them (1 MiB)
LOAD_BATCH = 400  # records per loading request: under the 1 MiB body limit
CLIENT_RECORDS = 10  # records per client request during the measure
SAMPLE_S = 0.25
TRANSFER_BOUND_S = 600.0
AFTER_SETTLE_S = 2.0


@dataclass
class Load:
    """Completed client requests: (finish time, latency); failures counted."""

    done: list[tuple[float, float]] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)  # status -> count, not 200
    failed_at: list[float] = field(default_factory=list)
    errors: set[str] = field(default_factory=set)  # their bodies (no value in them)
    stop: bool = False

    def rate(self, start: float, end: float) -> tuple[float, float]:
        """Requests/s and p99 latency (ms) of the requests that finished in [start, end)."""
        latencies = sorted(lat for at, lat in self.done if start <= at < end)
        if not latencies:
            return 0.0, 0.0
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        return len(latencies) / (end - start), 1000 * p99

    def per_second(self, start: float, end: float) -> list[int]:
        counts = [0] * (int(end - start) + 1)
        for at, _ in self.done:
            if start <= at <= end:
                counts[int(at - start)] += 1
        return counts


async def client(cluster: Cluster, owner: str, index: int, load: Load) -> None:
    host, port = cluster.address(cluster.peer_ids[index % 3])
    connection = HttpConnection(host, port)
    headers = (
        ("authorization", f"Bearer {cluster.owner_keys[owner]}"),
        ("content-type", "application/json"),
    )
    sequence = 0
    try:
        while not load.stop:
            records = [{"ssn": f"c{index}-{sequence}-{k}"} for k in range(CLIENT_RECORDS)]
            sequence += 1
            body = json.dumps({"records": records}).encode()
            started = time.monotonic()
            status, answer = await connection.request(
                "POST", "/v1/tokenize", headers=headers, body=body, timeout_s=30.0
            )
            if status != 200:
                load.failures[status] = load.failures.get(status, 0) + 1
                load.failed_at.append(time.monotonic())
                load.errors.add(answer[:200].decode(errors="replace"))
            load.done.append((time.monotonic(), time.monotonic() - started))
    finally:
        await connection.aclose()


def preload(cluster: Cluster, owner: str, megabytes: float) -> int:
    """About `megabytes` MB of VALUE_BYTES values tokenized for `owner`: how many."""
    count = max(LOAD_BATCH, int(megabytes * 1e6 / VALUE_BYTES) // LOAD_BATCH * LOAD_BATCH)
    with httpx.Client(timeout=60.0, trust_env=False) as http:
        for batch in range(count // LOAD_BATCH):
            records = [
                {"ssn": f"{batch:05d}-{k:04d}-".ljust(VALUE_BYTES, "x")} for k in range(LOAD_BATCH)
            ]
            answer = http.post(
                cluster.url(cluster.peer_ids[batch % 3]) + "/v1/tokenize",
                headers=cluster.headers(owner),
                json={"records": records},
            )
            assert answer.status_code == 200, answer.text
    return count


def transfer_view(cluster: Cluster, owner: str) -> dict[str, Any] | None:
    try:
        answer = httpx.get(
            cluster.url("n4") + "/v1/admin/members",
            headers=cluster.admin_headers(),
            timeout=5.0,
            trust_env=False,
        )
    except httpx.HTTPError:
        return None
    mine = [t for t in answer.json()["transfers"] if t["owner"] == owner]
    return mine[0] if mine else None


def cpu(cluster: Cluster) -> dict[str, float]:
    """CPU seconds so far of each running peer."""
    return {p: cluster.cpu_seconds(p) for p in cluster.started_peers()}


def cores(start: dict[str, float], end: dict[str, float], seconds: float) -> dict[str, float]:
    """Busy cores per peer between two cpu() readings."""
    return {p: round((end[p] - start.get(p, 0.0)) / seconds, 2) for p in end}


async def measure(
    cluster: Cluster, moving: str, steady: str, clients: int, baseline_s: float
) -> dict[str, Any]:
    load = Load()
    samples: list[tuple[float, int]] = []  # (time, bytes_moved) while bytes move
    cpu_samples: list[dict[str, float]] = []  # cpu() at each of them
    async with trio.open_nursery() as nursery:
        for index in range(clients):
            nursery.start_soon(client, cluster, steady, index, load)
        await trio.sleep(1.0)  # warm-up
        baseline_start = time.monotonic()
        cpu_start = cpu(cluster)
        await trio.sleep(baseline_s)
        baseline_end = time.monotonic()
        cpu_baseline = cpu(cluster)
        await trio.to_thread.run_sync(cluster.start_joining, "n4")
        deadline = time.monotonic() + TRANSFER_BOUND_S
        view = None
        while time.monotonic() < deadline:
            view = await trio.to_thread.run_sync(transfer_view, cluster, moving)
            if view is not None and view["bytes_moved"] > 0:
                samples.append((time.monotonic(), view["bytes_moved"]))
                cpu_samples.append(cpu(cluster))
            if view is not None and view["state"] == "committed":
                break
            await trio.sleep(SAMPLE_S)
        await trio.sleep(AFTER_SETTLE_S)  # the finish (ring version 3) is decided and learned
        after_start = time.monotonic()
        await trio.sleep(baseline_s)  # the same load on the 4-peer ring: no transfer
        after_end = time.monotonic()
        load.stop = True
    assert view is not None and view["state"] == "committed", view
    assert set(load.failures) <= {503}, (load.failures, load.errors)
    (first_at, first_bytes), (last_at, last_bytes) = samples[0], samples[-1]
    transfer_bytes_s = (last_bytes - first_bytes) / (last_at - first_at)
    before, before_p99 = load.rate(baseline_start, baseline_end)
    during, during_p99 = load.rate(first_at, last_at)
    after, after_p99 = load.rate(after_start, after_end)
    cores_before = cores(cpu_start, cpu_baseline, baseline_end - baseline_start)
    cores_during = cores(cpu_samples[0], cpu_samples[-1], last_at - first_at)
    return {
        # client requests completed per second, from the baseline's start (join at baseline_s)
        "client_req_per_s": load.per_second(baseline_start, max(at for at, _ in load.done)),
        "transfer_s_after_join": [
            round(first_at - baseline_end, 1),
            round(last_at - baseline_end, 1),
        ],
        "transfer_bytes": last_bytes,
        "transfer_window_s": round(last_at - first_at, 2),
        "transfer_mb_s": round(transfer_bytes_s / 1e6, 3),
        "client_req_s_before": round(before, 1),
        "client_req_s_during": round(during, 1),
        "client_p99_ms_before": round(before_p99, 1),
        "client_p99_ms_during": round(during_p99, 1),
        "client_req_s_after": round(after, 1),
        "client_p99_ms_after": round(after_p99, 1),
        "client_ratio": round(during / before, 3),
        "client_ratio_after": round(after / before, 3),
        "peer_cpu_cores_before": cores_before,
        "peer_cpu_cores_during": cores_during,
        "client_failures": load.failures,  # 503s (retriable), when: below
        "client_failures_s_after_join": [round(at - baseline_end, 2) for at in load.failed_at],
        "client_errors": sorted(load.errors),
    }


def run_one(
    rate_mb_s: float, pass_s: float, clients: int, baseline_s: float, keep: Path | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        where = Path(directory) if keep is None else keep / f"rate-{rate_mb_s:g}"
        cluster = Cluster(where / "cluster", owners=CANDIDATE_OWNERS)
        cluster.set_cluster_option("transfer_rate_mb_s", rate_mb_s)
        moving = owners_moving_to_n4(cluster)
        steady = [o for o in CANDIDATE_OWNERS if o not in moving]
        assert moving and steady, moving
        try:
            cluster.start_all()
            mappings = preload(cluster, moving[0], rate_mb_s * pass_s)
            result = trio.run(measure, cluster, moving[0], steady[0], clients, baseline_s)
        finally:
            cluster.close()
    return {
        "transfer_rate_mb_s": rate_mb_s,
        "mappings": mappings,
        **result,
        "transfer_rate_ratio": round(result["transfer_mb_s"] / rate_mb_s, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument("--pass-s", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--baseline-s", type=float, default=5.0)
    parser.add_argument("--keep", type=Path, help="make the clusters here and keep their logs")
    args = parser.parse_args()
    for rate in args.rates:
        result = run_one(rate, args.pass_s, args.clients, args.baseline_s, args.keep)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
