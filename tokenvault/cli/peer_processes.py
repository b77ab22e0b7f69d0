"""The peer processes of `tokenvault up` (and of `bench`): start them, wait until they answer,
and stop every one of them.

Rules:
- Whoever starts peers here owns them: `stop_peers` runs on every way out, and stops each running
  peer with SIGTERM, then SIGKILL after UP_STOP_TIMEOUT_S (or sooner, if Ctrl-C comes twice more).
- Each peer runs `python -m tokenvault node` in its own session, so that a terminal's Ctrl-C
  reaches only `up`, which stops the peers itself; its stdout and stderr go to its log file.
- While StopSignals is active, SIGINT, SIGTERM and SIGHUP are counted instead of ending the
  process; every wait below ends when one arrives.
- A peer that another process runs (it holds the peer's data directory, pid_lock.py) can be
  waited for beside the started ones; it is never signalled.
- A process that ends is described by its exit code or signal, and by the `tokenvault:` line
  it printed last (its one-line failure), if any.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import tokenvault
from tokenvault.cli.exits import print_error
from tokenvault.config import PeerConfig
from tokenvault.peer_settings import PER_PEER_ENVIRONMENT_VARIABLES
from tokenvault.pid_lock import lock_holder, peer_pid_path

UP_READY_TIMEOUT_S = 30.0
UP_HEALTH_POLL_INTERVAL_S = 0.2
UP_HEALTH_REQUEST_TIMEOUT_S = 1.0
UP_STOP_TIMEOUT_S = 10.0
UP_STOP_POLL_INTERVAL_S = 0.05


UP_LOG_TAIL_BYTES = 4096  # how much of a log's end is searched for its last error line


@dataclass(slots=True, kw_only=True)
class PeerChild:
    peer: PeerConfig
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at_s: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class StopSignals:
    """Counts SIGINT/SIGTERM/SIGHUP while active instead of dying; restores handlers on exit."""

    count: int = 0
    _previous: dict[int, Any] = field(default_factory=dict)

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if signum is not None:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        self.count += 1


def peer_command(config_path: Path, peer_id: str) -> list[str]:
    """The command line that runs one peer in the foreground, with this Python."""
    return [
        sys.executable,
        "-m",
        "tokenvault",
        "node",
        "--config",
        str(config_path),
        "--id",
        peer_id,
    ]


def start_peer(peer: PeerConfig, config_path: Path, logs_dir: Path) -> PeerChild:
    log_path = logs_dir / f"{peer.id}.log"
    command = peer_command(config_path, peer.id)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=_child_environment(),
            # Its own session: a terminal's Ctrl-C reaches only `up`, which stops peers in order.
            start_new_session=True,
        )
    return PeerChild(peer=peer, process=process, log_path=log_path)


def _child_environment() -> dict[str, str]:
    """Our environment less what names one peer's own settings (each child gets its own by
    flags); from a source checkout, with the checkout importable by the child."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in PER_PEER_ENVIRONMENT_VARIABLES
    }
    package_root = Path(tokenvault.__file__).resolve().parent.parent
    if package_root.name not in ("site-packages", "dist-packages"):
        existing = environment.get("PYTHONPATH")
        environment["PYTHONPATH"] = (
            f"{package_root}{os.pathsep}{existing}" if existing else str(package_root)
        )
    return environment


def health_client(tls_context: ssl.SSLContext | None) -> httpx.Client:
    """The client of readiness probes: HTTPS trusting the cluster CA when tls_context is given."""
    verify: ssl.SSLContext | bool = True if tls_context is None else tls_context
    return httpx.Client(timeout=UP_HEALTH_REQUEST_TIMEOUT_S, trust_env=False, verify=verify)


def peer_url(peer: PeerConfig, tls_context: ssl.SSLContext | None) -> str:
    return f"{'http' if tls_context is None else 'https'}://{peer.address}"


def wait_until_healthy(
    children: list[PeerChild],
    stop: StopSignals,
    logs_dir: Path,
    tls_context: ssl.SSLContext | None = None,
    *,
    adopted: Sequence[PeerConfig] = (),
) -> bool:
    """True once every peer, started (`children`) or run by another process (`adopted`),
    answers /readyz 200 (over HTTPS, with tls_context, when given): it serves and its store
    takes writes; False on a stop signal, an exit or a timeout."""
    deadline = time.monotonic() + UP_READY_TIMEOUT_S
    ready: set[str] = set()
    with health_client(tls_context) as client:
        while not stop.count:
            for child in children:
                code = child.process.poll()
                if code is not None:
                    print_error(
                        f"peer {child.peer.id} ended while starting ({describe_exit(code)});"
                        f" see {child.log_path}{error_line_suffix(child.log_path)}"
                    )
                    return False
            for peer in adopted:
                if lock_holder(peer_pid_path(peer.data_dir)) is None:
                    print_error(f"peer {peer.id}, run by another process, stopped meanwhile")
                    return False
            for peer in [child.peer for child in children] + list(adopted):
                if peer.id not in ready and answers_ready(client, peer_url(peer, tls_context)):
                    ready.add(peer.id)
            if len(ready) == len(children) + len(adopted):
                return True
            if time.monotonic() >= deadline:
                waiting = [c.peer.id for c in children] + [p.id for p in adopted]
                print_error(
                    f"peers {', '.join(p for p in waiting if p not in ready)} were not ready"
                    f" (/readyz) within {UP_READY_TIMEOUT_S:.0f} s; see the logs in {logs_dir}"
                )
                return False
            time.sleep(UP_HEALTH_POLL_INTERVAL_S)
    return False


def answers_ready(client: httpx.Client, url: str) -> bool:
    """The peer is ready: it serves and its store takes writes (a fresh peer of a new cluster
    is not ready until a majority of its peers answered it, within a heartbeat or two)."""
    try:
        return client.get(f"{url}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def describe_exit(returncode: int) -> str:
    """`exit code 1`, or `signal SIGKILL` for a process a signal ended."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def error_line_suffix(log_path: Path) -> str:
    """`: <the last tokenvault: line of the log>` when the process ended on one, else ''."""
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - UP_LOG_TAIL_BYTES))
            tail = log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line for line in tail.splitlines() if line.strip()]
    return f": {lines[-1]}" if lines and lines[-1].startswith("tokenvault: ") else ""


def stop_peers(
    children: list[PeerChild], stop: StopSignals, *, stopped: str = "every peer"
) -> None:
    """Stop every running child; says `stopped <stopped>` when done."""
    running = [child for child in children if child.process.poll() is None]
    if not running:
        return
    print(f"stopping {', '.join(c.peer.id for c in running)} ...", flush=True)
    signals_before = stop.count
    for child in running:
        child.process.terminate()  # a no-op if it has just exited
    deadline = time.monotonic() + UP_STOP_TIMEOUT_S
    while (
        any(child.process.poll() is None for child in running)
        and time.monotonic() < deadline
        and stop.count <= signals_before + 1  # Ctrl-C twice more: stop waiting
    ):
        time.sleep(UP_STOP_POLL_INTERVAL_S)
    for child in running:
        if child.process.poll() is None:
            print_error(f"peer {child.peer.id} did not stop in time: killing it")
            child.process.kill()
            child.process.wait()
    print(f"stopped {stopped}", flush=True)
