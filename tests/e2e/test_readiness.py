"""Liveness and readiness on real processes: /healthz answers 200 while the peer runs, /readyz only
while it can reach a write quorum of every owner's replicas as its failure detector sees them,
and `tokenvault_ready` and /v1/admin/node follow; HEAD answers as GET does, without a body."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.harness import Cluster
from tests.e2e.test_cluster import tokenize

pytestmark = pytest.mark.e2e

# The failure detector holds a silent peer down after 4 s; the wait allows for a loaded machine.
DOWN_WAIT_S = 20.0
POLL_S = 0.1


def get(cluster: Cluster, peer: str, path: str, method: str = "GET") -> httpx.Response:
    headers = cluster.admin_headers() if path.startswith("/v1/") else {}
    return httpx.request(
        method, cluster.url(peer) + path, headers=headers, timeout=5, verify=cluster.verify
    )


def wait_readyz(cluster: Cluster, peer: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + DOWN_WAIT_S
    while True:
        answer = get(cluster, peer, "/readyz")
        if answer.status_code == status:
            return answer
        assert time.monotonic() < deadline, answer.text
        time.sleep(POLL_S)


def ready_gauge(cluster: Cluster, peer: str) -> str:
    metrics = get(cluster, peer, "/metrics").text
    return next(
        line.split()[-1] for line in metrics.splitlines() if line.startswith("tokenvault_ready ")
    )


def test_readyz_follows_the_write_quorum_while_healthz_stays_live(cluster: Cluster) -> None:
    c = cluster
    assert get(c, "n1", "/readyz").json() == {"ready": True, "peer": "n1"}

    c.kill("n2")  # one replica of three down: W = 2 still reachable
    deadline = time.monotonic() + DOWN_WAIT_S
    while {p["id"]: p["state"] for p in get(c, "n1", "/v1/ring").json()["peers"]}["n2"] != "down":
        assert time.monotonic() < deadline
        time.sleep(POLL_S)
    assert get(c, "n1", "/readyz").status_code == 200
    assert ready_gauge(c, "n1") == "1"

    c.kill("n3")  # two of three down: no owner can get W = 2 acknowledgements through n1
    refused = wait_readyz(c, "n1", 503)
    assert refused.headers["retry-after"] == "1"
    payload = refused.json()
    assert (payload["ready"], payload["reason"], payload["peer"]) == (
        False,
        "no_write_quorum",
        "n1",
    )
    assert payload["error"]["code"] == "unavailable"
    assert "fewer than W replicas" in payload["error"]["message"]
    assert ready_gauge(c, "n1") == "0"
    view = get(c, "n1", "/v1/admin/node").json()
    assert (view["ready"], view["readiness"], view["state"]) == (
        False,
        "no_write_quorum",
        "serving",
    )
    # Still alive, still serving what it can: liveness does not follow the quorum.
    health = get(c, "n1", "/healthz")
    assert health.status_code == 200 and health.json() == {"status": "serving", "peer": "n1"}
    head = get(c, "n1", "/healthz", method="HEAD")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(health.content))
    head_ready = get(c, "n1", "/readyz", method="HEAD")
    assert head_ready.status_code == 503 and head_ready.content == b""
    assert head_ready.headers["content-length"] == str(len(refused.content))
    assert tokenize(c, "n1", "alice", [{"ssn": "while-alone"}]).status_code == 503

    c.start("n2")  # a quorum again as soon as n1 hears from n2
    c.wait_ready("n2")
    assert wait_readyz(c, "n1", 200).json() == {"ready": True, "peer": "n1"}
    assert ready_gauge(c, "n1") == "1"
    assert tokenize(c, "n1", "alice", [{"ssn": "together-again"}]).status_code == 200
