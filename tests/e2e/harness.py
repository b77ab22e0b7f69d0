"""Real peer processes on loopback for end-to-end tests: start, kill, pause, restart, clean up.

Rules: every peer is its own OS process started with `python -m tokenvault node`; ports are free
ports picked at start; `close()` kills every process it started, even after a failure; waiting
is bounded and polls the peer's own /readyz (serving, its store taking writes), never a fixed
sleep.

TLS mode (`Cluster(..., tls=True)`): the cluster is made by `init --tls`; `url()` is https://,
and every client a test makes passes `verify=cluster.verify` (the cluster CA; True, the
default, in plain mode). `TOKENVAULT_E2E_TLS` chooses the modes the suite runs in
(`tls_modes`): unset, both; "0" plain only; "1" TLS only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tokenvault import ports
from tokenvault.cli.peer_processes import peer_command
from tokenvault.cluster_init import init_cluster
from tokenvault.tls import client_context

READY_TIMEOUT_S = 20.0
TLS_MODES_VARIABLE = "TOKENVAULT_E2E_TLS"


def tls_modes() -> list[bool]:
    """The modes the end-to-end suite runs in: [False] plain, [True] TLS, or both."""
    chosen = os.environ.get(TLS_MODES_VARIABLE, "")
    return {"0": [False], "1": [True]}.get(chosen, [False, True])


def free_port_block(count: int) -> int:
    """A base port such that base+1 .. base+count are free right now on 127.0.0.1, outside the
    ephemeral range (tokenvault/ports.py says why)."""
    return ports.free_port_block(count)


@contextlib.contextmanager
def running_cluster(
    directory: Path, *, owners: tuple[str, ...] = ("alice", "bob"), tls: bool = False
) -> Iterator[Cluster]:
    """A started 3-peer Cluster, closed on the way out whatever happened."""
    cluster = Cluster(directory, owners=owners, tls=tls)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


class Cluster:
    def __init__(
        self,
        directory: Path,
        *,
        nodes: int = 3,
        owners: tuple[str, ...] = ("alice", "bob"),
        tls: bool = False,
    ):
        self.directory = directory
        base = free_port_block(nodes)
        self.init = init_cluster(directory, nodes=nodes, base_port=base, owners=owners, tls=tls)
        self._set_tls(tls)
        keys = json.loads((directory / "keys.json").read_text())
        self.admin_key: str = keys["admin"]
        self.owner_keys: dict[str, str] = keys["owners"]
        self.peer_ids = [p.id for p in self.init.peers]
        self._addresses = {p.id: p.address for p in self.init.peers}
        self._data_dirs = {p.id: p.data_dir for p in self.init.peers}
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        (directory / "logs").mkdir(exist_ok=True)

    def set_cluster_option(self, name: str, value: float) -> None:
        """Add a [cluster] option to cluster.toml (before the peers start)."""
        config = self.init.config_path
        text = config.read_text()
        config.write_text(text.replace("[cluster]\n", f"[cluster]\n{name} = {value}\n", 1))

    def _set_tls(self, tls: bool) -> None:
        self.tls = tls
        self.ca_path = self.directory / "tls" / "ca.pem" if tls else None
        # httpx's `verify`: the cluster CA in TLS mode (one context, shared by every client)
        self.verify: ssl.SSLContext | bool = (
            True if self.ca_path is None else client_context(self.ca_path)
        )

    def url(self, peer_id: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self._addresses[peer_id]}"

    def cacert_options(self) -> list[str]:
        """The command line's options to trust this cluster's CA (none in plain mode)."""
        return [] if self.ca_path is None else ["--cacert", str(self.ca_path)]

    def address(self, peer_id: str) -> tuple[str, int]:
        host, _, port = self._addresses[peer_id].rpartition(":")
        return host, int(port)

    def headers(self, owner: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.owner_keys[owner]}"}

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def start(self, peer_id: str, config_path: Path | None = None) -> None:
        assert peer_id not in self._processes or self._processes[peer_id].poll() is not None
        log = open(self.directory / "logs" / f"{peer_id}.log", "ab")  # noqa: SIM115
        command = peer_command(config_path or self.init.config_path, peer_id)
        if peer_id not in self.peer_ids:  # a peer that joined: its own address and directory
            command += ["--address", self._addresses[peer_id], "--join"]
            command += ["--data-dir", str(self._data_dirs[peer_id])]
        self._processes[peer_id] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()

    def reserve_address(self, peer_id: str) -> str:
        """A free loopback address for a peer that is not in cluster.toml (one that joins)."""
        if peer_id not in self._addresses:
            (port,) = ports.free_ports(1)
            self._addresses[peer_id] = f"127.0.0.1:{port}"
            self._data_dirs[peer_id] = self.directory / "data" / peer_id
        return self._addresses[peer_id]

    def start_joining(self, peer_id: str) -> None:
        """Starts a peer outside cluster.toml with `--join` (it asks to be added) on its own
        address and data directory, and waits until it answers (/healthz)."""
        self.reserve_address(peer_id)
        self._data_dirs[peer_id].mkdir(parents=True, exist_ok=True)
        self.start(peer_id)
        self.wait_ready(peer_id, probe="/healthz")

    def start_all(self) -> None:
        for peer_id in self.peer_ids:
            self.start(peer_id)
        for peer_id in self.peer_ids:
            self.wait_ready(peer_id)  # /readyz: serving, and its store takes writes

    def wait_serving(self, peer_id: str, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Waits until /healthz says "serving" (a fresh peer says "starting" until it knows
        whether its peers knew it); returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() < started + timeout_s:
            try:
                health = httpx.get(self.url(peer_id) + "/healthz", timeout=1.0, verify=self.verify)
                if health.status_code == 200 and health.json()["status"] == "serving":
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{peer_id} not serving after {timeout_s} s")

    def wait_ready(self, peer_id: str, probe: str = "/readyz") -> None:
        """Waits until `probe` answers 200: /readyz (ready: serving, its store taking writes) or
        /healthz (alive: it answers, recovering or not)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            process = self._processes[peer_id]
            if process.poll() is not None:
                raise RuntimeError(
                    f"{peer_id} exited with {process.returncode}: {self.log(peer_id)[-2000:]}"
                )
            try:
                health = httpx.get(self.url(peer_id) + probe, timeout=1.0, verify=self.verify)
                if health.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{peer_id} not ready after {READY_TIMEOUT_S} s")

    def kill(self, peer_id: str) -> None:
        process = self._processes[peer_id]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self, peer_id: str) -> int:
        process = self._processes[peer_id]
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=10)

    def pause(self, peer_id: str) -> None:
        self._processes[peer_id].send_signal(signal.SIGSTOP)

    def resume(self, peer_id: str) -> None:
        self._processes[peer_id].send_signal(signal.SIGCONT)

    def cpu_seconds(self, peer_id: str) -> float:
        """User + system CPU the peer's process used so far (Linux /proc)."""
        stat = Path(f"/proc/{self.pid(peer_id)}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def data_dir(self, peer_id: str) -> Path:
        return self._data_dirs[peer_id]

    def started_peers(self) -> list[str]:
        """Every peer this cluster ever started a process for."""
        return list(self._processes)

    def pid(self, peer_id: str) -> int:
        return self._processes[peer_id].pid

    def log(self, peer_id: str) -> str:
        return (self.directory / "logs" / f"{peer_id}.log").read_text(errors="replace")

    def log_events(self, peer_id: str) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log(peer_id).splitlines() if line.startswith("{")]

    def close(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a paused peer dies at once, not on resume
                process.kill()
                process.wait(timeout=10)
