"""Shrinking a failing run: the smallest configuration found that still breaks the same
invariant, so that its replay is short enough to read whole (`tokenvault sim --trace`).

Rules:
- A candidate keeps the seed and changes one knob: fewer owners, fewer operations, fewer
  membership changes, fewer peers.
  It is accepted when its run violates at least one of the invariants the original run did.
- Fewer operations or owners keep the fault schedule (it depends on the seed and the peers
  only), so those shrink well; fewer membership changes keep the first ones (each is drawn in
  turn from its own generator); fewer peers draw a new schedule and are tried last.
- Greedy and bounded: at most `runs_max` runs, each a full deterministic run, so the result is
  itself a pure function of the failing configuration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from tokenvault.sim.config import SimConfig
from tokenvault.sim.runner import SimResult, run_simulation

SHRINK_RUNS_MAX = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class ShrinkResult:
    original: SimResult
    smallest: SimResult
    runs: int  # runs tried while shrinking


def shrink(failing: SimResult, *, runs_max: int = SHRINK_RUNS_MAX) -> ShrinkResult:
    assert not failing.passed, "only a failing run can be shrunk"
    wanted = {v.invariant for v in failing.violations}
    best = failing
    runs = 0
    improved = True
    while improved and runs < runs_max:
        improved = False
        for candidate in _candidates(best.config):
            if runs >= runs_max:
                break
            runs += 1
            result = run_simulation(candidate)
            if wanted & {v.invariant for v in result.violations}:
                best = result
                improved = True
                break
    return ShrinkResult(original=failing, smallest=best, runs=runs)


def _candidates(config: SimConfig) -> Iterator[SimConfig]:
    """Smaller neighbours of config, the most promising first."""
    for owners in range(1, config.owner_count):
        yield dataclasses.replace(config, owner_count=owners)
    ops = config.operation_count
    for smaller in sorted({ops // 4, ops // 2, ops * 3 // 4, ops - ops // 8, ops - 1}):
        if 0 <= smaller < ops:
            yield dataclasses.replace(config, operation_count=smaller)
    for changes in range(config.membership_changes):
        yield dataclasses.replace(config, membership_changes=changes)
    for peers in range(config.replica_count, config.peer_count):
        yield dataclasses.replace(config, peer_count=peers)
