"""One figure of `tokenvault bench`: the raw counts of a load generator's run, parsed from the
RESULT line that the wrk scripts (lua/common.lua) and the Python fallback both print.

Rules:
- A RESULT line holds counts and latencies only; rates are computed here, once: requests/s from
  every answered request, keys/s from the good answers alone (a wrong answer or an error moves
  no key).
- A figure with any wrong answer (non-2xx, or a 2xx without the expected body) or any socket
  error is flagged: it is shown as such, never silently counted.
- Spread figures combine several generators' runs: counts add up, the duration is the longest,
  and the latencies are the worst of them (percentiles of separate runs do not merge).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

RESULT_PREFIX = "RESULT "
_FIELD = re.compile(r"(\w+)=([0-9.]+)")
_COUNTS = ("batch", "requests", "ok", "not_ok", "errors", "non2xx")
_TIMES = ("duration_s", "p50_ms", "p99_ms", "max_ms")


class ResultLineError(ValueError):
    """A load generator printed no RESULT line, or one without every field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    batch: int  # keys per request
    requests: int  # answered requests, good or not
    ok: int  # good answers
    not_ok: int  # wrong answers: non-2xx, or a 2xx without the expected body
    errors: int  # socket errors: connect, read, write, timeout
    non2xx: int  # of not_ok, the answers whose status was not 2xx
    duration_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def keys_per_s(self) -> float:
        return self.ok * self.batch / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def flagged(self) -> bool:
        return self.not_ok > 0 or self.errors > 0 or self.ok == 0

    def result_line(self) -> str:
        """The RESULT line that parse_result reads back: what the Python generator prints."""
        counts = " ".join(f"{name}={getattr(self, name)}" for name in _COUNTS)
        return (
            f"{RESULT_PREFIX}{counts} duration_s={self.duration_s:.6f} p50_ms={self.p50_ms:.3f}"
            f" p99_ms={self.p99_ms:.3f} max_ms={self.max_ms:.3f}"
        )


def parse_result(output: str) -> Figure:
    """The figure of the first RESULT line in a load generator's output."""
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            fields = dict(_FIELD.findall(line))
            missing = [name for name in (*_COUNTS, *_TIMES) if name not in fields]
            if missing:
                raise ResultLineError(f"RESULT line without {', '.join(missing)}")
            return Figure(
                batch=int(fields["batch"]),
                requests=int(fields["requests"]),
                ok=int(fields["ok"]),
                not_ok=int(fields["not_ok"]),
                errors=int(fields["errors"]),
                non2xx=int(fields["non2xx"]),
                duration_s=float(fields["duration_s"]),
                p50_ms=float(fields["p50_ms"]),
                p99_ms=float(fields["p99_ms"]),
                max_ms=float(fields["max_ms"]),
            )
    raise ResultLineError("no RESULT line in the load generator's output")


def combine(figures: Sequence[Figure]) -> Figure:
    """One figure of several generators run side by side against different endpoints."""
    assert figures, "combine needs at least one figure"
    assert len({figure.batch for figure in figures}) == 1, "figures of one batch size only"
    return Figure(
        batch=figures[0].batch,
        requests=sum(figure.requests for figure in figures),
        ok=sum(figure.ok for figure in figures),
        not_ok=sum(figure.not_ok for figure in figures),
        errors=sum(figure.errors for figure in figures),
        non2xx=sum(figure.non2xx for figure in figures),
        duration_s=max(figure.duration_s for figure in figures),
        p50_ms=max(figure.p50_ms for figure in figures),
        p99_ms=max(figure.p99_ms for figure in figures),
        max_ms=max(figure.max_ms for figure in figures),
    )
