"""Metrics: counters, gauges and histograms in the Prometheus text format, exactly."""

from __future__ import annotations

import pytest

from tokenvault.metrics import LATENCY_BUCKETS_S, Metrics


def _series(text: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))


def test_counters_and_gauges_render_exactly_with_help_and_type() -> None:
    metrics = Metrics()
    metrics.describe("tv_requests_total", "Requests.")
    metrics.inc("tv_requests_total", (("route", "tokenize"), ("status", "200")), 1_234_567)
    metrics.inc("tv_requests_total", (("route", "tokenize"), ("status", "200")))
    metrics.set_gauge("tv_ratio", 0.125)
    metrics.set_gauge("tv_big", 2**53)
    text = metrics.render()
    assert "# HELP tv_requests_total Requests.\n# TYPE tv_requests_total counter\n" in text
    assert "# TYPE tv_ratio gauge" in text
    series = _series(text)
    assert series['tv_requests_total{route="tokenize",status="200"}'] == "1234568"
    assert series["tv_ratio"] == "0.125"
    assert series["tv_big"] == str(2**53)


def test_histogram_buckets_are_cumulative_with_count_and_sum() -> None:
    metrics = Metrics()
    labels = (("route", "tokenize"), ("status", "503"))
    for seconds in (0.0005, 0.003, 0.003, 2.0, 9.0):
        metrics.observe("tv_seconds", seconds, labels)
    series = _series(metrics.render())
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


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.inc("tv_total", (("peer", 'a"b\\c\nd'),))
    assert 'tv_total{peer="a\\"b\\\\c\\nd"} 1' in metrics.render()
