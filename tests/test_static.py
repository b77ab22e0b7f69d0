"""The codebase stays typed, linted and formatted: mypy --strict and ruff (check and format)
run over the package, the tests and the benchmarks as part of the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_mypy_strict_is_clean() -> None:
    result = run_tool("mypy", "--strict", "tokenvault", "tests", "bench")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_is_clean() -> None:
    result = run_tool("ruff", "check", "tokenvault", "tests", "bench")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_format_is_clean() -> None:
    result = run_tool("ruff", "format", "--check", "tokenvault", "tests", "bench")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_file_holds_a_merge_conflict_marker() -> None:
    """A merge resolved in haste can commit its markers (docs are not parsed by any tool)."""
    markers = ("<" * 7 + " ", ">" * 7 + " ", "=" * 7 + "\n")
    found = []
    for folder in ("tokenvault", "tests", "bench", "docs", "deploy"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".md", ".toml", ".yaml", ".yml", ".json", ".txt"):
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(True), 1):
                if line.startswith(markers):
                    found.append(f"{path.relative_to(ROOT)}:{number}")
    assert not found, found
