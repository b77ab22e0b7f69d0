"""Ports and processes of `tokenvault bench`: free loopback ports, the CPU time of the servers
it measures, bounded waits that a stop signal ends, and stopping what it started.

Rules:
- Ports are picked free on 127.0.0.1 by the operating system (its ephemeral range), never fixed.
- Whoever starts a process stops it by its PID on every way out: SIGTERM, then SIGKILL after
  BENCH_STOP_TIMEOUT_S. (Tokenvault peers go through cli.peer_processes, like `up`'s.)
- Every wait is bounded and polls; a stop signal (SIGINT, SIGTERM, SIGHUP, counted by
  StopSignals) ends it with BenchInterrupted, so that the caller's cleanup runs.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence

from tokenvault import ports
from tokenvault.cli.exits import CliError
from tokenvault.cli.peer_processes import StopSignals

BENCH_STOP_TIMEOUT_S = 10.0
BENCH_POLL_INTERVAL_S = 0.05


class BenchInterrupted(CliError):
    """A stop signal arrived: what was started is stopped on the way out."""

    def __init__(self) -> None:
        super().__init__("interrupted: stopped every process the bench had started")


def check_stop(stop: StopSignals) -> None:
    if stop.count:
        raise BenchInterrupted()


def pause(stop: StopSignals, seconds: float) -> None:
    """Sleeps, or raises BenchInterrupted as soon as a stop signal has come."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check_stop(stop)
        time.sleep(min(BENCH_POLL_INTERVAL_S, max(deadline - time.monotonic(), 0.0)))
    check_stop(stop)


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (tokenvault/ports.py)."""
    try:
        return ports.free_ports(count)
    except ports.NoFreePorts as error:
        raise CliError(str(error)) from None


def free_port_block(count: int) -> int:
    """A base port such that base+1 .. base+count are free on 127.0.0.1 (what `init` takes)."""
    try:
        return ports.free_port_block(count)
    except ports.NoFreePorts as error:
        raise CliError(str(error)) from None


def cpu_seconds(pids: Sequence[int]) -> float | None:
    """User plus system CPU seconds the processes have used so far (from /proc); None where
    /proc cannot tell (not Linux, or a process gone)."""
    total_ticks = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                # Fields after the command name, which may hold spaces: state is field 3,
                # utime and stime are fields 14 and 15.
                fields = stat.read().rpartition(")")[2].split()
            total_ticks += int(fields[11]) + int(fields[12])
        return total_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def wait_for_exit(
    processes: Sequence[subprocess.Popen[bytes]], stop: StopSignals, timeout_s: float
) -> bool:
    """True once every process has exited; False after timeout_s; BenchInterrupted on a stop
    signal."""
    deadline = time.monotonic() + timeout_s
    while any(process.poll() is None for process in processes):
        check_stop(stop)
        if time.monotonic() >= deadline:
            return False
        time.sleep(BENCH_POLL_INTERVAL_S)
    return True


def stop_processes(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each running process, then SIGKILL to those still running after
    BENCH_STOP_TIMEOUT_S; returns once every one has exited."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + BENCH_STOP_TIMEOUT_S
    for process in running:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
