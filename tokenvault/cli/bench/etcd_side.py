"""The etcd side of `tokenvault bench`: a fresh 3-member etcd cluster on free loopback ports,
and the keys its range reads find.

Rules:
- Used only where the `etcd` binary is installed; each member is its own process in its own
  session, with its data and log in the work directory, and stopped by PID on every way out.
- Ready once every member's GET /health answers 200 (the member has a leader), within
  ETCD_READY_TIMEOUT_S.
- Range reads read keys pre/000000 .. pre/019999, written first in transactions of 100 puts.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tokenvault.cli.bench.processes import (
    BENCH_POLL_INTERVAL_S,
    check_stop,
    free_ports,
    pause,
    stop_processes,
)
from tokenvault.cli.exits import CliError
from tokenvault.cli.peer_processes import StopSignals

ETCD_MEMBERS = 3
ETCD_READY_TIMEOUT_S = 30.0
ETCD_PRELOADED_KEYS = 20_000
ETCD_KEYS_PER_TRANSACTION = 100
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdCluster:
    urls: list[str]  # every member's client URL; the first takes the one-endpoint workloads
    server_pids: list[int]

    def environment(self) -> dict[str, str]:
        return {"N": str(ETCD_PRELOADED_KEYS)}


def etcd_version() -> str | None:
    """The installed etcd's version (e.g. '3.4.23'), or None when etcd is not installed."""
    if shutil.which("etcd") is None:
        return None
    completed = subprocess.run(
        ["etcd", "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    for line in completed.stdout.splitlines():
        if line.startswith("etcd Version:"):
            return line.partition(":")[2].strip()
    return "unknown"


@contextlib.contextmanager
def fresh_etcd(directory: Path, stop: StopSignals) -> Iterator[EtcdCluster]:
    """A new 3-member etcd cluster in `directory`, ready; every member stopped on the way out."""
    directory.mkdir(parents=True)
    ports = free_ports(2 * ETCD_MEMBERS)
    client_ports, peer_ports = ports[:ETCD_MEMBERS], ports[ETCD_MEMBERS:]
    initial_cluster = ",".join(
        f"m{i + 1}=http://127.0.0.1:{port}" for i, port in enumerate(peer_ports)
    )
    members: list[subprocess.Popen[bytes]] = []
    try:
        for i, (client_port, peer_port) in enumerate(zip(client_ports, peer_ports, strict=True)):
            members.append(
                _start_member(directory, f"m{i + 1}", client_port, peer_port, initial_cluster)
            )
        urls = [f"http://127.0.0.1:{port}" for port in client_ports]
        _wait_until_healthy(urls, members, stop, directory)
        yield EtcdCluster(urls=urls, server_pids=[member.pid for member in members])
    finally:
        stop_processes(members)


def _start_member(
    directory: Path, name: str, client_port: int, peer_port: int, initial_cluster: str
) -> subprocess.Popen[bytes]:
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    command = [
        "etcd", "--name", name, "--data-dir", str(directory / name),
        "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", initial_cluster, "--initial-cluster-token", "tokenvault-bench",
        "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn",
    ]  # fmt: skip
    with open(directory / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )


def _wait_until_healthy(
    urls: list[str], members: list[subprocess.Popen[bytes]], stop: StopSignals, directory: Path
) -> None:
    deadline = time.monotonic() + ETCD_READY_TIMEOUT_S
    pending = list(urls)
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while pending:
            check_stop(stop)
            for member in members:
                if member.poll() is not None:
                    raise CliError(f"an etcd member exited while starting; see {directory}")
            pending = [url for url in pending if not _healthy(client, url)]
            if pending and time.monotonic() >= deadline:
                raise CliError(f"etcd was not healthy within {ETCD_READY_TIMEOUT_S:.0f} s")
            if pending:
                pause(stop, BENCH_POLL_INTERVAL_S * 4)


def _healthy(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(f"{url}/health").status_code == 200
    except httpx.HTTPError:
        return False


def preload_keys(cluster: EtcdCluster, stop: StopSignals) -> None:
    """Writes the keys that the range reads read."""
    value = _b64("4111111111111111")
    with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
        for start in range(0, ETCD_PRELOADED_KEYS, ETCD_KEYS_PER_TRANSACTION):
            check_stop(stop)
            puts = [
                {"request_put": {"key": _b64(f"pre/{i:06d}"), "value": value}}
                for i in range(start, start + ETCD_KEYS_PER_TRANSACTION)
            ]
            try:
                answer = client.post(f"{cluster.urls[0]}/v3/kv/txn", json={"success": puts})
                answer.raise_for_status()
            except httpx.HTTPError as error:
                raise CliError(f"writing etcd's keys for range reads failed: {error}") from error


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")
