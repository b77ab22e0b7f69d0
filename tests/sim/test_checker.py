"""The checker catches hand-made bad histories and final states, and passes a good one."""

from __future__ import annotations

from tokenvault.quorum.messages import Mapping
from tokenvault.sim.checker import CheckInput, ContextQuery, Violation, check
from tokenvault.sim.cluster import ReplicaState
from tokenvault.sim.history import History, Operation, OperationKind, Outcome
from tokenvault.sim.peer import CoreError

OWNER = "acme"
PEERS = ("p1", "p2", "p3")
TOKEN_A = "tok_" + "A" * 32
TOKEN_B = "tok_" + "B" * 32
A = Mapping(owner=OWNER, token=TOKEN_A, value="alice", field="ssn", epoch=1)
B = Mapping(owner=OWNER, token=TOKEN_B, value="bob", field="ssn", epoch=1)


class Scenario:
    """A history and replica states, built by hand; every store starts empty."""

    def __init__(self) -> None:
        self.history = History()
        self.stores: dict[str, dict[tuple[str, str], Mapping]] = {p: {} for p in PEERS}
        self.counter = 0

    def tokenize(
        self, start: float, end: float, *mappings: Mapping, outcome: Outcome = Outcome.OK
    ) -> Operation:
        op = self._invoke(start, OperationKind.TOKENIZE, mappings=mappings)
        copies = tuple(3 for _ in mappings) if outcome is Outcome.OK else ()
        return self.history.complete(op.op_id, at_s=end, outcome=outcome, copies_at_answer=copies)

    def detokenize(
        self,
        start: float,
        end: float,
        found: dict[str, Mapping | None],
        *,
        kind: OperationKind = OperationKind.DETOKENIZE,
        outcome: Outcome = Outcome.OK,
    ) -> Operation:
        op = self._invoke(start, kind, tokens=tuple(found))
        if outcome is not Outcome.OK:
            return self.history.complete(op.op_id, at_s=end, outcome=outcome, reason="timeout")
        values = tuple(found.values())
        copies = tuple(0 if m is None else 3 for m in values)
        return self.history.complete(
            op.op_id, at_s=end, outcome=Outcome.OK, found=values, copies_at_answer=copies
        )

    def _invoke(
        self,
        start: float,
        kind: OperationKind,
        mappings: tuple[Mapping, ...] = (),
        tokens: tuple[str, ...] = (),
    ) -> Operation:
        self.counter += 1
        return self.history.invoke(
            Operation(
                op_id=f"c1-{self.counter}",
                client="c1",
                kind=kind,
                owner=OWNER,
                peer="p1",
                attempt=1,
                invoke_s=start,
                mappings=mappings,
                tokens=tokens,
            )
        )

    def hold(self, mapping: Mapping, *peers: str) -> None:
        for peer in peers:
            self.stores[peer][(mapping.owner, mapping.token)] = mapping

    def check(self, **overrides: object) -> list[Violation]:
        replicas = tuple(
            ReplicaState(
                peer=peer,
                up=True,
                mappings=held,
                operations_in_flight=0,
                unsynced=False,
                held_effects=0,
            )
            for peer, held in self.stores.items()
        )
        arguments: dict[str, object] = {
            "history": self.history,
            "replicas": replicas,
            "preference_lists": {OWNER: PEERS},
            "write_quorum": 2,
        }
        arguments.update(overrides)
        return check(CheckInput(**arguments))  # type: ignore[arg-type]


def invariants(violations: list[Violation]) -> list[str]:
    return sorted({v.invariant for v in violations})


def good_scenario() -> Scenario:
    s = Scenario()
    s.tokenize(1.0, 1.1, A)
    s.tokenize(1.5, 1.6, B, outcome=Outcome.INDETERMINATE)  # may or may not have happened
    s.detokenize(2.0, 2.1, {TOKEN_A: A, TOKEN_B: None})
    s.detokenize(3.0, 3.1, {TOKEN_A: A, TOKEN_B: B}, kind=OperationKind.CHECK)
    s.hold(A, "p1", "p2", "p3")
    s.hold(B, "p1", "p2")
    return s


def test_a_good_history_passes() -> None:
    assert good_scenario().check() == []


def test_a_token_with_two_values() -> None:
    s = good_scenario()
    forged = Mapping(owner=OWNER, token=TOKEN_A, value="mallory", field="ssn", epoch=1)
    s.detokenize(4.0, 4.1, {TOKEN_A: forged})
    violations = s.check()
    assert "one-value-per-token" in invariants(violations)
    text = next(v for v in violations if v.invariant == "one-value-per-token").render()
    assert "'alice'" in text and "'mallory'" in text and "c1-5" in text


def test_two_replicas_that_disagree() -> None:
    s = good_scenario()
    s.hold(Mapping(owner=OWNER, token=TOKEN_B, value="eve", field="ssn", epoch=1), "p3")
    assert {"one-value-per-token", "no-uninserted-value"} <= set(invariants(s.check()))


def test_a_value_nobody_inserted() -> None:
    s = good_scenario()
    ghost = Mapping(owner=OWNER, token="tok_" + "G" * 32, value="ghost", field="ssn", epoch=1)
    s.detokenize(4.0, 4.1, {ghost.token: ghost})
    violations = s.check()
    assert invariants(violations) == ["no-uninserted-value"]
    assert "'ghost'" in violations[0].summary
    assert violations[0].operations[0].startswith("op c1-5 detokenize")


def test_a_lost_acknowledged_write() -> None:
    """Acknowledged at 1.1, then a later read and the liveness read miss it."""
    s = Scenario()
    s.tokenize(1.0, 1.1, A)
    s.detokenize(2.0, 2.1, {TOKEN_A: None})
    s.detokenize(3.0, 3.1, {TOKEN_A: None}, kind=OperationKind.CHECK)
    s.hold(A, "p1")
    violations = s.check()
    assert invariants(violations) == ["acknowledged-write-visible", "convergence"]
    first = violations[0]
    assert "acknowledged by op c1-1 at 1.100000 s, but op c1-2 invoked at 2.000000 s" in (
        first.summary
    )
    assert [text.split()[1] for text in first.operations] == ["c1-1", "c1-2"]


def test_a_read_concurrent_with_the_write_may_miss_it() -> None:
    s = good_scenario()
    s.detokenize(1.05, 1.2, {TOKEN_A: None})  # invoked before the acknowledgement
    assert s.check() == []


def test_a_read_going_back() -> None:
    s = Scenario()
    s.tokenize(1.0, 1.1, B, outcome=Outcome.FAIL)
    s.detokenize(2.0, 2.1, {TOKEN_B: B})
    s.detokenize(3.0, 3.1, {TOKEN_B: None})
    s.detokenize(4.0, 4.1, {TOKEN_B: B}, kind=OperationKind.CHECK)
    s.hold(B, "p1", "p2")
    violations = s.check()
    assert invariants(violations) == ["reads-never-go-back"]
    assert "returned by op c1-2" in violations[0].summary
    assert "op c1-3 invoked later at 3.000000 s" in violations[0].summary


def test_an_answer_given_before_w_replicas_held_it_durably() -> None:
    s = Scenario()
    op = s.tokenize(1.0, 1.1, A)
    op.copies_at_answer = (1,)
    s.detokenize(3.0, 3.1, {TOKEN_A: A}, kind=OperationKind.CHECK)
    s.hold(A, "p1", "p2")
    violations = s.check()
    assert invariants(violations) == ["answers-are-durable"]
    assert f"{TOKEN_A} on 1" in violations[0].summary


def test_an_acknowledged_write_on_fewer_than_w_replicas_at_the_end() -> None:
    s = good_scenario()
    s.stores["p2"].clear()
    s.stores["p3"].clear()
    violations = s.check()
    assert invariants(violations) == ["convergence"]
    assert "durable on 1 replica(s) at the end: p1" in violations[0].summary


def test_leftover_work_and_a_down_peer() -> None:
    s = good_scenario()
    base = s.check()[0:0]
    assert base == []
    replicas = (
        ReplicaState(
            peer="p1",
            up=False,
            mappings=s.stores["p1"],
            operations_in_flight=2,
            unsynced=True,
            held_effects=1,
        ),
        *(
            ReplicaState(
                peer=p,
                up=True,
                mappings=s.stores[p],
                operations_in_flight=0,
                unsynced=False,
                held_effects=0,
            )
            for p in ("p2", "p3")
        ),
    )
    violations = s.check(replicas=replicas)
    assert invariants(violations) == ["convergence"]
    assert violations[0].summary == (
        "peer p1 is down and has 2 operation(s) in flight and has unsynced writes and holds 1"
        " unsent output(s) at the end"
    )


def test_full_convergence_is_required_only_when_asked() -> None:
    s = good_scenario()  # B is on p1 and p2 only
    assert s.check() == []
    violations = s.check(require_full_convergence=True)
    assert invariants(violations) == ["convergence"]
    assert "missing on p3" in violations[0].summary


def test_core_exceptions_and_liveness() -> None:
    s = good_scenario()
    s._invoke(5.0, OperationKind.DETOKENIZE, tokens=(TOKEN_A,))  # never completes
    s.detokenize(6.0, 6.1, {TOKEN_A: None}, kind=OperationKind.CHECK, outcome=Outcome.FAIL)
    # the failed liveness read is a liveness violation; the earlier one did read TOKEN_A back
    error = CoreError(peer="p2", at_s=4.0, input="replica", error="AssertionError: x", location="f")
    violations = s.check(core_errors=(error,), quiesced=False)
    assert invariants(violations) == ["liveness", "no-core-exception"]
    summaries = [v.summary for v in violations]
    assert "op c1-5 never completed" in summaries
    assert any("did not quiesce" in text for text in summaries)
    assert any("liveness read c1-6 through p1 failed" in text for text in summaries)
    assert any("AssertionError: x escaped the replica core of p2" in text for text in summaries)


def test_a_violation_renders_its_operations_and_events() -> None:
    queries: list[ContextQuery] = []

    def context(query: ContextQuery) -> tuple[str, ...]:
        queries.append(query)
        return ("#7 2.000000 crash p2 lost_writes=1",)

    s = Scenario()
    s.tokenize(1.0, 1.1, A)
    s.detokenize(2.0, 2.1, {TOKEN_A: None})
    s.detokenize(3.0, 3.1, {TOKEN_A: A}, kind=OperationKind.CHECK)
    s.hold(A, "p1", "p2")
    (violation,) = s.check(context=context)
    assert queries[0].op_ids == ("c1-1", "c1-2")
    assert queries[0].tokens == (TOKEN_A,)
    assert queries[0].peers == PEERS
    assert queries[0].window_s == (1.0, 2.1)
    assert violation.render().splitlines() == [
        f"VIOLATION acknowledged-write-visible: {violation.summary}",
        "  operations:",
        "    op c1-1 tokenize acme via p1 attempt 1 [1.000000 -> 1.100000] ok [AAAAAAAA=alice]",
        "    op c1-2 detokenize acme via p1 attempt 1 [2.000000 -> 2.100000] ok [AAAAAAAA=-]",
        "  events:",
        "    #7 2.000000 crash p2 lost_writes=1",
    ]


def test_violations_of_one_invariant_are_capped() -> None:
    s = Scenario()
    for index in range(8):
        s.detokenize(float(index), index + 0.5, {TOKEN_A: A if index % 2 == 0 else None})
    violations = s.check()
    per_invariant = [v for v in violations if v.invariant == "reads-never-go-back"]
    assert len(per_invariant) == 4  # reads 2, 4, 6, 8 went back; fewer than the cap
    many = Scenario()
    ghost = Mapping(owner=OWNER, token="tok_" + "G" * 32, value="g", field="ssn", epoch=1)
    for index in range(9):
        many.detokenize(float(index), index + 0.5, {ghost.token: ghost})
    capped = [v.summary for v in many.check() if v.invariant == "no-uninserted-value"]
    assert len(capped) == 1  # one token: one violation, whatever the number of reads
