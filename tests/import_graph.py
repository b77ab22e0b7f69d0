"""Reads what a package's modules import, from their source with `ast`.

Shared by the checks on imports (test_sans_io.py: what the cores may import).

Rules:
- Every import statement counts wherever it stands: at module level, in a function, under an
  `if` (`if TYPE_CHECKING` too), and `__import__("x")` or `importlib.import_module("x")` with a
  constant name. Relative imports are resolved against the package of the importing module.
- `from x import y` names x, and x.y in case y is a module: `imported_modules` lists both.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


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
