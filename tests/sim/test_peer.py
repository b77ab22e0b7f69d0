"""One simulated peer keeps node.py's driver rules and routing on virtual time."""

from __future__ import annotations

import pytest

from tests.quorum.helpers import membership_of
from tests.stores import serving_store
from tokenvault.quorum import peer_core as peer_core_module
from tokenvault.quorum.client_operations import Tokenized
from tokenvault.quorum.effects import Effects, EpochDone, ReadDone
from tokenvault.quorum.messages import (
    Decide,
    Envelope,
    EpochQuery,
    EpochReport,
    EpochValue,
    Heartbeat,
    InsertOutcome,
    InsertReply,
    InsertRequest,
    Mapping,
    Message,
    ReadReply,
    ReadRequest,
)
from tokenvault.quorum.quorum_config import QuorumConfig
from tokenvault.quorum.replica import Replica
from tokenvault.sim.client import (
    ClientAnswer,
    ClientRequest,
    Refused,
    RequestKind,
    Reset,
    epoch_key,
)
from tokenvault.sim.engine import Engine
from tokenvault.sim.peer import PeerState, SimPeer
from tokenvault.tokens import make_token

OWNER = "acme"
FSYNC_S = 0.01


def real_mapping(value: str) -> Mapping:
    """A mapping under its real token: replicas check it (sealing.py)."""
    token = make_token(epoch_key(OWNER, 1, ""), "ssn", value)
    return Mapping(owner=OWNER, token=token, value=value, field="ssn", epoch=1)


A = real_mapping("alice")
B = real_mapping("bob")


class Harness:
    """One peer p1 of a three-peer ring (every peer replicates OWNER); what it sends to p2 and
    p3 is collected, heartbeats and anti-entropy apart."""

    def __init__(self, owners: tuple[str, ...] = ()) -> None:
        self.engine = Engine(1)
        self.background: list[tuple[float, Envelope]] = []  # heartbeats, anti-entropy
        self.sent: list[tuple[float, Envelope]] = []
        self.answers: list[tuple[float, ClientAnswer]] = []
        self.peer = SimPeer(
            "p1",
            engine=self.engine,
            bootstrap=membership_of(("p1", "p2", "p3"), vnodes_per_peer=4),
            quorum=QuorumConfig(replica_count=3, write_quorum=2, read_quorum=2),
            fsync_s=(FSYNC_S, FSYNC_S),
            client_latency_s=0.001,
            send=self._send,
            owners=owners,
            store=serving_store(),
        )

    def _send(self, envelope: Envelope) -> None:
        background = isinstance(envelope.message, Heartbeat) or envelope.message.op_id.startswith(
            "ae:"
        )
        (self.background if background else self.sent).append((self.engine.now_s, envelope))

    def deliver(self, at_s: float, message: Message, source: str = "p2") -> None:
        envelope = Envelope(source=source, destination="p1", message=message)
        self.engine.at(at_s, lambda: self.peer.receive(envelope))

    def request(self, at_s: float, request: ClientRequest) -> None:
        sink = lambda answer: self.answers.append((self.engine.now_s, answer))  # noqa: E731
        self.engine.at(at_s, lambda: self.peer.client_request(request, sink))

    def run(self, until_s: float = 100.0) -> None:
        self.engine.run(until_s=until_s, events_max=10_000)

    def messages(self) -> list[tuple[float, Message]]:
        return [(at_s, e.message) for at_s, e in self.sent]


def insert(op_id: str, *mappings: Mapping) -> InsertRequest:
    return InsertRequest(op_id=op_id, owner=OWNER, mappings=mappings)


def read(op_id: str, *mappings: Mapping) -> ReadRequest:
    return ReadRequest(op_id=op_id, owner=OWNER, tokens=tuple(m.token for m in mappings))


def tokenize(op_id: str, *items: tuple[str, str]) -> ClientRequest:
    return ClientRequest(op_id=op_id, owner=OWNER, kind=RequestKind.TOKENIZE, items=items)


def detokenize(op_id: str, *tokens: str) -> ClientRequest:
    return ClientRequest(op_id=op_id, owner=OWNER, kind=RequestKind.DETOKENIZE, tokens=tokens)


def token_at(epoch: int, salt: str, field_name: str, value: str) -> str:
    return make_token(epoch_key(OWNER, epoch, salt), field_name, value)


def test_an_insert_is_answered_only_once_it_is_durable() -> None:
    h = Harness()
    h.deliver(1.0, insert("w1", A))
    h.run(until_s=1.0)
    assert h.sent == []
    assert not h.peer.durable.holds(A)
    h.run()
    ((at_s, reply),) = h.messages()
    assert at_s == pytest.approx(1.0 + FSYNC_S)
    assert isinstance(reply, InsertReply) and reply.outcomes[0].value == "stored"
    assert h.peer.durable.holds(A)


def test_a_read_of_a_staged_mapping_waits_for_durability_though_it_wrote_nothing() -> None:
    h = Harness()
    h.deliver(1.0, insert("w1", A))
    h.deliver(1.001, read("r1", A))
    h.run()
    assert [(round(at_s, 6), type(m).__name__) for at_s, m in h.messages()] == [
        (1.01, "InsertReply"),
        (1.01, "ReadReply"),
    ]


def test_a_read_of_durable_state_is_answered_at_once() -> None:
    h = Harness()
    h.deliver(1.0, insert("w1", A))
    h.deliver(2.0, read("r1", A))
    h.run()
    at_s, reply = h.messages()[1]
    assert at_s == 2.0
    assert isinstance(reply, ReadReply) and reply.mappings == (A,)


def test_one_sync_makes_every_staged_write_durable_group_commit() -> None:
    h = Harness()
    h.deliver(1.0, insert("w1", A))
    h.deliver(1.005, insert("w2", B))
    h.run()
    assert [round(at_s, 6) for at_s, _ in h.messages()] == [1.01, 1.01]
    assert h.peer.stats.syncs == 1


def test_a_crash_loses_staged_writes_and_their_answers_and_a_restart_keeps_durable_ones() -> None:
    h = Harness()
    h.deliver(1.0, insert("w1", A))
    h.deliver(2.0, insert("w2", B))
    h.engine.at(2.005, h.peer.crash)
    h.deliver(2.5, read("r-down", A))
    h.engine.at(3.0, h.peer.restart)
    h.deliver(4.0, read("r1", A, B))
    h.run()
    assert [m.op_id for _, m in h.messages()] == ["w1", "r1"]
    last = h.messages()[-1][1]
    assert isinstance(last, ReadReply) and last.mappings == (A, None)
    assert (h.peer.stats.crashes, h.peer.stats.lost_writes, h.peer.stats.restarts) == (1, 1, 1)
    assert h.peer.incarnation == 2
    log = [line.text for line in h.engine.log()]
    assert "stale sync p1" in log
    assert any(text.startswith("drop-down deliver p2->p1 read op=r-down") for text in log)


def test_a_paused_peer_runs_its_inputs_in_order_when_it_resumes() -> None:
    h = Harness()
    h.engine.at(0.5, h.peer.pause)
    h.deliver(1.0, insert("w1", A))
    h.deliver(1.5, read("r1", A))
    h.engine.at(3.0, h.peer.resume)
    h.run()
    assert [(round(at_s, 6), m.op_id) for at_s, m in h.messages()] == [
        (3.01, "w1"),
        (3.01, "r1"),
    ]
    assert h.peer.stats.deferred_inputs == 3  # and its tick, once: it reschedules when it runs


def test_clients_are_refused_by_a_down_peer_and_reset_by_a_crash() -> None:
    h = Harness()
    h.request(1.0, tokenize("c1-1", ("ssn", "alice")))
    h.engine.at(1.0005, h.peer.crash)
    h.request(2.0, detokenize("c1-2", A.token))
    h.run()
    assert [(round(at_s, 6), answer) for at_s, answer in h.answers] == [
        (1.0015, Reset(op_id="c1-1")),
        (2.001, Refused(op_id="c1-2")),
    ]
    assert h.peer.state is PeerState.DOWN
    assert h.peer.operations_in_flight() == 0


def test_a_tokenize_computes_its_tokens_under_the_known_epoch_and_answers_after_w_acks() -> None:
    h = Harness()
    h.request(1.0, tokenize("c1-1", ("ssn", "alice")))
    h.run(until_s=1.0)
    inserts = [(e.destination, e.message) for _, e in h.sent]
    assert sorted(destination for destination, _ in inserts) == ["p2", "p3"]
    token = token_at(1, "", "ssn", "alice")
    assert all(isinstance(m, InsertRequest) and m.op_id == "c1-1/w1" for _, m in inserts)
    assert all(m.mappings[0].token == token for _, m in inserts)  # type: ignore[union-attr]
    for destination in ("p2", "p3"):
        reply = InsertReply(
            op_id="c1-1/w1", owner=OWNER, tokens=(token,), outcomes=(InsertOutcome.STORED,)
        )
        h.deliver(1.1, reply, source=destination)
    h.run()
    ((at_s, answer),) = h.answers
    assert at_s == pytest.approx(1.101)
    assert isinstance(answer, Tokenized) and answer.failure is None and answer.writes == 1
    assert answer.epoch is not None and answer.epoch.epoch == 1
    assert [m.token for m in answer.mappings] == [token]
    assert [a.op_id for a in h.peer.observer.write_attempts] == ["c1-1/w1"]


def test_a_fenced_tokenize_learns_the_epoch_and_writes_again_under_it() -> None:
    h = Harness()
    epoch2 = EpochValue(epoch=2, salt="ab" * 8, requested_by="r-1", requested_at_s=0.5)
    old, new = token_at(1, "", "ssn", "alice"), token_at(2, epoch2.salt, "ssn", "alice")
    h.request(1.0, tokenize("c1-1", ("ssn", "alice")))
    for destination in ("p2", "p3"):
        fenced = InsertReply(
            op_id="c1-1/w1", owner=OWNER, tokens=(old,), outcomes=(InsertOutcome.FENCED,)
        )
        h.deliver(1.1, fenced, source=destination)
        h.deliver(
            1.2,
            EpochReport(op_id="c1-1/l1", owner=OWNER, decided=epoch2, accepted_slot=2),
            source=destination,
        )
        stored = InsertReply(
            op_id="c1-1/w2", owner=OWNER, tokens=(new,), outcomes=(InsertOutcome.STORED,)
        )
        h.deliver(1.3, stored, source=destination)
    h.run()
    ((_, answer),) = h.answers
    assert isinstance(answer, Tokenized) and answer.failure is None
    assert answer.epoch == epoch2 and answer.writes == 2
    assert [m.token for m in answer.mappings] == [new]
    assert h.peer.known_epoch(OWNER) == epoch2
    learns = [m for _, m in h.messages() if isinstance(m, EpochQuery)]
    assert {m.op_id for m in learns} == {"c1-1/l1"}


def test_routing_follows_node_py() -> None:
    """Heartbeats are signs of life only; a Decide reaches the acceptor and the known epoch."""
    h = Harness(owners=(OWNER,))
    value = EpochValue(epoch=2, salt="cd" * 8, requested_by="r-9", requested_at_s=0.0)
    h.deliver(5.5, Heartbeat(sender="p2"))  # nothing was heard from p2 before
    h.deliver(6.0, Decide(op_id="r-9", owner=OWNER, value=value))
    h.run(until_s=7.0)
    log = [line.text for line in h.engine.log()]
    assert "event p1 peer_down op= target=p2 was=suspect never_heard=True" in log
    assert "event p1 peer_up op= target=p2 was=down" in log
    # p3 stays silent: down; p2 came back with its heartbeat.
    assert "p3" in h.peer.down_peers() and "p2" not in h.peer.down_peers()
    assert h.peer.known_epoch(OWNER) == value
    assert h.peer.core.acceptor.active_epoch(OWNER) == value
    assert any(line.startswith("event p1 epoch_learned op=r-9") for line in log)
    assert h.peer.stats.ticks >= 10


def test_a_restart_rebuilds_every_core_from_the_durable_store() -> None:
    h = Harness(owners=(OWNER,))
    value = EpochValue(epoch=2, salt="cd" * 8, requested_by="r-9", requested_at_s=0.0)
    h.deliver(1.0, insert("w1", A))  # an epoch-1 mapping: after the Decide it would be fenced
    h.deliver(1.5, Decide(op_id="r-9", owner=OWNER, value=value))
    h.engine.at(2.0, h.peer.crash)
    h.engine.at(3.0, h.peer.restart)
    h.run(until_s=4.0)
    peer = h.peer
    assert peer.incarnation == 2 and peer.state is PeerState.UP
    assert peer.known_epoch(OWNER) == value  # rebuilt from the acceptor's durable record
    assert peer.core.replica.digests.count(OWNER) == 1
    assert peer.core.failure_detector.views()[0].last_heard is None  # a new view
    assert peer.operations_in_flight() == 0


def test_an_exception_from_a_core_is_recorded_and_contained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The input that made a core raise is dropped; the peer stays up and serves the next one."""

    class BrokenReplica(Replica):
        def on_message(self, source: str, message: Message) -> Effects:
            if isinstance(message, InsertRequest):
                raise AssertionError("broken on purpose")
            return super().on_message(source, message)

    monkeypatch.setattr(peer_core_module, "Replica", BrokenReplica)
    h = Harness()
    h.deliver(1.0, insert("w1", A))
    h.deliver(1.5, ReadRequest(op_id="r1", owner=OWNER, tokens=(A.token,)), source="p2")
    h.run()
    (error,) = h.peer.core_errors
    assert (error.peer, error.at_s, error.input) == ("p1", 1.0, "replica InsertRequest")
    assert error.error == "AssertionError: broken on purpose"
    assert "test_peer.py:" in error.location
    assert h.peer.state is PeerState.UP
    assert not h.peer.durable.holds(A)
    replies = [e.message for _, e in h.sent if isinstance(e.message, ReadReply)]
    assert replies == [ReadReply(op_id="r1", owner=OWNER, tokens=(A.token,), mappings=(None,))]


def test_read_done_is_what_a_detokenize_client_receives() -> None:
    h = Harness()
    h.request(1.0, detokenize("c1-1", A.token))
    h.run(until_s=1.0)
    for destination in ("p2", "p3"):
        h.deliver(
            1.1,
            ReadReply(op_id="c1-1", owner=OWNER, tokens=(A.token,), mappings=(None,)),
            source=destination,
        )
    h.run()
    assert [answer for _, answer in h.answers] == [
        ReadDone(op_id="c1-1", owner=OWNER, mappings=(None,), failure=None)
    ]


def test_an_epoch_read_is_a_learn_and_its_answer_raises_the_known_epoch() -> None:
    h = Harness()
    value = EpochValue(epoch=3, salt="ef" * 8, requested_by="r-1", requested_at_s=0.0)
    h.request(1.0, ClientRequest(op_id="c1-1", owner=OWNER, kind=RequestKind.EPOCH))
    for destination in ("p2", "p3"):
        h.deliver(
            1.1,
            EpochReport(op_id="c1-1", owner=OWNER, decided=value, accepted_slot=3),
            source=destination,
        )
    h.run(until_s=2.0)
    ((_, answer),) = h.answers
    assert answer == EpochDone(op_id="c1-1", owner=OWNER, value=value, rotated=False, failure=None)
    assert h.peer.known_epoch(OWNER) == value


def test_a_client_request_is_well_formed() -> None:
    with pytest.raises(ValueError):
        ClientRequest(op_id="x", owner=OWNER, kind=RequestKind.TOKENIZE)
    with pytest.raises(ValueError):
        ClientRequest(op_id="x", owner=OWNER, kind=RequestKind.DETOKENIZE, items=(("a", "b"),))
    with pytest.raises(ValueError):
        ClientRequest(op_id="x", owner=OWNER, kind=RequestKind.EPOCH, expected_epoch=2)
