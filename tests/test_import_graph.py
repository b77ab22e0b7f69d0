"""No import circles in tokenvault: no module imports, even indirectly or from inside a function,
a module that imports it back.

The graph is read from the source (tests/import_graph.py says what counts as an import). The
checker is shown to work on copies of the package: an added import that closes a circle is
found and printed, and imports that close none are not reported.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tokenvault
from tests.import_graph import ImportGraph, describe_cycle, find_cycles, import_graph

PACKAGE_ROOT = Path(tokenvault.__file__).resolve().parent


def cycles_report(package_root: Path) -> tuple[list[list[str]], str]:
    graph = import_graph(package_root)
    cycles = find_cycles(graph)
    return cycles, "\n".join(describe_cycle(cycle, graph, package_root) for cycle in cycles)


def test_the_package_has_no_import_circle() -> None:
    cycles, report = cycles_report(PACKAGE_ROOT)
    assert cycles == [], "import circles:\n" + report


def test_the_graph_holds_every_kind_of_import() -> None:
    graph: ImportGraph = import_graph(PACKAGE_ROOT)
    assert "tokenvault.http.errors" in graph["tokenvault.http.server"]  # module level
    assert "tokenvault.peer_process" in graph["tokenvault.cli.cluster_commands"]  # in a function
    assert "tokenvault.sim.cli" in graph["tokenvault.cli"]  # in a function, of a subpackage
    assert "tokenvault.sim" in graph["tokenvault.cli"]  # ... which runs its package first
    assert "tokenvault.cli.parser" in graph["tokenvault.cli"]  # a package's own module
    # A module never imports the packages above itself: Python ran them before it.
    assert "tokenvault.cli" not in graph["tokenvault.cli.parser"]


def copy_of_the_package(tmp_path: Path) -> Path:
    copy_root = tmp_path / "tokenvault"
    shutil.copytree(PACKAGE_ROOT, copy_root, ignore=shutil.ignore_patterns("__pycache__"))
    return copy_root


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n" + text + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("file", "line", "circle"),
    [
        # errors.py as it was before messages.py: server.py imports errors.py
        (
            "http/errors.py",
            "from tokenvault.http.server import Response",
            ["tokenvault.http.errors", "tokenvault.http.server"],
        ),
        (
            "http/errors.py",
            "def f():\n    from tokenvault.http import server",
            ["tokenvault.http.errors", "tokenvault.http.server"],
        ),
        (
            "http/errors.py",
            "if False:\n    from .server import serve_http",
            ["tokenvault.http.errors", "tokenvault.http.server"],
        ),
        (
            "http/messages.py",
            "import tokenvault.http.server",
            ["tokenvault.http.errors", "tokenvault.http.messages", "tokenvault.http.server"],
        ),
        # the package above a module: its __init__ imports parser, which imports this back
        (
            "cli/parser.py",
            "from tokenvault.cli import main",
            ["tokenvault.cli", "tokenvault.cli.parser"],
        ),
        (
            "cli/exits.py",
            "from .. import cli",
            ["tokenvault.cli", "tokenvault.cli.exits"],
        ),
        # importing tokenvault.cli.target runs tokenvault/cli/__init__.py first
        (
            "config.py",
            "def f():\n    import tokenvault.cli.target",
            ["tokenvault.cli", "tokenvault.cli.parser", "tokenvault.config"],
        ),
        (
            "ring/hash_ring.py",
            "__import__('tokenvault.sim.peer')",
            ["tokenvault.ring.hash_ring", "tokenvault.sim.peer"],
        ),
    ],
)
def test_the_checker_finds_a_circle_an_import_closes(
    tmp_path: Path, file: str, line: str, circle: list[str]
) -> None:
    copy_root = copy_of_the_package(tmp_path)
    assert cycles_report(copy_root)[0] == []
    append(copy_root / file, line)

    cycles, report = cycles_report(copy_root)

    assert len(cycles) == 1, report
    assert set(circle) <= set(cycles[0]), report
    assert f"tokenvault/{file}:" in report
    assert report.splitlines()[0] == " -> ".join([*cycles[0], cycles[0][0]])


@pytest.mark.parametrize(
    ("file", "line"),
    [
        ("cli/parser.py", "from . import exits"),  # a sibling: its package has run already
        ("cli/parser.py", "import tokenvault.cli.exits"),
        ("http/server.py", "from tokenvault.http import errors, messages"),
        ("cli/__init__.py", "from . import status"),
        ("http/messages.py", "import json, os.path"),  # outside the package
        ("http/messages.py", "from typing import TYPE_CHECKING"),
    ],
)
def test_the_checker_finds_no_circle_where_there_is_none(
    tmp_path: Path, file: str, line: str
) -> None:
    copy_root = copy_of_the_package(tmp_path)
    append(copy_root / file, line)
    assert cycles_report(copy_root)[0] == []


def test_the_checker_reports_each_circle_once_with_every_import(tmp_path: Path) -> None:
    copy_root = copy_of_the_package(tmp_path)
    append(copy_root / "http" / "errors.py", "from tokenvault.http.server import Response")
    append(copy_root / "tokens.py", "from tokenvault.cli.cluster_files import load_cluster_keys")

    cycles, report = cycles_report(copy_root)

    assert len(cycles) == 2, report
    assert ["tokenvault.http.errors", "tokenvault.http.server"] in cycles
    assert "tokenvault/http/server.py:" in report and "imports tokenvault.http.errors" in report
    assert "tokenvault/tokens.py:" in report


def reachable(graph: ImportGraph, start: str) -> set[str]:
    """Every module an import chain from start reaches (start only if a chain comes back)."""
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


@given(
    st.dictionaries(
        st.sampled_from("abcdefgh"), st.sets(st.sampled_from("abcdefgh"), max_size=3), max_size=8
    )
)
def test_find_cycles_agrees_with_a_dumb_reference(edges: dict[str, set[str]]) -> None:
    """One circle per group of modules that reach each other, each a real chain of imports."""
    graph: ImportGraph = {m: {} for m in "abcdefgh"}
    for importer, imported_set in edges.items():
        graph[importer] = {m: 1 for m in imported_set if m != importer}
    reach = {module: reachable(graph, module) for module in graph}
    groups = {
        frozenset({m} | {o for o in reach[m] if m in reach[o]}) for m in graph if m in reach[m]
    }

    cycles = find_cycles(graph)

    assert sorted(min(group) for group in groups) == [cycle[0] for cycle in cycles]
    for cycle in cycles:
        assert len(set(cycle)) == len(cycle) >= 2
        group = next(group for group in groups if cycle[0] in group)
        assert set(cycle) <= group
        for importer, imported in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
            assert imported in graph[importer]
