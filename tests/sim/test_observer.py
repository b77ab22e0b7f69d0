"""The observer judges the durable records of every peer as they become durable."""

from __future__ import annotations

from tokenvault.quorum.hinted_handoff import encode_hint, hint_key
from tokenvault.quorum.messages import Accept, Ballot, EpochValue, Mapping
from tokenvault.quorum.records import (
    AcceptorSlot,
    EpochMeta,
    acceptor_key,
    decided_key,
    encode_acceptor_slot,
    encode_decided,
    encode_epoch_meta,
    epoch_meta_key,
)
from tokenvault.sim.durable import SIM_SEALER
from tokenvault.sim.observer import Observer

OWNER = "acme"
V = EpochValue(epoch=2, salt="aa" * 8, requested_by="c1-1", requested_at_s=1.0)
W = EpochValue(epoch=2, salt="bb" * 8, requested_by="c2-1", requested_at_s=1.0)
HIGH, LOW = Ballot(round=2, peer="c1-1"), Ballot(round=1, peer="c2-1")
M = Mapping(owner=OWNER, token="tok_" + "A" * 32, value="alice", field="ssn", epoch=1)


def promise(ballot: Ballot, accepted: EpochValue | None = None) -> tuple[bytes, bytes]:
    slot = AcceptorSlot(
        promised=ballot,
        accepted_ballot=None if accepted is None else ballot,
        accepted_value=accepted,
    )
    return acceptor_key(OWNER, 2), encode_acceptor_slot(slot)


def invariants(observer: Observer) -> list[str]:
    return [o.invariant for o in observer.observations]


def test_a_promise_that_goes_down_is_seen_and_names_both_proposers() -> None:
    observer = Observer(replica_count=3)
    observer.on_durable("p1", [promise(HIGH)], 1.0)
    observer.on_durable("p1", [promise(HIGH)], 1.5)  # the same again: fine
    observer.on_durable("p2", [promise(LOW)], 1.6)  # another acceptor: fine
    assert observer.observations == []
    observer.on_durable("p1", [promise(LOW)], 2.0)
    (seen,) = observer.observations
    assert seen.invariant == "promise-never-decreases" and seen.peers == ("p1",)
    assert seen.op_ids == ("c1-1", "c2-1")
    assert "p1 had promised ballot 2.c1-1 for acme slot 2, then durably promised 1.c2-1" in (
        seen.summary
    )


def test_two_decided_values_and_values_nobody_proposed() -> None:
    observer = Observer(replica_count=3)
    observer.on_accept_sent(OWNER, V)
    observer.on_durable("p1", [(decided_key(OWNER, 2), encode_decided(V))], 1.0)
    assert observer.observations == []
    observer.on_durable("p2", [(decided_key(OWNER, 2), encode_decided(W))], 2.0)
    assert invariants(observer) == ["one-value-per-slot", "values-were-proposed"]
    assert [v for _, _, v, _ in observer.decided_values()] == [V, W]


def test_the_active_epoch_and_the_fence_never_go_back() -> None:
    observer = Observer(replica_count=3)
    meta = epoch_meta_key(OWNER)
    observer.on_durable("p1", [(meta, encode_epoch_meta(EpochMeta(decided_slot=3)))], 1.0)
    observer.on_durable("p1", [(meta, encode_epoch_meta(EpochMeta(decided_slot=2)))], 2.0)
    assert invariants(observer) == ["active-epoch-never-goes-back"]


def accept(ballot: Ballot, value: EpochValue) -> Accept:
    return Accept(op_id=ballot.peer, owner=OWNER, slot=2, ballot=ballot, value=value)


def test_paxos_a_chosen_value_is_kept_by_higher_ballots() -> None:
    observer = Observer(replica_count=3)
    observer.on_accept_sent(OWNER, V)
    observer.on_accept_sent(OWNER, W)
    for peer in ("p1", "p2"):
        observer.on_accept_delivered(peer, accept(LOW, V))
        observer.on_durable(peer, [promise(LOW, V)], 1.0)  # a majority: V is chosen at LOW
    assert observer.chosen_value_violations() == []
    observer.on_durable("p3", [promise(HIGH, W)], 2.0)
    (text,) = observer.chosen_value_violations()
    assert "2/aaaaaaaa/c1-1 was chosen at ballot 1.c2-1" in text
    assert "p3 accepted 2/bbbbbbbb/c2-1 at the higher ballot 2.c1-1" in text


def test_an_adopted_acceptance_is_no_vote() -> None:
    """A new replica's transfer (or a recovery) copies the accepted value of the highest ballot
    from other acceptors: with the one acceptor that voted for it, that is no majority of
    voters, and a later ballot may choose another value (sim seed 177, --membership 3)."""
    observer = Observer(replica_count=3)
    observer.on_accept_sent(OWNER, V)
    observer.on_accept_sent(OWNER, W)
    observer.on_accept_delivered("p1", accept(LOW, V))
    observer.on_durable("p1", [promise(LOW, V)], 1.0)
    observer.on_durable("p6", [promise(LOW, V)], 1.1)  # adopted: no Accept reached p6
    observer.on_durable("p3", [promise(HIGH, W)], 2.0)
    assert observer.chosen_value_violations() == []


def test_a_hint_deleted_before_its_target_holds_it() -> None:
    held: dict[tuple[str, str], Mapping] = {}
    observer = Observer(replica_count=3)
    observer.attach(lambda peer, owner, token: held.get((peer, token)))
    key = hint_key("p2", 1)
    observer.on_durable("p1", [(key, encode_hint(SIM_SEALER, OWNER, [M]))], 1.0)
    observer.on_durable("p1", [(key, None)], 2.0)
    assert invariants(observer) == ["hints-kept-until-acknowledged"]
    observer.on_durable("p1", [(hint_key("p2", 2), encode_hint(SIM_SEALER, OWNER, [M]))], 3.0)
    held[("p2", M.token)] = M
    observer.on_durable("p1", [(hint_key("p2", 2), None)], 4.0)
    assert len(observer.observations) == 1 and observer.hints_deleted == 2
