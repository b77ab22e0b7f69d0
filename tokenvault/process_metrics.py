"""This process's CPU time, memory, descriptors and start time, as the standard Prometheus process
metrics (the names and meanings of prometheus_client's ProcessCollector), read at each scrape.

Rules: read-only and cheap (a few small /proc files). Memory and start time come from Linux's
/proc/self/stat; where it cannot be read those families keep no series (their HELP and TYPE stay).
CPU time and the descriptor limit are portable; the descriptors open need /proc/self/fd.
"""

from __future__ import annotations

import functools
import os
import resource
import time
from dataclasses import dataclass

from tokenvault.metrics import Metrics

_STAT = "/proc/self/stat"


@dataclass(frozen=True, slots=True)
class ProcessStat:
    """From /proc/self/stat: memory in bytes, start time in seconds since the epoch."""

    resident_memory_bytes: int
    virtual_memory_bytes: int
    start_time_seconds: float


def declare(metrics: Metrics) -> None:
    metrics.counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.")
    metrics.gauge("process_resident_memory_bytes", "Resident memory size in bytes.")
    metrics.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.")
    metrics.gauge("process_open_fds", "Number of open file descriptors.")
    metrics.gauge("process_max_fds", "Maximum number of open file descriptors.")
    metrics.gauge(
        "process_start_time_seconds", "Start time of the process since unix epoch in seconds."
    )


def record(metrics: Metrics) -> None:
    """Set the process families from what the system says now."""
    metrics.set_total("process_cpu_seconds_total", time.process_time())
    metrics.set_gauge("process_max_fds", descriptor_limit())
    open_now = open_descriptors()
    if open_now is not None:
        metrics.set_gauge("process_open_fds", open_now)
    stat = process_stat()
    if stat is not None:
        metrics.set_gauge("process_resident_memory_bytes", stat.resident_memory_bytes)
        metrics.set_gauge("process_virtual_memory_bytes", stat.virtual_memory_bytes)
        metrics.set_gauge("process_start_time_seconds", stat.start_time_seconds)


def descriptor_limit() -> int:
    """The soft limit on open descriptors (RLIMIT_NOFILE)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_descriptors() -> int | None:
    """The descriptors open now, None where the system does not list them (/proc/self/fd)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
    except OSError:
        return None


def process_stat() -> ProcessStat | None:
    try:
        with open(_STAT, "rb") as file:
            text = file.read()
    except OSError:
        return None
    boot_time = _boot_time_seconds()
    if boot_time is None:
        return None
    # After the command in parentheses (which may hold spaces), fields 3 onwards (proc(5)).
    fields = text[text.rindex(b")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return ProcessStat(
        resident_memory_bytes=int(fields[24 - 3]) * os.sysconf("SC_PAGE_SIZE"),
        virtual_memory_bytes=int(fields[23 - 3]),
        start_time_seconds=boot_time + int(fields[22 - 3]) / ticks,
    )


@functools.cache
def _boot_time_seconds() -> float | None:
    try:
        with open("/proc/stat", "rb") as file:
            for line in file:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None
