"""End-to-end: `tokenvault up` supervises its peers, on real processes. A SIGKILLed peer is
restarted, logged, and serves again; a peer started by hand before `up` is adopted (not started
twice), and left running at Ctrl-C while every peer `up` started is gone; an adopted peer that
stops is started by `up` and then stopped by it; a port taken by another program is refused in
one line before any peer starts; a second `up`, or a second `node`, is one line. Every process
is killed at the end of a test, whatever happened (`UpRun.close`)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Cluster, free_port_block
from tests.e2e.test_node_errors import one_peer_running, run, run_node
from tests.e2e.test_tls import child_pids
from tokenvault.pid_lock import lock_holder, peer_pid_path
from tokenvault.tls import client_context

pytestmark = pytest.mark.e2e

BANNER_END = "up restarts a peer that dies; Ctrl-C stops every peer"
BANNER_TIMEOUT_S = 40.0
RESTART_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.1
PEER_LINE = re.compile(r"^  (n\d+)  https?://\S+  pid (\d+)")


class UpRun:
    """One `tokenvault up` process, its output in files; `close` kills it and every peer of
    its cluster (whoever started them)."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.stdout_path = directory.parent / f"{directory.name}-up.out"
        self.stderr_path = directory.parent / f"{directory.name}-up.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tokenvault", "up", "--dir", str(directory), *extra],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.stdout():
            assert self.process.poll() is None, f"up ended: {self.stdout()}{self.stderr()}"
            assert time.monotonic() < deadline, f"no {text!r}: {self.stdout()}{self.stderr()}"
            time.sleep(POLL_INTERVAL_S)

    def banner_pids(self) -> dict[str, int]:
        self.wait_for(BANNER_END, BANNER_TIMEOUT_S)
        lines = (PEER_LINE.match(line) for line in self.stdout().splitlines())
        return {match[1]: int(match[2]) for match in lines if match}

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT, and up's exit code."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def close(self) -> None:
        """Kill up, the peers it started (still starting or not), and any peer of its cluster."""
        leftovers = []
        if self.process.poll() is None:
            leftovers = child_pids(self.process.pid)
            self.process.kill()
            self.process.wait(timeout=10)
        for data_dir in (self.directory / "data").glob("n*"):
            holder = lock_holder(peer_pid_path(data_dir))
            if holder is not None and holder.pid is not None:
                leftovers.append(holder.pid)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def up_running(directory: Path, *extra: str) -> Iterator[UpRun]:
    run = UpRun(directory, *extra)
    try:
        yield run
    finally:
        run.close()


def running_pid(data_dir: Path) -> int | None:
    holder = lock_holder(peer_pid_path(data_dir))
    return None if holder is None else holder.pid


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def ready(url: str, verify: ssl.SSLContext | bool) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1.0, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_killed_peer_is_restarted_logged_and_serves_again(tmp_path: Path, tls_mode: bool) -> None:
    directory = tmp_path / "cluster"
    extra = ["--base-port", str(free_port_block(3))] + (["--tls"] if tls_mode else [])
    with up_running(directory, *extra) as up:
        pids = up.banner_pids()
        assert sorted(pids) == ["n1", "n2", "n3"]
        verify = client_context(directory / "tls" / "ca.pem") if tls_mode else True
        scheme = "https" if tls_mode else "http"
        address = next(
            line.split()[1] for line in up.stdout().splitlines() if line.startswith("  n2  ")
        )
        assert address.startswith(f"{scheme}://")

        os.kill(pids["n2"], signal.SIGKILL)
        up.wait_for("peer n2 is ready again", RESTART_TIMEOUT_S)
        assert ready(address, verify)
        restarted = running_pid(directory / "data" / "n2")
        assert restarted is not None and restarted != pids["n2"]
        assert f"peer n2 restarted (restart 1): pid {restarted}" in up.stdout()
        assert re.search(
            rf"^tokenvault: peer n2 \(pid {pids['n2']}\) ended after \d+\.\d s \(signal SIGKILL\);"
            r" up restarts it in 0\.5 s; see .*n2\.log$",
            up.stderr(),
            re.MULTILINE,
        ), up.stderr()

        # a second `node` for a peer that runs: one line, and the peer keeps running
        second = run_node(directory / "cluster.toml", "n2")
        assert second.returncode == 1
        assert second.stderr.splitlines() == [
            f"tokenvault: peer n2: another process (pid {restarted}) holds"
            f" {directory / 'data' / 'n2'} (is n2 already running?)"
        ]
        assert running_pid(directory / "data" / "n2") == restarted

        assert up.interrupt() == 0
        assert "stopped every peer" in up.stdout()
        for pid in [pids["n1"], pids["n3"], restarted]:
            assert gone(pid)
        assert "Traceback" not in up.stderr()


def test_a_peer_started_by_hand_is_adopted_and_left_running(tmp_path: Path) -> None:
    with (
        one_peer_running(tmp_path / "cluster", "n2") as (cluster, by_hand),
        up_running(cluster.directory) as up,
    ):
        pids = up.banner_pids()
        assert pids["n2"] == by_hand  # adopted, not started again
        n2_line = next(line for line in up.stdout().splitlines() if line.startswith("  n2"))
        assert n2_line.endswith("(not started by up: left running at the end)")
        assert "Ctrl-C stops every peer up started (not n2)." in up.stdout()

        again = run([sys.executable, "-m", "tokenvault", "up", "--dir", str(cluster.directory)])
        assert again.returncode == 1
        assert again.stderr.splitlines() == [
            f"tokenvault: another tokenvault up (pid {up.process.pid}) runs the cluster in"
            f" {cluster.directory}: stop it first (Ctrl-C where it runs)"
        ]

        assert up.interrupt() == 0
        assert "stopped every peer up started" in up.stdout()
        assert (
            f"left running: peer n2 (pid {by_hand}), which up did not start;"
            f" stop it with kill {by_hand}" in up.stdout()
        )
        assert gone(pids["n1"]) and gone(pids["n3"])
        assert not gone(by_hand)
        assert running_pid(cluster.directory / "data" / "n2") == by_hand
        assert "Traceback" not in up.stderr()


def test_an_adopted_peer_that_stops_is_started_by_up_and_stopped_at_the_end(
    tmp_path: Path,
) -> None:
    with (
        one_peer_running(tmp_path / "cluster", "n3") as (cluster, by_hand),
        up_running(cluster.directory) as up,
    ):
        pids = up.banner_pids()
        assert pids["n3"] == by_hand
        assert cluster.stop("n3") == 0
        up.wait_for("peer n3 is ready again", RESTART_TIMEOUT_S)
        assert (
            f"tokenvault: peer n3 (pid {by_hand}), run by another process, has stopped;"
            " up starts it in 0.5 s" in up.stderr()
        )
        taken_over = running_pid(cluster.directory / "data" / "n3")
        assert taken_over is not None and taken_over != by_hand

        assert up.interrupt() == 0
        assert "stopped every peer\n" in up.stdout()
        assert "left running: peer" not in up.stdout()
        for pid in [pids["n1"], pids["n2"], taken_over]:
            assert gone(pid)


def test_a_port_taken_by_another_program_is_refused_before_any_peer_starts(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path / "cluster")
    host, port = cluster.address("n2")
    with socket.create_server((host, port)), up_running(cluster.directory) as up:
        assert up.process.wait(timeout=60) == 1
        assert up.stderr().splitlines() == [
            f"tokenvault: peer n2: cannot listen on {host}:{port}: Address already in use; the"
            f" program there is not this cluster's n2 (no process holds"
            f" {cluster.directory / 'data' / 'n2'})"
        ]
        for peer_id in cluster.peer_ids:  # nothing was started
            assert running_pid(cluster.directory / "data" / peer_id) is None
        assert not (cluster.directory / "logs" / "n1.log").exists()
