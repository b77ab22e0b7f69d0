"""`tokenvault bench` on the command line: refusals before anything starts, and (e2e) a short
real run on a fresh cluster, with wrk where installed, else the Python fallback, that leaves no
peer behind, Ctrl-C included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tokenvault.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
RUN_TIMEOUT_S = 120


def test_unknown_workload_and_bad_numbers_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "--workloads", "tokenize-1,tokenize-7"]) == 2
    assert "unknown workload tokenize-7" in capsys.readouterr().err
    assert main(["bench", "--seconds", "0"]) == 2


def test_asking_for_wrk_where_it_is_missing_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("tokenvault.cli.bench.load.shutil.which", lambda name: None)
    assert main(["bench", "--load-generator", "wrk", "--no-etcd"]) == 2
    assert "wrk is not installed" in capsys.readouterr().err


def processes_mentioning(text: str) -> list[int]:
    """PIDs of the processes whose command line holds text (the bench's work directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if text.encode() in command_line:
                found.append(int(entry.name))
    return found


def bench_command(work_dir: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "tokenvault", "bench", "--no-etcd", "--work-dir", str(work_dir),
            *options]  # fmt: skip


@pytest.mark.e2e
def test_a_short_run_prints_a_table_of_numbers_and_stops_its_peers(tmp_path: Path) -> None:
    work_dir = tmp_path / "bench"
    completed = subprocess.run(
        bench_command(work_dir, "--seconds", "1", "--workloads", "tokenize-1,detokenize-1"),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "[1/2] round 1 tokenvault tokenize-1 ... 1 s -> " in completed.stderr
    assert "[2/2] round 1 tokenvault detokenize-1" in completed.stderr
    assert "etcd: not measured (--no-etcd): no ratio" in completed.stdout
    for workload in ("tokenize-1", "detokenize-1"):
        row = next(line for line in completed.stdout.splitlines() if line.startswith(workload))
        cells = row.replace("|", " ").split()
        requests_per_s, keys_per_s, p50_ms, p99_ms, cpu_us = cells[1:6]
        assert float(requests_per_s.replace(",", "")) > 0
        assert keys_per_s == requests_per_s
        assert 0 < float(p50_ms.replace(",", "")) <= float(p99_ms.replace(",", ""))
        assert float(cpu_us.replace(",", "")) > 0
        assert cells[6:] == ["-"] * 7
    assert processes_mentioning(str(work_dir)) == []


@pytest.mark.e2e
def test_ctrl_c_stops_every_peer_and_generator(tmp_path: Path) -> None:
    work_dir = tmp_path / "bench"
    bench = subprocess.Popen(
        bench_command(work_dir, "--seconds", "60", "--workloads", "tokenize-1"),
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert bench.stderr is not None
        seen = ""
        while "[1/1]" not in seen:  # the progress line of the figure, begun but not ended
            chunk = os.read(bench.stderr.fileno(), 1024).decode()
            assert chunk, f"the bench ended before its figure started: {seen}"
            seen += chunk
        assert processes_mentioning(str(work_dir)) != []  # the peers run
        bench.send_signal(signal.SIGINT)
        stdout, stderr = bench.communicate(timeout=RUN_TIMEOUT_S)
        stderr = seen + stderr
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 1
    assert "interrupted: stopped every process the bench had started" in stderr
    assert stdout == ""
    assert processes_mentioning(str(work_dir)) == []
