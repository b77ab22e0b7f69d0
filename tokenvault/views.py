"""What a peer shows of itself: the JSON of /v1/ring and /v1/admin/node, and the scraped series of
/metrics. Read-only: nothing here changes the peer.

Rules: views carry ids, counts, durations and states only; never a value, a token or a key.
"""

from __future__ import annotations

import trio

from tokenvault import process_metrics
from tokenvault.node import Node


def peer_views(node: Node) -> list[dict[str, object]]:
    now = trio.current_time()
    seen = {v.peer: v for v in node.core.failure_detector.views()}
    views: list[dict[str, object]] = []
    heard: float | None
    for peer in node.core.membership.members:
        view = seen.get(peer.id)
        if view is None:  # this peer itself
            state, since, heard = "up", node.started_at, now
        else:
            state, since, heard = view.state.value, view.since, view.last_heard
        views.append(
            {
                "id": peer.id,
                "address": peer.address,
                "state": state,
                "for_s": round(now - since, 3),
                "last_heard_s_ago": None if heard is None else round(now - heard, 3),
                "self": view is None,
            }
        )
    return views


def node_view(node: Node) -> dict[str, object]:
    store = node.store.statistics()
    readiness = node.readiness()
    return {
        "peer": node.peer_id,
        "ready": readiness.ready,
        "readiness": readiness.reason,
        "address": node.peer.address,
        "cluster_fingerprint": node.cluster_fingerprint,
        "uptime_s": round(trio.current_time() - node.started_at, 3),
        "operations_in_flight": node.core.operations_in_flight(),
        **recovery_view(node),
        "owners": [o.id for o in node.config.owners],
        "anti_entropy": _anti_entropy_view(node),
        "hints": [
            {"target": h.target, "hints": h.hints, "bytes": h.bytes, "in_flight": h.in_flight}
            for h in node.core.hints.statistics()
        ],
        "store": {
            "flushes": store.flushes,
            "writes_flushed": store.writes_flushed,
            "largest_flush_writes": store.largest_flush_writes,
            "pending_writes": store.pending_writes,
            **store_health_view(node),
        },
        "links": [
            {
                "peer": s.peer_id,
                "queued_messages": s.queued_messages,
                "batches_sent": s.batches_sent,
                "messages_sent": s.messages_sent,
                "bytes_sent": s.bytes_sent,
                "batches_failed": s.batches_failed,
                "messages_dropped": s.messages_dropped,
            }
            for s in (link.statistics() for link in node.links.values())
        ],
        "peers": peer_views(node),
        "file_descriptors": file_descriptors_view(),
    }


def store_health_view(node: Node) -> dict[str, object]:
    """Whether the store takes writes, why not, and what replaced or reopened it so far."""
    health = node.store.health()
    return {
        "writable": health.writable,
        "write_failure": health.write_failure,
        "reopens": health.reopens,
        "replaced": node.stores_replaced,
        "scrubs": node.scrubs,
    }


def recovery_view(node: Node) -> dict[str, object]:
    """`state` ("serving" or "recovering", PeerCore.state: the one source) and how far the
    recovery of a lost store went (recovery.py)."""
    progress = node.core.recovery_progress()
    return {
        "state": node.core.state,
        "recovery": {
            "phase": progress.phase,
            "owners_total": progress.owners_total,
            "owners_learned": progress.owners_learned,
            "owners_refilled": progress.owners_refilled,
            "peers_total": progress.peers_total,
            "peers_acknowledged": progress.peers_acknowledged,
        },
    }


def file_descriptors_view() -> dict[str, int | None]:
    """This process's soft descriptor limit and the descriptors open now (None where the
    system does not list them, as /proc/self/fd does on Linux)."""
    return {
        "limit": process_metrics.descriptor_limit(),
        "open": process_metrics.open_descriptors(),
    }


def _anti_entropy_view(node: Node) -> dict[str, object]:
    stats = node.core.anti_entropy.statistics
    last = stats.last_pass
    now = trio.current_time()
    return {
        "enabled": node.core.limits.anti_entropy_enabled,
        "passes": stats.passes,
        "passes_in_sync": stats.passes_in_sync,
        "mappings_pushed": stats.mappings_pushed,
        "epochs_learned": stats.epochs_learned,
        "last_pass": None
        if last is None
        else {
            "owner": last.owner,
            "partner": last.partner,
            "outcome": last.outcome,
            "finished_s_ago": round(now - last.finished, 3),
            "duration_s": round(last.finished - last.started, 3),
            "differing_buckets": last.differing_buckets,
            "pages": last.pages,
            "mappings_pushed": last.mappings_pushed,
        },
    }


def render_metrics(node: Node) -> str:
    """The families declared by node_metrics.py, the scraped ones set from the node now."""
    metrics = node.metrics
    totals = node.running_totals()
    metrics.set_total("tokenvault_store_flushes_total", totals.store_flushes)
    metrics.set_total("tokenvault_store_writes_flushed_total", totals.store_writes_flushed)
    metrics.set_total("tokenvault_store_reopens_total", totals.store_reopens)
    metrics.set_total("tokenvault_timers_dropped_total", totals.timers_dropped)
    metrics.set_total("tokenvault_held_messages_dropped_total", totals.held_messages_dropped)
    metrics.set_total("tokenvault_anti_entropy_passes_total", totals.anti_entropy_passes)
    metrics.set_total(
        "tokenvault_anti_entropy_passes_in_sync_total", totals.anti_entropy_passes_in_sync
    )
    metrics.set_total(
        "tokenvault_anti_entropy_mappings_pushed_total", totals.anti_entropy_mappings_pushed
    )
    metrics.set_total("tokenvault_stores_replaced_total", node.stores_replaced)
    metrics.set_total("tokenvault_store_scrubs_total", node.scrubs)
    metrics.set_gauge("tokenvault_store_pending_writes", node.store.statistics().pending_writes)
    metrics.set_gauge("tokenvault_store_writable", int(node.store.health().writable))
    metrics.set_gauge("tokenvault_ready", int(node.readiness().ready))
    metrics.set_gauge("tokenvault_operations_in_flight", node.core.operations_in_flight())
    metrics.set_gauge("tokenvault_hints_pending", node.core.hints.pending_total())
    for state in ("up", "suspect", "down"):
        count = sum(1 for v in node.core.failure_detector.views() if v.state.value == state)
        metrics.set_gauge("tokenvault_peers", count, (("state", state),))
    for link in node.links.values():
        s = link.statistics()
        labels = (("peer", s.peer_id),)
        metrics.set_gauge("tokenvault_link_queued_messages", s.queued_messages, labels)
        metrics.set_total("tokenvault_link_batches_failed_total", s.batches_failed, labels)
        metrics.set_total("tokenvault_link_bytes_sent_total", s.bytes_sent, labels)
        metrics.set_total("tokenvault_link_messages_dropped_total", s.messages_dropped, labels)
    process_metrics.record(metrics)
    return metrics.render()
