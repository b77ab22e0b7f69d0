"""Membership mutation tests (issue 14, docs/membership.md §6): break one rule of the joint phase
on purpose, and a sweep with membership changes must fail with a readable report whose replay
command reproduces the same digest and violations; the unmutated cores pass the catching seeds.

The pattern is test_mutations.py's: every mutant (tests/sim/membership_mutants.py) patches a
module under tokenvault/quorum/, never the simulator. The seeds are pinned (a small range found
by scanning offline, whose first seed catches the mutation) so that the default suite stays
short; with the long sweep (TOKENVAULT_SIM_SEEDS above its default) each mutation is swept over
MEMBERSHIP_LONG_SEEDS seeds from 1 instead.
MUTATIONS_DOC
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.sim import membership_mutants as mutants
from tests.sim.conftest import SWEEP_SEEDS_DEFAULT, sweep_seed_count
from tests.sim.test_mutations import BLACK_BOX, _report_of
from tokenvault.quorum import epoch_coordinator as epoch_module
from tokenvault.quorum import peer_core as peer_core_module
from tokenvault.sim.cli import main
from tokenvault.sim.config import SimConfig
from tokenvault.sim.runner import SimResult, run_simulation

MEMBERSHIP_CHANGES = 3
MEMBERSHIP_LONG_SEEDS = 100


def _config(seed: int) -> SimConfig:
    return SimConfig(
        seed=seed, membership_changes=MEMBERSHIP_CHANGES, require_full_convergence=False
    )


@dataclass(frozen=True)
class MembershipMutation:
    name: str
    apply: Callable[[pytest.MonkeyPatch], None]
    expected: frozenset[str]  # the catching seed shows at least one of these
    seeds: range  # pinned: the first of them catches it (scanned offline)
    caught_in_core: bool = False  # a core's own assertion catches it first (no-core-exception)
    client_visible_seed: int | None = None  # a seed where a client-visible invariant catches it

    def sweep(self) -> range:
        if sweep_seed_count() > SWEEP_SEEDS_DEFAULT:
            return range(1, max(MEMBERSHIP_LONG_SEEDS, self.seeds.stop))
        return self.seeds

    def caught(self, result: SimResult) -> bool:
        invariants = {v.invariant for v in result.violations}
        if self.caught_in_core and not any(
            "InvariantViolation" in v.summary for v in result.violations
        ):
            return False
        return bool(invariants & self.expected)


def _coordinator(mutant: type) -> Callable[[pytest.MonkeyPatch], None]:
    return lambda mp: mp.setattr(peer_core_module, "Coordinator", mutant)


def _epoch_coordinator_unasserted(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(peer_core_module, "EpochCoordinator", mutants.EpochRoundOneMajority)
    mp.setattr(epoch_module, "require", mutants.require_but_chosen_with_both_majorities)


MUTATIONS = (
    MembershipMutation(
        "skip-dual-write",
        _coordinator(mutants.SkipDualWriteNew),
        frozenset({"no-core-exception"}),
        range(1, 3),
        caught_in_core=True,
    ),
    MembershipMutation(
        "skip-dual-write-unasserted",
        _coordinator(mutants.SkipDualWriteNewUnasserted),
        frozenset({"answers-are-durable", "acknowledged-write-visible"}),
        range(1, 3),
        client_visible_seed=4,
    ),
    MembershipMutation(
        "epoch-round-one-majority",
        lambda mp: mp.setattr(peer_core_module, "EpochCoordinator", mutants.EpochRoundOneMajority),
        frozenset({"no-core-exception"}),
        range(1, 3),
        caught_in_core=True,
    ),
)


def _first_caught(mutation: MembershipMutation) -> SimResult | None:
    for seed in mutation.sweep():
        result = run_simulation(_config(seed))
        if mutation.caught(result):
            return result
    return None


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_a_membership_sweep_catches_a_broken_rule_and_the_replay_reproduces_it(
    mutation: MembershipMutation,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mutation.apply(monkeypatch)
    failed = _first_caught(mutation)
    assert failed is not None, f"{mutation.name}: no seed of {mutation.sweep()} caught it"
    assert failed.seed == mutation.sweep().start or sweep_seed_count() > SWEEP_SEEDS_DEFAULT

    # The replay command fails, prints the readable report: the same digest and violations.
    replay = failed.config.replay_command()
    assert "--membership" in replay
    assert main(replay.split()[2:]) == 1
    output = capsys.readouterr().out
    digest, violations = _report_of(output, failed.seed)
    assert digest == failed.digest
    assert violations == [f"VIOLATION {v.invariant}: {v.summary}" for v in failed.violations]
    assert f"  replay: {replay}" in output.splitlines()
    assert "    operations:" in output and "    events:" in output


@pytest.mark.parametrize(
    "mutation", [m for m in MUTATIONS if m.client_visible_seed], ids=lambda m: m.name
)
def test_a_client_visible_invariant_catches_it_too(
    mutation: MembershipMutation, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert mutation.client_visible_seed is not None
    mutation.apply(monkeypatch)
    result = run_simulation(_config(mutation.client_visible_seed))
    assert {v.invariant for v in result.violations} & BLACK_BOX, result.replay_command()


def test_the_unmutated_cores_pass_the_seeds_that_catch_the_mutations() -> None:
    seeds = sorted(
        {m.seeds.start for m in MUTATIONS}
        | {m.client_visible_seed for m in MUTATIONS if m.client_visible_seed}
    )
    failed = [r.replay_command() for r in map(run_simulation, map(_config, seeds)) if not r.passed]
    assert failed == []
