"""A peer that lost its disk, in the simulator (quorum/recovery.py): the amnesia scenario and
concurrent rotates during its recovery, over many seeds, with the checker's invariants.

The amnesia scenario (three peers, one owner on all three): a rotate through p1 is chosen by p1
and p3 while p2 is cut off; p3 loses its disk and restarts empty; p1 is cut off and a rotate
through p2 expects the old epoch. If p3 voted with its empty store, p2 and p3 would choose a
second value for epoch 2 (the mutation below shows the checker catches it); recovering, p3
casts no vote until it learned from both p1 and p2, so the second rotate finds the first value.
"""

from __future__ import annotations

import pytest

from tokenvault.quorum import peer_core as peer_core_module
from tokenvault.quorum import recovery
from tokenvault.quorum.messages import Accept, Envelope, EpochQuery, Message, Prepare
from tokenvault.sim.client import RequestKind
from tokenvault.sim.config import SimConfig
from tokenvault.sim.history import Outcome
from tokenvault.sim.runner import SimResult
from tokenvault.sim.scenario import Scenario

OWNER = "owner-0"
SEEDS = range(1, 31)


def voting_while_recovering(
    peer_id: str, store_id: str, source: str, message: Message
) -> list[Envelope] | None:
    """Broken on purpose: a peer that is not serving still answers Paxos as usual."""
    if isinstance(message, Prepare | Accept | EpochQuery):
        return None
    return recovery.refusal(peer_id, store_id, source, message)


def amnesia(seed: int) -> tuple[SimResult, list[str]]:
    scenario = Scenario(SimConfig(seed=seed, peer_count=3, owner_count=1))
    p1, p2, p3 = scenario.config.peer_ids
    scenario.partition(0.9, (p2,))
    first = scenario.request(1.0, p1, RequestKind.ROTATE, OWNER, expected_epoch=1, op_id="r-a")
    scenario.wipe(2.0, p3)
    scenario.partition(2.0, (p1,))  # replaces the first: p2 never hears epoch 2 from p1
    scenario.restart(2.5, p3)
    late = [
        scenario.request(3.0 + i / 10, p2, RequestKind.ROTATE, OWNER, expected_epoch=1)
        for i in range(3)
    ]
    scenario.end_partition(5.0)
    # Concurrent rotates through every serving peer while p3 may still be recovering.
    during = [
        scenario.request(5.0 + i / 20, peer, RequestKind.ROTATE, OWNER, group=f"during-{i}")
        for i in range(3)
        for peer in (p1, p2)
    ]
    result = scenario.run(heal_at_s=9.0)
    return result, [first, *late, *during]


@pytest.mark.parametrize("seed", SEEDS)
def test_concurrent_rotates_during_a_recovery_never_give_two_values_for_one_epoch(
    seed: int,
) -> None:
    result, ops = amnesia(seed)
    assert result.passed, [v.render() for v in result.violations]  # one-value-per-slot & co.
    assert result.history is not None and result.cluster is not None
    assert result.history.get(ops[0]).rotated
    assert [line for line in result.log if "wipe p3" in line]
    peers = result.cluster.peers
    assert all(peer.core.state == "serving" for peer in peers.values())
    decided = [peer.durable.decided() for peer in peers.values()]
    for slot in {slot for held in decided for slot in held}:  # one value per epoch
        assert len({held[slot] for held in decided if slot in held}) == 1, slot
    # The recovered peer holds every epoch decided before its recovery ended (it adopted all
    # that both others held); the others may miss old ones (anti-entropy copies the active one).
    recovered = peers["p3"].durable.decided()
    assert (OWNER, 2) in recovered and max(recovered) == max(k for h in decided for k in h)
    assert result.history.get(ops[1]).outcome is not Outcome.OK or not (
        result.history.get(ops[1]).rotated
    )


def test_a_recovering_peer_that_votes_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_core_module, "refusal", voting_while_recovering)
    caught = [seed for seed in SEEDS if not amnesia(seed)[0].passed]
    assert caught, "the amnesia scenario never broke with a voting recovering peer"
    result, _ = amnesia(caught[0])
    assert {v.invariant for v in result.violations} & {"one-value-per-slot", "chosen-value-kept"}
