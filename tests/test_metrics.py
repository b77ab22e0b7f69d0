"""Metrics: counters, gauges and histograms in the Prometheus text format, exactly; every family
with HELP and TYPE from its declaration, counters at 0 from the start, read back with
prometheus_client's parser; a node's families and running totals, which never decrease."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.store.disk_faults import flip
from tests.test_node_store import _new_cluster, _running, _until
from tokenvault import process_metrics
from tokenvault.metrics import LATENCY_BUCKETS_S, Metrics
from tokenvault.node_metrics import ALERTED_EVENTS, CONFLICT_EVENTS, OUTCOMES, RunningTotals


def _series(text: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))


def test_counters_and_gauges_render_exactly_with_help_and_type() -> None:
    metrics = Metrics()
    metrics.counter("tv_requests_total", "Requests.", labelled=True)
    metrics.gauge("tv_ratio", "A ratio.")
    metrics.gauge("tv_big", "A big one.")
    metrics.inc("tv_requests_total", (("route", "tokenize"), ("status", "200")), 1_234_567)
    metrics.inc("tv_requests_total", (("route", "tokenize"), ("status", "200")))
    metrics.set_gauge("tv_ratio", 0.125)
    metrics.set_gauge("tv_big", 2**53)
    text = metrics.render()
    assert "# HELP tv_requests_total Requests.\n# TYPE tv_requests_total counter\n" in text
    assert "# HELP tv_ratio A ratio.\n# TYPE tv_ratio gauge\n" in text
    series = _series(text)
    assert series['tv_requests_total{route="tokenize",status="200"}'] == "1234568"
    assert series["tv_ratio"] == "0.125"
    assert series["tv_big"] == str(2**53)


def test_every_family_has_help_and_type_even_without_series() -> None:
    metrics = Metrics()
    metrics.counter("tv_by_route_total", "By route.", labelled=True)
    metrics.gauge("tv_queue", "Queued.")
    metrics.histogram("tv_seconds", "Latency.")
    assert metrics.render() == (
        "# HELP tv_by_route_total By route.\n# TYPE tv_by_route_total counter\n"
        "# HELP tv_queue Queued.\n# TYPE tv_queue gauge\n"
        "# HELP tv_seconds Latency.\n# TYPE tv_seconds histogram\n"
    )


def test_counters_exist_at_zero_from_their_declaration() -> None:
    metrics = Metrics()
    metrics.counter("tv_errors_total", "Errors.")
    known = [(("outcome", "ok"),), (("outcome", "quorum_timeout"),)]
    metrics.counter("tv_writes_total", "Writes.", labelled=True, known=known)
    series = _series(metrics.render())
    assert series == {
        "tv_errors_total": "0",
        'tv_writes_total{outcome="ok"}': "0",
        'tv_writes_total{outcome="quorum_timeout"}': "0",
    }
    metrics.inc("tv_writes_total", (("outcome", "ok"),))
    metrics.counter("tv_writes_total", "Writes.", labelled=True, known=known)  # declared again
    assert _series(metrics.render())['tv_writes_total{outcome="ok"}'] == "1"


def test_misuse_is_refused() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="_total"):
        metrics.counter("tv_errors", "Errors.")
    metrics.gauge("tv_queue", "Queued.")
    with pytest.raises(ValueError, match="already a gauge"):
        metrics.histogram("tv_queue", "Queued.")
    with pytest.raises(KeyError):
        metrics.inc("tv_undeclared_total")
    with pytest.raises(KeyError):
        metrics.set_gauge("tv_undeclared", 1)


def test_a_total_set_from_a_running_count_never_decreases() -> None:
    metrics = Metrics()
    metrics.counter("tv_flushes_total", "Flushes.")
    metrics.counter("tv_bytes_total", "Bytes.", labelled=True)
    for value in (5, 9, 3, 9, 12):
        metrics.set_total("tv_flushes_total", value)
    metrics.set_total("tv_bytes_total", 0, (("peer", "n2"),))
    series = _series(metrics.render())
    assert series["tv_flushes_total"] == "12"
    assert series['tv_bytes_total{peer="n2"}'] == "0"  # a series at 0 is still shown


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    metrics = Metrics()
    metrics.histogram("tv_seconds", "Latency.")
    labels = (("route", "tokenize"), ("status", "503"))
    for seconds in (0.0005, 0.003, 0.003, 2.0, 9.0):
        metrics.observe("tv_seconds", seconds, labels)
    text = metrics.render()
    series = _series(text)
    prefix = 'tv_seconds_bucket{route="tokenize",status="503",le='
    buckets = [series[f'{prefix}"{bound:g}"}}'] for bound in LATENCY_BUCKETS_S]
    assert buckets[0] == "1"  # le 0.001
    assert buckets[LATENCY_BUCKETS_S.index(0.005)] == "3"
    assert buckets[LATENCY_BUCKETS_S.index(2.5)] == "4"
    assert series[f'{prefix}"+Inf"}}'] == "5"
    assert series['tv_seconds_count{route="tokenize",status="503"}'] == "5"
    assert float(series['tv_seconds_sum{route="tokenize",status="503"}']) == pytest.approx(
        11.0065, abs=1e-6
    )
    [family] = text_string_to_metric_families(text)
    assert (family.name, family.type, family.documentation) == (
        "tv_seconds",
        "histogram",
        "Latency.",
    )
    names = [sample.name for sample in family.samples]
    assert names == ["tv_seconds_bucket"] * (len(LATENCY_BUCKETS_S) + 1) + [
        "tv_seconds_sum",
        "tv_seconds_count",
    ]


def test_label_values_and_help_text_are_escaped_as_the_format_wants() -> None:
    metrics = Metrics()
    help_text = 'Help with a \\ backslash,\na newline and a "quote".'
    metrics.counter("tv_total", help_text, labelled=True)
    metrics.inc("tv_total", (("peer", 'a"b\\c\nd'),))
    text = metrics.render()
    assert 'tv_total{peer="a\\"b\\\\c\\nd"} 1' in text
    assert '# HELP tv_total Help with a \\\\ backslash,\\na newline and a "quote".\n' in text
    [family] = text_string_to_metric_families(text)
    assert family.documentation == help_text
    [sample] = family.samples
    assert sample.labels == {"peer": 'a"b\\c\nd'}


def test_process_metrics_are_plausible() -> None:
    metrics = Metrics()
    process_metrics.declare(metrics)
    process_metrics.record(metrics)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render())}
    value = {name: family.samples[0].value for name, family in families.items()}
    assert families["process_cpu_seconds"].type == "counter"
    assert 0 < value["process_cpu_seconds"] < time.process_time() + 1
    assert 1 << 20 < value["process_resident_memory_bytes"] < value["process_virtual_memory_bytes"]
    assert 3 <= value["process_open_fds"] <= value["process_max_fds"]
    assert value["process_open_fds"] == len(os.listdir("/proc/self/fd")) - 1
    assert time.time() - 24 * 3600 < value["process_start_time_seconds"] <= time.time()


def test_running_totals_add_field_by_field() -> None:
    one = RunningTotals(store_flushes=2, anti_entropy_passes=5)
    two = RunningTotals(store_flushes=3, timers_dropped=1)
    assert one + two == RunningTotals(store_flushes=5, anti_entropy_passes=5, timers_dropped=1)


async def test_a_node_declares_every_family_with_zero_counters_and_no_value_in_labels(
    tmp_path: Path,
) -> None:
    config_path = _new_cluster(tmp_path / "cluster")
    async with _running(config_path) as peer:
        fresh = {f.name: f for f in _families((await peer.call("GET", "/metrics")).body)}
        for family in fresh.values():
            assert family.documentation, family.name
            if family.type == "counter":
                assert all(s.name.endswith("_total") for s in family.samples), family.name
        writes = fresh["tokenvault_quorum_writes"].samples
        assert {s.labels["outcome"]: s.value for s in writes} == dict.fromkeys(OUTCOMES, 0)
        for name in ("storage_errors", "config_mismatches", "store_flushes", "timers_dropped"):
            [sample] = fresh[f"tokenvault_{name}"].samples
            assert sample.value == 0, name
        events = {s.labels["event"]: s.value for s in fresh["tokenvault_events"].samples}
        assert events["storage_corrupt"] == events["hint_conflict"] == 0

        value = "123-45-6789"
        answer = await peer.tokenize(value)
        token = json.loads(answer.body)["records"][0]["ssn"]
        await peer.call("GET", f"/v1/tokens/{token}", key="alice")
        text = (await peer.call("GET", "/metrics")).body.decode()
        for secret in (value, token, *peer.keys.values()):
            assert secret not in text
        series = _series(text)
        assert series['tokenvault_quorum_writes_total{outcome="ok"}'] == "1"
        assert int(series["tokenvault_store_flushes_total"]) >= 1


async def test_running_totals_survive_a_replaced_store(tmp_path: Path) -> None:
    """A damaged store is replaced and the core rebuilt, both counting from 0 again: the
    counters of /metrics carry on from what the retired ones had counted."""
    config_path = _new_cluster(tmp_path / "cluster")
    data_dir = tmp_path / "cluster" / "data" / "n1"
    async with _running(config_path) as peer:
        tokens = [json.loads((await peer.tokenize(f"123-45-{i:04d}")).body) for i in range(50)]
    async with _running(config_path) as peer:
        for index in range(3):
            assert (await peer.tokenize(f"987-65-{index:04d}")).status == 200
        before = _series((await peer.call("GET", "/metrics")).body.decode())
        flushed_before = int(before["tokenvault_store_writes_flushed_total"])
        assert flushed_before >= 3
        retired = peer.node.store
        flip(sorted((data_dir / "leveldb").glob("*.ldb"))[0], 64, 16)
        wanted = [t["records"][0]["ssn"] for t in tokens]
        await peer.call("POST", "/v1/detokenize", {"tokens": wanted}, "alice")
        await _until(lambda: peer.node.stores_replaced == 1)
        assert (await peer.tokenize("555-55-5555")).status == 200
        assert peer.node.store is not retired  # a new store, counting from 0
        after = _series((await peer.call("GET", "/metrics")).body.decode())
        written = retired.statistics().writes_flushed + peer.node.store.statistics().writes_flushed
        assert int(after["tokenvault_store_writes_flushed_total"]) == written > flushed_before
        assert after["tokenvault_stores_replaced_total"] == "1"


def _families(body: bytes) -> list[Metric]:
    return list(text_string_to_metric_families(body.decode()))


def test_the_events_and_outcomes_counted_from_zero_are_real_and_documented() -> None:
    root = Path(__file__).parents[1]
    sources = "".join(path.read_text() for path in (root / "tokenvault").rglob("*.py"))
    for event in CONFLICT_EVENTS:  # named by hand in node_metrics.py: still emitted somewhere
        assert sources.count(f'"{event}"') >= 2, event
    api = (root / "docs" / "api.md").read_text()
    [events_row] = [line for line in api.splitlines() if line.startswith("| `tokenvault_events")]
    for event in ALERTED_EVENTS:
        assert f"`{event}`" in events_row, event
    metrics_section = api[api.index("\n## Metrics\n") :]
    for outcome in OUTCOMES:
        assert f"`{outcome}`" in metrics_section, outcome
