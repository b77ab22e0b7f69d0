"""Reads what a package's modules import, from their source with `ast`, and finds import circles.

Shared by test_sans_io.py (what the cores may import) and test_import_graph.py (no circles).

Rules:
- Every import statement counts wherever it stands: at module level, in a function, under an
  `if` (`if TYPE_CHECKING` too: the reader still sees a circle), and `__import__("x")` or
  `importlib.import_module("x")` with a constant name. Relative imports are resolved against
  the package of the importing module.
- `from x import y` names x, and x.y in case y is a module: `imported_modules` lists both, for
  checks that judge names; the graph keeps x.y where it is a module of the package, else x.
- Importing a module runs the `__init__` of every package above it first, so the graph adds an
  edge to each of those packages too; not to the packages above the importing module itself,
  which Python has run before that module's first line.
- The graph holds the package's own modules only: the standard library and third-party
  libraries cannot close a circle through the package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

# module -> {module it imports: the first line of the importing file that makes it do so}
ImportGraph = dict[str, dict[str, int]]


@dataclass(frozen=True, slots=True)
class ImportStatement:
    line: int
    module: str  # absolute: a.b of `import a.b`, of `from a.b import c` and of `from . import c`
    names: tuple[str, ...] = ()  # what a `from` import takes out of module; () for `import`


def module_name(path: Path, package_root: Path) -> str:
    parts = list(path.relative_to(package_root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package_root: Path) -> dict[str, Path]:
    """Every module of the package (packages by their `__init__.py`), by name."""
    return {module_name(path, package_root): path for path in sorted(package_root.rglob("*.py"))}


def _dynamic_import_target(call: ast.Call) -> str | None:
    """The constant module name of `__import__("x")` or `importlib.import_module("x")`."""
    func = call.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    if name not in ("__import__", "import_module") or not call.args:
        return None
    first = call.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def import_statements(path: Path, package_root: Path) -> list[ImportStatement]:
    """Every import statement of path, its module made absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this_module = module_name(path, package_root)
    this_package = this_module if path.name == "__init__.py" else this_module.rpartition(".")[0]
    found: list[ImportStatement] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(ImportStatement(node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = this_package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = tuple(alias.name for alias in node.names)
            found.append(ImportStatement(node.lineno, module, names))
        elif isinstance(node, ast.Call):
            target = _dynamic_import_target(node)
            if target is not None:
                found.append(ImportStatement(node.lineno, target))
    return found


def imported_modules(path: Path, package_root: Path) -> list[tuple[int, str]]:
    """Every module an import statement of path names, absolute, with its line."""
    found: list[tuple[int, str]] = []
    for statement in import_statements(path, package_root):
        found.append((statement.line, statement.module))
        # `from tokenvault import node` names tokenvault.node
        found.extend((statement.line, f"{statement.module}.{name}") for name in statement.names)
    return found


def _packages_above(module: str) -> Iterator[str]:
    """tokenvault.a.b -> tokenvault.a, tokenvault."""
    parts = module.split(".")
    for end in range(len(parts) - 1, 0, -1):
        yield ".".join(parts[:end])


def _named_targets(statement: ImportStatement, modules: Mapping[str, Path]) -> set[str]:
    """What the statement imports by name: its submodules, else the module it takes names from."""
    submodules = {f"{statement.module}.{name}" for name in statement.names}
    targets = submodules & modules.keys()
    if not statement.names or targets != submodules:
        targets.add(statement.module)
    return targets


def import_graph(package_root: Path) -> ImportGraph:
    """Every module of the package, and the modules of the package that importing it runs."""
    modules = package_modules(package_root)
    graph: ImportGraph = {}
    for importer, path in modules.items():
        edges = graph.setdefault(importer, {})
        already_run = {importer, *_packages_above(importer)}
        for statement in import_statements(path, package_root):
            for named in _named_targets(statement, modules):
                implied = [above for above in _packages_above(named) if above not in already_run]
                for target in (named, *implied):
                    if target in modules and target != importer:
                        edges[target] = min(edges.get(target, statement.line), statement.line)
    return graph


def find_cycles(graph: ImportGraph) -> list[list[str]]:
    """One shortest circle per group of modules that import each other, e.g. [a, b] for a <-> b.

    Each circle starts at the first module of its group by name; the circles are sorted.
    """
    cycles = []
    for group in _strongly_connected(graph):
        start = min(group)
        if len(group) > 1:
            cycles.append(_shortest_cycle(graph, start, group))
    return sorted(cycles)


def _strongly_connected(graph: ImportGraph) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on long chains)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            successor = next(successors, None)
            if successor is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    groups.append(group)
            elif successor not in index:
                index[successor] = low[successor] = len(index)
                stack.append(successor)
                on_stack.add(successor)
                work.append((successor, iter(sorted(graph.get(successor, {})))))
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
    return groups


def _shortest_cycle(graph: ImportGraph, start: str, group: set[str]) -> list[str]:
    """Breadth-first from start back to start, within the group (which holds such a path)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        next_frontier = []
        for node in frontier:
            for successor in sorted(graph[node]):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return path[::-1]
                if successor in group and successor not in came_from:
                    came_from[successor] = node
                    next_frontier.append(successor)
        frontier = next_frontier
    raise AssertionError(f"{start} is in a strongly connected group but on no cycle")


def describe_cycle(cycle: list[str], graph: ImportGraph, package_root: Path) -> str:
    """The circle in one line, then each import that closes it as `file:line imports module`."""
    modules = package_modules(package_root)
    lines = [" -> ".join([*cycle, cycle[0]])]
    for importer, imported in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
        where = modules[importer].relative_to(package_root.parent)
        lines.append(f"  {where}:{graph[importer][imported]} imports {imported}")
    return "\n".join(lines)
