"""The progress line of `tokenvault status` on stderr while it waits for answers.

Rules:
- Only on a terminal (stderr a TTY), and only once PROGRESS_DELAY_S passed without every answer:
  a quick status prints no progress at all, and a pipe or a log never gets control characters.
- One line, rewritten in place ("\\r" and erase to its end), naming what is awaited (peers by
  URL, owners by name) and the seconds waited; `clear` erases it before the report is printed.
"""

from __future__ import annotations

from typing import TextIO

from tokenvault.cli.status_probe import Probed

PROGRESS_DELAY_S = 0.3
_WAITING_SHOWN_MAX = 3
_ERASE_LINE = "\r\x1b[K"


class ProgressLine:
    def __init__(self, err: TextIO) -> None:
        self._err = err
        self._enabled = err.isatty()
        self._shown = False

    def update(self, probed: Probed) -> None:
        if not self._enabled or probed.elapsed_s < PROGRESS_DELAY_S:
            return
        waiting = probed.waiting_for()
        if not waiting:
            return
        named = ", ".join(waiting[:_WAITING_SHOWN_MAX])
        if len(waiting) > _WAITING_SHOWN_MAX:
            named += f" and {len(waiting) - _WAITING_SHOWN_MAX} more"
        asked = len(probed.peers)
        text = (
            f"tokenvault status: asked {asked} peer{'' if asked == 1 else 's'},"
            f" waiting for {named} ({probed.elapsed_s:.1f} s)"
        )
        self._err.write(_ERASE_LINE + text)
        self._err.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._err.write(_ERASE_LINE)
            self._err.flush()
            self._shown = False
