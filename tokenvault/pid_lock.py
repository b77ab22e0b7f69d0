"""A pid file held locked: one process per directory (a peer's data directory, the cluster
directory of `tokenvault up`).

Rules:
- The lock, not the file, says whether a process runs: a process holds an exclusive flock(2) on
  the file for as long as it lives (the kernel lets go when it dies, even by SIGKILL). A file
  left behind by a dead process is stale and simply taken over; it is never deleted (deleting a
  locked file would let a second process lock a new file of the same name).
- The file holds the holder's pid, for people and messages only: it is written after the lock
  is taken, and a failure to write it (a full disk) does not give the lock up.
- `lock_holder` asks without waiting; it takes a shared lock for an instant when nobody holds
  the file, so a process that tries to lock it at that very instant is refused and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

PEER_PID_FILE_NAME = "node.pid"  # in a peer's data directory
PID_TEXT_BYTES_MAX = 32


class PidLockHeld(Exception):
    """Another process holds the lock; `pid` is the one its file names (None: not written)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"{path} is locked by {'another process' if pid is None else pid}")
        self.path = path
        self.pid = pid


@dataclass(frozen=True, slots=True)
class LockHolder:
    """A process that holds a pid file's lock now; its pid, if its file names one."""

    pid: int | None


class PidLock:
    """A lock this process holds until `release` (or until it exits)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Empty the file (it names no running process any more) and let the lock go."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the only descriptor releases the flock
        self._fd = None


def peer_pid_path(data_dir: Path) -> Path:
    """The pid file a running peer holds in its data directory."""
    return data_dir / PEER_PID_FILE_NAME


def acquire_pid_lock(path: Path) -> PidLock:
    """Lock `path` (created with mode 0600 if missing) for this process and write its pid in
    it. Raises PidLockHeld when another process holds it, OSError when it cannot be opened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _pid_in(fd)
        os.close(fd)
        raise PidLockHeld(path, pid) from None
    except OSError:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):  # the pid is for people; the lock is what counts
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return PidLock(path, fd)


def lock_holder(path: Path) -> LockHolder | None:
    """The process holding `path`'s lock now, or None: nobody (a missing or stale file, or one
    this process may not open)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return LockHolder(pid=_pid_in(fd))
    except OSError:
        return None
    finally:
        os.close(fd)  # also lets go of the shared lock, if taken
    return None


def _pid_in(fd: int) -> int | None:
    try:
        text = os.pread(fd, PID_TEXT_BYTES_MAX, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None
