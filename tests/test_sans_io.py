"""The protocol cores (tokenvault.ring, tokenvault.quorum) stay sans-IO.

Two checks: the source of every core module imports nothing that does I/O, reads a clock or
draws randomness (checked with `ast`, since `os` and `time` are loaded by Python itself at
startup and so cannot be judged from sys.modules); and importing every core module in a fresh
interpreter loads none of the I/O libraries nor the node's I/O layers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tokenvault
from tests.import_graph import imported_modules, module_name

PACKAGE_ROOT = Path(tokenvault.__file__).resolve().parent
CORE_PACKAGES = ("ring", "quorum")

FORBIDDEN_MODULES = frozenset(
    {
        "trio",
        "httpx",
        "h11",
        "plyvel",
        "time",
        "random",
        "os",
        "secrets",
        "socket",
        "asyncio",
        "threading",
        "subprocess",
    }
)
FORBIDDEN_PROJECT_MODULES = (
    "tokenvault.store.leveldb_store",
    "tokenvault.http",
    "tokenvault.node",
)
NOT_LOADED = (
    "trio",
    "httpx",
    "h11",
    "plyvel",
    "socket",
    "asyncio",
    "threading",
    "subprocess",
    "random",
    "secrets",
    *FORBIDDEN_PROJECT_MODULES,
)


def core_files(package_root: Path = PACKAGE_ROOT) -> list[Path]:
    files = sorted(path for name in CORE_PACKAGES for path in (package_root / name).rglob("*.py"))
    return files


def is_forbidden(module: str) -> bool:
    if module.split(".")[0] in FORBIDDEN_MODULES:
        return True
    return any(module == p or module.startswith(p + ".") for p in FORBIDDEN_PROJECT_MODULES)


def forbidden_imports(package_root: Path) -> list[str]:
    problems = []
    for path in core_files(package_root):
        for line, module in imported_modules(path, package_root):
            if is_forbidden(module):
                problems.append(f"{path.relative_to(package_root.parent)}:{line} imports {module}")
    return problems


def test_the_cores_exist() -> None:
    names = {module_name(p, PACKAGE_ROOT) for p in core_files()}
    assert {
        "tokenvault.ring",
        "tokenvault.ring.hash_ring",
        "tokenvault.quorum",
        "tokenvault.quorum.coordinator",
        "tokenvault.quorum.replica",
        "tokenvault.quorum.messages",
        "tokenvault.quorum.effects",
        "tokenvault.quorum.records",
        "tokenvault.quorum.quorum_config",
    } <= names


def test_core_sources_import_nothing_that_does_io() -> None:
    problems = forbidden_imports(PACKAGE_ROOT)
    assert problems == [], "sans-IO cores import I/O, clocks or randomness:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "line",
    [
        "import time",
        "import os.path",
        "import random as rnd",
        "from time import monotonic",
        "from secrets import token_bytes",
        "import trio",
        "from httpx import AsyncClient",
        "import h11, json",
        "from asyncio import sleep",
        "import threading",
        "from tokenvault.store.leveldb_store import LevelDBStore",
        "from tokenvault.http.client import Client",
        "from tokenvault import node",
        "from tokenvault.http import peer_codec",
        "from ..node import Node",
        "from ..store import leveldb_store",
        "def f():\n    import socket\n",
        "if False:\n    import subprocess\n",
        "__import__('time')",
        "importlib.import_module('random')",
    ],
)
def test_the_checker_catches_a_forbidden_import(tmp_path: Path, line: str) -> None:
    """A copy of the real cores with one bad line added fails the check, naming the line."""
    copy_root = tmp_path / "tokenvault"
    for name in CORE_PACKAGES:
        shutil.copytree(PACKAGE_ROOT / name, copy_root / name)
    assert forbidden_imports(copy_root) == []
    target = copy_root / "quorum" / "coordinator.py"
    target.write_text(target.read_text(encoding="utf-8") + "\n" + line + "\n", encoding="utf-8")
    problems = forbidden_imports(copy_root)
    assert len(problems) >= 1
    assert all(p.startswith("tokenvault/quorum/coordinator.py:") for p in problems)


@pytest.mark.parametrize(
    "line",
    [
        "import json",
        "from tokenvault.quorum.messages import Mapping",
        "from .messages import Mapping",
        "import hashlib",
        "from tokenvault.store.storage import Write",
        "from tokenvault.store.memory_store import MemoryStore",
        "import timeit_not_a_real_module_but_not_time",
    ],
)
def test_the_checker_allows_pure_imports(tmp_path: Path, line: str) -> None:
    copy_root = tmp_path / "tokenvault"
    for name in CORE_PACKAGES:
        shutil.copytree(PACKAGE_ROOT / name, copy_root / name)
    target = copy_root / "ring" / "hash_ring.py"
    target.write_text(target.read_text(encoding="utf-8") + "\n" + line + "\n", encoding="utf-8")
    assert forbidden_imports(copy_root) == []


IMPORT_EVERY_CORE = """
import importlib, json, pkgutil, sys
before = set(sys.modules)
names = []
for package_name in ("tokenvault.ring", "tokenvault.quorum"):
    package = importlib.import_module(package_name)
    names.append(package_name)
    for info in pkgutil.walk_packages(package.__path__, package_name + "."):
        importlib.import_module(info.name)
        names.append(info.name)
print(json.dumps({"imported": names, "before": sorted(before), "modules": sorted(sys.modules)}))
"""


def import_cores_in_fresh_interpreter(pythonpath: Path) -> dict[str, list[str]]:
    completed = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(pythonpath)!r})\n" + IMPORT_EVERY_CORE,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, list[str]] = json.loads(completed.stdout)
    return result


def loaded_forbidden(modules: list[str]) -> list[str]:
    return sorted(
        m for m in modules if any(m == bad or m.startswith(bad + ".") for bad in NOT_LOADED)
    )


def test_importing_every_core_loads_no_io_library() -> None:
    result = import_cores_in_fresh_interpreter(PACKAGE_ROOT.parent)
    expected = {module_name(p, PACKAGE_ROOT) for p in core_files()}
    assert expected <= set(result["imported"])
    assert loaded_forbidden(result["modules"]) == []
    # nothing of the project outside the cores (and the pure store helpers, and the token
    # derivation the peer core computes tokens with: hmac and hashlib only) was pulled in
    project = {m for m in result["modules"] if m.startswith("tokenvault.")}
    allowed = expected | {"tokenvault.store", "tokenvault.store.storage", "tokenvault.tokens"}
    assert project <= allowed | {"tokenvault.store.memory_store"}


def test_the_subprocess_check_catches_an_io_import(tmp_path: Path) -> None:
    """A copy of the cores where one module imports the HTTP layer fails the check."""
    copy_root = tmp_path / "tokenvault"
    copy_root.mkdir()
    (copy_root / "__init__.py").write_text("", encoding="utf-8")
    for name in CORE_PACKAGES:
        shutil.copytree(PACKAGE_ROOT / name, copy_root / name)
    (copy_root / "http").mkdir()
    (copy_root / "http" / "__init__.py").write_text("import socket\n", encoding="utf-8")
    clean = import_cores_in_fresh_interpreter(tmp_path)
    assert loaded_forbidden(clean["modules"]) == []
    target = copy_root / "quorum" / "replica.py"
    target.write_text(
        target.read_text(encoding="utf-8") + "\nimport tokenvault.http\n", encoding="utf-8"
    )
    dirty = import_cores_in_fresh_interpreter(tmp_path)
    assert loaded_forbidden(dirty["modules"]) == ["socket", "tokenvault.http"]
