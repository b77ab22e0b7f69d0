"""Hinted handoff: durable hints, delivered when the target is back, deleted only on its
durable acknowledgement, bounded per target with the oldest dropped first."""

from __future__ import annotations

import base64
import json

from tests.quorum.helpers import SEALER
from tokenvault.quorum.effects import Effects
from tokenvault.quorum.hinted_handoff import HintedHandoff, HintLimits, hint_key
from tokenvault.quorum.messages import InsertOutcome, InsertReply, InsertRequest, Mapping, Origin
from tokenvault.store.memory_store import MemoryStore


def mapping(token: str) -> Mapping:
    return Mapping(owner="alice", token=token, value=f"value-{token}", field="ssn", epoch=1)


def apply(store: MemoryStore, effects: Effects) -> Effects:
    store.stage(effects.writes)
    store.sync()
    return effects


def test_hints_survive_a_restart_and_are_sent_only_to_targets_not_down() -> None:
    store = MemoryStore()
    hints = HintedHandoff(peer_id="n1", storage=store, sealer=SEALER)
    apply(store, hints.add("n3", "alice", [mapping("a"), mapping("b")], "r1"))
    restarted = HintedHandoff(peer_id="n1", storage=store, sealer=SEALER)
    assert [(s.target, s.hints) for s in restarted.statistics()] == [("n3", 1)]
    assert restarted.tick(1.0, frozenset({"n3"})).messages == []
    (envelope,) = restarted.tick(2.0, frozenset()).messages
    assert envelope.destination == "n3"
    request = envelope.message
    assert isinstance(request, InsertRequest) and request.repair
    assert request.origin is Origin.HINTS  # so its reply comes back to hinted handoff
    assert request.mappings == (mapping("a"), mapping("b"))
    # unanswered: not resent before the resend interval, then resent
    assert restarted.tick(2.5, frozenset()).messages == []
    assert len(restarted.tick(3.1, frozenset()).messages) == 1
    # a new hint after a restart never reuses a stored key
    effects = restarted.add("n3", "alice", [mapping("c")], "r2")
    assert effects.writes[0][0] not in {key for key, _ in store.durable_items(b"h\x00")}


def test_a_hint_is_deleted_only_after_a_durable_ack_of_every_mapping() -> None:
    store = MemoryStore()
    hints = HintedHandoff(peer_id="n1", storage=store, sealer=SEALER)
    apply(store, hints.add("n3", "alice", [mapping("a"), mapping("b")], "r1"))
    (envelope,) = hints.tick(1.0, frozenset()).messages
    request = envelope.message
    assert isinstance(request, InsertRequest)
    # a reply from another peer, or for another op, changes nothing
    stray = InsertReply(
        op_id=request.op_id,
        owner="alice",
        tokens=("a", "b"),
        outcomes=(InsertOutcome.STORED, InsertOutcome.STORED),
    )
    assert hints.on_reply("n2", stray).is_empty()
    ack = InsertReply(
        op_id=request.op_id,
        owner="alice",
        tokens=("a", "b"),
        outcomes=(InsertOutcome.STORED, InsertOutcome.IDENTICAL),
    )
    effects = apply(store, hints.on_reply("n3", ack))
    assert [e.name for e in effects.events] == ["hint_delivered"]
    assert hints.pending_total() == 0
    assert store.durable_items(b"h\x00") == []


def test_a_conflicting_target_is_an_alarm_and_the_hint_is_not_retried() -> None:
    store = MemoryStore()
    hints = HintedHandoff(peer_id="n1", storage=store, sealer=SEALER)
    apply(store, hints.add("n3", "alice", [mapping("a")], "r1"))
    (envelope,) = hints.tick(1.0, frozenset()).messages
    reply = InsertReply(
        op_id=envelope.message.op_id,
        owner="alice",
        tokens=("a",),
        outcomes=(InsertOutcome.CONFLICT,),
    )
    effects = apply(store, hints.on_reply("n3", reply))
    assert [e.name for e in effects.events] == ["hint_conflict"]
    assert hints.tick(5.0, frozenset()).messages == []


def test_bounds_drop_the_oldest_hints_first_and_say_so() -> None:
    store = MemoryStore()
    hints = HintedHandoff(
        peer_id="n1",
        storage=store,
        sealer=SEALER,
        limits=HintLimits(hints_per_target_max=3, batch_hints_max=10),
    )
    for index in range(5):
        effects = apply(store, hints.add("n3", "alice", [mapping(f"t{index}")], f"r{index}"))
    assert [e.name for e in effects.events] == ["hint_stored", "hint_dropped"]
    assert hints.pending_total() == 3
    sent = [e.message for e in hints.tick(1.0, frozenset()).messages]
    assert [m.mappings[0].token for m in sent if isinstance(m, InsertRequest)] == ["t2", "t3", "t4"]
    assert len(store.durable_items(b"h\x00")) == 3
    by_bytes = HintedHandoff(
        peer_id="n1",
        storage=MemoryStore(),
        sealer=SEALER,
        limits=HintLimits(hint_bytes_per_target_max=100),
    )
    for index in range(5):
        by_bytes.add("n2", "alice", [mapping(f"t{index}")], "r")
    assert by_bytes.statistics()[0].bytes <= 100


def test_a_hint_holds_no_value_in_clear_and_one_that_was_tampered_with_is_skipped() -> None:
    store = MemoryStore()
    hints = HintedHandoff(peer_id="n1", storage=store, sealer=SEALER)
    apply(store, hints.add("n3", "alice", [mapping("a"), mapping("b")], "r1"))
    apply(store, hints.add("n3", "alice", [mapping("c")], "r2"))
    (first, raw), (_, other) = store.durable_items(b"h\x00")
    assert b"value-" not in raw + other
    record = json.loads(raw)
    sealed = base64.b64decode(record["sealed"][0][1])
    record["sealed"][0][1] = base64.b64encode(sealed[:-1] + bytes([sealed[-1] ^ 1])).decode()
    store.stage([(first, json.dumps(record).encode())])
    store.sync()
    restarted = HintedHandoff(peer_id="n1", storage=store, sealer=SEALER)
    assert [(s.target, s.hints) for s in restarted.statistics()] == [("n3", 1)]
    (envelope,) = restarted.tick(1.0, frozenset()).messages
    assert isinstance(envelope.message, InsertRequest)
    assert envelope.message.mappings == (mapping("c"),)


def test_a_hint_of_an_older_version_with_values_in_clear_is_still_delivered() -> None:
    store = MemoryStore()
    legacy = {"owner": "alice", "mappings": [["a", "value-a", "ssn", 1]]}
    store.stage([(hint_key("n3", 1), json.dumps(legacy).encode())])
    store.sync()
    hints = HintedHandoff(peer_id="n1", storage=store, sealer=SEALER)
    (envelope,) = hints.tick(1.0, frozenset()).messages
    assert isinstance(envelope.message, InsertRequest)
    assert envelope.message.mappings == (mapping("a"),)


def test_hints_for_a_target_that_no_longer_replicates_their_owner_are_forgotten() -> None:
    store = MemoryStore()
    hints = HintedHandoff(peer_id="n1", storage=store, sealer=SEALER)
    apply(store, hints.add("n3", "alice", [mapping("a")], "r1"))
    bob = Mapping(owner="bob", token="b", value="value-b", field="ssn", epoch=1)
    apply(store, hints.add("n3", "bob", [bob], "r2"))
    apply(store, hints.add("n4", "alice", [mapping("c")], "r3"))
    assert hints.last_sequence == 3
    hints.tick(1.0, frozenset())  # in flight: a forgotten hint's late reply changes nothing
    placed = {("n3", "bob"), ("n4", "alice")}  # a change moved alice off n3
    effects = apply(store, hints.forget_unplaced(lambda t, o: (t, o) in placed))
    assert [e.name for e in effects.events] == ["hints_forgotten"]
    assert [(s.target, s.hints) for s in hints.statistics()] == [("n3", 1), ("n4", 1)]
    restarted = HintedHandoff(peer_id="n1", storage=store, sealer=SEALER)
    assert [(s.target, s.hints) for s in restarted.statistics()] == [("n3", 1), ("n4", 1)]
    assert apply(store, hints.forget_unplaced(lambda t, o: True)).writes == []
    # Under an unchanged ring, only hints stored since the last look are looked at.
    apply(store, hints.add("n4", "alice", [mapping("d")], "r4"))
    nowhere = apply(store, hints.forget_unplaced(lambda t, o: False, after=3))
    assert [s.hints for s in hints.statistics()] == [1, 1]  # n3's bob, n4's c: older than 3
    assert len(nowhere.writes) == 1
