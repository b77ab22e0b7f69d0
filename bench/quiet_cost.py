"""What anti-entropy and heartbeats cost a quiet cluster: CPU seconds and peer bytes per minute.

Usage: python bench/quiet_cost.py [--mappings 10000] [--idle-s 60] [--anti-entropy on|off]

Starts a 3-peer cluster, tokenizes `--mappings` values for each owner, lets writes and hints
settle for 5 s, then leaves it idle for `--idle-s` seconds and reports, per peer, the CPU time
it used (from /proc) and the bytes it sent to other peers (from /v1/admin/node), per minute.
A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.harness import Cluster


def bytes_sent(cluster: Cluster, peer: str) -> int:
    view = httpx.get(
        cluster.url(peer) + "/v1/admin/node", headers=cluster.admin_headers(), timeout=10
    ).json()
    return sum(link["bytes_sent"] for link in view["links"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mappings", type=int, default=10_000)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--anti-entropy", choices=("on", "off"), default="on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(Path(directory) / "cluster")
        cluster.set_cluster_option(
            "anti_entropy_interval_s", 1.0 if args.anti_entropy == "on" else 0.0
        )
        try:
            cluster.start_all()
            for owner in cluster.owner_keys:
                for start in range(0, args.mappings, 1000):
                    records = [{"ssn": f"{owner}-{i}"} for i in range(start, start + 1000)]
                    answer = httpx.post(
                        cluster.url("n1") + "/v1/tokenize",
                        headers=cluster.headers(owner),
                        json={"records": records[: args.mappings - start]},
                        timeout=30,
                    )
                    assert answer.status_code == 200, answer.text
            time.sleep(5)  # let lingering writes and hints settle before measuring
            cpu0 = {p: cluster.cpu_seconds(p) for p in cluster.peer_ids}
            sent0 = {p: bytes_sent(cluster, p) for p in cluster.peer_ids}
            time.sleep(args.idle_s)
            scale = 60.0 / args.idle_s
            report = {
                p: {
                    "cpu_s_per_min": round((cluster.cpu_seconds(p) - cpu0[p]) * scale, 3),
                    "peer_bytes_per_min": round((bytes_sent(cluster, p) - sent0[p]) * scale),
                }
                for p in cluster.peer_ids
            }
            print(
                json.dumps(
                    {
                        "anti_entropy": args.anti_entropy,
                        "mappings_per_owner": args.mappings,
                        "idle_s": args.idle_s,
                        "peers": report,
                    }
                )
            )
        finally:
            cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
