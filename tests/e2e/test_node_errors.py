"""End-to-end: `tokenvault node` ends an expected failure at start with one line on stderr and a
documented exit code, never a traceback: a peer that already runs (another process holds its
data directory: exit 1, before it touches the store), its port taken (1), a data directory it
cannot use (1), a disk too full to open a store (1), a bad configuration or secret (2)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Cluster
from tests.store.disk_faults import tmpfs
from tokenvault.cli.peer_processes import peer_command
from tokenvault.pid_lock import peer_pid_path

pytestmark = pytest.mark.e2e

NODE_TIMEOUT_S = 60.0


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    """A command that is expected to end by itself: its exit code and output."""
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def run_node(config_path: Path, peer_id: str) -> subprocess.CompletedProcess[str]:
    return run(peer_command(config_path, peer_id))


@contextlib.contextmanager
def one_peer_running(directory: Path, peer_id: str) -> Iterator[tuple[Cluster, int]]:
    """A new 3-peer cluster in which only `peer_id` runs, started as by hand, and its pid;
    every process of the cluster is killed on the way out."""
    cluster = Cluster(directory)
    try:
        cluster.start(peer_id)
        cluster.wait_ready(peer_id, probe="/healthz")
        yield cluster, cluster.pid(peer_id)
    finally:
        cluster.close()


def error_lines(finished: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the JSON log lines; and no traceback anywhere in it."""
    assert "Traceback" not in finished.stderr, finished.stderr
    return [line for line in finished.stderr.splitlines() if not line.startswith("{")]


def data_dir(cluster: Cluster, peer_id: str) -> Path:
    return cluster.directory / "data" / peer_id


def test_a_second_process_for_a_running_peer_is_one_line_and_touches_nothing(
    tmp_path: Path,
) -> None:
    with one_peer_running(tmp_path / "cluster", "n1") as (cluster, pid):
        directory = data_dir(cluster, "n1")
        before = sorted(path.name for path in directory.iterdir())
        second = run_node(cluster.init.config_path, "n1")
        assert second.returncode == 1
        # one line, and not a log line either: it stopped before it opened the store
        assert second.stderr.splitlines() == [
            f"tokenvault: peer n1: another process (pid {pid}) holds {directory}"
            " (is n1 already running?)"
        ]
        assert sorted(path.name for path in directory.iterdir()) == before  # nothing moved
        assert peer_pid_path(directory).read_text() == f"{pid}\n"
        health = httpx.get(cluster.url("n1") + "/healthz", timeout=5.0, verify=cluster.verify)
        assert health.status_code == 200
        assert cluster.stop("n1") == 0
        assert peer_pid_path(directory).read_text() == ""  # a clean stop leaves no pid behind


def test_a_taken_port_is_one_line_and_lets_the_data_directory_go(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")
    host, port = cluster.address("n1")
    with socket.create_server((host, port)):
        finished = run_node(cluster.init.config_path, "n1")
    assert finished.returncode == 1
    assert error_lines(finished) == [
        f"tokenvault: peer n1: cannot listen on {host}:{port}: Address already in use"
    ]
    # its lock went with it: the next start takes the data directory without a word
    assert peer_pid_path(data_dir(cluster, "n1")).read_text() == ""
    try:
        cluster.start("n1")
        cluster.wait_ready("n1", probe="/healthz")
    finally:
        cluster.close()


def test_a_data_directory_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")
    directory = data_dir(cluster, "n2")
    directory.rmdir()
    directory.write_text("not a directory")
    finished = run_node(cluster.init.config_path, "n2")
    assert finished.returncode == 1
    assert error_lines(finished) == [
        f"tokenvault: peer n2: cannot use the data directory {directory}: File exists"
    ]


def test_a_read_only_data_directory_is_one_line(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")
    directory = data_dir(cluster, "n1")
    with tmpfs(directory, "1m"):
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
        finished = run_node(cluster.init.config_path, "n1")
    assert finished.returncode == 1
    assert error_lines(finished) == [
        f"tokenvault: peer n1: cannot use the data directory {directory}: Read-only file system"
        f" ({peer_pid_path(directory)})"
    ]


def test_a_disk_too_full_to_open_a_store_is_one_line(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")
    directory = data_dir(cluster, "n1")
    with tmpfs(directory, "1m"):
        with open(directory / "filler", "wb", buffering=0) as filler, pytest.raises(OSError):
            for _ in range(64):  # 64 x 64 KiB: more than the disk holds
                filler.write(bytes(64 * 1024))
        finished = run_node(cluster.init.config_path, "n1")
    assert finished.returncode == 1
    assert error_lines(finished) == [
        "tokenvault: peer n1: no store could be opened: cannot open the LevelDB store:"
        " No space left on device"
    ]


@pytest.mark.parametrize(
    ("breakage", "line"),
    [
        (
            "secret",
            "tokenvault: cannot read the secret file {secret}: No such file or directory",
        ),
        ("config", "tokenvault: no cluster configuration at {config}"),
        (
            "peer",
            "tokenvault: no peer with id 'n9' in {config} (from --id);"
            " a new peer joins with --join",
        ),
    ],
)
def test_a_bad_configuration_is_one_line_and_exit_code_2(
    tmp_path: Path, breakage: str, line: str
) -> None:
    cluster = Cluster(tmp_path / "cluster")
    config, peer_id = cluster.init.config_path, "n1"
    if breakage == "secret":
        (cluster.directory / "secret").unlink()
    elif breakage == "config":
        config.unlink()
    else:
        peer_id = "n9"
    finished = run_node(config, peer_id)
    assert finished.returncode == 2
    secret = cluster.directory / "secret"
    assert error_lines(finished) == [line.format(config=config, secret=secret)]
