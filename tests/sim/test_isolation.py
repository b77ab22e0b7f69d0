"""The simulator imports nothing of trio, sockets, node.py or http/, and reads no wall clock.

Checked twice, as tests/test_sans_io.py does for the cores: the import statements of every
module of tokenvault/sim (with `ast`), and the modules a fresh interpreter loads when it imports
the simulator and runs it. cli.py alone may import `time`: it reports speed, never feeds a run.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import tokenvault.sim

SIM_ROOT = Path(tokenvault.sim.__file__).resolve().parent
REPO_ROOT = SIM_ROOT.parents[1]
FORBIDDEN_TOP_LEVEL = {
    "trio",
    "httpx",
    "h11",
    "plyvel",
    "socket",
    "asyncio",
    "threading",
    "subprocess",
    "secrets",
    "time",
    "datetime",
    "os",
}
FORBIDDEN_PROJECT = ("tokenvault.node", "tokenvault.http", "tokenvault.store.leveldb_store")
WALL_CLOCK_ALLOWED = {"cli.py": {"time"}}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the simulator uses absolute imports"
            module = node.module or ""
            found.append(module)
            found.extend(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            found.append("__import__")
    return found


def test_sim_modules_import_nothing_of_io_or_the_node() -> None:
    problems = []
    files = sorted(SIM_ROOT.glob("*.py"))
    assert {p.name for p in files} >= {"engine.py", "network.py", "peer.py", "checker.py"}
    for path in files:
        allowed = WALL_CLOCK_ALLOWED.get(path.name, set())
        for module in _imports(path):
            top = module.split(".")[0]
            if top in FORBIDDEN_TOP_LEVEL - allowed or module == "__import__":
                problems.append(f"{path.name} imports {module}")
            if any(module == p or module.startswith(p + ".") for p in FORBIDDEN_PROJECT):
                problems.append(f"{path.name} imports {module}")
    assert problems == []


RUN_IN_FRESH_INTERPRETER = """
import json, sys
from tokenvault.sim.cli import main
from tokenvault.sim.config import SimConfig
from tokenvault.sim.runner import run_simulation
assert run_simulation(SimConfig(seed=1, operation_count=20)).passed
print(json.dumps(sorted(sys.modules)))
"""


def test_running_the_simulator_loads_no_io_library() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", RUN_IN_FRESH_INTERPRETER],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    modules: list[str] = json.loads(completed.stdout)
    banned = (
        "trio",
        "httpx",
        "h11",
        "plyvel",
        "asyncio",
        "socket",
        "threading",
        *FORBIDDEN_PROJECT,
    )
    loaded = [m for m in modules if any(m == b or m.startswith(b + ".") for b in banned)]
    assert loaded == []
