"""Counters and latency histograms, rendered in the Prometheus text format for `/metrics`.

Rules:
- Label values are route names, statuses, event names and peer ids: never values, tokens or keys.
- The number of series is bounded: labels come from fixed sets (routes, events, peers).
- Numbers are rendered exactly: counts as integers, other values as Python's shortest repr.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._help: dict[str, str] = {}
        self._histograms: dict[str, dict[Labels, list[float]]] = defaultdict(dict)
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(dict)

    def describe(self, name: str, text: str) -> None:
        self._help[name] = text

    def inc(self, name: str, labels: Labels = (), amount: float = 1.0) -> None:
        series = self._counters[name]
        series[labels] = series.get(labels, 0.0) + amount

    def set_total(self, name: str, value: float, labels: Labels = ()) -> None:
        """A counter whose running total is kept elsewhere (a core's statistics)."""
        self._counters[name][labels] = value

    def set_gauge(self, name: str, value: float, labels: Labels = ()) -> None:
        self._gauges[name][labels] = value

    def observe(self, name: str, seconds: float, labels: Labels = ()) -> None:
        series = self._histograms[name]
        counts = series.get(labels)
        if counts is None:
            # one slot per bucket, +Inf, then the sum
            counts = series[labels] = [0.0] * (len(LATENCY_BUCKETS_S) + 2)
        counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        counts[-1] += seconds

    def render(self) -> str:
        lines: list[str] = []
        for name, series in sorted(self._counters.items()):
            self._header(lines, name, "counter")
            lines.extend(f"{name}{_labels(lb)} {_number(v)}" for lb, v in sorted(series.items()))
        for name, series in sorted(self._gauges.items()):
            self._header(lines, name, "gauge")
            lines.extend(f"{name}{_labels(lb)} {_number(v)}" for lb, v in sorted(series.items()))
        for name, hseries in sorted(self._histograms.items()):
            self._header(lines, name, "histogram")
            for labels, counts in sorted(hseries.items()):
                cumulative = 0.0
                for bound, count in zip((*LATENCY_BUCKETS_S, None), counts[:-1], strict=True):
                    cumulative += count
                    le = "+Inf" if bound is None else f"{bound:g}"
                    bucket = _labels((*labels, ("le", le)))
                    lines.append(f"{name}_bucket{bucket} {_number(cumulative)}")
                lines.append(f"{name}_count{_labels(labels)} {_number(cumulative)}")
                lines.append(f"{name}_sum{_labels(labels)} {counts[-1]:.6f}")
        return "\n".join(lines) + "\n"

    def _header(self, lines: list[str], name: str, kind: str) -> None:
        if name in self._help:
            lines.append(f"# HELP {name} {self._help[name]}")
        lines.append(f"# TYPE {name} {kind}")


def _number(value: float) -> str:
    """Exact: a count stays an integer however large (`:g` would round 1234567 to 1.23457e+06)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
