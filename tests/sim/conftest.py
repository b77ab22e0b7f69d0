"""Shared by the simulator tests: the seed sweep runs once per session and is reused.

TOKENVAULT_SIM_SEEDS sets how many seeds the sweep runs (200 by default); a longer sweep, e.g.
TOKENVAULT_SIM_SEEDS=5000, is the slow run for a nightly job.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.sweep import run_sweep
from tokenvault.sim.config import SimConfig
from tokenvault.sim.runner import SimResult

SWEEP_SEEDS_DEFAULT = 200


def sweep_seed_count() -> int:
    return int(os.environ.get("TOKENVAULT_SIM_SEEDS", SWEEP_SEEDS_DEFAULT))


@pytest.fixture(scope="session")
def sweep() -> list[SimResult]:
    """One run per seed from 1, with the default configuration (the CLI's defaults), on every
    core."""
    return list(run_sweep([SimConfig(seed=seed) for seed in range(1, sweep_seed_count() + 1)]))
