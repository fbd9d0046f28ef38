"""tools/world2_call.sh refuses bad arguments in one usage line, exit 2, before it installs anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, reason", [
    ([], ""),
    (["train"], ""),
    (["stage1"], "SPLIT is a number"),
    (["stage1", "01"], "SPLIT is a number without leading zeros: 01"),
    (["stage1", "1", "backend.fp8=both"], "stage1 takes SPLIT only: backend.fp8=both"),
    (["runs", "rc,Aria", "3"], "STRATEGIES is a comma-separated list of names"),
    (["runs", "rc,aria", "0,x"], "SEEDS is a count or a comma-separated list"),
    (["runs", "rc,rc", "1"], "STRATEGIES names one twice: rc,rc"),
    (["runs", "rc", "0,00"], "SEEDS names one twice: 0,00"),
    (["runs", "rc,aria,oracle", "3"], "9 runs: 1 to 6 fit one call"),
    (["runs", "rc", "0"], "0 runs: 1 to 6 fit one call"),
    (["runs", "rc", "1", "0", "./configs/concepts-gpu.yaml"], "CONFIG is configs/concepts-gpu.yaml or"),
    (["evals", "1", "configs/shapes-gpu.yaml"], "CONFIG is configs/concepts-gpu.yaml or"),
    (["runs", "rc", "1", "1", "configs/concepts-gpu.yaml", "backend.fp8"], "a --set value is KEY=VALUE"),
    (["runs", "rc", "1", "1", "configs/concepts-gpu.yaml", "backend.fp8=both", "x;y=1"], "KEY=VALUE, e.g."),
    (["evals", "1", "configs/concepts-gpu.yaml", "Backend.fp8=both"], "a --set value is KEY=VALUE"),
])
def test_bad_arguments_are_refused_in_one_line_before_any_install(tmp_path, args, reason):
    out = subprocess.run(["bash", str(ROOT / "tools" / "world2_call.sh"), *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")})
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("usage: bash tools/world2_call.sh")
    assert reason in lines[0]
    assert not (tmp_path / "out").exists()  # refused before it made anything
