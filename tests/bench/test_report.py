"""The report: one row per workload with thousands separators, the ratio of keys/s within each
round, failures flagged and explained, ranges over rounds, and the same as JSON."""

from __future__ import annotations

import json

from tokenvault.cli.bench.figures import Figure
from tokenvault.cli.bench.report import (
    ETCD,
    TOKENVAULT,
    Measurement,
    Report,
    Settings,
    render_json,
    render_table,
)
from tokenvault.cli.bench.workloads import Workload, parse_workloads

TOKENIZE_100, DETOKENIZE_1 = parse_workloads("tokenize-100,detokenize-1")


def settings(etcd_cluster: str = "a fresh 3-member cluster per round") -> Settings:
    return Settings(
        machine="2 cores, Linux",
        versions={"tokenvault": "0.1.0", "wrk": "4.1.0"},
        load_generator="wrk -t1",
        tokenvault_cluster="a fresh 3-peer cluster per round",
        etcd_cluster=etcd_cluster,
        connections=64,
        seconds=10,
        rounds=2,
    )


def measured(
    system: str,
    workload: Workload,
    round_number: int,
    requests: int,
    *,
    not_ok: int = 0,
    cpu_s: float | None = 1.0,
) -> Measurement:
    figure = Figure(
        batch=workload.batch, requests=requests, ok=requests - not_ok, not_ok=not_ok,
        errors=0, non2xx=not_ok, duration_s=10.0, p50_ms=12.25, p99_ms=1234.5, max_ms=2000.0,
    )  # fmt: skip
    return Measurement(
        system=system, workload=workload, round_number=round_number, figure=figure,
        server_cpu_s=cpu_s,
    )  # fmt: skip


def row_of(table: str, workload: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(workload + " "))
    return line.replace("|", " ").split()


def test_table_has_separators_ratios_per_round_and_versions() -> None:
    report = Report(
        settings=settings(),
        workloads=(TOKENIZE_100,),
        measurements=(
            measured(TOKENVAULT, TOKENIZE_100, 1, 2_500),  # 25,000 keys/s
            measured(ETCD, TOKENIZE_100, 1, 2_000),  # 20,000 keys/s: ratio 1.25
            measured(TOKENVAULT, TOKENIZE_100, 2, 3_000),  # 30,000 keys/s
            measured(ETCD, TOKENIZE_100, 2, 3_000),  # ratio 1.00
        ),
    )
    table = render_table(report)
    assert "machine: 2 cores" in table
    assert "tokenvault 0.1.0, wrk 4.1.0" in table
    assert row_of(table, "tokenize-100") == [
        "tokenize-100", "250-300", "25,000-30,000", "12.2", "1,234.5", "3-4",
        "put-if-absent-100", "200-300", "20,000-30,000", "12.2", "1,234.5", "3-5",
        "1.00-1.25",
    ]  # fmt: skip
    assert not report.flagged
    assert "!" not in table


def test_a_figure_with_failures_is_flagged_and_explained() -> None:
    report = Report(
        settings=settings(),
        workloads=(DETOKENIZE_1,),
        measurements=(
            measured(TOKENVAULT, DETOKENIZE_1, 1, 1_000, not_ok=7),
            measured(ETCD, DETOKENIZE_1, 1, 1_000),
        ),
    )
    table = render_table(report)
    assert row_of(table, "detokenize-1")[1] == "100!"
    assert "! tokenvault detokenize-1 round 1: 7 wrong answers (7 non-2xx)" in table
    assert report.flagged


def test_without_etcd_there_is_no_ratio() -> None:
    report = Report(
        settings=settings("not installed (apt-get install etcd-server): no ratio"),
        workloads=(DETOKENIZE_1,),
        measurements=(measured(TOKENVAULT, DETOKENIZE_1, 1, 12_345, cpu_s=None),),
    )
    table = render_table(report)
    assert "etcd: not installed" in table
    assert row_of(table, "detokenize-1") == [
        "detokenize-1", "1,234", "1,234", "12.2", "1,234.5", "-",
        "-", "-", "-", "-", "-", "-", "-",
    ]  # fmt: skip


def test_json_has_every_figure_and_the_ratios() -> None:
    report = Report(
        settings=settings(),
        workloads=(TOKENIZE_100,),
        measurements=(
            measured(TOKENVAULT, TOKENIZE_100, 1, 2_500),
            measured(ETCD, TOKENIZE_100, 1, 2_000, not_ok=1),
        ),
    )
    document = json.loads(render_json(report))
    assert [f["system"] for f in document["figures"]] == ["tokenvault", "etcd"]
    assert document["figures"][1]["operation"] == "put-if-absent-100"
    assert document["figures"][1]["flagged"] is True
    assert document["figures"][0]["keys_per_s"] == 25_000.0
    assert document["ratios"]["tokenize-100"] == [25_000 / 19_990]
    assert document["flagged"] is True
