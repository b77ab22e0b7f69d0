"""A load generator's RESULT line: parsed into counts, turned into rates, flagged on failures,
combined over spread generators."""

from __future__ import annotations

import pytest

from tokenvault.cli.bench.figures import Figure, ResultLineError, combine, parse_result

WRK_OUTPUT = """\
Running 3s test @ http://127.0.0.1:41001/v1/tokenize
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    30.12ms   10.01ms 120.00ms   80.00%
    Req/Sec     2.10k   100.00     2.30k    70.00%
  6300 requests in 3.00s, 1.20MB read
Requests/sec:   2100.00
Transfer/sec:    410.00KB
RESULT batch=100 requests=6300 ok=6290 not_ok=10 errors=2 non2xx=7 duration_s=3.000000 \
p50_ms=29.500 p99_ms=95.250 max_ms=120.000
"""


def figure(**changes: float) -> Figure:
    fields: dict[str, float] = dict(
        batch=1, requests=100, ok=100, not_ok=0, errors=0, non2xx=0,
        duration_s=2.0, p50_ms=10.0, p99_ms=20.0, max_ms=30.0,
    )  # fmt: skip
    fields.update(changes)
    return Figure(**fields)  # type: ignore[arg-type]


def test_wrk_output_is_parsed_from_its_result_line() -> None:
    parsed = parse_result(WRK_OUTPUT)
    assert parsed == Figure(
        batch=100, requests=6300, ok=6290, not_ok=10, errors=2, non2xx=7,
        duration_s=3.0, p50_ms=29.5, p99_ms=95.25, max_ms=120.0,
    )  # fmt: skip
    assert parsed.requests_per_s == pytest.approx(2100.0)
    # keys/s counts only good answers
    assert parsed.keys_per_s == pytest.approx(6290 * 100 / 3.0)
    assert parsed.flagged


def test_output_without_a_result_line_or_a_field_is_refused() -> None:
    with pytest.raises(ResultLineError, match="no RESULT line"):
        parse_result("unable to connect to 127.0.0.1:1 Connection refused\n")
    with pytest.raises(ResultLineError, match="p99_ms"):
        parse_result(WRK_OUTPUT.replace("p99_ms=95.250 ", ""))


def test_result_line_reads_back_the_same_figure() -> None:
    original = figure(batch=100, ok=97, not_ok=3, non2xx=3, p99_ms=123.456)
    assert parse_result("noise\n" + original.result_line() + "\n") == original


@pytest.mark.parametrize(
    ("changes", "flagged"),
    [({}, False), ({"not_ok": 1}, True), ({"errors": 1}, True), ({"ok": 0}, True)],
)
def test_any_wrong_answer_error_or_no_good_answer_flags_the_figure(
    changes: dict[str, float], flagged: bool
) -> None:
    assert figure(**changes).flagged is flagged


def test_spread_figures_add_counts_and_keep_the_worst_latency() -> None:
    first = figure(requests=100, ok=100, duration_s=2.0, p50_ms=10.0, p99_ms=40.0)
    second = figure(requests=50, ok=49, not_ok=1, duration_s=2.1, p50_ms=12.0, p99_ms=30.0)
    combined = combine([first, second])
    assert (combined.requests, combined.ok, combined.not_ok) == (150, 149, 1)
    assert (combined.duration_s, combined.p50_ms, combined.p99_ms) == (2.1, 12.0, 40.0)
    assert combined.flagged
