"""Hand-built runs: the same peers, network, cores, phases and checker as a seeded run, with the
requests and faults a test chooses instead of drawn ones.

A scenario starts from a healthy cluster (links with the base delay only, fsync of
`SCENARIO_FSYNC_S`, no random fault and no random client). The test schedules client requests
(`request`), faults (`crash`, `restart`, `partition`, ...), membership changes (`membership`:
applied by the operator as in a seeded run; the config's `membership_changes` sets how many
spare peers exist), drops of chosen messages (`drop`) and
actions triggered by a log line (`when`: "crash p4 once p2's promise reaches it"), then calls
`run(heal_at_s)`: the cluster heals there, the scripted requests finish, and the liveness phase
reads back every acknowledged token and waits for full convergence, exactly as in a seeded run.
The result carries the history, the cluster, the log and the checker's violations.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable

from tokenvault.quorum.messages import Envelope
from tokenvault.sim.client import ClientAnswer, ClientRequest, RequestKind
from tokenvault.sim.cluster import PeerFactory, SimCluster
from tokenvault.sim.config import SimConfig
from tokenvault.sim.engine import Action, Engine
from tokenvault.sim.faults import HEALTHY_LINK, FaultMix, Partition, PartitionKind
from tokenvault.sim.history import History, Operation, OperationKind
from tokenvault.sim.membership_faults import MembershipAction
from tokenvault.sim.operator import Operator
from tokenvault.sim.runner import SimResult, finish_run
from tokenvault.sim.workload import Workload, record_answer, record_timeout

SCENARIO_FSYNC_S = (0.001, 0.001)
SCRIPT_CLIENT = "script"

_KINDS = {
    RequestKind.TOKENIZE: OperationKind.TOKENIZE,
    RequestKind.DETOKENIZE: OperationKind.DETOKENIZE,
    RequestKind.EPOCH: OperationKind.EPOCH,
    RequestKind.ROTATE: OperationKind.ROTATE,
}


class _ScriptedWorkload(Workload):
    """No random client: done when every scripted request is."""

    def __init__(self, *, scenario: Scenario) -> None:
        config = dataclasses.replace(scenario.config, operation_count=0)
        super().__init__(
            config=config,
            engine=scenario.engine,
            history=scenario.history,
            gateway=scenario.cluster,
        )
        self._scenario = scenario

    def finished(self) -> bool:
        return super().finished() and self._scenario.requests_done()


class Scenario:
    def __init__(
        self,
        config: SimConfig,
        *,
        peer_factory: PeerFactory | None = None,
        fsync_s: tuple[float, float] = SCENARIO_FSYNC_S,
    ) -> None:
        self.config = config
        self.engine = Engine(config.seed)
        self.mix = FaultMix(
            link=HEALTHY_LINK,
            bad_link_share=0.0,
            fsync_s=fsync_s,
            crash_count=0,
            aimed_crash_share=0.0,
            pause_count=0,
            partition_count=0,
            partition_kinds=(),
        )
        self.engine.record("scenario")
        links = {(a, b): HEALTHY_LINK for a in config.peer_ids for b in config.peer_ids if a != b}
        self.cluster = SimCluster(
            config=config,
            engine=self.engine,
            mix=self.mix,
            links=links,
            peer_factory=peer_factory,
        )
        self.history = History()
        self._counter = itertools.count(1)
        self._pending: set[str] = set()
        self.operator: Operator | None = None

    # -- what the test schedules ---------------------------------------------------------------

    def preference_list(self, owner: str) -> tuple[str, ...]:
        return self.cluster.preference_list(owner)

    def at(self, at_s: float, action: Action) -> None:
        self.engine.at(at_s, action)

    def request(
        self,
        at_s: float,
        peer: str,
        kind: RequestKind,
        owner: str,
        *,
        items: tuple[tuple[str, str], ...] = (),
        tokens: tuple[str, ...] = (),
        expected_epoch: int | None = None,
        group: str = "",
        op_id: str | None = None,
    ) -> str:
        """A client request through peer at at_s (one attempt, no retry); returns its op id."""
        op = op_id or f"s-{next(self._counter)}"
        request = ClientRequest(
            op_id=op,
            owner=owner,
            kind=kind,
            items=items,
            tokens=tokens,
            expected_epoch=expected_epoch,
        )
        self._pending.add(op)
        self.engine.at(at_s, functools.partial(self._invoke, peer, request, group))
        return op

    def membership(self, *actions: MembershipAction) -> Operator:
        """Membership changes, each at its moment, by the operator (operator.py)."""
        assert self.operator is None, "one set of membership changes per scenario"
        self.operator = Operator(
            config=self.config, engine=self.engine, cluster=self.cluster, actions=actions
        )
        self.operator.start()
        return self.operator

    def pause(self, at_s: float, peer: str) -> None:
        self.engine.at(at_s, self.cluster.peers[peer].pause)

    def resume(self, at_s: float, peer: str) -> None:
        self.engine.at(at_s, self.cluster.peers[peer].resume)

    def crash(self, at_s: float, peer: str) -> None:
        self.engine.at(at_s, self.cluster.peers[peer].crash)

    def wipe(self, at_s: float, peer: str) -> None:
        """The peer crashes and loses its whole store (a replaced disk); restart it later."""
        self.engine.at(at_s, self.cluster.peers[peer].wipe)

    def restart(self, at_s: float, peer: str) -> None:
        self.engine.at(at_s, self.cluster.peers[peer].restart)

    def partition(self, at_s: float, side: tuple[str, ...], *, one_way: bool = False) -> None:
        """Cut side from the other peers (both ways, or only side's messages out)."""
        everyone = (*self.config.peer_ids, *self.config.spare_ids)
        others = tuple(p for p in everyone if p not in side)
        blocked = {(a, b) for a in side for b in others}
        if not one_way:
            blocked |= {(b, a) for a, b in blocked}
        kind = PartitionKind.ONE_WAY if one_way else PartitionKind.HALVES
        arrow = "->" if one_way else "|"
        partition = Partition(
            kind=kind,
            blocked=tuple(sorted(blocked)),
            label=",".join(side) + arrow + ",".join(others),
        )
        self.engine.at(at_s, functools.partial(self.cluster.network.start_partition, partition))

    def end_partition(self, at_s: float) -> None:
        self.engine.at(at_s, self.cluster.network.end_partition)

    def drop(self, predicate: Callable[[Envelope], bool], label: str) -> None:
        """Lose every message predicate picks, until healing."""
        self.cluster.network.drop_when(predicate, label)

    def when(self, needle: str, action: Action) -> None:
        """Run action once, right after the first log line that contains needle."""
        self.engine.watch(lambda text: needle in text, action)

    # -- running -------------------------------------------------------------------------------

    def requests_done(self) -> bool:
        return not self._pending

    def run(self, heal_at_s: float) -> SimResult:
        """Heal at heal_at_s, then the liveness phase and the checker, as in a seeded run."""
        self.engine.at(heal_at_s, self.cluster.heal)
        workload = _ScriptedWorkload(scenario=self)
        return finish_run(
            config=self.config,
            engine=self.engine,
            cluster=self.cluster,
            history=self.history,
            workload=workload,
            mix="scenario",
            schedule=(),
            keep_log=True,
            operator=self.operator,
        )

    def _invoke(self, peer: str, request: ClientRequest, group: str) -> None:
        self.history.invoke(
            Operation(
                op_id=request.op_id,
                client=SCRIPT_CLIENT,
                kind=_KINDS[request.kind],
                owner=request.owner,
                peer=peer,
                attempt=1,
                invoke_s=self.engine.now_s,
                items=request.items,
                tokens=request.tokens,
                expected_epoch=request.expected_epoch,
                group=group,
            )
        )
        self.engine.record(
            f"invoke {SCRIPT_CLIENT} {request.kind.value} op={request.op_id} via {peer}"
        )
        self.cluster.submit(peer, request, functools.partial(self._on_answer, request.op_id))
        self.engine.after(
            self.config.client_timeout_s, functools.partial(self._on_timeout, request.op_id)
        )

    def _on_answer(self, op_id: str, answer: ClientAnswer) -> None:
        if record_answer(self.history, self.cluster, self.engine, SCRIPT_CLIENT, op_id, answer):
            self._pending.discard(op_id)

    def _on_timeout(self, op_id: str) -> None:
        if record_timeout(self.history, self.engine, SCRIPT_CLIENT, op_id):
            self._pending.discard(op_id)
