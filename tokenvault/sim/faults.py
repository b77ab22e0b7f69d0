"""The fault model: the seed picks a fault mix, then a schedule of faults for the run.

Rules:
- Two steps, as TigerBeetle's VOPR does: `choose_mix(seed)` draws how hostile this run is (loss,
  duplication, reordering and delay of messages; how many crashes, pauses and partitions; how
  slow fsync is), then `link_faults` and `plan_faults` draw the run's faults from that mix. Each
  step has its own generator, so the schedule depends on nothing but the seed, the peers and
  `faults_end_s`.
- Every fault happens before `faults_end_s`. There the network heals (no loss, no partition),
  every crashed peer restarts and every paused peer resumes; a liveness phase follows.
- A peer is never in two faults at once (its crash, pause and restart intervals do not overlap);
  at most one partition is active at a time.
- Some crashes are "aimed" (FoundationDB's buggify): armed at a time, they strike at the next
  moment of one kind (`StrikeOn`): right after the peer's next staged write, inside the window
  where it is not yet durable; right after it sent the inserts of a client write it coordinates
  (crash during a write); or right after it sent or staged a repair of anti-entropy or hinted
  handoff (crash during repair: the pass or the hint delivery is in flight). An aimed crash that
  found no such moment before its interval ended is called off.
- Some runs flip a bit in a stored record (`bit_flip_count`, drawn from a generator of its
  own so that the other draws of a seed stay as they were): the peer crashes, one bit of one of
  its durable mapping records (which record and which bit: `draw`, from the seed) flips while it
  is down, and it restarts. Its replica must report the record corrupt, never return it, and
  read repair or anti-entropy must replace it (convergence).
- Disk faults (their own generators, so they change no other fault of a seed): a full disk (a
  peer's syncs fail for an interval, then succeed again: the writes stay staged, what waited
  for them fails over), and a lost write-ahead log tail (a crash after which the peer's store
  is found damaged, as node.py finds a store LevelDB reports corrupt: it restarts with an
  empty one, the hand-off to recovery; to the cores it is a wipe, below, and shares its rules).
- Some runs wipe a peer's disk (`WIPE`): it crashes and restarts on an empty store, and must
  recover (quorum/recovery.py) before it votes. Their count comes from a generator of its own
  (`faults/wipes`), so a seed's other faults are what they were before wipes existed. At most
  one peer is wiped at a time and never below three replicas (cluster.py applies a wipe as a
  plain crash while another peer is not serving yet): losing more is beyond the model.
- Some runs isolate one peer for a long time (`LONG_ISOLATION_S`, 20 virtual seconds and more)
  instead of drawing short partitions: the others hold it down, hints pile up for it, and after
  healing hinted handoff and anti-entropy must bring it back within the convergence bound.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass

from tokenvault.sim.engine import rng_for

FAULT_ACTIONS_MAX = 200  # per run: every kind of fault together
LONG_ISOLATION_S = (20.0, 24.0)  # how long a long isolation lasts
LONG_ISOLATION_SHARE = 0.2  # of runs
WIPE_COUNTS = (0, 0, 1, 1, 2)  # wiped disks per run, drawn uniformly
WIPE_DOWN_S = (0.2, 3.0)  # how long a wiped peer stays down before it restarts empty


class StrikeOn(enum.Enum):
    """When an aimed crash strikes."""

    STAGED_WRITE = "staged-write"  # right after the peer's next staged write (not yet durable)
    CLIENT_WRITE = "client-write"  # right after it sent the inserts of a write it coordinates
    REPAIR = "repair"  # right after it sent or staged an anti-entropy or hint repair


class PartitionKind(enum.Enum):
    HALVES = "halves"  # two groups that cannot reach each other
    ISOLATE = "isolate"  # one peer cut off from all others, both ways
    ONE_WAY = "one-way"  # one group's messages to the other are lost; the reverse gets through
    LONG_ISOLATE = "long-isolate"  # one peer cut off from all others for 20 s and more


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkFaults:
    """How one directed link treats each message."""

    loss: float = 0.0  # probability that a message is lost
    duplicate: float = 0.0  # probability that a message is delivered twice
    reorder: float = 0.0  # probability of an extra delay that lets later messages pass
    delay_s: float = 0.001  # base one-way delay
    jitter_s: float = 0.001  # uniform extra delay on every message
    reorder_delay_s: float = 0.05  # the most extra delay a reordered message gets

    def describe(self) -> str:
        return (
            f"loss={self.loss:.3f} dup={self.duplicate:.3f} reorder={self.reorder:.3f}"
            f" delay={self.delay_s:.4f}+{self.jitter_s:.4f}"
        )


HEALTHY_LINK = LinkFaults()


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultMix:
    """How hostile one run is; drawn from the seed before anything else."""

    link: LinkFaults  # a typical link
    bad_link_share: float  # share of links that lose, duplicate and reorder twice as often
    fsync_s: tuple[float, float]  # how long one group commit takes, uniform in this range
    crash_count: int
    aimed_crash_share: float
    pause_count: int
    partition_count: int
    partition_kinds: tuple[PartitionKind, ...]
    long_isolation: bool = False  # one long isolation instead of the short partitions
    bit_flip_count: int = 0  # crashes during which one bit of a stored record flips
    disk_full_count: int = 0  # intervals in which a peer's syncs fail (ENOSPC)
    lost_wal_tail_count: int = 0  # crashes after which the store is found damaged and replaced
    wipe_count: int = 0  # crashes that restart on an empty store (a replaced disk)

    def describe(self) -> str:
        kinds = ",".join(k.value for k in self.partition_kinds) or "-"
        partitions = (
            "partitions=1[long-isolate]"
            if self.long_isolation
            else f"partitions={self.partition_count}[{kinds}]"
        )
        return (
            f"link[{self.link.describe()}] bad_links={self.bad_link_share:.2f}"
            f" fsync={self.fsync_s[0]:.4f}..{self.fsync_s[1]:.4f}"
            f" crashes={self.crash_count} aimed={self.aimed_crash_share:.2f}"
            f" pauses={self.pause_count} {partitions} bit_flips={self.bit_flip_count}"
            f" disk_full={self.disk_full_count} lost_wal_tail={self.lost_wal_tail_count}"
            + (f" wipes={self.wipe_count}" if self.wipe_count else "")
        )


def choose_mix(seed: int) -> FaultMix:
    rng = rng_for(seed, "faults/mix")
    link = LinkFaults(
        loss=rng.choice((0.0, 0.0, 0.01, 0.05, 0.15, 0.3)),
        duplicate=rng.choice((0.0, 0.01, 0.05, 0.2)),
        reorder=rng.choice((0.0, 0.02, 0.1, 0.3)),
        delay_s=rng.choice((0.0005, 0.001, 0.005, 0.02)),
        jitter_s=rng.choice((0.0, 0.001, 0.01, 0.05)),
        reorder_delay_s=rng.choice((0.02, 0.2, 1.0)),
    )
    slow_disk = rng.random() < 0.3
    fsync_s = (0.005, 0.1) if slow_disk else (0.0002, 0.004)
    short_kinds = [k for k in PartitionKind if k is not PartitionKind.LONG_ISOLATE]
    kinds = tuple(k for k in short_kinds if rng.random() < 0.6) or (rng.choice(short_kinds),)
    return FaultMix(
        link=link,
        bad_link_share=rng.choice((0.0, 0.1, 0.3)),
        fsync_s=fsync_s,
        crash_count=rng.choice((0, 1, 2, 4, 8)),
        aimed_crash_share=rng.choice((0.0, 0.5, 1.0)),
        pause_count=rng.choice((0, 0, 1, 3)),
        partition_count=rng.choice((0, 1, 2, 4)),
        partition_kinds=kinds,
        long_isolation=rng.random() < LONG_ISOLATION_SHARE,
        bit_flip_count=rng_for(seed, "faults/bit-flip-mix").choice((0, 1, 1, 2)),
        **_choose_disk_faults(seed),
        wipe_count=rng_for(seed, "faults/wipes").choice(WIPE_COUNTS),
    )


def _choose_disk_faults(seed: int) -> dict[str, int]:
    """The disk faults of a mix, from their own generator (the rest of the mix is unchanged)."""
    rng = rng_for(seed, "faults/disk-mix")
    return {
        "disk_full_count": rng.choice((0, 0, 1, 2)),
        "lost_wal_tail_count": rng.choice((0, 0, 1)),
    }


def link_faults(
    seed: int, mix: FaultMix, peer_ids: Sequence[str]
) -> dict[tuple[str, str], LinkFaults]:
    """Every directed link between two distinct peers, with its own fault parameters."""
    rng = rng_for(seed, "faults/links")
    links: dict[tuple[str, str], LinkFaults] = {}
    for source in peer_ids:
        for destination in peer_ids:
            if source == destination:
                continue
            base = mix.link
            if rng.random() < mix.bad_link_share:
                base = bad_link(base)
            links[(source, destination)] = base
    return links


def bad_link(base: LinkFaults) -> LinkFaults:
    """A bad link of a mix: loses, duplicates and reorders twice as often as `base`."""
    return LinkFaults(
        loss=min(0.5, 2 * base.loss + 0.05),
        duplicate=min(0.5, 2 * base.duplicate),
        reorder=min(0.5, 2 * base.reorder + 0.05),
        delay_s=base.delay_s,
        jitter_s=2 * base.jitter_s,
        reorder_delay_s=base.reorder_delay_s,
    )


# -- the schedule ------------------------------------------------------------------------------


class FaultKind(enum.Enum):
    CRASH = "crash"
    ARM_CRASH = "arm-crash"  # an aimed crash: strikes after the peer's next staged write
    WIPE = "wipe"  # a crash that loses the whole store: the peer restarts empty
    RESTART = "restart"
    PAUSE = "pause"
    RESUME = "resume"
    PARTITION = "partition"
    PARTITION_END = "partition-end"
    BIT_FLIP = "bit-flip"  # one bit of one durable mapping record of a peer that is down
    DISK_FULL = "disk-full"  # the peer's syncs fail from here (ENOSPC)
    DISK_FREED = "disk-freed"  # and succeed again from here
    LOSE_WAL_TAIL = "lose-wal-tail"  # a crash after which the store is found damaged


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition:
    kind: PartitionKind
    blocked: tuple[tuple[str, str], ...]  # directed (source, destination) pairs, sorted
    label: str  # e.g. "p1,p2|p3,p4,p5"


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultAction:
    at_s: float
    kind: FaultKind
    peer: str = ""
    partition: Partition | None = None
    strike_on: StrikeOn | None = None  # an aimed crash's moment
    draw: int = 0  # a bit flip's record and bit, drawn from the seed

    def describe(self) -> str:
        if self.partition is not None:
            return f"{self.kind.value} {self.partition.kind.value} {self.partition.label}"
        strike = "" if self.strike_on is None else f" {self.strike_on.value}"
        draw = f" draw={self.draw}" if self.kind is FaultKind.BIT_FLIP else ""
        return f"{self.kind.value} {self.peer}{strike}{draw}".rstrip()


def plan_faults(
    seed: int,
    mix: FaultMix,
    peer_ids: Sequence[str],
    faults_end_s: float,
) -> tuple[FaultAction, ...]:
    """The run's faults in time order; every one starts and ends before faults_end_s."""
    rng = rng_for(seed, "faults/schedule")
    busy: dict[str, list[tuple[float, float]]] = {peer: [] for peer in peer_ids}
    actions: list[FaultAction] = []
    for _ in range(mix.crash_count):
        peer, start, end = _draw_interval(rng, peer_ids, faults_end_s, (0.2, 5.0))
        aimed = rng.random() < mix.aimed_crash_share
        strike_on = rng.choice(list(StrikeOn))
        if _claim(busy[peer], start, end):
            if aimed:
                actions.append(
                    FaultAction(
                        at_s=start, kind=FaultKind.ARM_CRASH, peer=peer, strike_on=strike_on
                    )
                )
            else:
                actions.append(FaultAction(at_s=start, kind=FaultKind.CRASH, peer=peer))
            actions.append(FaultAction(at_s=end, kind=FaultKind.RESTART, peer=peer))
    for _ in range(mix.pause_count):
        peer, start, end = _draw_interval(rng, peer_ids, faults_end_s, (0.1, 4.0))
        if _claim(busy[peer], start, end):
            actions.append(FaultAction(at_s=start, kind=FaultKind.PAUSE, peer=peer))
            actions.append(FaultAction(at_s=end, kind=FaultKind.RESUME, peer=peer))
    actions.extend(_plan_partitions(rng, mix, peer_ids, faults_end_s))
    store_losses: list[tuple[float, float]] = []  # wipes and lost log tails: one at a time
    actions.extend(_plan_wipes(seed, mix, peer_ids, faults_end_s, busy, store_losses))
    actions.extend(_plan_bit_flips(seed, mix, peer_ids, faults_end_s, busy))
    actions.extend(_plan_disk_faults(seed, mix, peer_ids, faults_end_s, busy, store_losses))
    actions.sort(key=lambda a: (a.at_s, a.kind.value, a.peer))
    assert len(actions) <= FAULT_ACTIONS_MAX
    return tuple(actions)


def _plan_bit_flips(
    seed: int,
    mix: FaultMix,
    peer_ids: Sequence[str],
    faults_end_s: float,
    busy: dict[str, list[tuple[float, float]]],
) -> list[FaultAction]:
    """Crash, a bit flipped while down, restart: a generator of its own, so that the other
    faults of a seed are drawn as they were before this kind existed."""
    rng = rng_for(seed, "faults/bit-flips")
    actions: list[FaultAction] = []
    for _ in range(mix.bit_flip_count):
        peer = rng.choice(list(peer_ids))
        start = rng.uniform(faults_end_s * 0.3, faults_end_s * 0.9)
        end = min(start + rng.uniform(0.2, 3.0), faults_end_s)
        draw = rng.getrandbits(32)
        if _claim(busy[peer], start, end):
            actions.append(FaultAction(at_s=start, kind=FaultKind.CRASH, peer=peer))
            middle = (start + end) / 2
            actions.append(FaultAction(at_s=middle, kind=FaultKind.BIT_FLIP, peer=peer, draw=draw))
            actions.append(FaultAction(at_s=end, kind=FaultKind.RESTART, peer=peer))
    return actions


def _plan_wipes(
    seed: int,
    mix: FaultMix,
    peer_ids: Sequence[str],
    faults_end_s: float,
    busy: dict[str, list[tuple[float, float]]],
    store_losses: list[tuple[float, float]],
) -> list[FaultAction]:
    """Wiped disks, from a generator of their own; never two store losses overlap."""
    rng = rng_for(seed, "faults/wipe-schedule")
    actions: list[FaultAction] = []
    for _ in range(mix.wipe_count):
        peer = rng.choice(list(peer_ids))
        start = rng.uniform(0.5, faults_end_s * 0.8)
        end = min(start + rng.uniform(*WIPE_DOWN_S), faults_end_s)
        if _claim(store_losses, start, end) and _claim(busy[peer], start, end):
            actions.append(FaultAction(at_s=start, kind=FaultKind.WIPE, peer=peer))
            actions.append(FaultAction(at_s=end, kind=FaultKind.RESTART, peer=peer))
    return actions


def _plan_disk_faults(
    seed: int,
    mix: FaultMix,
    peer_ids: Sequence[str],
    faults_end_s: float,
    busy: dict[str, list[tuple[float, float]]],
    store_losses: list[tuple[float, float]],
) -> list[FaultAction]:
    """Full disks and lost log tails, after every other fault of the peer was placed; a lost
    log tail loses the store, so it never overlaps a wipe or another lost tail."""
    rng = rng_for(seed, "faults/disk-schedule")
    actions: list[FaultAction] = []
    for _ in range(mix.disk_full_count):
        peer, start, end = _draw_interval(rng, peer_ids, faults_end_s, (0.5, 6.0))
        if _claim(busy[peer], start, end):
            actions.append(FaultAction(at_s=start, kind=FaultKind.DISK_FULL, peer=peer))
            actions.append(FaultAction(at_s=end, kind=FaultKind.DISK_FREED, peer=peer))
    for _ in range(mix.lost_wal_tail_count):
        peer, start, end = _draw_interval(rng, peer_ids, faults_end_s, (0.2, 5.0))
        if _claim(store_losses, start, end) and _claim(busy[peer], start, end):
            actions.append(FaultAction(at_s=start, kind=FaultKind.LOSE_WAL_TAIL, peer=peer))
            actions.append(FaultAction(at_s=end, kind=FaultKind.RESTART, peer=peer))
    return actions


def _draw_interval(
    rng: random.Random, peer_ids: Sequence[str], faults_end_s: float, length_s: tuple[float, float]
) -> tuple[str, float, float]:
    """A peer and a fault interval of a length in length_s, starting in the fault window."""
    peer = rng.choice(list(peer_ids))
    start = rng.uniform(0.5, faults_end_s * 0.9)
    return peer, start, min(start + rng.uniform(*length_s), faults_end_s)


def _claim(intervals: list[tuple[float, float]], start: float, end: float) -> bool:
    """Take [start, end] for one peer unless it overlaps a fault it already has (with margin)."""
    margin_s = 0.05
    if any(start < e + margin_s and s < end + margin_s for s, e in intervals):
        return False
    intervals.append((start, end))
    return True


def _plan_partitions(
    rng: random.Random, mix: FaultMix, peer_ids: Sequence[str], faults_end_s: float
) -> list[FaultAction]:
    """One partition per equal slot of the fault window, so at most one is active at a time."""
    actions: list[FaultAction] = []
    if len(peer_ids) < 2:
        return actions
    if mix.long_isolation:
        duration = rng.uniform(*LONG_ISOLATION_S)
        duration = min(duration, faults_end_s * 0.95)
        start = rng.uniform(0.0, max(0.0, faults_end_s - duration - 0.05))
        partition = _draw_partition(rng, PartitionKind.LONG_ISOLATE, peer_ids)
        actions.append(FaultAction(at_s=start, kind=FaultKind.PARTITION, partition=partition))
        actions.append(
            FaultAction(at_s=start + duration, kind=FaultKind.PARTITION_END, partition=partition)
        )
        return actions
    if mix.partition_count == 0:
        return actions
    slot_s = faults_end_s / mix.partition_count
    for index in range(mix.partition_count):
        slot_start = index * slot_s
        start = slot_start + rng.uniform(0.0, slot_s * 0.5)
        end = min(start + rng.uniform(0.2, slot_s * 0.9), slot_start + slot_s * 0.99)
        partition = _draw_partition(rng, rng.choice(mix.partition_kinds), peer_ids)
        actions.append(FaultAction(at_s=start, kind=FaultKind.PARTITION, partition=partition))
        actions.append(FaultAction(at_s=end, kind=FaultKind.PARTITION_END, partition=partition))
    return actions


def _draw_partition(rng: random.Random, kind: PartitionKind, peer_ids: Sequence[str]) -> Partition:
    peers = list(peer_ids)
    if kind in (PartitionKind.ISOLATE, PartitionKind.LONG_ISOLATE):
        alone = rng.choice(peers)
        side_a, side_b = [alone], [p for p in peers if p != alone]
    else:
        shuffled = peers[:]
        rng.shuffle(shuffled)
        cut = rng.randint(1, len(peers) - 1)
        side_a, side_b = sorted(shuffled[:cut]), sorted(shuffled[cut:])
    blocked = {(a, b) for a in side_a for b in side_b}
    if kind is not PartitionKind.ONE_WAY:
        blocked |= {(b, a) for a, b in blocked}
    arrow = "->" if kind is PartitionKind.ONE_WAY else "|"
    label = ",".join(side_a) + arrow + ",".join(side_b)
    return Partition(kind=kind, blocked=tuple(sorted(blocked)), label=label)
