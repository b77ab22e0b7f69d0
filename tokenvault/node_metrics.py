"""The metric families of a peer's node (declared once, when the node is built) and the running
totals it exposes as counters, kept across a replaced store.

Rules:
- Every family has its HELP text here (or where it is counted: http/api.py, peer_auth.py,
  config_mismatch.py, peer_process.py); views.py sets the scraped ones at each `/metrics`.
- Counters that a fixed set of label values can reach start with those series at 0: the outcomes
  of coordinated operations ("ok" and every Failure), and the alarm and warning events.
- A damaged store is replaced by an empty one and the core rebuilt over it: both count from 0
  again. RunningTotals adds what the retired ones had counted, so no total decreases within a
  process.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from tokenvault import process_metrics
from tokenvault.log import ALARM_EVENTS, WARNING_EVENTS
from tokenvault.metrics import Metrics
from tokenvault.quorum.effects import Failure
from tokenvault.quorum.peer_core import PeerCore
from tokenvault.store.leveldb_store import LevelDBStore

OUTCOMES = ("ok", *(failure.value for failure in Failure))
# Alarms by name (log.py counts any `*conflict*` event an alarm too): alerted on from 0.
CONFLICT_EVENTS = frozenset(
    {
        "anti_entropy_conflict",
        "drop_conflict",
        "hint_conflict",
        "mapping_conflict",
        "peer_protocol_conflict",
        "transfer_conflict",
    }
)
ALERTED_EVENTS = ALARM_EVENTS | WARNING_EVENTS | CONFLICT_EVENTS

_OUTCOME_COUNTERS = {
    "tokenvault_quorum_writes_total": "Coordinated writes by outcome.",
    "tokenvault_quorum_reads_total": "Coordinated reads by outcome.",
    "tokenvault_epoch_operations_total": "Epoch learns and rotates by outcome.",
}
_COUNTERS = {
    "tokenvault_storage_errors_total": "Store reads, writes or syncs that failed.",
    "tokenvault_timers_dropped_total": "Timers not armed because too many were pending.",
    "tokenvault_held_messages_dropped_total": (
        "Peer messages dropped because too many outputs waited for durability."
    ),
    "tokenvault_store_reopens_total": "Reopens of the store after a failed flush.",
    "tokenvault_stores_replaced_total": "Damaged stores moved aside and replaced.",
    "tokenvault_store_scrubs_total": "Whole passes over the store that found no damage.",
    "tokenvault_store_flushes_total": "Synced store batches.",
    "tokenvault_store_writes_flushed_total": "Writes made durable.",
    "tokenvault_anti_entropy_passes_total": "Anti-entropy passes.",
    "tokenvault_anti_entropy_passes_in_sync_total": "Anti-entropy passes that found no work.",
    "tokenvault_anti_entropy_mappings_pushed_total": "Mappings pushed to anti-entropy partners.",
    "tokenvault_peer_messages_unroutable_total": (
        "Peer messages dropped because their destination is no peer of the learned ring."
    ),
}
_LINK_COUNTERS = {
    "tokenvault_link_bytes_sent_total": "Bytes of delivered peer batches, by peer.",
    "tokenvault_link_batches_failed_total": "Peer batches that failed, by peer.",
    "tokenvault_link_messages_dropped_total": "Peer messages dropped, by peer.",
}
_GAUGES = {
    "tokenvault_peers": "Other peers this peer holds up, suspect or down.",
    "tokenvault_hints_pending": "Hints waiting on this peer for their targets.",
    "tokenvault_store_pending_writes": "Writes staged, not yet durable.",
    "tokenvault_store_writable": "1 while the store takes writes, else 0.",
    "tokenvault_ready": "1 while /readyz answers 200, else 0.",
    "tokenvault_operations_in_flight": "Reads and writes this peer coordinates.",
    "tokenvault_link_queued_messages": "Messages queued for a peer.",
}


def declare(metrics: Metrics) -> None:
    """Every family of a node, the process's included."""
    for name, help_text in _OUTCOME_COUNTERS.items():
        known = [(("outcome", outcome),) for outcome in OUTCOMES]
        metrics.counter(name, help_text, labelled=True, known=known)
    metrics.counter(
        "tokenvault_events_total",
        "State changes reported by the cores, by event.",
        labelled=True,
        known=[(("event", event),) for event in sorted(ALERTED_EVENTS)],
    )
    for name, help_text in _COUNTERS.items():
        metrics.counter(name, help_text)
    for name, help_text in _LINK_COUNTERS.items():
        metrics.counter(name, help_text, labelled=True)
    for name, help_text in _GAUGES.items():
        metrics.gauge(name, help_text)
    process_metrics.declare(metrics)


@dataclass(frozen=True, slots=True)
class RunningTotals:
    """What a store and a core counted since they were built, or (summed) since the process
    started."""

    store_flushes: int = 0
    store_writes_flushed: int = 0
    store_reopens: int = 0
    timers_dropped: int = 0
    held_messages_dropped: int = 0
    anti_entropy_passes: int = 0
    anti_entropy_passes_in_sync: int = 0
    anti_entropy_mappings_pushed: int = 0

    @classmethod
    def of(cls, store: LevelDBStore, core: PeerCore) -> RunningTotals:
        flushed = store.statistics()
        dropped = core.statistics()
        passes = core.anti_entropy.statistics
        return cls(
            store_flushes=flushed.flushes,
            store_writes_flushed=flushed.writes_flushed,
            store_reopens=store.health().reopens,
            timers_dropped=dropped.timers_dropped,
            held_messages_dropped=dropped.held_messages_dropped,
            anti_entropy_passes=passes.passes,
            anti_entropy_passes_in_sync=passes.passes_in_sync,
            anti_entropy_mappings_pushed=passes.mappings_pushed,
        )

    def __add__(self, other: RunningTotals) -> RunningTotals:
        return RunningTotals(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
        )
