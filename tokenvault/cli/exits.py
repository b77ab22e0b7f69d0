"""How a command of the `tokenvault` command line ends: its exit code, and its one error line.

Rules:
- Exit code 0 is success, 1 a failure, 2 bad usage or a bad configuration, 130 an interruption
  (Ctrl-C); `status` adds its own (status_verdict.py).
- An expected failure is a CliError: `main` prints its message as one line on stderr, prefixed
  `tokenvault: `, and returns its exit code; it never becomes a traceback.
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


class CliError(Exception):
    """An expected failure: its message is printed as one line, and main returns exit_code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def print_error(message: str) -> None:
    print(f"tokenvault: {message}", file=sys.stderr, flush=True)
