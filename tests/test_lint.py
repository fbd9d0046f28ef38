"""The tree passes ruff with the settings in pyproject.toml ([tool.ruff]: pycodestyle and pyflakes at 120
columns), so an unused import, an undefined name or an overlong line fails the suite, not a later reader."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_tree_passes_ruff():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
