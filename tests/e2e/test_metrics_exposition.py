"""End-to-end: a running peer's /metrics read as Prometheus reads it (prometheus_client's parser):
HELP and TYPE on every family, counters named `*_total`, the counters documented as present from
the start there at 0 on a fresh peer, and process metrics that agree with what Linux says of the
peer's process."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import Cluster
from tokenvault.http.peer_auth import Refusal
from tokenvault.log import ALARM_EVENTS
from tokenvault.metrics import CONTENT_TYPE
from tokenvault.node_metrics import ALERTED_EVENTS, CONFLICT_EVENTS, OUTCOMES

pytestmark = pytest.mark.e2e

# Counters without labels that count trouble: present from the start, 0 on a healthy fresh peer.
ZERO_AT_START = (
    "tokenvault_storage_errors",
    "tokenvault_config_mismatches",
    "tokenvault_tls_handshake_failures",
    "tokenvault_timers_dropped",
    "tokenvault_held_messages_dropped",
    "tokenvault_store_reopens",
    "tokenvault_stores_replaced",
)
# Running totals: present from the start, whatever they counted so far.
PRESENT_AT_START = (
    "tokenvault_store_flushes",
    "tokenvault_store_writes_flushed",
    "tokenvault_store_scrubs",
    "tokenvault_anti_entropy_passes",
    "tokenvault_anti_entropy_passes_in_sync",
    "tokenvault_anti_entropy_mappings_pushed",
)
PROCESS_GAUGES = (
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
)


def _scrape(cluster: Cluster, peer: str) -> tuple[httpx.Response, dict[str, Metric]]:
    answer = httpx.get(cluster.url(peer) + "/metrics", verify=cluster.verify, timeout=5.0)
    assert answer.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    return answer, families


def _by_label(family: Metric, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for s in family.samples}


def test_every_family_has_help_and_type_and_counters_end_in_total(cluster: Cluster) -> None:
    answer, families = _scrape(cluster, "n1")
    assert answer.headers["content-type"] == CONTENT_TYPE
    # In the text itself: each family's HELP line, then its TYPE line, before its samples.
    lines = answer.text.splitlines()
    typed = [line.split()[2] for line in lines if line.startswith("# TYPE ")]
    helped = [line.split()[2] for line in lines if line.startswith("# HELP ")]
    assert typed == helped and len(typed) == len(set(typed)) == len(families)
    for name, family in families.items():
        assert family.documentation, name
        assert family.type in ("counter", "gauge", "histogram"), name
        if family.type == "counter":
            assert all(s.name == f"{name}_total" for s in family.samples), name
        if family.type == "histogram":
            suffixes = {s.name.removeprefix(name) for s in family.samples}
            assert suffixes == {"_bucket", "_sum", "_count"}, name
    # docs/api.md's table lists every family with its type, and no other.
    exposed = {
        name + ("_total" if f.type == "counter" else ""): f.type for name, f in families.items()
    }
    assert exposed == documented_families()
    # No gauge is a running total in disguise (the old names are gone).
    for old in ("tokenvault_store_flushes", "tokenvault_link_bytes_sent"):
        assert families[old].type == "counter"
    assert not any(re.search(r"_total$", name) for name in families)  # the parser strips it


def test_a_fresh_peer_has_its_counters_at_zero_from_the_start(cluster: Cluster) -> None:
    _, families = _scrape(cluster, "n2")
    for name in ZERO_AT_START:
        [sample] = families[name].samples
        assert sample.value == 0, name
    for name in PRESENT_AT_START:
        [sample] = families[name].samples
        assert sample.value >= 0, name
    for name in ("tokenvault_quorum_writes", "tokenvault_quorum_reads"):
        assert _by_label(families[name], "outcome") == dict.fromkeys(OUTCOMES, 0), name
    assert set(_by_label(families["tokenvault_epoch_operations"], "outcome")) == set(OUTCOMES)
    refused = _by_label(families["tokenvault_peer_auth_refused"], "reason")
    assert refused == dict.fromkeys((r.value for r in Refusal), 0)
    assert set(_by_label(families["tokenvault_peer_batches_refused"], "reason")) == {
        "malformed",
        "not_configured",
    }
    events = _by_label(families["tokenvault_events"], "event")
    assert set(ALERTED_EVENTS) <= set(events)
    for alarm in ALARM_EVENTS | CONFLICT_EVENTS:
        assert events[alarm] == 0, alarm
    others = set(cluster.peer_ids) - {"n2"}
    for name in ("link_bytes_sent", "link_batches_failed", "link_messages_dropped"):
        assert set(_by_label(families[f"tokenvault_{name}"], "peer")) == others, name


def test_process_metrics_agree_with_linux(cluster: Cluster) -> None:
    pid = cluster.pid("n3")
    cpu_before = cluster.cpu_seconds("n3")
    _, families = _scrape(cluster, "n3")
    cpu_after = cluster.cpu_seconds("n3")
    value = {name: families[name].samples[0].value for name in PROCESS_GAUGES}
    [cpu] = families["process_cpu_seconds"].samples
    assert families["process_cpu_seconds"].type == "counter"
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert cpu_before - 2 * tick <= cpu.value <= cpu_after + 2 * tick
    resident_kib = _status_kib(pid, "VmRSS")
    assert 0.5 * resident_kib * 1024 < value["process_resident_memory_bytes"]
    assert value["process_resident_memory_bytes"] < 2 * resident_kib * 1024
    assert value["process_virtual_memory_bytes"] > value["process_resident_memory_bytes"]
    open_now = len(os.listdir(f"/proc/{pid}/fd"))
    assert abs(value["process_open_fds"] - open_now) <= 16
    assert value["process_max_fds"] == _soft_open_files_limit(pid)
    config_written = cluster.init.config_path.stat().st_mtime
    assert config_written - 1 <= value["process_start_time_seconds"] <= time.time()


def documented_families() -> dict[str, str]:
    """Name and type of each row of the table in docs/api.md's Metrics section."""
    text = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    section = text[text.index("\n## Metrics\n") :]
    section = section[: section.index("\n## ", 1)]
    rows = re.findall(r"^\| `([a-z_]+)` \| ([a-z]+) \|", section, flags=re.MULTILINE)
    return dict(rows)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _soft_open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open files limit in /proc/{pid}/limits")
