"""The simulated network between peers: per-link loss, duplication, reordering and delay, and
partitions (two halves, one peer isolated, one way). It can always heal.

Rules:
- Every directed link has its own `LinkFaults` and its own generator ("link/src->dst"), so the
  draws of one link never shift another's.
- A message is judged when it is sent (partition, loss, duplication, delay) and again when it
  arrives (a partition that started meanwhile cuts it too, as it would a TCP stream).
- A peer's messages to itself do not cross the network; the peer delivers them (peer.py).
- `heal()` ends every partition and makes every link healthy: no loss, duplication or reordering
  from then on, only the base delay. Messages already on their way still arrive.
- `drop_when(predicate, label)` drops every message a predicate picks (scenario tests use it to
  lose exactly the Accepts of one proposer, say); healing ends it too.
- Every send, drop and delivery is one line of the digest.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tokenvault.quorum.messages import (
    Accept,
    Accepted,
    AeKeys,
    AeKeysReply,
    AeSummary,
    AeSummaryReply,
    Ballot,
    Decide,
    Envelope,
    EpochQuery,
    EpochReport,
    EpochValue,
    Heartbeat,
    InsertReply,
    InsertRequest,
    Message,
    Prepare,
    Promise,
    ReadReply,
    ReadRequest,
)
from tokenvault.sim.engine import Engine
from tokenvault.sim.faults import HEALTHY_LINK, LinkFaults, Partition, PartitionKind

Receiver = Callable[[Envelope], None]
DropPredicate = Callable[[Envelope], bool]


def short_token(token: str) -> str:
    """A token as the log shows it: 8 characters after "tok_", enough to find it again."""
    return token[4:12]


def describe_ballot(ballot: Ballot | None) -> str:
    return "-" if ballot is None else f"{ballot.round}.{ballot.peer}"


def describe_value(value: EpochValue | None) -> str:
    """An epoch value as the log shows it: epoch, salt prefix and the rotate that proposed it."""
    if value is None:
        return "-"
    return f"{value.epoch}/{value.salt[:8] or '-'}/{value.requested_by or '-'}"


def describe_message(message: Message) -> str:
    """A canonical one-line text of a message: ids, short tokens and outcomes, nothing else."""
    if isinstance(message, Heartbeat):
        return "heartbeat"
    if isinstance(message, InsertRequest):
        tokens = ",".join(short_token(m.token) for m in message.mappings)
        kind = "insert-repair" if message.repair else "insert"
        return f"{kind} op={message.op_id} {message.owner} [{tokens}]"
    if isinstance(message, InsertReply):
        outcomes = ",".join(
            f"{short_token(t)}:{o.value}"
            for t, o in zip(message.tokens, message.outcomes, strict=True)
        )
        return f"insert-reply op={message.op_id} {message.owner} [{outcomes}]"
    if isinstance(message, ReadRequest):
        tokens = ",".join(short_token(t) for t in message.tokens)
        return f"read op={message.op_id} {message.owner} [{tokens}]"
    if isinstance(message, ReadReply):
        found = ",".join(
            f"{short_token(t)}:{'-' if m is None else m.value}"
            for t, m in zip(message.tokens, message.mappings, strict=True)
        )
        return f"read-reply op={message.op_id} {message.owner} [{found}]"
    return _describe_epoch_or_ae(message)


def _describe_epoch_or_ae(message: Message) -> str:
    head = f"op={getattr(message, 'op_id', '-')} {getattr(message, 'owner', '-')}"
    if isinstance(message, EpochQuery):
        return f"epoch-query {head}"
    if isinstance(message, EpochReport):
        return (
            f"epoch-report {head} decided={describe_value(message.decided)}"
            f" accepted_slot={message.accepted_slot}"
        )
    if isinstance(message, Prepare):
        return f"prepare {head} slot={message.slot} ballot={describe_ballot(message.ballot)}"
    if isinstance(message, Promise):
        return (
            f"promise {head} slot={message.slot} ballot={describe_ballot(message.ballot)}"
            f" granted={int(message.granted)} promised={describe_ballot(message.promised)}"
            f" accepted={describe_ballot(message.accepted_ballot)}:"
            f"{describe_value(message.accepted_value)} decided={describe_value(message.decided)}"
        )
    if isinstance(message, Accept):
        return (
            f"accept {head} slot={message.slot} ballot={describe_ballot(message.ballot)}"
            f" value={describe_value(message.value)}"
        )
    if isinstance(message, Accepted):
        return (
            f"accepted {head} slot={message.slot} ballot={describe_ballot(message.ballot)}"
            f" granted={int(message.granted)} promised={describe_ballot(message.promised)}"
            f" decided={describe_value(message.decided)}"
        )
    if isinstance(message, Decide):
        return f"decide {head} value={describe_value(message.value)}"
    if isinstance(message, AeSummary):
        return f"ae-summary {head} count={message.count} decided={describe_value(message.decided)}"
    if isinstance(message, AeSummaryReply):
        return (
            f"ae-summary-reply {head} differing={len(message.differing)}"
            f" decided={describe_value(message.decided)}"
        )
    if isinstance(message, AeKeys):
        return f"ae-keys {head} bucket={message.bucket} entries={len(message.entries)}"
    if isinstance(message, AeKeysReply):
        return f"ae-keys-reply {head} bucket={message.bucket} missing={len(message.missing)}"
    return f"{type(message).__name__} {head}"


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0  # dropped by a link's loss
    cut: int = 0  # dropped by a partition
    duplicated: int = 0  # extra copies sent
    reordered: int = 0  # delivered after a message sent later on the same link
    delayed_extra: int = 0  # given a reordering delay
    cut_halves: int = 0
    cut_isolate: int = 0
    cut_one_way: int = 0
    cut_long_isolate: int = 0
    filtered: int = 0  # dropped by a scenario's drop_when


class Network:
    def __init__(
        self,
        engine: Engine,
        links: dict[tuple[str, str], LinkFaults],
        receiver: Receiver,
    ) -> None:
        self._engine = engine
        self._links = dict(links)
        self._receiver = receiver
        self._rngs: dict[tuple[str, str], random.Random] = {}
        self._sent_sequence: dict[tuple[str, str], int] = {}
        self._delivered_sequence: dict[tuple[str, str], int] = {}
        self._partition: Partition | None = None
        self._blocked: frozenset[tuple[str, str]] = frozenset()
        self._filters: list[tuple[DropPredicate, str]] = []
        self._healed = False
        self.stats = NetworkStats()

    # -- partitions ----------------------------------------------------------------------------

    def start_partition(self, partition: Partition) -> None:
        self._partition = partition
        self._blocked = frozenset(partition.blocked)
        self._engine.record(f"partition {partition.kind.value} {partition.label}")

    def end_partition(self) -> None:
        if self._partition is not None:
            self._engine.record(f"partition-end {self._partition.label}")
        self._partition = None
        self._blocked = frozenset()

    def drop_when(self, predicate: DropPredicate, label: str) -> None:
        """Drop every message predicate picks, from now until healing."""
        self._filters.append((predicate, label))

    def add_links(self, links: dict[tuple[str, str], LinkFaults]) -> None:
        """Links of a peer started during the run (a spare); healthy once healed."""
        for link, faults in links.items():
            self._links[link] = HEALTHY_LINK if self._healed else faults

    def heal(self) -> None:
        self._healed = True
        self.end_partition()
        self._filters.clear()
        self._links = {link: HEALTHY_LINK for link in self._links}
        self._engine.record("network healed")

    def is_blocked(self, source: str, destination: str) -> bool:
        return (source, destination) in self._blocked

    # -- messages ------------------------------------------------------------------------------

    def send(self, envelope: Envelope) -> None:
        source, destination = envelope.source, envelope.destination
        link = (source, destination)
        assert source != destination, "a peer delivers its messages to itself"
        stats = self.stats
        stats.sent += 1
        sequence = self._sent_sequence.get(link, 0) + 1
        self._sent_sequence[link] = sequence
        engine = self._engine
        if link in self._blocked:
            self._count_cut()
            engine.record(f"cut {source}->{destination} {describe_message(envelope.message)}")
            return
        for predicate, label in self._filters:
            if predicate(envelope):
                stats.filtered += 1
                engine.record(
                    f"drop-filter {label} {source}->{destination}"
                    f" {describe_message(envelope.message)}"
                )
                return
        faults = self._links[link]
        rng = self._rng(link)
        if rng.random() < faults.loss:
            stats.lost += 1
            engine.record(f"lose {source}->{destination} {describe_message(envelope.message)}")
            return
        copies = 2 if rng.random() < faults.duplicate else 1
        for copy in range(copies):
            delay_s = faults.delay_s + faults.jitter_s * rng.random()
            if rng.random() < faults.reorder:
                delay_s += faults.reorder_delay_s * rng.random()
                stats.delayed_extra += 1
            if copy:
                stats.duplicated += 1
                engine.record(
                    f"duplicate {source}->{destination} {describe_message(envelope.message)}"
                )
            engine.after(delay_s, lambda: self._arrive(envelope, sequence))

    def _arrive(self, envelope: Envelope, sequence: int) -> None:
        source, destination = envelope.source, envelope.destination
        link = (source, destination)
        if link in self._blocked:
            self._count_cut()
            self._engine.record(
                f"cut-in-flight {source}->{destination} {describe_message(envelope.message)}"
            )
            return
        latest = self._delivered_sequence.get(link, 0)
        if sequence < latest:
            self.stats.reordered += 1
        else:
            self._delivered_sequence[link] = sequence
        self.stats.delivered += 1
        self._receiver(envelope)

    def _rng(self, link: tuple[str, str]) -> random.Random:
        rng = self._rngs.get(link)
        if rng is None:
            rng = self._rngs[link] = self._engine.rng(f"link/{link[0]}->{link[1]}")
        return rng

    def _count_cut(self) -> None:
        self.stats.cut += 1
        assert self._partition is not None
        kind = self._partition.kind
        if kind is PartitionKind.HALVES:
            self.stats.cut_halves += 1
        elif kind is PartitionKind.ISOLATE:
            self.stats.cut_isolate += 1
        elif kind is PartitionKind.LONG_ISOLATE:
            self.stats.cut_long_isolate += 1
        else:
            self.stats.cut_one_way += 1
