"""Every kind of fault actually happens in the sweep, and faults stop where they should."""

from __future__ import annotations

import pytest

from tokenvault.sim.config import SimConfig
from tokenvault.sim.faults import FaultKind, PartitionKind, choose_mix, plan_faults
from tokenvault.sim.runner import SimResult, SimStats, run_simulation

FAULT_KINDS = (
    "messages_lost",
    "messages_duplicated",
    "messages_reordered",
    "cut_halves",
    "cut_isolate",
    "cut_one_way",
    "crashes",
    "restarts",
    "lost_writes",  # a crash threw away writes that were staged but not yet durable
    "dropped_outputs",  # and the answers that waited for them
    "pauses",
    "deferred_inputs",  # a paused peer's inputs waited for it
    "refused",  # a client reached a down peer
    "reset",  # a peer crashed with a client's operation in flight
    "indeterminate",
    "read_repairs_blocking",
)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_happens_in_some_seed(kind: str, sweep: list[SimResult]) -> None:
    assert kind in SimStats.__dataclass_fields__
    seeds = [r.seed for r in sweep if getattr(r.stats, kind) > 0]
    assert len(seeds) >= 5, f"{kind} happened in seeds {seeds}"


def test_some_seeds_are_calm_and_some_are_hostile(sweep: list[SimResult]) -> None:
    """The seed picks the mix: runs differ in how much goes wrong."""
    lost = sorted(r.stats.messages_lost + r.stats.messages_cut for r in sweep)
    assert lost[0] == 0
    assert lost[-1] > 200


def test_delays_vary_with_the_mix() -> None:
    delays = {choose_mix(seed).link.delay_s for seed in range(1, 50)}
    jitters = {choose_mix(seed).link.jitter_s for seed in range(1, 50)}
    assert len(delays) >= 3 and len(jitters) >= 3


@pytest.mark.parametrize("seed", range(1, 40))
def test_every_fault_is_over_before_the_network_heals(seed: int) -> None:
    config = SimConfig(seed=seed)
    mix = choose_mix(seed)
    schedule = plan_faults(seed, mix, config.peer_ids, config.faults_end_s)
    assert all(0.0 <= a.at_s <= config.faults_end_s for a in schedule)
    assert [a.at_s for a in schedule] == sorted(a.at_s for a in schedule)
    starts = {FaultKind.CRASH, FaultKind.ARM_CRASH, FaultKind.PAUSE}
    for peer in config.peer_ids:
        mine = [a for a in schedule if a.peer == peer]
        kinds = [a.kind in starts for a in mine]
        assert kinds == [True, False] * (len(mine) // 2), "one fault at a time per peer"
    partitions = [a.kind for a in schedule if a.partition is not None]
    assert partitions == [FaultKind.PARTITION, FaultKind.PARTITION_END] * (len(partitions) // 2)


def test_the_schedule_depends_on_the_seed_not_on_the_workload() -> None:
    a = run_simulation(SimConfig(seed=11, operation_count=50), keep_log=True)
    b = run_simulation(SimConfig(seed=11, operation_count=10), keep_log=True)
    fault_words = ("partition ", "partition-end", "pause ", "arm-crash", "heal")

    def faults(result: SimResult) -> list[str]:
        lines = [line.split(" ", 1)[1] for line in result.log]  # without the line number
        return [line for line in lines if line.split(" ", 1)[1].startswith(fault_words)]

    assert faults(a) == faults(b) != []
    assert a.mix == b.mix


def test_each_partition_kind_is_drawn() -> None:
    kinds: set[PartitionKind] = set()
    for seed in range(1, 30):
        config = SimConfig(seed=seed)
        schedule = plan_faults(seed, choose_mix(seed), config.peer_ids, config.faults_end_s)
        kinds |= {a.partition.kind for a in schedule if a.partition is not None}
    assert kinds == set(PartitionKind)


def test_after_healing_every_peer_is_up_and_the_liveness_phase_runs() -> None:
    result = run_simulation(SimConfig(seed=3, operation_count=40), keep_log=True)
    texts = [line.split(" ", 2)[2] for line in result.log]
    heal = texts.index("heal")
    liveness = texts.index("liveness phase")
    assert heal < liveness
    assert any(text.startswith("answer check-owner-") for text in texts[liveness:])
    assert result.passed
