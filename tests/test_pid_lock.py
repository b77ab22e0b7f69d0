"""pid_lock: one process per directory. The lock, not the file, says who runs: a second process
is refused with the first one's pid; a file left by a dead process (SIGKILL) is taken over; a
clean release empties the file; asking who holds it changes nothing for the holder."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tokenvault.pid_lock import LockHolder, PidLockHeld, acquire_pid_lock, lock_holder

HOLD = """
import sys, time
from pathlib import Path
from tokenvault.pid_lock import acquire_pid_lock
acquire_pid_lock(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(60)
"""


def holding_process(path: Path) -> subprocess.Popen[str]:
    """Another process that holds `path` until killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "held\n"
    return process


def test_a_lock_names_its_holder_and_refuses_a_second_process(tmp_path: Path) -> None:
    path = tmp_path / "node.pid"
    holder = holding_process(path)
    try:
        assert path.read_text() == f"{holder.pid}\n"
        assert lock_holder(path) == LockHolder(pid=holder.pid)
        with pytest.raises(PidLockHeld) as refused:
            acquire_pid_lock(path)
        assert refused.value.pid == holder.pid
        assert lock_holder(path) == LockHolder(pid=holder.pid)  # asking took nothing away
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    # SIGKILL left the file, with the dead pid in it: stale, and taken over
    assert path.read_text() == f"{holder.pid}\n"
    assert lock_holder(path) is None
    lock = acquire_pid_lock(path)
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text().strip().isdigit()
    finally:
        lock.release()
    assert path.read_text() == ""
    assert lock_holder(path) is None
    lock.release()  # twice is harmless


def test_no_file_is_no_holder(tmp_path: Path) -> None:
    assert lock_holder(tmp_path / "missing.pid") is None
