"""One simulated run, start to verdict: `run_simulation(config) -> SimResult`.

Phases:
1. The seed picks the fault mix, then the link faults and the fault schedule.
2. Faults and workload run together until `faults_end_s`; there the cluster heals (network
   healthy, crashed peers restarted, paused peers resumed). Clients finish their operations.
   The peers tick (heartbeats, hints, anti-entropy) all along, so the queue never drains: a
   probe every `PROBE_INTERVAL_S` watches for the end of each phase.
3. When the cluster has healed and every client is done, the liveness phase begins: it reads
   back, through a random peer, every token a tokenize acknowledged or a read returned, and
   waits for the cluster to converge (cluster.py `converged`: every owner's replicas identical,
   one decided epoch, no hint pending, nothing in flight). It has `convergence_bound_s` virtual
   seconds for both; the run stops as soon as they are done, or at the bound.
4. The checker judges the history, what the observer saw inside the peers and the peers' final
   state. The digest covers every event, the final state of every peer and the names of the
   violations found.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from dataclasses import dataclass

from tokenvault.sim.checker import CheckInput, ContextQuery, Violation, check
from tokenvault.sim.cluster import PeerFactory, SimCluster
from tokenvault.sim.config import SimConfig
from tokenvault.sim.engine import Engine, LogLine
from tokenvault.sim.faults import (
    FaultAction,
    FaultKind,
    PartitionKind,
    StrikeOn,
    choose_mix,
    link_faults,
    plan_faults,
)
from tokenvault.sim.history import History, OperationKind, Outcome
from tokenvault.sim.membership_faults import plan_membership
from tokenvault.sim.network import short_token
from tokenvault.sim.operator import Operator
from tokenvault.sim.peer import PeerState
from tokenvault.sim.workload import Workload

PROBE_INTERVAL_S = 0.25  # how often the runner looks whether a phase reached its goal
# Lines shown as context of a violation when they fall in its time window.
FAULT_WORDS = (
    "crash",
    "arm-crash",
    "aimed-crash",
    "restart",
    "wipe",
    "pause",
    "resume",
    "partition",
    "heal",
    "core-exception",
    "disk-full",
    "disk-freed",
    "sync-failed",
    "lose-wal-tail",
    "store-replaced",
    "spare-start",
    "retire",
    "ring-change",
    "ring-answer",
    "change ",
)
CONTEXT_OP_LINES_MAX = 25
CONTEXT_TOKEN_LINES_MAX = 12
CONTEXT_FAULT_LINES_MAX = 12
CONTEXT_SYNC_LINES_MAX = 12
CONTEXT_BEFORE_S = 5.0  # faults and token lines this long before a violation's first operation
CONTEXT_AFTER_S = 0.5  # and this long after its last one
CONTEXT_LINE_CHARS_MAX = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class SimStats:
    operations: int  # client operations asked for (each may take several attempts)
    attempts: int  # operations of the history, liveness reads included
    ok: int
    failed: int
    indeterminate: int
    events: int
    virtual_s: float
    messages_sent: int
    messages_delivered: int
    messages_lost: int
    messages_duplicated: int
    messages_reordered: int
    messages_cut: int
    cut_halves: int
    cut_isolate: int
    cut_one_way: int
    cut_long_isolate: int
    partitions: int
    long_isolations: int  # partitions isolating one peer for LONG_ISOLATION_S
    longest_partition_s: float
    crashes: int
    restarts: int
    lost_writes: int
    dropped_outputs: int  # held Effects (unsent answers) a crash threw away
    crashes_on_staged_write: int  # aimed crashes that struck by kind
    crashes_during_write: int
    crashes_during_repair: int
    hints_lost_in_flight: int  # hint deliveries in flight when their peer crashed
    wipes: int  # crashes that lost the whole store (applied, not skipped)
    stores_recovered: int  # wiped peers that recovered and serve again
    pauses: int
    deferred_inputs: int
    syncs: int
    syncs_failed: int  # syncs that failed on a full disk
    stores_replaced: int  # restarts with an empty store after a lost write-ahead log tail
    refused: int
    reset: int
    read_repairs_blocking: int
    read_repairs_background: int
    rotates: int  # rotate attempts
    rotated: int  # rotates answered rotated
    bursts: int  # bursts of concurrent rotates
    epoch_reads: int
    epochs_decided: int  # (owner, slot) decided anywhere
    paxos_preempted: int
    tokenize_fenced: int  # fenced tokenize writes that learned the epoch and tried again
    hints_stored: int
    hints_delivered: int
    ae_passes_repaired: int
    ae_repairs: int  # anti-entropy pushes that stored something
    epochs_learned_by_ae: int
    converged_after_s: float  # from the start of the liveness phase; -1 when not reached
    liveness_started_s: float  # virtual time the clients were done (after healing); -1: never
    converged_since_heal_s: float  # from healing to the first probe that saw it converged
    bit_flips: int = 0  # bits flipped in stored records (faults.py)
    records_found_corrupt: int = 0  # storage_corrupt events: a held record failed verification
    records_repaired: int = 0  # corrupt records replaced by a mapping that verifies
    ring_changes: int = 0  # membership changes drawn (membership_faults.py)
    ring_changes_done: int = 0  # answered changed or already
    ring_version: int = 1  # the highest ring version any peer learned
    ring_changes_over_pending: int = 0  # versions that replaced a member mid-change (or aborted)
    spares_started: int = 0
    peers_retired: int = 0  # replaced dead: killed, disk wiped, never restarted
    peers_not_serving: int = 0  # judged peers still recovering at the end


@dataclass(frozen=True, slots=True, kw_only=True)
class SimResult:
    config: SimConfig
    digest: str
    violations: tuple[Violation, ...]
    stats: SimStats
    mix: str
    log: tuple[str, ...] = ()  # every event line, when asked for (keep_log)
    history: History | None = None  # when asked for (keep_log)
    cluster: SimCluster | None = None  # when asked for (keep_log)
    changes: tuple[str, ...] = ()  # what each membership change came to (operator.py)

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def passed(self) -> bool:
        return not self.violations

    def replay_command(self) -> str:
        return self.config.replay_command()


def run_simulation(
    config: SimConfig, *, keep_log: bool = False, peer_factory: PeerFactory | None = None
) -> SimResult:
    engine = Engine(config.seed)
    mix = choose_mix(config.seed)
    engine.record(f"mix {mix.describe()}")
    cluster = SimCluster(
        config=config,
        engine=engine,
        mix=mix,
        links=link_faults(config.seed, mix, config.peer_ids),
        peer_factory=peer_factory,
    )
    schedule = plan_faults(config.seed, mix, config.peer_ids, config.faults_end_s)
    for action in schedule:
        engine.at(action.at_s, functools.partial(cluster.apply, action))
    engine.at(config.faults_end_s, cluster.heal)
    operator = Operator(
        config=config,
        engine=engine,
        cluster=cluster,
        actions=plan_membership(config.seed, config.membership_changes, config.faults_end_s),
    )
    operator.start()
    history = History()
    workload = Workload(
        config=config,
        engine=engine,
        history=history,
        gateway=cluster,
        client_peers=cluster.client_peers if config.membership_changes else None,
    )
    workload.start()
    return finish_run(
        config=config,
        engine=engine,
        cluster=cluster,
        history=history,
        workload=workload,
        mix=mix.describe(),
        schedule=schedule,
        keep_log=keep_log,
        operator=operator,
    )


class _Phase(enum.Enum):
    WORKLOAD = "workload"
    LIVENESS = "liveness"
    DONE = "done"


class Phases:
    """The probe that moves a run from its workload to its liveness phase, and ends it once the
    liveness reads are done and the cluster converged (or the bound is reached)."""

    def __init__(
        self, *, config: SimConfig, engine: Engine, cluster: SimCluster, workload: Workload
    ) -> None:
        self._config = config
        self._engine = engine
        self._cluster = cluster
        self._workload = workload
        self.phase = _Phase.WORKLOAD
        self.liveness_started_s: float | None = None
        self.converged_after_s: float | None = None
        self.converged_at_s: float | None = None  # first probe after healing that saw it
        self._checks_started = False

    def start(self) -> None:
        self._engine.after(PROBE_INTERVAL_S, self._probe)

    @property
    def clients_done(self) -> bool:
        return self.phase is not _Phase.WORKLOAD

    def _probe(self) -> None:
        engine, cluster, workload = self._engine, self._cluster, self._workload
        if self.converged_at_s is None and cluster.healed and self._settled():
            self.converged_at_s = engine.now_s
        if self.phase is _Phase.WORKLOAD and cluster.healed and workload.finished():
            self.phase = _Phase.LIVENESS
            now = self.liveness_started_s = engine.now_s
            engine.record("liveness phase")
            engine.at(now + self._config.convergence_bound_s, self._bound_reached)
        if self.phase is _Phase.LIVENESS and not self._checks_started:
            # The liveness reads go through random peers once every peer serves: a peer still
            # recovering a lost store rightly refuses clients (a real client tries another
            # peer), and a recovery that never ends fails the convergence bound instead.
            if all(p.core.state == "serving" for p in cluster.judged()):
                self._checks_started = True
                engine.record("liveness reads")
                workload.start_checks(cluster.serving_members())
        elif self.phase is _Phase.LIVENESS and workload.checks_done() and self._settled():
            assert self.liveness_started_s is not None
            self.converged_after_s = engine.now_s - self.liveness_started_s
            engine.record(f"converged after {self.converged_after_s:.6f} s")
            self.phase = _Phase.DONE
            engine.stop()
            return
        engine.after(PROBE_INTERVAL_S, self._probe)

    def _settled(self) -> bool:
        if self._config.require_full_convergence:
            return self._cluster.converged()
        return self._cluster.quiet()

    def _bound_reached(self) -> None:
        if self.phase is _Phase.LIVENESS:
            self._engine.record("convergence bound reached")
            self.phase = _Phase.DONE
            self._engine.stop()


def finish_run(
    *,
    config: SimConfig,
    engine: Engine,
    cluster: SimCluster,
    history: History,
    workload: Workload,
    mix: str,
    schedule: tuple[FaultAction, ...],
    keep_log: bool,
    operator: Operator | None = None,
) -> SimResult:
    """Run the phases, then judge the run."""
    phases = Phases(config=config, engine=engine, cluster=cluster, workload=workload)
    phases.start()
    engine.run(until_s=config.run_s_max, events_max=config.events_max)
    replicas = cluster.snapshot()
    observer = cluster.observer
    ring_log = cluster.ring_log
    violations = check(
        CheckInput(
            history=history,
            replicas=replicas,
            preference_lists={o: cluster.preference_list(o) for o in config.owner_ids},
            placed_on={o: cluster.placed_on(o) for o in config.owner_ids},
            ring_observations=(
                *ring_log.observations,
                *cluster.transfer_log.observations,
                *ring_log.final_observations(engine.now_s),
            ),
            require_finish=config.require_finish,
            final_ring=cluster.members(),
            ring_drained=cluster.ring().drained,
            ring_learned={
                p.peer_id: ring_log.learned_version(p.peer_id) for p in cluster.running()
            },
            write_quorum=config.write_quorum,
            core_errors=tuple(cluster.core_errors()),
            quiesced=phases.clients_done,
            require_full_convergence=config.require_full_convergence,
            context=functools.partial(_context, engine),
            observations=tuple(observer.observations),
            write_attempts=tuple(observer.write_attempts),
            decided_over_run=tuple(observer.decided_values()),
            chosen_value_violations=tuple(observer.chosen_value_violations()),
            converged=phases.converged_after_s is not None,
            convergence_bound_s=config.convergence_bound_s,
            liveness_started_s=phases.liveness_started_s,
        )
    )
    for replica in replicas:
        state = "\n".join(
            f"{owner} {token} {m.value} {m.field} {m.epoch}"
            for (owner, token), m in sorted(replica.mappings.items())
        )
        fingerprint = hashlib.sha256(state.encode()).hexdigest()[:16]
        epochs = ",".join(
            f"{owner}:{value.epoch}" for owner, value in sorted(replica.active_epochs.items())
        )
        engine.record(
            f"final {replica.peer} mappings={len(replica.mappings)} sha={fingerprint}"
            f" epochs={epochs or '-'} hints={replica.hints_pending}"
        )
    engine.record(
        f"verdict violations={len(violations)} "
        + ",".join(sorted({v.invariant for v in violations}))
    )
    return SimResult(
        config=config,
        digest=engine.digest(),
        violations=tuple(violations),
        stats=_stats(config, engine, cluster, history, schedule, phases, operator),
        mix=mix,
        log=tuple(line.render() for line in engine.log()) if keep_log else (),
        history=history if keep_log else None,
        cluster=cluster if keep_log else None,
        changes=() if operator is None else tuple(r.describe() for r in operator.records),
    )


def _context(engine: Engine, query: ContextQuery) -> tuple[str, ...]:
    """The log lines that show a violation: its operations' lines and its peers' syncs in its
    window (and a little after), its tokens' lines and the faults from a while before."""
    start_s, end_s = query.window_s
    near = (start_s, end_s + CONTEXT_AFTER_S)
    around = (max(0.0, start_s - CONTEXT_BEFORE_S), end_s + CONTEXT_AFTER_S)
    lines: dict[int, LogLine] = {}
    op_needles = [f"op={op_id} " for op_id in query.op_ids]
    for line in engine.lines_mentioning(op_needles, window_s=near, lines_max=CONTEXT_OP_LINES_MAX):
        lines[line.index] = line
    token_needles = [short_token(token) for token in query.tokens]
    for line in engine.lines_mentioning(
        token_needles, window_s=around, lines_max=CONTEXT_TOKEN_LINES_MAX
    ):
        lines.setdefault(line.index, line)
    for line in engine.lines_starting(
        FAULT_WORDS, window_s=around, lines_max=CONTEXT_FAULT_LINES_MAX
    ):
        lines.setdefault(line.index, line)
    syncs = tuple(f"synced {peer} " for peer in query.peers)
    for line in engine.lines_starting(syncs, window_s=near, lines_max=CONTEXT_SYNC_LINES_MAX):
        lines.setdefault(line.index, line)
    return tuple(_clip(line.render()) for _, line in sorted(lines.items()))


def _clip(text: str) -> str:
    if len(text) <= CONTEXT_LINE_CHARS_MAX:
        return text
    return text[: CONTEXT_LINE_CHARS_MAX - 3] + "..."


def _stats(
    config: SimConfig,
    engine: Engine,
    cluster: SimCluster,
    history: History,
    schedule: tuple[FaultAction, ...],
    phases: Phases,
    operator: Operator | None = None,
) -> SimStats:
    net = cluster.network.stats
    peers = [peer.stats for peer in cluster.peers.values()]

    def events(name: str) -> int:
        return sum(p.core_events.get(name, 0) for p in cluster.peers.values())

    def strikes(trigger: StrikeOn) -> int:
        return sum(p.strikes.get(trigger.value, 0) for p in peers)

    partitions = [a for a in schedule if a.kind is FaultKind.PARTITION]
    ends = {id(a.partition): a.at_s for a in schedule if a.kind is FaultKind.PARTITION_END}
    lengths = [ends.get(id(a.partition), a.at_s) - a.at_s for a in partitions]
    ops = list(history)
    rotates = [op for op in ops if op.kind is OperationKind.ROTATE]
    return SimStats(
        operations=config.operation_count,
        attempts=len(history),
        ok=history.count(Outcome.OK),
        failed=history.count(Outcome.FAIL),
        indeterminate=history.count(Outcome.INDETERMINATE),
        events=engine.events_run,
        virtual_s=engine.now_s,
        messages_sent=net.sent,
        messages_delivered=net.delivered,
        messages_lost=net.lost,
        messages_duplicated=net.duplicated,
        messages_reordered=net.reordered,
        messages_cut=net.cut,
        cut_halves=net.cut_halves,
        cut_isolate=net.cut_isolate,
        cut_one_way=net.cut_one_way,
        cut_long_isolate=net.cut_long_isolate,
        partitions=len(partitions),
        long_isolations=sum(
            1
            for a in partitions
            if a.partition is not None and a.partition.kind is PartitionKind.LONG_ISOLATE
        ),
        longest_partition_s=max(lengths, default=0.0),
        crashes=sum(p.crashes for p in peers),
        restarts=sum(p.restarts for p in peers),
        lost_writes=sum(p.lost_writes for p in peers),
        dropped_outputs=sum(p.dropped_held for p in peers),
        crashes_on_staged_write=strikes(StrikeOn.STAGED_WRITE),
        crashes_during_write=strikes(StrikeOn.CLIENT_WRITE),
        crashes_during_repair=strikes(StrikeOn.REPAIR),
        hints_lost_in_flight=sum(p.hints_lost_in_flight for p in peers),
        wipes=sum(p.wipes for p in peers),
        stores_recovered=events("store_recovered"),
        pauses=sum(p.pauses for p in peers),
        deferred_inputs=sum(p.deferred_inputs for p in peers),
        syncs=sum(p.syncs for p in peers),
        syncs_failed=sum(p.syncs_failed for p in peers),
        stores_replaced=sum(p.stores_replaced for p in peers),
        refused=sum(p.refused for p in peers),
        reset=sum(p.reset for p in peers),
        read_repairs_blocking=events("read_repair_blocking"),
        read_repairs_background=events("read_repair_background"),
        rotates=len(rotates),
        rotated=sum(1 for op in rotates if op.outcome is Outcome.OK and op.rotated),
        bursts=len({op.group for op in rotates if op.group}),
        epoch_reads=sum(1 for op in ops if op.kind is OperationKind.EPOCH),
        epochs_decided=len({(o, s) for o, s, _, _ in cluster.observer.decided_values()}),
        paxos_preempted=events("paxos_preempted"),
        tokenize_fenced=sum(p.tokenize_relearned for p in peers),
        hints_stored=events("hint_stored"),
        hints_delivered=events("hint_delivered"),
        ae_passes_repaired=events("anti_entropy_pass"),
        ae_repairs=events("anti_entropy_repaired"),
        epochs_learned_by_ae=sum(
            p.core.anti_entropy.statistics.epochs_learned for p in cluster.peers.values()
        ),
        converged_after_s=-1.0 if phases.converged_after_s is None else phases.converged_after_s,
        liveness_started_s=-1.0 if phases.liveness_started_s is None else phases.liveness_started_s,
        converged_since_heal_s=-1.0
        if phases.converged_at_s is None
        else phases.converged_at_s - config.faults_end_s,
        bit_flips=sum(p.bit_flips for p in peers),
        records_found_corrupt=events("storage_corrupt"),
        records_repaired=events("mapping_repaired"),
        ring_changes=0 if operator is None else len(operator.records),
        ring_changes_done=0
        if operator is None
        else sum(1 for r in operator.records if r.outcome in ("changed", "already")),
        ring_version=cluster.members().version,
        ring_changes_over_pending=cluster.ring_log.changes_over_pending(),
        spares_started=len(cluster.peers) - config.peer_count,
        peers_retired=len(cluster.retired),
        peers_not_serving=sum(
            1
            for p in cluster.judged()
            if p.state is not PeerState.DOWN and p.core.state != "serving"
        ),
    )
