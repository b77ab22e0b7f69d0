"""The load generators of `tokenvault bench`: wrk where it is installed, else a Python fallback
in separate processes; either prints the RESULT line that figures.parse_result reads.

Rules:
- A load is one generator process per endpoint: one endpoint with every connection, or (spread)
  one per member with connections // members each, all started together and awaited together.
- wrk runs as `wrk -t1 -cC -dS -s SCRIPT URL` with the package's Lua scripts; the fallback runs
  `python -m tokenvault.cli.bench.python_load` with the same arguments' meaning. Both read the
  same environment (BATCH, RUN, KEY, TOKENS, N): an API key never appears on a command line.
- Every generator gets its own RUN, so that fresh values never repeat across processes or runs.
- A request unanswered after REQUEST_TIMEOUT_S counts as a socket error in both generators
  (wrk's own default, 2 s, would also leave slow answers out of its latencies).
- A generator that outlives its duration by LOAD_GRACE_S is killed and the load fails; every one
  is stopped on every way out.
"""

from __future__ import annotations

import enum
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tokenvault.cli.bench.figures import Figure, ResultLineError, combine, parse_result
from tokenvault.cli.bench.processes import stop_processes, wait_for_exit
from tokenvault.cli.bench.python_load import REQUEST_TIMEOUT_S
from tokenvault.cli.bench.workloads import Shape
from tokenvault.cli.exits import CliError
from tokenvault.cli.peer_processes import StopSignals

LOAD_GRACE_S = 30.0
_OUTPUT_TAIL_CHARS = 400


class Generator(enum.Enum):
    WRK = "wrk"
    PYTHON = "python"

    @property
    def label(self) -> str:
        return "wrk -t1" if self is Generator.WRK else "python fallback (not wrk)"


def choose_generator(asked: str) -> Generator:
    """wrk when asked or (auto) when installed, else the Python fallback."""
    if asked == Generator.PYTHON.value:
        return Generator.PYTHON
    if shutil.which("wrk") is not None:
        return Generator.WRK
    if asked == Generator.WRK.value:
        raise CliError("--load-generator wrk: wrk is not installed (apt-get install wrk)", 2)
    return Generator.PYTHON


def wrk_version() -> str | None:
    """wrk's version (e.g. 'debian/4.1.0-3+b2'), or None when not installed."""
    if shutil.which("wrk") is None:
        return None
    completed = subprocess.run(
        ["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    words = (completed.stdout + completed.stderr).split()
    return words[1] if len(words) > 1 and words[0] == "wrk" else "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    shape: Shape
    batch: int
    urls: Sequence[str]  # one generator per URL (scheme, host and port)
    connections: int  # in all, shared out over the URLs
    seconds: int
    environment: Mapping[str, str] = field(default_factory=dict)  # KEY, TOKENS, N


def run_load(load: Load, generator: Generator, stop: StopSignals, work_dir: Path) -> Figure:
    """Runs the load to its end and returns its figure (combined over the generators)."""
    per_url = max(load.connections // len(load.urls), 1)
    processes: list[subprocess.Popen[bytes]] = []
    outputs: list[Path] = []
    try:
        for url in load.urls:
            output = Path(tempfile.mkstemp(prefix="load-", suffix=".out", dir=work_dir)[1])
            outputs.append(output)
            processes.append(
                _start(load, generator, url + load.shape.path(load.batch), per_url, output)
            )
        if not wait_for_exit(processes, stop, load.seconds + LOAD_GRACE_S):
            raise CliError(f"the load generator ran {LOAD_GRACE_S:.0f} s past its duration")
        return combine([_figure_of(output, generator) for output in outputs])
    finally:
        stop_processes(processes)


def _start(
    load: Load, generator: Generator, url: str, connections: int, output: Path
) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        **load.environment,
        "BATCH": str(load.batch),
        "RUN": secrets.token_hex(6),
        "BENCH_LUA_DIR": str(_lua_dir()),
    }
    if generator is Generator.WRK:
        script = str(_lua_dir() / load.shape.script_name)
        command = [
            "wrk", "-t1", f"-c{connections}", f"-d{load.seconds}s",
            f"--timeout={REQUEST_TIMEOUT_S:.0f}s", "-s", script, url,
        ]  # fmt: skip
    else:
        command = [
            sys.executable,
            "-m",
            "tokenvault.cli.bench.python_load",
            "--shape",
            load.shape.value,
            "--connections",
            str(connections),
            "--seconds",
            str(load.seconds),
            url,
        ]
    with open(output, "wb") as sink:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )


def _lua_dir() -> Path:
    return Path(str(resources.files("tokenvault.cli.bench") / "lua"))


def _figure_of(output: Path, generator: Generator) -> Figure:
    text = output.read_text(encoding="utf-8", errors="replace")
    try:
        return parse_result(text)
    except ResultLineError as error:
        tail = text.strip()[-_OUTPUT_TAIL_CHARS:]
        raise CliError(f"{generator.value}: {error}; its output ends: {tail!r}") from error
