"""The README's quickstart is what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_readme_has_two_quickstart_commands():
    commands = quickstart_commands()
    assert len(commands) == 2
    assert "aria run --strategy aria --config configs/concepts-quick.yaml" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert quickstart_commands()[1] in ci


def _requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_both_commands_install_the_pinned_versions():
    """A fresh machine gets what the suite last passed with: both commands and CI use constraints.txt,
    which pins every declared dependency (torch is pinned in the commands themselves)."""
    import tomllib

    for command in quickstart_commands():
        assert "-c constraints.txt" in command
    pins = {_requirement_name(line): line for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    assert all("==" in line for line in pins.values())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    missing = [d for d in map(_requirement_name, declared) if d != "torch" and d not in pins]
    assert not missing, f"declared but not pinned in constraints.txt: {missing}"


def test_every_imported_package_is_declared():
    """Every third-party package that aria's code imports is a declared dependency (or an optional extra's,
    e.g. torchao for backend.fp8)."""
    import ast
    import sys
    import tomllib
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [d for group in project["optional-dependencies"].values() for d in group]
    declared = {_requirement_name(d) for d in [*project["dependencies"], *extras]}
    owners = packages_distributions()
    undeclared = set()
    for folder in ("aria", "strategies", "theory"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for top in {n.split(".")[0] for n in names}:
                    if top in sys.stdlib_module_names or top == "aria":
                        continue
                    dists = {_requirement_name(d) for d in owners.get(top, [top])}
                    if not dists & declared:
                        undeclared.add(f"{top} ({path.relative_to(ROOT)})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"
