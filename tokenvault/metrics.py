"""Counters, gauges and latency histograms, rendered in the Prometheus text format (0.0.4) for
`/metrics`.

Rules:
- Every family is declared before use, with its type and HELP text (`counter`, `gauge`,
  `histogram`); `render` writes `# HELP` and `# TYPE` for every declared family, even one with no
  series yet. Updating a family never declared raises KeyError (a programming error). Declaring a
  family again keeps its series (a second declaration may add known label values).
- Counters are named `*_total`. A counter without labels exists at 0 from its declaration; a
  labelled one starts with the label values declared as known (outcomes, reasons: fixed sets), at
  0, and gains a series the first time another value is counted.
- `set_total` sets a counter from a running total kept elsewhere (a core's statistics): the
  rendered value never decreases within a process (a lower value is ignored).
- Label values are route names, statuses, event names, reasons and peer ids: never values, tokens
  or keys. The number of series is bounded: labels come from fixed sets.
- Numbers are rendered exactly: counts as integers, other values as Python's shortest repr.
- Escaping as the format wants: in label values `\\`, `"` and newline; in HELP text `\\` and
  newline.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import TypeVar

Labels = tuple[tuple[str, str], ...]
T = TypeVar("T")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self._kinds: dict[str, str] = {}
        self._help: dict[str, str] = {}
        self._counters: dict[str, dict[Labels, float]] = {}
        self._gauges: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, list[float]]] = {}

    # -- declaring -----------------------------------------------------------------------------

    def counter(
        self, name: str, help_text: str, *, labelled: bool = False, known: Iterable[Labels] = ()
    ) -> None:
        """A counter family: at 0 from now if not `labelled`, else one series at 0 per `known`
        label set."""
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {name}")
        series = self._declare(name, "counter", help_text, self._counters)
        for labels in ((),) if not labelled else known:
            series.setdefault(labels, 0.0)

    def gauge(self, name: str, help_text: str) -> None:
        self._declare(name, "gauge", help_text, self._gauges)

    def histogram(self, name: str, help_text: str) -> None:
        """A latency histogram over LATENCY_BUCKETS_S (seconds)."""
        self._declare(name, "histogram", help_text, self._histograms)

    def _declare(
        self, name: str, kind: str, help_text: str, families: dict[str, dict[Labels, T]]
    ) -> dict[Labels, T]:
        declared = self._kinds.setdefault(name, kind)
        if declared != kind:
            raise ValueError(f"{name} is already a {declared}")
        self._help[name] = help_text
        return families.setdefault(name, {})

    # -- updating (the hot path: one dict lookup and one store) --------------------------------

    def inc(self, name: str, labels: Labels = (), amount: float = 1.0) -> None:
        series = self._counters[name]
        series[labels] = series.get(labels, 0.0) + amount

    def set_total(self, name: str, value: float, labels: Labels = ()) -> None:
        """A counter whose running total is kept elsewhere (a core's statistics)."""
        series = self._counters[name]
        if value > series.get(labels, 0.0):
            series[labels] = value
        else:
            series.setdefault(labels, 0.0)

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

    # -- rendering -----------------------------------------------------------------------------

    def render(self) -> str:
        lines: list[str] = []
        for name, kind in sorted(self._kinds.items()):
            lines.append(f"# HELP {name} {_escape_help(self._help[name])}")
            lines.append(f"# TYPE {name} {kind}")
            if kind == "histogram":
                _render_histogram(lines, name, self._histograms[name])
                continue
            series = self._counters[name] if kind == "counter" else self._gauges[name]
            lines.extend(f"{name}{_labels(lb)} {_number(v)}" for lb, v in sorted(series.items()))
        return "\n".join(lines) + "\n"


def _render_histogram(lines: list[str], name: str, series: dict[Labels, list[float]]) -> None:
    for labels, counts in sorted(series.items()):
        cumulative = 0.0
        for bound, count in zip((*LATENCY_BUCKETS_S, None), counts[:-1], strict=True):
            cumulative += count
            le = "+Inf" if bound is None else f"{bound:g}"
            lines.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {_number(cumulative)}")
        lines.append(f"{name}_sum{_labels(labels)} {counts[-1]:.6f}")
        lines.append(f"{name}_count{_labels(labels)} {_number(cumulative)}")


def _number(value: float) -> str:
    """Exact: a count stays an integer however large (`:g` would round 1234567 to 1.23457e+06)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
