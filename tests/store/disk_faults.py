"""Damage and full disks for tests on real directories: flipped bytes, and a small tmpfs that the
test mounts (skipped where mounting is not permitted) and always unmounts."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def flip(file: Path, offset: int, count: int = 8) -> None:
    """Invert `count` bytes of `file` from `offset`."""
    with open(file, "r+b") as handle:
        handle.seek(offset)
        data = handle.read(count)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in data))


def mount_tmpfs(directory: Path, size: str) -> None:
    """Mount a tmpfs of `size` (e.g. "4m") on directory, or skip the test."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")


def unmount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], check=False)


def grow_tmpfs(directory: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(directory)], check=True)


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    mount_tmpfs(directory, size)
    try:
        yield directory
    finally:
        unmount(directory)
