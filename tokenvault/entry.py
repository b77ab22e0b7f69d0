"""The `tokenvault` console script and `python -m tokenvault`: signals first, then the CLI.

Rules:
- Nothing heavy is imported before the signals are set: loading the command line takes about
  half a second, and a signal in that time must not print a traceback (Ctrl-C) or be ignored
  (SIGTERM to a container's PID 1, whose default disposition ignores it).
- While the CLI loads, Ctrl-C ends the process quietly (the default action of SIGINT) and
  SIGTERM exits 0 at once (nothing was done yet); once it is loaded, Python's usual handlers
  are back and each command sets what it needs (`node` its own); a Ctrl-C then ends the
  command quietly with exit code 130 (EXIT_INTERRUPTED), wherever it comes.
- A reader that goes away (`tokenvault status | head -3`) ends the command quietly with exit
  code 1, as Python's documentation recommends for a broken pipe: no traceback.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _exit_while_loading)
    from tokenvault.cli import main as cli_main
    from tokenvault.cli.exits import EXIT_INTERRUPTED

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        code = cli_main()
        sys.stdout.flush()  # here, not at exit, so that a broken pipe is caught
    except KeyboardInterrupt:  # Ctrl-C at any point of the command: quietly, the shell's code
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # exit's flush: nowhere
        return 1
    return code


def _exit_while_loading(signum: int, frame: object) -> None:
    os._exit(0)
