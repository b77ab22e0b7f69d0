"""One simulated run, start to verdict: `run_simulation(config) -> SimResult`.

Phases:
1. The seed picks the fault mix, then the link faults and the fault schedule.
2. Faults and workload run together until `faults_end_s`; there the cluster heals (network
   healthy, crashed peers restarted, paused peers resumed). Clients finish their operations.
3. When the queue has drained, the liveness phase reads back, through a random (healthy) peer,
   every token a tokenize acknowledged or a read returned, and runs until the queue drains again.
4. The checker judges the history and the peers' final state. The digest covers every event,
   the final state of every peer and the names of the violations found.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from tokenvault.sim.checker import CheckInput, ContextQuery, Violation, check
from tokenvault.sim.cluster import PeerFactory, SimCluster
from tokenvault.sim.config import SimConfig
from tokenvault.sim.engine import Engine, LogLine
from tokenvault.sim.faults import FaultAction, FaultKind, choose_mix, link_faults, plan_faults
from tokenvault.sim.history import History, Outcome
from tokenvault.sim.network import short_token
from tokenvault.sim.workload import Workload

# Lines shown as context of a violation when they fall in its time window.
FAULT_WORDS = (
    "crash",
    "arm-crash",
    "aimed-crash",
    "restart",
    "pause",
    "resume",
    "partition",
    "heal",
    "core-exception",
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
    partitions: int
    crashes: int
    restarts: int
    lost_writes: int
    dropped_outputs: int  # held Effects (unsent answers) a crash threw away
    pauses: int
    deferred_inputs: int
    syncs: int
    refused: int
    reset: int
    read_repairs_blocking: int
    read_repairs_background: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SimResult:
    config: SimConfig
    digest: str
    violations: tuple[Violation, ...]
    stats: SimStats
    mix: str
    log: tuple[str, ...] = ()  # every event line, when asked for (keep_log)

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
    history = History()
    workload = Workload(config=config, engine=engine, history=history, gateway=cluster)
    workload.start()

    first = engine.run(until_s=config.run_s_max, events_max=config.events_max)
    quiesced = first.drained and workload.finished()
    if quiesced:
        engine.record("liveness phase")
        workload.start_checks()
        second = engine.run(
            until_s=config.run_s_max, events_max=config.events_max - first.events_run
        )
        quiesced = second.drained
    replicas = cluster.snapshot()
    violations = check(
        CheckInput(
            history=history,
            replicas=replicas,
            preference_lists={o: cluster.preference_list(o) for o in config.owner_ids},
            write_quorum=config.write_quorum,
            core_errors=tuple(cluster.core_errors()),
            quiesced=quiesced,
            require_full_convergence=config.require_full_convergence,
            context=functools.partial(_context, engine),
        )
    )
    for replica in replicas:
        state = "\n".join(
            f"{owner} {token} {m.value} {m.field} {m.epoch}"
            for (owner, token), m in sorted(replica.mappings.items())
        )
        fingerprint = hashlib.sha256(state.encode()).hexdigest()[:16]
        engine.record(f"final {replica.peer} mappings={len(replica.mappings)} sha={fingerprint}")
    engine.record(
        f"verdict violations={len(violations)} "
        + ",".join(sorted({v.invariant for v in violations}))
    )
    return SimResult(
        config=config,
        digest=engine.digest(),
        violations=tuple(violations),
        stats=_stats(config, engine, cluster, history, schedule),
        mix=mix.describe(),
        log=tuple(line.render() for line in engine.log()) if keep_log else (),
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
) -> SimStats:
    net = cluster.network.stats
    peers = [peer.stats for peer in cluster.peers.values()]
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
        partitions=sum(1 for a in schedule if a.kind is FaultKind.PARTITION),
        crashes=sum(p.crashes for p in peers),
        restarts=sum(p.restarts for p in peers),
        lost_writes=sum(p.lost_writes for p in peers),
        dropped_outputs=sum(p.dropped_held for p in peers),
        pauses=sum(p.pauses for p in peers),
        deferred_inputs=sum(p.deferred_inputs for p in peers),
        syncs=sum(p.syncs for p in peers),
        refused=sum(p.refused for p in peers),
        reset=sum(p.reset for p in peers),
        read_repairs_blocking=sum(
            p.core_events.get("read_repair_blocking", 0) for p in cluster.peers.values()
        ),
        read_repairs_background=sum(
            p.core_events.get("read_repair_background", 0) for p in cluster.peers.values()
        ),
    )
