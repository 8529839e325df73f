"""The layering contract: the layers below (models, data, losses) never import the layers built on them,
and no tunesmith module imports itself round a loop.

Every `import` and `from ... import` of tunesmith.* counts, at the top of a module or inside a function: a
function-local import is still a dependency, only a later one. This file is the contract (no import-linter).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "tunesmith"

LOWER = ("tunesmith.models", "tunesmith.data", "tunesmith.losses")
# What is built on them: training and its recipes, the forgetting guard, the commands and what they show, and
# generation (it imports models; models importing it back was a cycle).
UPPER = (
    "tunesmith.train",
    "tunesmith.recipes",
    "tunesmith.forgetting",
    "tunesmith.cli",
    "tunesmith.report",
    "tunesmith.demo",
    "tunesmith.serve",
    "tunesmith.generation",
)

# Violations being moved out, as (importer, imported): empty it, never add to it.
KNOWN: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """(imported name, line) for every tunesmith import in the file, anywhere in it; `from a import b`
    yields both a and a.b (b may be a module)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package, up level - 1
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "tunesmith" or name.startswith("tunesmith."):
                yield name, node.lineno


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_lower_layers_never_import_upper_layers():
    found: dict[tuple[str, str], str] = {}
    for path in sources():
        importer = module_name(path)
        if not within(importer, LOWER):
            continue
        for name, line in imports(path):
            if within(name, UPPER):
                upper = next(p for p in UPPER if within(name, (p,)))
                found.setdefault((importer, upper), f"{path.relative_to(SRC.parent)}:{line}: {importer} imports {name}")
    new = [where for key, where in sorted(found.items()) if key not in KNOWN]
    assert not new, "a lower layer imports an upper one (move the shared code down instead):\n" + "\n".join(new)
    stale = sorted(KNOWN - set(found))
    assert not stale, f"fixed, so take them out of KNOWN: {stale}"


def test_no_import_cycles():
    """Module to module, function-local imports included: a deferred import that closes a loop only hides it."""
    modules = {module_name(p): p for p in sources()}

    def resolve(name: str) -> str | None:  # tunesmith.models.load.load_model -> tunesmith.models.load
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: {r for name, _ in imports(p) if (r := resolve(name)) not in (None, m)} for m, p in modules.items()}
    cycles, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state[n] == 1:
                cycles.append(" -> ".join(path[path.index(n) :] + [m, n]) if n in path else f"{m} -> {n}")
            elif state[n] == 0:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if state[m] == 0:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
