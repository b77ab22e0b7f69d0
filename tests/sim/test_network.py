"""The network: each fault of a link, each kind of partition, and healing."""

from __future__ import annotations

import functools

from tokenvault.quorum.messages import Envelope, ReadRequest
from tokenvault.sim.engine import Engine
from tokenvault.sim.faults import LinkFaults, Partition, PartitionKind
from tokenvault.sim.network import Network, describe_message

PEERS = ("p1", "p2", "p3")


def _envelope(source: str, destination: str, op_id: str) -> Envelope:
    message = ReadRequest(op_id=op_id, owner="acme", tokens=("tok_" + "A" * 32,))
    return Envelope(source=source, destination=destination, message=message)


def _network(
    faults: LinkFaults = LinkFaults(), seed: int = 1
) -> tuple[Engine, Network, list[tuple[float, str]]]:
    engine = Engine(seed)
    received: list[tuple[float, str]] = []
    links = {(a, b): faults for a in PEERS for b in PEERS if a != b}
    network = Network(engine, links, lambda e: received.append((engine.now_s, e.message.op_id)))
    return engine, network, received


def _send_many(engine: Engine, network: Network, count: int, link: tuple[str, str]) -> None:
    for index in range(count):
        envelope = _envelope(*link, f"m{index}")
        engine.at(index * 0.001, functools.partial(network.send, envelope))
    engine.run(until_s=1000.0, events_max=100_000)


def test_a_healthy_link_delivers_everything_once_in_order_after_its_delay() -> None:
    engine, network, received = _network(LinkFaults(delay_s=0.01, jitter_s=0.0))
    _send_many(engine, network, 50, ("p1", "p2"))
    assert [op for _, op in received] == [f"m{i}" for i in range(50)]
    assert abs(received[0][0] - 0.01) < 1e-9
    assert (network.stats.sent, network.stats.delivered) == (50, 50)


def test_loss_drops_messages_at_its_rate() -> None:
    engine, network, received = _network(LinkFaults(loss=0.3))
    _send_many(engine, network, 1000, ("p1", "p2"))
    assert 200 < network.stats.lost < 400
    assert len(received) == 1000 - network.stats.lost


def test_duplication_delivers_some_messages_twice() -> None:
    engine, network, received = _network(LinkFaults(duplicate=0.5))
    _send_many(engine, network, 200, ("p1", "p2"))
    assert 60 < network.stats.duplicated < 140
    assert len(received) == 200 + network.stats.duplicated


def test_reordering_lets_later_messages_pass() -> None:
    engine, network, received = _network(LinkFaults(reorder=0.3, reorder_delay_s=0.5))
    _send_many(engine, network, 200, ("p1", "p2"))
    order = [int(op[1:]) for _, op in received]
    assert order != sorted(order)
    assert network.stats.reordered > 0
    assert sorted(order) == list(range(200))


def test_halves_cut_both_ways_and_one_way_cuts_one_way() -> None:
    engine, network, received = _network()
    halves = Partition(
        kind=PartitionKind.HALVES,
        blocked=(("p1", "p2"), ("p1", "p3"), ("p2", "p1"), ("p3", "p1")),
        label="p1|p2,p3",
    )
    network.start_partition(halves)
    assert network.is_blocked("p1", "p2") and network.is_blocked("p2", "p1")
    assert not network.is_blocked("p2", "p3")
    one_way = Partition(kind=PartitionKind.ONE_WAY, blocked=(("p1", "p2"),), label="p1->p2")
    network.start_partition(one_way)
    network.send(_envelope("p1", "p2", "cut"))
    network.send(_envelope("p2", "p1", "through"))
    engine.run(until_s=10.0, events_max=10)
    assert [op for _, op in received] == ["through"]
    assert (network.stats.cut, network.stats.cut_one_way) == (1, 1)


def test_a_partition_cuts_messages_already_in_flight() -> None:
    engine, network, received = _network(LinkFaults(delay_s=1.0, jitter_s=0.0))
    network.send(_envelope("p1", "p2", "m"))
    isolate = Partition(
        kind=PartitionKind.ISOLATE, blocked=(("p1", "p2"), ("p2", "p1")), label="p2|p1"
    )
    engine.at(0.5, lambda: network.start_partition(isolate))
    engine.run(until_s=10.0, events_max=10)
    assert received == []
    assert network.stats.cut_isolate == 1


def test_healing_ends_the_partition_and_every_fault_of_the_links() -> None:
    engine, network, received = _network(LinkFaults(loss=1.0))
    network.start_partition(Partition(kind=PartitionKind.HALVES, blocked=(("p1", "p2"),), label=""))
    network.heal()
    _send_many(engine, network, 20, ("p1", "p2"))
    assert len(received) == 20
    assert network.stats.lost == network.stats.cut == 0


def test_the_draws_of_one_link_do_not_shift_another() -> None:
    """Link p2->p3 behaves the same whatever traffic p1->p2 carries."""
    results = []
    for busy in (0, 500):
        engine, network, received = _network(LinkFaults(loss=0.5))
        for index in range(busy):
            network.send(_envelope("p1", "p2", f"noise{index}"))
        for index in range(100):
            network.send(_envelope("p2", "p3", f"m{index}"))
        engine.run(until_s=100.0, events_max=100_000)
        results.append(sorted(op for _, op in received if op.startswith("m")))
    assert results[0] == results[1]


def test_messages_are_described_canonically() -> None:
    text = describe_message(_envelope("p1", "p2", "c1-3").message)
    assert text == "read op=c1-3 acme [AAAAAAAA]"


def test_epoch_and_background_messages_are_described_canonically() -> None:
    from tokenvault.quorum.messages import (
        Accept,
        Ballot,
        EpochValue,
        Heartbeat,
        Prepare,
        Promise,
    )

    value = EpochValue(epoch=2, salt="ab" * 8, requested_by="c1-4", requested_at_s=1.0)
    ballot = Ballot(round=3, peer="c1-4")
    assert describe_message(Heartbeat(sender="p1")) == "heartbeat"
    assert (
        describe_message(Prepare(op_id="c1-4", owner="acme", slot=2, ballot=ballot))
        == "prepare op=c1-4 acme slot=2 ballot=3.c1-4"
    )
    assert (
        describe_message(Accept(op_id="c1-4", owner="acme", slot=2, ballot=ballot, value=value))
        == "accept op=c1-4 acme slot=2 ballot=3.c1-4 value=2/abababab/c1-4"
    )
    promise = Promise(
        op_id="c1-4",
        owner="acme",
        slot=2,
        ballot=ballot,
        granted=False,
        promised=Ballot(round=4, peer="c2-1"),
        accepted_ballot=None,
        accepted_value=None,
        decided=None,
    )
    assert describe_message(promise) == (
        "promise op=c1-4 acme slot=2 ballot=3.c1-4 granted=0 promised=4.c2-1 accepted=-:- decided=-"
    )


def test_drop_when_loses_the_chosen_messages_until_healing() -> None:
    engine, network, received = _network()
    network.drop_when(lambda e: e.message.op_id.startswith("x"), "x-only")
    network.send(_envelope("p1", "p2", "x1"))
    network.send(_envelope("p1", "p2", "y1"))
    engine.run(until_s=1.0, events_max=10)
    network.heal()
    network.send(_envelope("p1", "p2", "x2"))
    engine.run(until_s=2.0, events_max=10)
    assert [op for _, op in received] == ["y1", "x2"]
    assert network.stats.filtered == 1
    assert any(
        line.text.startswith("drop-filter x-only p1->p2 read op=x1") for line in engine.log()
    )
