"""The progress lines of `tokenvault bench`, on stderr: one line per figure, begun when it starts
and ended with its result when it finishes, plus a line for each step between figures.

Rules: stdout carries the report alone; nothing here shows a key or a value.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tokenvault.cli.bench.figures import Figure


class Progress:
    def __init__(self, total_figures: int, stream: TextIO | None = None) -> None:
        self._total = total_figures
        self._done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._line_open = False

    def note(self, message: str) -> None:
        self._end_line()
        self._stream.write(f"{message}\n")
        self._stream.flush()

    def start(self, label: str, seconds: int) -> None:
        self._end_line()
        self._stream.write(f"[{self._done + 1}/{self._total}] {label} ... {seconds} s ")
        self._stream.flush()
        self._line_open = True

    def finish(self, figure: Figure) -> None:
        self._done += 1
        flag = "  FAILURES: see the table" if figure.flagged else ""
        self._stream.write(
            f"-> {figure.requests_per_s:,.0f} req/s, {figure.keys_per_s:,.0f} keys/s,"
            f" p99 {figure.p99_ms:,.1f} ms{flag}\n"
        )
        self._stream.flush()
        self._line_open = False

    def _end_line(self) -> None:
        if self._line_open:
            self._stream.write("\n")
            self._line_open = False
