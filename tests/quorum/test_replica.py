"""The replica core on a MemoryStore, driven like the node driver drives it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.quorum.helpers import SEALER, FirstReadMisses
from tokenvault.quorum.effects import Effects, Event
from tokenvault.quorum.invariants import InvariantViolation
from tokenvault.quorum.merkle import OwnerDigests
from tokenvault.quorum.messages import (
    Envelope,
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Mapping,
    Origin,
    ReadReply,
    ReadRequest,
)
from tokenvault.quorum.records import decode_mapping, encode_mapping, mapping_key
from tokenvault.quorum.replica import Replica
from tokenvault.quorum.sealing import Sealer
from tokenvault.store.memory_store import MemoryStore
from tokenvault.tokens import TokenMaker, derive_epoch_key

OWNER = "acme"
SECRET = "4111-1111-1111-1111-SECRET"
OTHER_SECRET = "5500-0000-0000-0004-SECRET"


def mapping(token: str = "tok_A", value: str = SECRET, **changes: object) -> Mapping:
    fields: dict[str, object] = {
        "owner": OWNER,
        "token": token,
        "value": value,
        "field": "card",
        "epoch": 1,
    }
    fields.update(changes)
    return Mapping(**fields)  # type: ignore[arg-type]


class Harness:
    """A replica, its store, and every event it ever produced."""

    def __init__(self, peer_id: str = "r1") -> None:
        self.store = MemoryStore()
        self.replica = Replica(peer_id=peer_id, storage=self.store, sealer=SEALER)
        self.peer_id = peer_id
        self.events: list[Event] = []
        self.values_seen: set[str] = set()
        self._ops = 0
        _HARNESSES.append(self)

    def deliver(self, source: str, message: InsertRequest | ReadRequest) -> Effects:
        """One input, then its writes staged right away, as the driver does."""
        if isinstance(message, InsertRequest):
            self.values_seen.update(m.value for m in message.mappings)
        effects = self.replica.on_message(source, message)
        self.store.stage(effects.writes)
        self.events.extend(effects.events)
        return effects

    def insert(self, *mappings: Mapping, source: str = "coord") -> Effects:
        self._ops += 1
        request = InsertRequest(op_id=f"ins-{self._ops}", owner=OWNER, mappings=mappings)
        return self.deliver(source, request)

    def read(self, *tokens: str, source: str = "coord") -> ReadReply:
        self._ops += 1
        request = ReadRequest(op_id=f"read-{self._ops}", owner=OWNER, tokens=tokens)
        effects = self.deliver(source, request)
        assert effects.writes == [] and effects.replies == [] and effects.timers == []
        (envelope,) = effects.messages
        assert isinstance(envelope.message, ReadReply)
        return envelope.message


def only_reply(effects: Effects) -> InsertReply:
    (envelope,) = effects.messages
    assert isinstance(envelope.message, InsertReply)
    return envelope.message


def event_strings(event: Event) -> Iterator[str]:
    yield event.name
    yield event.owner
    yield event.request_id
    for key, detail in event.details:
        yield key
        yield str(detail)


_HARNESSES: list[Harness] = []


@pytest.fixture(autouse=True)
def no_event_carries_a_value() -> Iterator[None]:
    """After every test: no event of any replica carried a mapping's value, whole or in part."""
    _HARNESSES.clear()
    yield
    assert _HARNESSES, "every test drives at least one replica"
    for h in _HARNESSES:
        for event in h.events:
            for text in event_strings(event):
                for value in h.values_seen:
                    assert value not in text
                    assert value[:6] not in text


@pytest.fixture
def harness() -> Harness:
    return Harness()


def test_insert_new_mapping_is_stored_with_one_write(harness: Harness) -> None:
    m = mapping()
    effects = harness.insert(m)
    reply = only_reply(effects)
    assert reply.outcomes == (InsertOutcome.STORED,)
    assert reply.tokens == ("tok_A",)
    assert reply.owner == OWNER and reply.op_id == "ins-1"
    assert len(effects.writes) == 1
    key, raw = effects.writes[0]
    assert key == mapping_key(OWNER, "tok_A")
    assert raw is not None and decode_mapping(SEALER, OWNER, "tok_A", raw) == m
    assert [e.name for e in effects.events] == ["mapping_stored"]
    assert effects.events[0].details == (("count", 1),)
    assert harness.replica.read_mapping(OWNER, "tok_A") == m


def test_same_mapping_again_is_identical_and_writes_nothing(harness: Harness) -> None:
    harness.insert(mapping())
    effects = harness.insert(mapping())
    assert only_reply(effects).outcomes == (InsertOutcome.IDENTICAL,)
    assert effects.writes == []
    assert [e.name for e in effects.events] == ["mapping_identical"]
    assert InsertOutcome.IDENTICAL.is_durable_ack


@pytest.mark.parametrize(
    "changes",
    [{"value": OTHER_SECRET}, {"field": "iban"}, {"epoch": 2}],
    ids=["value", "field", "epoch"],
)
def test_different_mapping_under_same_token_is_a_conflict(
    harness: Harness, changes: dict[str, Any]
) -> None:
    original = mapping()
    harness.insert(original)
    harness.store.sync()
    different = mapping(**changes)
    harness.values_seen.add(different.value)
    effects = harness.insert(different, source="coord-7")
    assert only_reply(effects).outcomes == (InsertOutcome.CONFLICT,)
    assert not InsertOutcome.CONFLICT.is_durable_ack
    assert effects.writes == []
    conflicts = [e for e in effects.events if e.name == "mapping_conflict"]
    assert len(conflicts) == 1
    conflict = conflicts[0]
    assert conflict.owner == OWNER and conflict.request_id == "ins-2"
    details = dict(conflict.details)
    assert details["source"] == "coord-7"
    for text in event_strings(conflict):
        assert SECRET not in text and OTHER_SECRET not in text
    # the held mapping is never overwritten
    assert harness.replica.read_mapping(OWNER, "tok_A") == original
    assert not harness.store.has_unsynced()


def test_mixed_batch_answers_per_mapping_in_order(harness: Harness) -> None:
    harness.insert(mapping("tok_A"), mapping("tok_B", value="held-b"))
    batch = (
        mapping("tok_C", value="new-c"),
        mapping("tok_A"),  # identical
        mapping("tok_B", value="changed-b"),  # conflict
        mapping("tok_D", value="new-d"),
    )
    effects = harness.insert(*batch)
    reply = only_reply(effects)
    assert reply.tokens == ("tok_C", "tok_A", "tok_B", "tok_D")
    assert reply.outcomes == (
        InsertOutcome.STORED,
        InsertOutcome.IDENTICAL,
        InsertOutcome.CONFLICT,
        InsertOutcome.STORED,
    )
    assert sorted(k for k, _ in effects.writes) == [
        mapping_key(OWNER, "tok_C"),
        mapping_key(OWNER, "tok_D"),
    ]
    counts = {e.name: dict(e.details).get("count") for e in effects.events}
    assert counts["mapping_stored"] == 2
    assert counts["mapping_identical"] == 1
    assert "mapping_conflict" in counts
    assert harness.replica.read_mapping(OWNER, "tok_B") == mapping("tok_B", value="held-b")


def test_read_returns_held_mappings_and_none_in_order(harness: Harness) -> None:
    a, b = mapping("tok_A"), mapping("tok_B", value="bee")
    harness.insert(a, b)
    reply = harness.read("tok_B", "tok_missing", "tok_A")
    assert reply.tokens == ("tok_B", "tok_missing", "tok_A")
    assert reply.mappings == (b, None, a)
    assert reply.owner == OWNER and reply.op_id == "read-2"


def test_read_is_per_owner(harness: Harness) -> None:
    harness.insert(mapping("tok_A"))
    request = ReadRequest(op_id="x", owner="other-owner", tokens=("tok_A",))
    effects = harness.deliver("coord", request)
    (envelope,) = effects.messages
    assert isinstance(envelope.message, ReadReply)
    assert envelope.message.mappings == (None,)


def test_replies_are_addressed_back_to_the_source() -> None:
    h = Harness(peer_id="replica-9")
    for source in ("peer-a", "peer-b", "replica-9"):
        insert_effects = h.insert(mapping(), source=source)
        (envelope,) = insert_effects.messages
        assert envelope == Envelope(
            source="replica-9", destination=source, message=envelope.message
        )
        request = ReadRequest(op_id=f"r-{source}", owner=OWNER, tokens=("tok_A",))
        (read_envelope,) = h.deliver(source, request).messages
        assert (read_envelope.source, read_envelope.destination) == ("replica-9", source)
        assert read_envelope.message.op_id == f"r-{source}"


@pytest.mark.parametrize("origin", list(Origin), ids=lambda o: o.value)
def test_an_insert_reply_echoes_the_origin_of_its_insert(harness: Harness, origin: Origin) -> None:
    """The reply goes back to the core that sent the insert (routing.py reads its origin)."""
    request = InsertRequest(
        op_id="ae:x:1", owner=OWNER, mappings=(mapping(),), repair=True, origin=origin
    )
    assert only_reply(harness.deliver("coord", request)).origin is origin


def test_crash_loses_unsynced_writes_and_sync_keeps_them(harness: Harness) -> None:
    harness.insert(mapping("tok_A"))
    assert harness.read("tok_A").mappings == (mapping("tok_A"),)  # staged: visible
    assert harness.store.crash() == 1
    assert harness.read("tok_A").mappings == (None,)
    assert harness.replica.read_mapping(OWNER, "tok_A") is None
    # inserting again after the crash is a fresh STORED, not IDENTICAL
    assert only_reply(harness.insert(mapping("tok_A"))).outcomes == (InsertOutcome.STORED,)
    assert harness.store.sync() == 1
    assert harness.store.crash() == 0
    assert harness.read("tok_A").mappings == (mapping("tok_A"),)
    assert only_reply(harness.insert(mapping("tok_A"))).outcomes == (InsertOutcome.IDENTICAL,)


def test_insert_sees_writes_staged_by_the_previous_input(harness: Harness) -> None:
    """Two inserts of one token can never both be STORED (the store shows staged writes)."""
    first = harness.insert(mapping("tok_A"))
    second = harness.insert(mapping("tok_A", value="another"))
    harness.values_seen.add("another")
    assert only_reply(first).outcomes == (InsertOutcome.STORED,)
    assert only_reply(second).outcomes == (InsertOutcome.CONFLICT,)
    assert harness.store.sync() == 1


def test_replica_refuses_replies() -> None:
    h = Harness()
    reply = InsertReply(op_id="x", owner=OWNER, tokens=(), outcomes=())
    with pytest.raises(AssertionError):
        h.replica.on_message("coord", reply)


def test_a_corrupt_record_is_reported_corrupt_and_repaired_by_a_mapping_that_verifies() -> None:
    harness = Harness()
    key = mapping_key(OWNER, "tok_corrupt")
    harness.store.stage([(key, b"\x07garbage")])
    harness.store.sync()
    read = harness.read("tok_corrupt")
    assert read.mappings == (None,) and read.corrupt == ("tok_corrupt",)
    assert [e.name for e in harness.events] == ["storage_corrupt"]
    assert harness.events[0].details == (("token_prefix", "tok_corr"),)
    effects = harness.deliver(
        "c", InsertRequest(op_id="op", owner=OWNER, mappings=(mapping("tok_corrupt"),))
    )
    reply = effects.messages[0].message
    assert isinstance(reply, InsertReply) and reply.outcomes == (InsertOutcome.STORED,)
    assert [e.name for e in effects.events] == ["storage_corrupt", "mapping_repaired"]
    assert harness.replica.repaired == 1
    harness.store.sync()
    assert harness.read("tok_corrupt").mappings == (mapping("tok_corrupt"),)
    # The digests count the repaired record, not the corrupt one.
    rebuilt = OwnerDigests()
    rebuilt.rebuild(harness.store)
    assert rebuilt.root(OWNER) == harness.replica.digests.root(OWNER)


# -- invariant: a replica never overwrites a mapping that verifies ------------------------------


def test_a_handler_that_would_overwrite_a_verified_mapping_is_stopped_at_the_write() -> None:
    """The loop decides on a stale read (a lying view); the check at the write reads again."""
    harness = Harness()
    key = mapping_key(OWNER, "tok_A")
    raw = encode_mapping(SEALER, mapping())
    harness.store.stage([(key, raw)])
    harness.store.sync()
    harness.replica = Replica(
        peer_id="r1", storage=FirstReadMisses(harness.store, key), sealer=SEALER
    )
    with pytest.raises(InvariantViolation) as raised:
        harness.insert(mapping(value=OTHER_SECRET))
    harness.values_seen.add(OTHER_SECRET)
    assert str(raised.value) == "replica would overwrite a mapping: owner acme token prefix tok_A"
    assert harness.store.get(key) == raw and not harness.store.has_unsynced()


def test_the_write_check_lets_a_record_that_fails_verification_be_replaced() -> None:
    harness = Harness()
    key = mapping_key(OWNER, "tok_A")
    harness.store.stage([(key, b"\x07garbage")])
    harness.store.sync()
    harness.replica = Replica(
        peer_id="r1", storage=FirstReadMisses(harness.store, key), sealer=SEALER
    )
    harness.insert(mapping())
    assert harness.store.get(key) == encode_mapping(SEALER, mapping())


def test_one_key_is_never_written_twice_in_one_batch() -> None:
    """A request repeating a token is refused when built; were one to get through, the replica
    would find the key empty twice and write it twice: the second write an overwrite."""
    harness = Harness()
    twice = (mapping(), mapping(value=OTHER_SECRET))
    with pytest.raises(ValueError, match="repeats a token"):
        InsertRequest(op_id="dup", owner=OWNER, mappings=twice)
    request = InsertRequest(op_id="dup", owner=OWNER, mappings=twice[:1])
    msgspec.structs.force_setattr(request, "mappings", twice)  # past its own validation
    with pytest.raises(InvariantViolation, match="would overwrite a mapping: owner acme"):
        harness.deliver("coord", request)
    assert harness.store.get(mapping_key(OWNER, "tok_A")) is None


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            st.lists(
                st.tuples(st.sampled_from(["tA", "tB", "tC"]), st.sampled_from(["v1", "v2"])),
                min_size=1,
                max_size=3,
                unique_by=lambda pair: pair[0],
            ),
            st.integers(1, 2),
            st.booleans(),
        ),
        max_size=12,
    ),
    corrupt=st.booleans(),
)
def test_no_sequence_of_inserts_trips_the_invariant(
    batches: list[tuple[list[tuple[str, str]], int, bool]], corrupt: bool
) -> None:
    """Identical retries, conflicts, repairs and a corrupt record are all answered."""
    harness = Harness()
    if corrupt:
        harness.store.stage([(mapping_key(OWNER, "tC"), b"\x07garbage")])
    for pairs, epoch, repair in batches:
        mappings = tuple(mapping(token, value, epoch=epoch) for token, value in pairs)
        request = InsertRequest(op_id="op", owner=OWNER, mappings=mappings, repair=repair)
        reply = only_reply(harness.deliver("coord", request))  # a violation would raise here
        assert len(reply.outcomes) == len(mappings)


# -- verification with real tokens ----------------------------------------------------------------

REAL_SECRET = b"r" * 32
REAL_SEALER = Sealer(REAL_SECRET)


def real_mapping(value: str = SECRET, epoch: int = 1) -> Mapping:
    token = TokenMaker(derive_epoch_key(REAL_SECRET, OWNER, epoch)).token("card", value)
    return Mapping(owner=OWNER, token=token, value=value, field="card", epoch=epoch)


def real_harness() -> Harness:
    harness = Harness()
    harness.replica = Replica(peer_id="r1", storage=harness.store, sealer=REAL_SEALER)
    return harness


def held(harness: Harness, m: Mapping, raw: bytes) -> None:
    harness.store.stage([(mapping_key(OWNER, m.token), raw)])
    harness.store.sync()


def test_a_record_whose_token_is_not_the_hash_of_its_value_is_corrupt() -> None:
    """A legacy (format 1, clear) record with one changed character opens: the token check
    catches it."""
    harness = real_harness()
    good = real_mapping()
    flipped = good._replace(value="5" + SECRET[1:])
    held(harness, good, b"\x01\x00\x00\x00\x01\x04card" + flipped.value.encode())
    assert harness.read(good.token).corrupt == (good.token,)
    held(harness, good, b"\x01\x00\x00\x00\x01\x04card" + good.value.encode())
    assert harness.read(good.token).mappings == (good,)


def test_a_mapping_that_verifies_is_never_overwritten() -> None:
    harness = real_harness()
    good = real_mapping()
    harness.insert(good)
    raw = harness.store.get(mapping_key(OWNER, good.token))
    impostor = good._replace(value=OTHER_SECRET)  # its token does not check
    harness.values_seen.add(OTHER_SECRET)
    effects = harness.deliver(
        "c", InsertRequest(op_id="rep", owner=OWNER, mappings=(impostor,), repair=True)
    )
    reply = effects.messages[0].message
    assert isinstance(reply, InsertReply) and reply.outcomes == (InsertOutcome.CONFLICT,)
    assert harness.store.get(mapping_key(OWNER, good.token)) == raw
    assert harness.replica.repaired == 0


def test_a_corrupt_record_is_not_replaced_by_a_mapping_that_fails_the_token_check() -> None:
    harness = real_harness()
    good = real_mapping()
    raw = bytearray(encode_mapping(REAL_SEALER, good))
    raw[-1] ^= 0x01  # the tag
    held(harness, good, bytes(raw))
    impostor = good._replace(value=OTHER_SECRET)
    harness.values_seen.add(OTHER_SECRET)
    effects = harness.deliver(
        "c", InsertRequest(op_id="rep", owner=OWNER, mappings=(impostor,), repair=True)
    )
    reply = effects.messages[0].message
    assert isinstance(reply, InsertReply) and reply.outcomes == (InsertOutcome.CONFLICT,)
    assert harness.store.get(mapping_key(OWNER, good.token)) == bytes(raw)
    harness.insert(good)
    assert harness.store.get(mapping_key(OWNER, good.token)) == encode_mapping(REAL_SEALER, good)
    assert harness.replica.repaired == 1


def test_without_the_epoch_value_the_tag_alone_is_checked() -> None:
    """Epoch 2 was never decided here: a sealed record that opens is answered as held; one that
    does not is corrupt, and a mapping replaces it as it would fill an empty key (no epoch
    value to check its token against)."""
    harness = real_harness()
    good = real_mapping(epoch=2)
    held(harness, good, encode_mapping(REAL_SEALER, good))
    assert harness.read(good.token).mappings == (good,)
    raw = bytearray(encode_mapping(REAL_SEALER, good))
    raw[20] ^= 0x10  # inside the nonce
    held(harness, good, bytes(raw))
    assert harness.read(good.token).corrupt == (good.token,)
    effects = harness.deliver(
        "c", InsertRequest(op_id="rep", owner=OWNER, mappings=(good,), repair=True)
    )
    reply = effects.messages[0].message
    assert isinstance(reply, InsertReply) and reply.outcomes == (InsertOutcome.STORED,)
    assert harness.store.get(mapping_key(OWNER, good.token)) == encode_mapping(REAL_SEALER, good)


def test_no_value_is_stored_in_clear() -> None:
    harness = real_harness()
    good = real_mapping()
    harness.insert(good)
    harness.store.sync()
    for key, raw in harness.store.durable_items():
        assert SECRET.encode() not in key + raw
