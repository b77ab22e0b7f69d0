"""The checker catches hand-made bad histories and final states, and passes a good one."""

from __future__ import annotations

from tokenvault.quorum.messages import EpochValue, Mapping
from tokenvault.sim.checker import CheckInput, ContextQuery, Violation, check
from tokenvault.sim.client import epoch_key
from tokenvault.sim.cluster import ReplicaState
from tokenvault.sim.history import History, Operation, OperationKind, Outcome
from tokenvault.sim.observation import Observation
from tokenvault.sim.peer import CoreError
from tokenvault.tokens import make_token

OWNER = "acme"
PEERS = ("p1", "p2", "p3")
TOKEN_A = make_token(epoch_key(OWNER, 1, ""), "ssn", "alice")  # real tokens: reads are checked
TOKEN_B = make_token(epoch_key(OWNER, 1, ""), "ssn", "bob")
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
    violations = [v for v in s.check() if v.invariant == "no-uninserted-value"]
    assert invariants(s.check()) == ["no-corrupt-value", "no-uninserted-value"]
    assert "'ghost'" in violations[0].summary
    assert violations[0].operations[0].startswith("op c1-5 detokenize")


def test_a_read_that_returns_a_value_its_token_was_not_made_from() -> None:
    """A replica's record with a flipped bit, had it reached a client (the summary names the
    token, never the value)."""
    s = good_scenario()
    flipped = Mapping(owner=OWNER, token=TOKEN_A, value="alicf", field="ssn", epoch=1)
    s.detokenize(4.0, 4.1, {TOKEN_A: flipped})
    violations = [v for v in s.check() if v.invariant == "no-corrupt-value"]
    assert len(violations) == 1 and "c1-5 returned token" in violations[0].summary
    assert "alicf" not in violations[0].summary


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
    assert any(
        "AssertionError: x raised by the replica core call of p2" in text for text in summaries
    )


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
        "    op c1-1 tokenize acme via p1 attempt 1 [1.000000 -> 1.100000] ok [7CDd80G9=alice]",
        "    op c1-2 detokenize acme via p1 attempt 1 [2.000000 -> 2.100000] ok [7CDd80G9=-]",
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


# -- epochs ------------------------------------------------------------------------------------

E2 = EpochValue(epoch=2, salt="aa" * 8, requested_by="c1-1", requested_at_s=1.0)
E2_OTHER = EpochValue(epoch=2, salt="bb" * 8, requested_by="c1-2", requested_at_s=1.0)
E3 = EpochValue(epoch=3, salt="cc" * 8, requested_by="c1-3", requested_at_s=2.0)


def _epoch_op(
    s: Scenario,
    start: float,
    end: float,
    kind: OperationKind,
    value: EpochValue | None,
    *,
    expected: int | None = None,
    rotated: bool = False,
    group: str = "",
    mappings: tuple[Mapping, ...] = (),
) -> Operation:
    op = s._invoke(start, kind)
    op.expected_epoch = expected
    op.group = group
    if value is None:
        return s.history.complete(op.op_id, at_s=end, outcome=Outcome.FAIL, reason="x")
    return s.history.complete(
        op.op_id,
        at_s=end,
        outcome=Outcome.OK,
        epoch_value=value,
        rotated=rotated,
        mappings=mappings,
        copies_at_answer=tuple(3 for _ in mappings),
    )


def _with_decided(
    s: Scenario, decided: dict[str, dict[tuple[str, int], EpochValue]]
) -> tuple[ReplicaState, ...]:
    return tuple(
        ReplicaState(
            peer=peer,
            up=True,
            mappings=held,
            operations_in_flight=0,
            unsynced=False,
            held_effects=0,
            decided=decided.get(peer, {}),
        )
        for peer, held in s.stores.items()
    )


def test_a_good_rotation_history_passes() -> None:
    s = Scenario()
    _epoch_op(s, 1.0, 1.5, OperationKind.ROTATE, E2, expected=1, rotated=True)  # c1-1
    _epoch_op(s, 1.0, 1.6, OperationKind.ROTATE, E2, expected=1)  # c1-2, lost the duel
    _epoch_op(s, 2.0, 2.1, OperationKind.EPOCH, E2)
    decided = {p: {(OWNER, 2): E2} for p in PEERS}
    assert s.check(replicas=_with_decided(s, decided)) == []


def test_two_values_decided_for_one_slot() -> None:
    s = Scenario()
    _epoch_op(s, 1.0, 1.5, OperationKind.ROTATE, E2, expected=1, rotated=True)
    _epoch_op(s, 1.0, 1.6, OperationKind.ROTATE, E2_OTHER, expected=1, rotated=True)
    decided = {"p1": {(OWNER, 2): E2}, "p2": {(OWNER, 2): E2_OTHER}}
    violations = s.check(replicas=_with_decided(s, decided))
    assert {"one-value-per-slot", "rotations-agree"} <= set(invariants(violations))
    text = next(v for v in violations if v.invariant == "one-value-per-slot").summary
    assert text.startswith(f"epoch 2 of {OWNER} has 2 values")


def test_a_decided_value_that_names_no_rotate() -> None:
    s = Scenario()
    _epoch_op(s, 2.0, 2.1, OperationKind.EPOCH, E2)  # c1-1 is an epoch read, not a rotate
    violations = s.check(replicas=_with_decided(s, {"p1": {(OWNER, 2): E2}}))
    assert invariants(violations) == ["values-were-proposed"]


def test_a_tokenize_after_a_rotation_answered_an_older_epoch() -> None:
    s = Scenario()
    _epoch_op(s, 1.0, 1.5, OperationKind.ROTATE, E3, expected=2, rotated=False)
    old = Mapping(owner=OWNER, token=TOKEN_A, value="alice", field="ssn", epoch=2)
    s.hold(old, "p1", "p2", "p3")
    tokenize = _epoch_op(s, 2.0, 2.1, OperationKind.TOKENIZE, E2, mappings=(old,))
    s.detokenize(3.0, 3.1, {TOKEN_A: old}, kind=OperationKind.CHECK)
    violations = [v for v in s.check() if v.invariant == "epochs-never-go-back"]
    assert len(violations) == 1
    assert f"op {tokenize.op_id} (tokenize)" in violations[0].summary
    assert "answered epoch 2" in violations[0].summary


def test_one_input_with_two_tokens() -> None:
    s = Scenario()
    one = Mapping(owner=OWNER, token=TOKEN_A, value="alice", field="ssn", epoch=2)
    two = Mapping(owner=OWNER, token=TOKEN_B, value="alice", field="ssn", epoch=2)
    s.hold(one, "p1", "p2", "p3")
    s.hold(two, "p1", "p2", "p3")
    s.tokenize(1.0, 1.1, one)
    s.tokenize(2.0, 2.1, two)
    violations = [v for v in s.check() if v.invariant == "same-input-same-token"]
    assert len(violations) == 1 and "has 2 tokens" in violations[0].summary


def test_rotations_that_disagree() -> None:
    s = Scenario()
    stolen = EpochValue(epoch=2, salt="aa" * 8, requested_by="someone", requested_at_s=1.0)
    _epoch_op(s, 1.0, 1.5, OperationKind.ROTATE, stolen, expected=1, rotated=True)
    _epoch_op(s, 2.0, 2.5, OperationKind.ROTATE, E3, expected=1, rotated=True)
    # A burst expecting epoch 3 whose answers differ, with no other rotate to explain it.
    e4 = EpochValue(epoch=4, salt="dd" * 8, requested_by="c1-3", requested_at_s=3.0)
    e5 = EpochValue(epoch=5, salt="ee" * 8, requested_by="c1-9", requested_at_s=3.0)
    _epoch_op(s, 3.0, 3.5, OperationKind.ROTATE, e4, expected=3, group="b1")
    _epoch_op(s, 3.0, 3.6, OperationKind.ROTATE, e5, expected=3, group="b1")
    summaries = [v.summary for v in s.check() if v.invariant == "rotations-agree"]
    assert any("a value it did not propose" in text for text in summaries)
    assert any("expected epoch 1 and answered rotated to epoch 3" in text for text in summaries)
    assert any(
        "burst b1 (expecting epoch 3) answered different epochs" in text for text in summaries
    )


def test_what_the_observer_saw_is_reported_with_its_operations() -> None:
    s = Scenario()
    rotate = _epoch_op(s, 1.0, 1.5, OperationKind.ROTATE, E2, expected=1, rotated=True)
    seen = Observation(
        invariant="promise-never-decreases",
        summary="p2 had promised ballot 2.c1-1 ...",
        at_s=1.2,
        peers=("p2",),
        op_ids=("c1-1", "c9-9/l1"),
    )
    decided = {p: {(OWNER, 2): E2} for p in PEERS}
    violations = s.check(
        replicas=_with_decided(s, decided),
        observations=(seen,),
        chosen_value_violations=("owner slot 2: ...",),
    )
    assert invariants(violations) == ["chosen-value-kept", "promise-never-decreases"]
    promise = next(v for v in violations if v.invariant == "promise-never-decreases")
    assert promise.summary == "at 1.200000 s: p2 had promised ballot 2.c1-1 ..."
    assert promise.operations == (rotate.describe(),)


def test_full_convergence_needs_one_root_one_epoch_no_hint_and_the_bound() -> None:
    s = good_scenario()
    s.hold(B, "p3")
    base = s.check(require_full_convergence=True)
    assert base == []
    replicas = tuple(
        ReplicaState(
            peer=peer,
            up=True,
            mappings=held,
            operations_in_flight=0,
            unsynced=False,
            held_effects=0,
            merkle_roots={OWNER: "root-a" if peer == "p1" else "root-b"},
            active_epochs={OWNER: E2 if peer == "p1" else E3},
            hints_pending=2 if peer == "p2" else 0,
        )
        for peer, held in s.stores.items()
    )
    violations = s.check(
        require_full_convergence=True,
        replicas=replicas,
        converged=False,
        convergence_bound_s=60.0,
        liveness_started_s=40.0,
    )
    summaries = [v.summary for v in violations if v.invariant == "convergence"]
    assert summaries[0].startswith("the cluster did not converge within 60 virtual s")
    assert "peer p2 still holds 2 hint(s) at the end" in summaries
    assert any("different merkle roots" in text for text in summaries)
    assert any("different decided epochs" in text for text in summaries)
