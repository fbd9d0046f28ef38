"""The house's import directions: no circles, and lower stages never import higher ones.

Stages from the bottom: errors; files and devices; strategies; config; models, world and theory; data;
training; experiment; cli. A module may import its own package or a lower stage (lazy imports
inside functions count too). ``strategies`` imports nothing of aria but errors.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"aria": "aria", "strategies": "aria.strategies", "theory": "aria.theory"}
STAGES = [  # (module prefix, stage): the longest prefix wins
    ("aria.errors", 0), ("aria.files", 1), ("aria.devices", 1), ("aria.strategies", 2), ("aria.config", 3),
    ("aria.models", 4), ("aria.world", 4), ("aria.theory", 4), ("aria.data", 5),
    ("aria.training", 6), ("aria.experiment", 7), ("aria.cli", 8), ("aria", 0),
]


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """aria modules that ``name`` imports anywhere in its file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:  # "aria.data.bundle.prepare_data" -> "aria.data.bundle"
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("aria"):
                out.add(target)
    return out


def stage(name: str) -> tuple[int, str]:
    prefix, level = max(((p, s) for p, s in STAGES if name == p or name.startswith(p + ".")), key=lambda x: len(x[0]))
    return level, prefix


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_no_import_circles():
    edges = graph()
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    # a package's __init__ re-exporting its own modules is not a circle of the house
    circles = [c for c in circles if not all(m.startswith(c[0]) for m in c)]
    assert not circles, f"import circles: {circles}"


def test_lower_stages_never_import_higher_ones():
    wrong = []
    for name, targets in graph().items():
        level, prefix = stage(name)
        for target in targets:
            t_level, t_prefix = stage(target)
            if t_prefix != prefix and t_level >= level and t_prefix != "aria":
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the flow:\n" + "\n".join(sorted(wrong))


def test_strategies_import_nothing_of_aria_but_errors():
    wrong = [f"{n} -> {t}" for n, ts in graph().items() if n.startswith("aria.strategies")
             for t in ts if not t.startswith(("aria.strategies", "aria.errors"))]
    assert not wrong, wrong


def test_the_checker_sees_a_forbidden_import():
    """The walk resolves relative and lazy imports (a test that cannot fail proves nothing)."""
    engine = graph()["aria.training.engine"]
    assert "aria.training.checkpoint" in engine and "aria.training.backends" in engine  # lazy, inside setup
    assert stage("aria.training.engine")[0] > stage("aria.data.bundle")[0]
