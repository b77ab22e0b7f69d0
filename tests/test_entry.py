"""The console script's entry (tokenvault/entry.py): a signal while the command line loads, or
while a command runs, ends it without a traceback. Real processes; every wait has a deadline."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SIGTERM_BIT = 1 << (signal.SIGTERM - 1)
DEADLINE_S = 20.0


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM now (SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & SIGTERM_BIT)
    except FileNotFoundError:
        pass
    return False


def start(*arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tokenvault", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def silent_peer() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_sigterm_while_the_command_line_loads_exits_0_at_once() -> None:
    process = start("--help")
    deadline = time.monotonic() + DEADLINE_S
    while not catches_sigterm(process.pid):  # entry.py's handler: it is loading now
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 0 and "Traceback" not in err


def test_ctrl_c_while_a_command_runs_is_quiet_with_code_130(silent_peer: str) -> None:
    process = start("epoch", "--url", silent_peer, "--key", "k" * 16)
    deadline = time.monotonic() + DEADLINE_S
    while not catches_sigterm(process.pid):  # loading: entry.py's handler is set
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    while catches_sigterm(process.pid):  # loaded: the handler is gone, the command runs
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    assert process.poll() is None  # waiting for the silent peer (a 10 s timeout)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_ctrl_c_while_the_command_line_loads_ends_it_quietly() -> None:
    process = start("--help")
    deadline = time.monotonic() + DEADLINE_S
    while not catches_sigterm(process.pid):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == -signal.SIGINT and "Traceback" not in err


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    init = ["init", "--nodes", "3", "--base-port", "7900", "--dir", str(tmp_path / "cluster")]
    with subprocess.Popen(  # init prints a summary of what it wrote, with print()
        [sys.executable, "-m", "tokenvault", *init],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # as `| head -0` would: every write to stdout breaks the pipe
        err = process.stderr.read()
        assert process.wait(timeout=DEADLINE_S) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert (tmp_path / "cluster" / "cluster.toml").is_file()  # the command itself was done
