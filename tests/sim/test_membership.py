"""Membership changes in the simulator (docs/simulation.md, membership faults): joins, removes
and replaces drawn from the seed pass the checker across seeds, the ring invariants catch what
they name, and hand-built scenarios: a join under a partition, the replace of a dead peer, a
peer behind learning the ring.

The sweep with changes runs MEMBERSHIP_SEEDS seeds by default (the issue's 200+, on every core:
tests/sim/sweep.py); with the long sweep on (TOKENVAULT_SIM_SEEDS above its default,
tests/sim/conftest.py) it runs a quarter of that many, MEMBERSHIP_SEEDS at least.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import pytest

from tests.sim.conftest import SWEEP_SEEDS_DEFAULT, sweep_seed_count
from tests.sim.sweep import run_sweep
from tokenvault.quorum import ring_register
from tokenvault.quorum.client_operations import ChangeMembership
from tokenvault.quorum.effects import RingDone, RingOutcome
from tokenvault.quorum.messages import Ballot, Envelope, EpochValue
from tokenvault.quorum.ring_records import (
    LEARNED_KEY,
    RingSlot,
    encode_learned,
    encode_ring_slot,
    ring_slot_key,
)
from tokenvault.ring.membership import (
    JOINING,
    LEAVING,
    AddMember,
    FinishChange,
    RemoveMember,
    apply_change,
)
from tokenvault.sim.checker import CheckInput, check
from tokenvault.sim.cli import main
from tokenvault.sim.client import RequestKind
from tokenvault.sim.cluster import ReplicaState
from tokenvault.sim.config import SimConfig
from tokenvault.sim.history import History
from tokenvault.sim.membership_faults import ChangeKind, MembershipAction, plan_membership
from tokenvault.sim.peer import AdminAnswer
from tokenvault.sim.ring_log import RingLog
from tokenvault.sim.runner import SimResult, run_simulation
from tokenvault.sim.scenario import Scenario

MEMBERSHIP_CHANGES = 3
MEMBERSHIP_SEEDS = 200


def membership_seed_count() -> int:
    if sweep_seed_count() > SWEEP_SEEDS_DEFAULT:
        return max(MEMBERSHIP_SEEDS, sweep_seed_count() // 4)
    return MEMBERSHIP_SEEDS


@pytest.fixture(scope="module")
def membership_sweep() -> list[SimResult]:
    configs = [
        SimConfig(seed=seed, membership_changes=MEMBERSHIP_CHANGES)
        for seed in range(1, membership_seed_count() + 1)
    ]
    return list(run_sweep(configs))


# -- the sweep ---------------------------------------------------------------------------------


def test_every_seed_with_membership_changes_passes(membership_sweep: list[SimResult]) -> None:
    failures = [
        f"seed {r.seed} digest {r.digest}\n  "
        + "\n  ".join(r.changes)
        + "\n"
        + "\n".join(v.render() for v in r.violations)
        + f"\nreplay: {r.replay_command()}"
        for r in membership_sweep
        if not r.passed
    ]
    assert failures == [], "\n\n".join(failures)


def test_the_membership_sweep_changes_the_ring(membership_sweep: list[SimResult]) -> None:
    """Every kind of change happens and takes effect somewhere in the sweep, dead peers are
    replaced, and the runs still rotate epochs and fully converge."""
    changes = [c for r in membership_sweep for c in r.changes]
    for kind in ChangeKind:
        assert any(f" {kind.value} " in c for c in changes), kind
    for kind in (ChangeKind.REMOVE, ChangeKind.REPLACE_DEAD, ChangeKind.REPLACE_LIVE):
        assert any(f" {kind.value} " in c and "-> changed" in c for c in changes), kind
    assert sum(r.stats.peers_retired for r in membership_sweep) > 0
    assert sum(1 for r in membership_sweep if r.stats.ring_version > 2) > 0
    assert sum(r.stats.ring_changes_over_pending for r in membership_sweep) > 0
    joined = [r for r in membership_sweep if any("join" in c and "asked" in c for c in r.changes)]
    assert joined
    for result in membership_sweep:
        assert result.stats.ring_changes == MEMBERSHIP_CHANGES
        assert result.stats.rotated > 0
        assert 0.0 <= result.stats.converged_after_s <= result.config.convergence_bound_s


def test_a_join_is_learned_by_the_joining_peer_in_the_sweep(
    membership_sweep: list[SimResult],
) -> None:
    """A spare started to join becomes a member by itself in some run (its RingJoin)."""
    assert any(r.stats.spares_started and r.stats.ring_version >= 2 for r in membership_sweep)


def test_membership_runs_are_deterministic() -> None:
    config = SimConfig(seed=8, membership_changes=MEMBERSHIP_CHANGES)
    first, second = run_simulation(config), run_simulation(config)
    assert first.digest == second.digest
    assert first.changes == second.changes


def test_no_change_keeps_every_seed_as_it_was() -> None:
    """membership_changes = 0 draws nothing: the run is the one without the feature."""
    assert plan_membership(5, 0, 30.0) == ()
    assert SimConfig(seed=5).spare_ids == ()
    assert run_simulation(SimConfig(seed=5, operation_count=30)).changes == ()


def test_changes_are_drawn_from_the_seed_alone_and_fewer_keep_the_first() -> None:
    three = plan_membership(11, 3, 30.0)
    assert three == plan_membership(11, 3, 30.0)
    assert len(three) == 3 and all(3.0 <= a.at_s <= 24.0 for a in three)
    two = plan_membership(11, 2, 30.0)
    assert set(two) <= set(three)


def test_the_replay_command_names_the_changes(capsys: pytest.CaptureFixture[str]) -> None:
    config = SimConfig(seed=1, operation_count=40, membership_changes=2)
    assert config.replay_command().endswith("--ops 40 --membership 2")
    assert main(["--seed", "1", "--ops", "40", "--membership", "2"]) == 0
    line = capsys.readouterr().out
    assert f"digest {run_simulation(config).digest} PASS" in line


# -- the ring invariants (ring_log.py) ---------------------------------------------------------


def _bootstrap_log() -> RingLog:
    return RingLog(Scenario(SimConfig(seed=1)).cluster.bootstrap)


def test_two_memberships_for_one_version_are_reported() -> None:
    log = _bootstrap_log()
    add = apply_change(log.bootstrap, AddMember(id="p6", address="p6.sim:7000"))
    remove = apply_change(log.bootstrap, RemoveMember(id="p2"))
    log.on_decided_sent("p1", add, 1.0)
    log.on_decided_sent("p3", remove, 2.0)
    assert [o.invariant for o in log.observations] == ["one-membership-per-version"]


def test_a_learned_version_going_back_is_reported_and_a_wipe_starts_again() -> None:
    log = _bootstrap_log()
    v2 = apply_change(log.bootstrap, AddMember(id="p6", address="p6.sim:7000"))
    log.on_durable("p1", LEARNED_KEY, encode_learned(v2), 1.0)
    assert log.learned_version("p1") == 2 and not log.observations
    log.on_wipe("p1")
    log.on_durable("p1", LEARNED_KEY, encode_learned(v2), 2.0)
    assert not log.observations  # a new store learns from the bootstrap again
    log.on_durable("p1", LEARNED_KEY, encode_learned(v2), 3.0)
    assert [o.invariant for o in log.observations] == ["ring-never-goes-back"]


def test_a_version_no_majority_of_voters_accepted_is_reported() -> None:
    log = _bootstrap_log()
    v2 = apply_change(log.bootstrap, AddMember(id="p6", address="p6.sim:7000"))
    slot = RingSlot(
        promised=Ballot(round=1, peer="x"),
        accepted_ballot=Ballot(round=1, peer="x"),
        accepted_value=v2,
    )
    for peer in ("p1", "p2"):
        log.on_durable(peer, ring_slot_key(2), encode_ring_slot(slot), 1.0)
    log.on_decided_sent("p1", v2, 1.5)
    assert [o.invariant for o in log.final_observations(2.0)] == ["ring-decided-by-voters"]
    log.on_durable("p3", ring_slot_key(2), encode_ring_slot(slot), 1.0)
    assert log.final_observations(2.0) == []


def test_a_version_that_is_no_change_of_the_one_before_is_reported() -> None:
    log = _bootstrap_log()
    v2 = apply_change(log.bootstrap, AddMember(id="p6", address="p6.sim:7000"))
    # A remove applied to the pending v2 (as if it were stable): no change of v2.
    v3_wrong = dataclasses.replace(apply_change(log.bootstrap, RemoveMember(id="p3")), version=3)
    log.on_decided_sent("p1", v2, 1.0)
    log.on_decided_sent("p1", v3_wrong, 2.0)
    found = {o.invariant for o in log.final_observations(3.0)}
    assert "ring-never-goes-back" in found
    right = _bootstrap_log()
    right.on_decided_sent("p1", v2, 1.0)
    right.on_decided_sent("p1", apply_change(v2, FinishChange(version=2)), 2.0)
    found = {o.invariant for o in right.final_observations(3.0)}
    assert "ring-never-goes-back" not in found  # (no acceptances were fed: voters aside)


# -- hand-built scenarios ----------------------------------------------------------------------

SCENARIO = SimConfig(seed=1, owner_count=3, operation_count=0, membership_changes=2)
ITEMS = (("card", "4111"), ("ssn", "078-05-1120"))


def _writes(scenario: Scenario, at_s: tuple[float, ...], via: str = "p2") -> None:
    for index, moment in enumerate(at_s):
        for owner in SCENARIO.owner_ids:
            scenario.request(
                moment, via, RequestKind.TOKENIZE, owner, items=((f"f{index}", f"v{index}"),)
            )


def _ring_of(result: SimResult, peer: str) -> int:
    assert result.cluster is not None
    return result.cluster.ring_log.learned_version(peer)


def test_a_join_under_a_partition_is_decided_by_the_majority_side() -> None:
    scenario = Scenario(SCENARIO)
    scenario.partition(0.5, ("p1", "p2"))
    scenario.membership(MembershipAction(at_s=1.0, kind=ChangeKind.JOIN, draw=0))
    _writes(scenario, (0.2, 2.0, 5.0), via="p3")
    result = scenario.run(heal_at_s=8.0)
    assert result.passed, "\n".join(v.render() for v in result.violations)
    assert result.cluster is not None
    ring = result.cluster.members()
    joined = ring.member("p6")
    assert ring.version >= 2 and joined is not None and joined.state in (JOINING, "active")
    assert all(_ring_of(result, p) == ring.version for p in ("p1", "p2", "p3", "p4", "p5", "p6"))
    assert any(line.split()[2:3] == ["spare-start"] for line in result.log)


def test_the_replace_of_a_dead_peer_keeps_every_acknowledged_write() -> None:
    scenario = Scenario(SCENARIO)
    scenario.membership(MembershipAction(at_s=2.0, kind=ChangeKind.REPLACE_DEAD, draw=2))
    _writes(scenario, (0.5, 1.0, 3.0, 6.0))
    result = scenario.run(heal_at_s=9.0)
    assert result.passed, "\n".join(v.render() for v in result.violations)
    assert result.cluster is not None
    (dead,) = result.cluster.retired
    ring = result.cluster.members()
    left = ring.member(dead)
    assert left is None or left.state == LEAVING  # replaced: leaving, or gone at the finish
    assert ring.member("p6") is not None
    assert "change 0 replace-dead" in " ".join(result.changes)
    assert result.history is not None
    written = [op for op in result.history if op.kind.value == "tokenize"]
    assert written and all(op.outcome.value == "ok" for op in written)


def test_a_peer_down_during_a_change_learns_the_ring_when_it_returns() -> None:
    scenario = Scenario(SCENARIO)
    scenario.crash(0.5, "p1")
    scenario.membership(MembershipAction(at_s=1.0, kind=ChangeKind.REMOVE, draw=4))
    scenario.restart(6.0, "p1")
    learned: list[int] = []
    scenario.at(5.9, lambda: learned.append(scenario.cluster.ring_log.learned_version("p1")))
    scenario.at(8.9, lambda: learned.append(scenario.cluster.ring_log.learned_version("p1")))
    _writes(scenario, (0.2, 3.0))
    result = scenario.run(heal_at_s=9.0)
    assert result.passed, "\n".join(v.render() for v in result.violations)
    assert result.cluster is not None
    assert learned == [1, result.cluster.members().version] and learned[1] >= 2


def _only_from(sender: str, to: str) -> Callable[[Envelope], bool]:
    def predicate(envelope: Envelope) -> bool:
        return envelope.destination == to and envelope.source != sender

    return predicate


def test_a_peer_behind_learns_the_ring_from_a_peer_outside_its_ring() -> None:
    """p1 misses a join (it hears only p6, the joining peer) and then hears the new version
    only from p6: it fetches from p6, and learns from p6's answer (a decided membership is
    admitted from any authenticated peer: PeerCore.admits; before, it was refused and p1 never
    learned while it heard only p6)."""
    scenario = Scenario(SCENARIO)
    scenario.drop(_only_from("p6", "p1"), "p1-hears-only-p6")
    scenario.membership(MembershipAction(at_s=1.0, kind=ChangeKind.JOIN, draw=0))
    learned: list[int] = []
    scenario.at(7.9, lambda: learned.append(scenario.cluster.ring_log.learned_version("p1")))
    result = scenario.run(heal_at_s=8.0)
    assert result.cluster is not None
    assert any("deliver p6->p1 RingDecide" in line for line in result.log)
    assert not any("refuse-batch p6->p1" in line for line in result.log)
    assert learned[0] >= 2  # the join (and, transfers done, its finish)


def test_a_change_through_a_peer_whose_disk_is_full_is_answered() -> None:
    scenario = Scenario(SCENARIO)
    answers: list[AdminAnswer] = []
    peer = scenario.cluster.peers["p1"]
    scenario.at(0.5, peer.fill_disk)
    operation = ChangeMembership(op_id="full-disk-change", change=RemoveMember(id="p5"))
    scenario.at(1.0, lambda: peer.admin_request(operation, answers.append))
    scenario.run(heal_at_s=8.0)
    assert [type(a) for a in answers] == [RingDone]
    (answer,) = answers
    assert isinstance(answer, RingDone)
    assert answer.outcome is RingOutcome.TIMEOUT and answer.reason == "store_failed", answer


def _dueling_changes() -> SimResult:
    """Three removes asked at once through three peers: three proposers of version 2."""
    scenario = Scenario(dataclasses.replace(SCENARIO, membership_changes=0))
    answers: list[AdminAnswer] = []
    for via, removed in (("p1", "p5"), ("p2", "p4"), ("p3", "p2")):
        operation = ChangeMembership(op_id=f"duel-{via}", change=RemoveMember(id=removed))
        peer = scenario.cluster.peers[via]
        scenario.at(1.0, functools.partial(peer.admin_request, operation, answers.append))
    result = scenario.run(heal_at_s=5.0)
    assert len(answers) == 3
    return result


def test_dueling_changes_decide_one_membership() -> None:
    result = _dueling_changes()
    assert result.passed, "\n".join(v.render() for v in result.violations)
    assert result.cluster is not None and result.cluster.members().version >= 2
    assert result.cluster.ring_log.decided(2) is not None


def test_a_ring_acceptor_that_forgets_its_votes_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mutation *forgetful-ring-acceptor* (production code, quorum/ring_register.py: every
    acceptor slot reads back empty, so promises and acceptances are forgotten): the dueling
    proposers each get a value chosen for version 2."""
    monkeypatch.setattr(ring_register, "read_ring_slot", lambda storage, version: RingSlot())
    result = _dueling_changes()
    assert "one-membership-per-version" in {v.invariant for v in result.violations}


def test_owners_on_final_ring_holds_a_run_to_the_finished_ring() -> None:
    """Held in every run (require_finish); here on a hand-made final state: a final ring
    still joint, a member behind it, and an acknowledged write on one replica of the final
    list are each reported."""
    bootstrap = Scenario(SCENARIO).cluster.bootstrap
    joint = apply_change(bootstrap, AddMember(id="p6", address="p6.sim:7000"))
    state = CheckInput(
        history=History(),
        replicas=(),
        preference_lists={},
        write_quorum=2,
        require_finish=True,
        final_ring=joint,
        ring_drained=False,
        ring_learned={"p1": 2, "p2": 1},
    )
    found = [v for v in check(state) if v.invariant == "owners-on-final-ring"]
    assert len(found) == 2
    assert "not finished" in found[0].summary and "p2:v1" in found[1].summary
    finished = apply_change(joint, FinishChange(version=joint.version))
    fine = dataclasses.replace(
        state, final_ring=finished, ring_drained=True, ring_learned={"p1": 3, "p2": 3}
    )
    assert [v for v in check(fine) if v.invariant == "owners-on-final-ring"] == []
    assert SimConfig(seed=1).require_finish


def test_owners_on_final_ring_takes_a_later_decided_epoch_for_an_earlier_one() -> None:
    """A replica may learn epoch 4 of an owner without epoch 3 (a Decide lost, the next one
    delivered): it moved past 3. Epoch 3 decided on one replica of three, epoch 4 on all, is
    fine; epoch 4 on one replica alone is not."""
    bootstrap = Scenario(SCENARIO).cluster.bootstrap
    listed = bootstrap.new_ring().preference_list("owner-0", 3)
    three, four = (
        EpochValue(epoch=e, salt=f"{e:032x}", requested_by="c1-1", requested_at_s=0.0)
        for e in (3, 4)
    )

    def replica(peer: str, decided: dict[tuple[str, int], EpochValue]) -> ReplicaState:
        return ReplicaState(
            peer=peer,
            up=True,
            mappings={},
            operations_in_flight=0,
            unsynced=False,
            held_effects=0,
            decided=decided,
        )

    def found(decided_on: dict[str, dict[tuple[str, int], EpochValue]]) -> list[str]:
        state = CheckInput(
            history=History(),
            replicas=tuple(replica(p, decided_on.get(p, {})) for p in listed),
            preference_lists={"owner-0": listed},
            write_quorum=2,
            require_finish=True,
            final_ring=bootstrap,
            ring_drained=True,
            ring_learned={p: 1 for p in listed},
            decided_over_run=(
                ("owner-0", 3, three, (listed[0],)),
                ("owner-0", 4, four, tuple(listed)),
            ),
        )
        return [v.summary for v in check(state) if v.invariant == "owners-on-final-ring"]

    first, second, third = listed
    moved_past = {
        first: {("owner-0", 3): three, ("owner-0", 4): four},
        second: {("owner-0", 4): four},
        third: {("owner-0", 4): four},
    }
    assert found(moved_past) == []
    alone = {first: {("owner-0", 3): three, ("owner-0", 4): four}}
    assert [summary.split(" (")[0] for summary in found(alone)] == [
        "epoch 3 of owner-0",
        "epoch 4 of owner-0",
    ]


def test_a_peer_whose_store_is_lost_after_a_change_recovers() -> None:
    scenario = Scenario(SCENARIO)
    scenario.membership(MembershipAction(at_s=1.0, kind=ChangeKind.REMOVE, draw=3))
    _writes(scenario, (0.5, 2.0), via="p3")
    scenario.wipe(8.0, "p1")
    scenario.restart(9.0, "p1")
    result = scenario.run(heal_at_s=12.0)
    assert result.cluster is not None
    assert result.cluster.members().version >= 3  # the remove finished before the wipe
    assert result.cluster.peers["p1"].core.state == "serving"
    assert result.passed, "\n".join(v.render() for v in result.violations)
