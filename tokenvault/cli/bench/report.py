"""The report of `tokenvault bench`: every measurement, the settings and versions, and how they
are shown: an aligned table on stdout, or one JSON document with --json.

Rules:
- One row per workload: tokenvault's requests/s, keys/s, p50, p99 and server CPU per key; the
  etcd operation it is compared with and the same figures; the ratio of keys/s (tokenvault /
  etcd). With several rounds a cell is the range min-max; a ratio is taken within each round
  (the same sitting), never across rounds.
- Numbers carry thousands separators. A figure with failures marks its cell with "!" and gets
  a note under the table with its counts; it is never silently counted.
- CPU per key is the servers' user+system CPU during the figure divided by the keys answered
  (steadier than rates on a shared machine); "-" where the servers are not the bench's own.
- Without etcd, the etcd columns and the ratio are "-" and the header says why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tokenvault.cli.bench.figures import Figure
from tokenvault.cli.bench.workloads import Workload

TOKENVAULT = "tokenvault"
ETCD = "etcd"
_FLAG = "!"
_COLUMN_GAP = "  "
_GROUP_GAP = " | "


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    system: str  # TOKENVAULT or ETCD
    workload: Workload
    round_number: int
    figure: Figure
    server_cpu_s: float | None  # the servers' CPU during the figure, when the bench owns them

    @property
    def cpu_us_per_key(self) -> float | None:
        keys = self.figure.ok * self.figure.batch
        if self.server_cpu_s is None or keys == 0:
            return None
        return self.server_cpu_s * 1e6 / keys

    def failure_note(self) -> str:
        f = self.figure
        name = self.workload.name
        if self.system == ETCD:
            name = f"{self.workload.etcd_operation} (vs {self.workload.name})"
        return (
            f"{_FLAG} {self.system} {name} round {self.round_number}:"
            f" {f.not_ok:,} wrong answers ({f.non2xx:,} non-2xx),"
            f" {f.errors:,} socket errors or timeouts, {f.ok:,} good, of {f.requests:,} answered"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    machine: str  # cores first
    versions: dict[str, str]  # tokenvault, python, wrk, etcd where known
    load_generator: str  # what drove the load, said plainly (wrk, or the fallback: not wrk)
    tokenvault_cluster: str
    etcd_cluster: str  # or why there is none
    connections: int
    seconds: int
    rounds: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    settings: Settings
    workloads: tuple[Workload, ...]
    measurements: tuple[Measurement, ...]

    @property
    def flagged(self) -> bool:
        return any(m.figure.flagged for m in self.measurements)

    def of(self, system: str, workload: Workload) -> list[Measurement]:
        return [m for m in self.measurements if m.system == system and m.workload == workload]

    def ratios(self, workload: Workload) -> list[float]:
        """keys/s tokenvault / etcd, one per round that has both."""
        etcd = {m.round_number: m.figure for m in self.of(ETCD, workload)}
        return [
            m.figure.keys_per_s / etcd[m.round_number].keys_per_s
            for m in self.of(TOKENVAULT, workload)
            if m.round_number in etcd and etcd[m.round_number].keys_per_s > 0
        ]


def render_table(report: Report) -> str:
    s = report.settings
    header = [
        f"tokenvault bench: {s.rounds} round(s), {s.seconds} s per figure,"
        f" {s.connections} connections, load generator: {s.load_generator}",
        f"machine: {s.machine}",
        "versions: " + ", ".join(f"{name} {version}" for name, version in s.versions.items()),
        f"tokenvault: {s.tokenvault_cluster}",
        f"etcd: {s.etcd_cluster}",
        "",
    ]
    columns = [
        "workload", "req/s", "keys/s", "p50 ms", "p99 ms", "CPU us/key",
        "operation", "req/s", "keys/s", "p50 ms", "p99 ms", "CPU us/key", "keys/s ratio",
    ]  # fmt: skip
    rows = [_row(report, workload) for workload in report.workloads]
    widths = [max(len(line[i]) for line in [columns, *rows]) for i in range(len(columns))]
    groups = (1, 5, 6, 1)  # workload | tokenvault | etcd | ratio
    left = {0, 6}  # the names; numbers are right-aligned
    titles = ["", TOKENVAULT, ETCD, "tokenvault/etcd"]
    lines = [
        _line(titles, _group_widths(widths, groups), (1, 1, 1, 1), left=set(range(4))),
        _line(columns, widths, groups, left=left),
        _line(["-" * width for width in widths], widths, groups, left=left),
        *(_line(row, widths, groups, left=left) for row in rows),
    ]
    notes = [m.failure_note() for m in report.measurements if m.figure.flagged]
    return "\n".join([*header, *lines, *(["", *notes] if notes else [])])


def _row(report: Report, workload: Workload) -> list[str]:
    tokenvault, etcd = report.of(TOKENVAULT, workload), report.of(ETCD, workload)
    ratios = report.ratios(workload)
    return [
        workload.name,
        *_cells(tokenvault),
        workload.etcd_operation if etcd else "-",
        *_cells(etcd),
        _span(ratios, "{:,.2f}") if ratios else "-",
    ]


def _cells(measurements: Sequence[Measurement]) -> list[str]:
    if not measurements:
        return ["-"] * 5
    flag = _FLAG if any(m.figure.flagged for m in measurements) else ""
    figures = [m.figure for m in measurements]
    cpu = [m.cpu_us_per_key for m in measurements]
    known_cpu = [value for value in cpu if value is not None]
    return [
        _span([f.requests_per_s for f in figures], "{:,.0f}") + flag,
        _span([f.keys_per_s for f in figures], "{:,.0f}"),
        _span([f.p50_ms for f in figures], "{:,.1f}"),
        _span([f.p99_ms for f in figures], "{:,.1f}"),
        _span(known_cpu, "{:,.0f}") if known_cpu else "-",
    ]


def _span(values: Sequence[float], form: str) -> str:
    low, high = form.format(min(values)), form.format(max(values))
    return low if low == high else f"{low}-{high}"


def _group_widths(widths: Sequence[int], groups: Sequence[int]) -> list[int]:
    """The width of each group of columns, the separators between its columns included."""
    result, start = [], 0
    for size in groups:
        result.append(sum(widths[start : start + size]) + len(_COLUMN_GAP) * (size - 1))
        start += size
    return result


def _line(
    cells: Sequence[str], widths: Sequence[int], groups: Sequence[int], *, left: set[int]
) -> str:
    aligned = [
        cell.ljust(width) if i in left else cell.rjust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    ]
    parts, start = [], 0
    for size in groups:
        parts.append(_COLUMN_GAP.join(aligned[start : start + size]))
        start += size
    return _GROUP_GAP.join(parts).rstrip()


def render_json(report: Report) -> str:
    s = report.settings
    document: dict[str, Any] = {
        "settings": {
            "machine": s.machine,
            "versions": s.versions,
            "load_generator": s.load_generator,
            "tokenvault_cluster": s.tokenvault_cluster,
            "etcd_cluster": s.etcd_cluster,
            "connections": s.connections,
            "seconds": s.seconds,
            "rounds": s.rounds,
        },
        "figures": [_figure_json(m) for m in report.measurements],
        "ratios": {w.name: report.ratios(w) for w in report.workloads if report.ratios(w)},
        "flagged": report.flagged,
    }
    return json.dumps(document, indent=2)


def _figure_json(m: Measurement) -> dict[str, Any]:
    f = m.figure
    rounded: Callable[[float], float] = lambda value: round(value, 3)  # noqa: E731
    return {
        "system": m.system,
        "workload": m.workload.name,
        "operation": m.workload.etcd_operation if m.system == ETCD else m.workload.name,
        "round": m.round_number,
        "batch": f.batch,
        "requests": f.requests,
        "ok": f.ok,
        "not_ok": f.not_ok,
        "errors": f.errors,
        "non2xx": f.non2xx,
        "duration_s": rounded(f.duration_s),
        "requests_per_s": rounded(f.requests_per_s),
        "keys_per_s": rounded(f.keys_per_s),
        "p50_ms": f.p50_ms,
        "p99_ms": f.p99_ms,
        "max_ms": f.max_ms,
        "server_cpu_us_per_key": None if m.cpu_us_per_key is None else rounded(m.cpu_us_per_key),
        "flagged": f.flagged,
    }
