"""The operator of a simulated cluster: applies the membership changes drawn from the seed
(membership_faults.py) as a person at the CLI would, and keeps what each one came to.

Rules:
- A join starts the next spare peer with a join address: the peer asks to be added by itself
  (RingJoin, every heartbeat, until it is a member); the operator asks nothing.
- A remove or replace is a `ChangeMembership` sent to a voter of the highest ring the cluster
  learned (chosen from the run's generator `operator`); the member removed or replaced is
  picked by the change's draw among the active members. A replace starts its spare first
  (without a join address: the change names it).
- `replace-dead` kills the replaced member and wipes its disk first, for good (`retire`), only
  when that loses nothing beyond the model: no member dead for good before it is still a member
  (one machine lost at a time) and no other peer lost copies it has not got back; else the
  member is replaced alive (`replace-dead-as-live`). A change may be pending: the replace then
  applies over it (docs/membership.md §4).
- An answer that is not final (refused `change_pending`, `timeout`, `contended`, a peer down
  or reset, or no answer within ANSWER_TIMEOUT_S) is asked again after RETRY_S through another
  voter, until the fault window ends; then the change is given up (`abandoned`), except the
  replace of a member retired for good: a dead machine is replaced, whatever it takes (a change
  can neither finish nor drain while a member it waits for is dead), so it is asked until
  decided. Changes are indeterminate like any ring change: the ring records (ring_log.py) say
  what was decided, not the answers.
- Every step is a log line (`ring-change`, `ring-answer`), so it is in the digest.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from tokenvault.quorum.client_operations import ChangeMembership
from tokenvault.quorum.effects import RingDone, RingOutcome
from tokenvault.ring.membership import ACTIVE, AddMember, RemoveMember, ReplaceMember
from tokenvault.sim.client import Refused
from tokenvault.sim.cluster import SimCluster, address_of
from tokenvault.sim.config import SimConfig
from tokenvault.sim.engine import Engine
from tokenvault.sim.membership_faults import ChangeKind, MembershipAction
from tokenvault.sim.peer import AdminAnswer, PeerState

RETRY_S = 1.0  # a change not answered for good is asked again after this
# The operator's own deadline for an answer (the CLI's): beyond the register's 5 s operation
# timeout, so it is reached only when an answer is lost (see docs/simulation.md, bugs found).
ANSWER_TIMEOUT_S = 10.0
# Not final: another change to finish first, or a peer that cannot propose yet (recovering,
# overloaded, or behind the ring: not_a_member at the version it learned).
RETRIED_REASONS = frozenset({"change_pending", "recovering", "overloaded", "not_a_member"})


@dataclass(slots=True, kw_only=True)
class ChangeRecord:
    """One membership change of the run and what it came to."""

    index: int
    kind: ChangeKind
    at_s: float
    target: str = ""  # the member removed or replaced
    spare: str = ""  # the peer joining or replacing
    attempts: int = 0
    outcome: str = "pending"  # changed, already, refused:<reason>, abandoned, asked-by-itself
    version: int = 0  # the ring version its answer named
    waiting: str = ""  # the op id of the attempt whose answer it waits for

    def describe(self) -> str:
        who = " ".join(x for x in (self.target, self.spare) if x)
        return f"change {self.index} {self.kind.value} {who} -> {self.outcome} v{self.version}"


class Operator:
    def __init__(
        self,
        *,
        config: SimConfig,
        engine: Engine,
        cluster: SimCluster,
        actions: tuple[MembershipAction, ...],
    ) -> None:
        self._config = config
        self._engine = engine
        self._cluster = cluster
        self._actions = actions
        self._spares = list(config.spare_ids)
        self._rng = engine.rng("operator")
        self.records: list[ChangeRecord] = []

    def start(self) -> None:
        for index, action in enumerate(self._actions):
            self._engine.at(action.at_s, functools.partial(self._apply, index, action))

    # -- applying a change ---------------------------------------------------------------------

    def _apply(self, index: int, action: MembershipAction) -> None:
        record = ChangeRecord(index=index, kind=action.kind, at_s=self._engine.now_s)
        self.records.append(record)
        if action.kind is not ChangeKind.REMOVE:
            if not self._spares:
                self._note(record, "skipped: no spare peer left")
                return
            record.spare = self._spares.pop(0)
        if action.kind is ChangeKind.JOIN:
            self._cluster.start_spare(record.spare, join=True)
            self._note(record, "asked-by-itself")
            return
        active = [m.id for m in self._cluster.members().members if m.state == ACTIVE]
        running = [p.peer_id for p in self._cluster.running() if p.peer_id in active]
        if not running:
            self._note(record, "skipped: no active member")
            return
        chooser = random.Random(action.draw)
        record.target = chooser.choice(sorted(running))
        if action.kind is ChangeKind.REPLACE_DEAD:
            self._kill_for_good(record)
        if action.kind is not ChangeKind.REMOVE:
            self._cluster.start_spare(record.spare, join=False)
        self._ask(record)

    def _kill_for_good(self, record: ChangeRecord) -> None:
        cluster = self._cluster
        peer = cluster.peers[record.target]
        members = cluster.members()
        if (
            not any(members.member(retired) for retired in sorted(cluster.retired))
            and peer.state is not PeerState.DOWN
            and not cluster.copy_lost_elsewhere(peer)
        ):
            cluster.retire(record.target)
        else:
            self._engine.record(f"replace-dead-as-live {record.target}")

    def _change(self, record: ChangeRecord) -> AddMember | RemoveMember | ReplaceMember:
        if record.kind is ChangeKind.REMOVE:
            return RemoveMember(id=record.target)
        return ReplaceMember(old=record.target, new=record.spare, address=address_of(record.spare))

    def _ask(self, record: ChangeRecord) -> None:
        dead = record.kind is ChangeKind.REPLACE_DEAD and record.target in self._cluster.retired
        if self._engine.now_s >= self._config.faults_end_s and not dead:
            self._note(record, "abandoned")
            return
        voters = [
            p
            for p in self._cluster.members().voters
            if p in self._cluster.peers and p not in self._cluster.retired
        ]
        record.attempts += 1
        op_id = record.waiting = f"ring-{record.index}-{record.attempts}"
        via = self._rng.choice(voters)
        operation = ChangeMembership(op_id=op_id, change=self._change(record))
        self._engine.record(f"ring-change op={op_id} {record.kind.value} via {via}")
        sink = functools.partial(self._on_answer, record)
        self._engine.after(
            self._config.client_latency_s,
            lambda: self._cluster.peers[via].admin_request(operation, sink),
        )
        self._engine.after(ANSWER_TIMEOUT_S, functools.partial(self._on_timeout, record, op_id))

    def _on_timeout(self, record: ChangeRecord, op_id: str) -> None:
        if record.waiting == op_id:
            record.waiting = ""
            self._engine.record(f"ring-answer op={op_id} no-answer")
            self._ask(record)

    def _on_answer(self, record: ChangeRecord, answer: AdminAnswer) -> None:
        if record.waiting != answer.op_id:
            self._engine.record(f"ring-answer op={answer.op_id} late")
            return
        record.waiting = ""
        if not isinstance(answer, RingDone):
            kind = "refused" if isinstance(answer, Refused) else "reset"
            self._engine.record(f"ring-answer op={answer.op_id} {kind}")
            self._engine.after(RETRY_S, functools.partial(self._ask, record))
            return
        self._engine.record(
            f"ring-answer op={answer.op_id} {answer.outcome.value} {answer.reason}"
            f" v{answer.membership.version}".rstrip()
        )
        record.version = answer.membership.version
        final = answer.outcome in (RingOutcome.CHANGED, RingOutcome.ALREADY) or (
            answer.outcome is RingOutcome.REFUSED and answer.reason not in RETRIED_REASONS
        )
        if final:
            outcome = answer.outcome.value
            self._note(record, f"{outcome}:{answer.reason}" if answer.reason else outcome)
        else:
            self._engine.after(RETRY_S, functools.partial(self._ask, record))

    def _note(self, record: ChangeRecord, outcome: str) -> None:
        record.outcome = outcome
        self._engine.record(record.describe())
