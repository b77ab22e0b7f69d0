"""A sweep of seeds on every core, for the test suite: `run_sweep(configs)` runs each
configuration once, in worker processes, and yields the results in the order of the
configurations. (Here, not in tokenvault/sim/: the simulator itself touches no process, no
clock and no OS: tests/sim/test_isolation.py.)

Rules:
- A run is a pure function of its configuration (the seed decides everything), so where it runs
  changes nothing: a result is the one `run_simulation(config)` gives in this process, digest
  included.
- Workers start from a fresh interpreter (`forkserver`), never a fork of a caller that may hold
  threads or open files; the results come back without their logs (keep_log off).
- One worker, or one configuration, runs in this process: no pool for nothing.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

from tokenvault.sim.config import SimConfig
from tokenvault.sim.runner import SimResult, run_simulation


def available_cores() -> int:
    """The cores this process may run on (its affinity), at least 1."""
    return max(1, len(os.sched_getaffinity(0)))


def run_sweep(configs: Sequence[SimConfig], jobs: int | None = None) -> Iterator[SimResult]:
    """The result of each configuration, in order, run on `jobs` workers (every core)."""
    workers = min(available_cores() if jobs is None else jobs, len(configs))
    if workers <= 1:
        yield from (run_simulation(config) for config in configs)
        return
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(run_simulation, configs, chunksize=1)
