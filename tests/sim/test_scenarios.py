"""Hand-built runs of the epoch protocol (scenario.py): the real cores, routed as node.py routes
them, under the faults a test chooses; every run ends with the liveness phase and the checker.

- dueling proposers: three rotates expecting the same epoch at once, through three peers;
- a proposer that crashes after a minority accepted its value: a later learn finishes that
  value, it is not replaced;
- an acceptor that crashes and restarts between its promise and the accept: its promise holds
  (and an acceptor that forgets promises is caught by the checker in the same run);
- a partition during a rotation;
- a coordinator with a stale epoch: its tokenize is fenced, learns the epoch and writes again;
- a core bug the simulator found, now fixed and kept as a regression test: a stale reply to a
  hint sent before a restart was taken as the acknowledgement of a new hint with the same op id,
  which was then deleted though its target never stored it.
"""

from __future__ import annotations

import pytest

from tokenvault.quorum import peer_core as peer_core_module
from tokenvault.quorum.acceptor import Acceptor
from tokenvault.quorum.effects import Effects
from tokenvault.quorum.messages import Accept, InsertRequest, Prepare
from tokenvault.sim.client import RequestKind
from tokenvault.sim.config import SimConfig
from tokenvault.sim.history import Operation, Outcome
from tokenvault.sim.runner import SimResult
from tokenvault.sim.scenario import Scenario

OWNER = "owner-0"


def _op(result: SimResult, op_id: str) -> Operation:
    assert result.history is not None
    return result.history.get(op_id)


def _lines(result: SimResult, *needles: str) -> list[str]:
    return [line for line in result.log if all(needle in line for needle in needles)]


def _decided(result: SimResult, slot: int) -> set[str]:
    """The proposer (requested_by) of every value any peer decided for the slot."""
    assert result.cluster is not None
    return {
        value.requested_by
        for peer in result.cluster.peers.values()
        for (owner, at), value in peer.durable.decided().items()
        if owner == OWNER and at == slot
    }


def _cluster_of_four() -> tuple[Scenario, str, tuple[str, ...]]:
    """Four peers, one owner on three of them: the fourth proposes without being an acceptor."""
    scenario = Scenario(SimConfig(seed=1, peer_count=4, owner_count=1))
    replicas = scenario.preference_list(OWNER)
    outsider = next(p for p in scenario.config.peer_ids if p not in replicas)
    return scenario, outsider, replicas


def test_dueling_proposers_choose_one_value() -> None:
    scenario = Scenario(SimConfig(seed=2, peer_count=3, owner_count=1))
    rotates = [
        scenario.request(
            1.0, peer, RequestKind.ROTATE, OWNER, expected_epoch=1, group="duel", op_id=f"r-{peer}"
        )
        for peer in scenario.config.peer_ids
    ]
    result = scenario.run(heal_at_s=10.0)
    assert result.passed, [v.render() for v in result.violations]
    answers = [_op(result, op_id) for op_id in rotates]
    assert all(op.outcome is Outcome.OK for op in answers)
    assert {op.epoch for op in answers} == {2}
    winners = [op for op in answers if op.rotated]
    assert len(winners) == 1
    assert _decided(result, 2) == {winners[0].op_id}
    assert _lines(result, "paxos_preempted") or _lines(result, "granted=0"), "they did duel"


def test_a_value_a_minority_accepted_before_its_proposer_crashed_is_finished() -> None:
    scenario, proposer, (r1, r2, r3) = _cluster_of_four()
    # Only r2 ever gets the proposer's Accept; the proposer dies once r2 accepted.
    scenario.drop(
        lambda e: e.source == proposer and isinstance(e.message, Accept) and e.destination != r2,
        "accepts-to-one",
    )
    rotate = scenario.request(1.0, proposer, RequestKind.ROTATE, OWNER, expected_epoch=1)
    scenario.when(
        f"deliver {r2}->{proposer} accepted op={rotate}",
        scenario.cluster.peers[proposer].crash,
    )
    # A learn through r2 (whose own acceptor answers first) finds the half-done round.
    learn = scenario.request(3.0, r2, RequestKind.EPOCH, OWNER)
    late = scenario.request(4.0, r3, RequestKind.ROTATE, OWNER, expected_epoch=1)
    result = scenario.run(heal_at_s=8.0)
    assert result.passed, [v.render() for v in result.violations]
    assert _op(result, rotate).outcome is Outcome.INDETERMINATE  # reset by the crash
    assert _lines(result, f"event {r2} paxos_accept op={rotate}")
    assert not _lines(result, f"event {r1} paxos_accept op={rotate}")
    learned = _op(result, learn)
    assert learned.epoch_value is not None and learned.epoch_value.requested_by == rotate
    assert _op(result, late).epoch == 2 and not _op(result, late).rotated
    assert _decided(result, 2) == {rotate}  # finished, never replaced


class ForgetfulAcceptor(Acceptor):
    """Broken on purpose: a prepare ignores the promise the acceptor stored."""

    def _on_prepare(self, source: str, prepare: Prepare) -> Effects:
        stored = self._storage
        self._storage = _WithoutPromises(stored)
        try:
            return super()._on_prepare(source, prepare)
        finally:
            self._storage = stored


class _WithoutPromises:
    def __init__(self, storage: object) -> None:
        self._storage = storage

    def get(self, key: bytes) -> bytes | None:
        import json

        raw: bytes | None = self._storage.get(key)  # type: ignore[attr-defined]
        if raw is None or not key.startswith(b"a\x00"):
            return raw
        record = json.loads(raw)
        record["promised"] = [0, ""]
        return json.dumps(record).encode()


def _promise_then_crash(scenario: Scenario, proposer: str, replicas: tuple[str, ...]) -> str:
    """The high ballot (rot-z) is promised by every replica; r2 crashes as its promise reaches
    the proposer and restarts; the proposer's Accepts are lost (but to r2 after its restart).
    Then a rotate with a lower ballot (rot-a) tries the same slot."""
    _, r2, r3 = replicas
    scenario.drop(
        lambda e: e.source == proposer and isinstance(e.message, Accept) and e.destination != r2,
        "accepts-to-r2-only",
    )
    high = scenario.request(
        1.0, proposer, RequestKind.ROTATE, OWNER, expected_epoch=1, op_id="rot-z"
    )
    scenario.when(f"deliver {r2}->{proposer} promise op={high}", scenario.cluster.peers[r2].crash)
    scenario.restart(1.5, r2)
    return scenario.request(8.0, r3, RequestKind.ROTATE, OWNER, expected_epoch=1, op_id="rot-a")


def test_a_promise_survives_a_crash_between_promise_and_accept() -> None:
    scenario, proposer, replicas = _cluster_of_four()
    r2 = replicas[1]
    low = _promise_then_crash(scenario, proposer, replicas)
    result = scenario.run(heal_at_s=20.0)
    assert result.passed, [v.render() for v in result.violations]
    assert _lines(result, f"crash {r2}") and _lines(result, f"restart {r2}")
    # After its restart r2 accepted the high ballot's value (its promise allowed it) ...
    assert _lines(result, f"event {r2} paxos_accept op=rot-z")
    # ... and refused the lower ballot: the promise was durable.
    assert _lines(result, f"event {r2} paxos_reject_prepare op={low} slot=2 ballot=1.{low}")
    rotated = _op(result, low)
    assert rotated.outcome is Outcome.OK and rotated.epoch == 2
    assert len(_decided(result, 2)) == 1


def test_an_acceptor_forgetting_its_promise_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_core_module, "Acceptor", ForgetfulAcceptor)
    scenario, proposer, replicas = _cluster_of_four()
    _promise_then_crash(scenario, proposer, replicas)
    result = scenario.run(heal_at_s=20.0)
    assert "promise-never-decreases" in {v.invariant for v in result.violations}


def test_a_partition_during_a_rotation() -> None:
    scenario = Scenario(SimConfig(seed=3, peer_count=5, owner_count=1))
    r1, r2, _ = scenario.preference_list(OWNER)
    scenario.partition(0.5, (r1,))
    cut_off = scenario.request(1.0, r1, RequestKind.ROTATE, OWNER, expected_epoch=1)
    majority_side = scenario.request(1.2, r2, RequestKind.ROTATE, OWNER, expected_epoch=1)
    scenario.end_partition(9.0)
    after = scenario.request(
        10.0, r1, RequestKind.TOKENIZE, OWNER, items=(("ssn", "v1"), ("email", "v2"))
    )
    result = scenario.run(heal_at_s=12.0)
    assert result.passed, [v.render() for v in result.violations]
    assert _op(result, cut_off).outcome is not Outcome.OK  # no majority behind the partition
    won = _op(result, majority_side)
    assert won.outcome is Outcome.OK and won.rotated and won.epoch == 2
    tokenized = _op(result, after)
    assert tokenized.outcome is Outcome.OK and tokenized.epoch == 2
    assert all(m.epoch == 2 for m in tokenized.mappings)
    assert result.cluster is not None
    epochs = {
        result.cluster.peers[p].core.acceptor.active_epoch(OWNER).epoch
        for p in scenario.preference_list(OWNER)
    }
    assert epochs == {2}  # r1 caught up after the partition


def test_a_stale_coordinator_is_fenced_learns_and_writes_again() -> None:
    scenario, outsider, replicas = _cluster_of_four()
    items = (("ssn", "v1"),)
    before = scenario.request(0.5, outsider, RequestKind.TOKENIZE, OWNER, items=items)
    rotate = scenario.request(1.0, replicas[0], RequestKind.ROTATE, OWNER, expected_epoch=1)
    stale = scenario.request(3.0, outsider, RequestKind.TOKENIZE, OWNER, items=items)
    result = scenario.run(heal_at_s=6.0)
    assert result.passed, [v.render() for v in result.violations]
    assert _op(result, before).epoch == 1 and _op(result, rotate).epoch == 2
    # The outsider is no replica: nobody told it; its first write used epoch 1 and was fenced.
    assert _lines(result, "mapping_fenced", f"op={stale}/w1")
    assert _lines(result, f"epoch-known {outsider} {OWNER} 2")
    answer = _lines(result, f"answer script tokenized op={stale} ok epoch=2 writes=2")
    assert answer
    tokenized = _op(result, stale)
    assert tokenized.epoch == 2
    assert tokenized.mappings[0].token != _op(result, before).mappings[0].token


def test_a_stale_hint_reply_after_a_restart_does_not_delete_a_new_hint() -> None:
    scenario = Scenario(SimConfig(seed=1, peer_count=4, owner_count=1), fsync_s=(0.4, 0.4))
    _, _, lagging = replicas = scenario.preference_list(OWNER)
    coordinator = next(p for p in scenario.config.peer_ids if p not in replicas)
    engine = scenario.engine

    def to_lagging(envelope: object) -> InsertRequest | None:
        message = getattr(envelope, "message", None)
        if getattr(envelope, "source", "") != coordinator:
            return None
        if getattr(envelope, "destination", "") != lagging:
            return None
        return message if isinstance(message, InsertRequest) else None

    # The lagging replica never gets a write from the coordinator: each write leaves a hint.
    scenario.drop(
        lambda e: (m := to_lagging(e)) is not None and not m.op_id.startswith("hint:"),
        "writes-miss-the-lagging-replica",
    )
    # After the restart, hints to it are lost too: only a stale reply could "deliver" them.
    scenario.drop(
        lambda e: (
            (m := to_lagging(e)) is not None and m.op_id.startswith("hint:") and engine.now_s > 4.4
        ),
        "new-hints-miss-the-lagging-replica",
    )
    # 1. A write at 1.3 s leaves hint:<coordinator>:1 (staged at 3.801 s, durable at 4.201 s);
    #    the tick at 4.0 s sends it to the lagging replica, which is paused (it waits there).
    scenario.request(1.3, coordinator, RequestKind.TOKENIZE, OWNER, items=(("ssn", "v1"),))
    scenario.pause(3.9, lagging)
    # 2. The coordinator crashes before the hint is durable, and restarts with no hint.
    scenario.when(
        f"defer deliver {coordinator}->{lagging} insert-repair op=hint:{coordinator}:1",
        scenario.cluster.peers[coordinator].crash,
    )
    scenario.restart(4.5, coordinator)
    # 3. A second write leaves a new hint: hint:<coordinator>:1 again (7.5 s), sent at 8.0 s.
    scenario.request(5.0, coordinator, RequestKind.TOKENIZE, OWNER, items=(("email", "v2"),))
    # 4. The lagging replica resumes and answers the old hint: the new one is deleted.
    scenario.resume(8.1, lagging)
    result = scenario.run(heal_at_s=12.0)
    assert _lines(result, f"event {coordinator} hint_delivered")
    assert result.passed, "\n".join(v.render() for v in result.violations)
