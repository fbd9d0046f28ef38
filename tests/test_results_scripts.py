"""The analysis scripts kept beside the results (docs/results/*/*.py) still run on the committed runs, so the
numbers the reading quotes can be reproduced after a change to what they import (aria.experiment, the
strategies, split 0's functions that split 1 reuses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
SCRIPTS = {  # script (and arguments) -> a line its output opens with or holds
    ("concepts-pilot3/closing_probe.py",): "| quantity | value | threshold |",
    ("concepts-pilot3/aria_prediction.py",): "| allocation | seen | under | unseen | compositional |",
    ("concepts-v2-split0/headroom.py",): "paired per seed (mean [95% CI] over seeds 0-2)",
    ("concepts-v2-split1/headroom.py",): "both splits: unseen share of switched samples",
    ("concepts-v2-split1/dc_parts.py", "--tables"): "unseen, D_c / rc per timestep",
}


@pytest.mark.parametrize("script", list(SCRIPTS), ids=lambda s: s[0])
def test_the_script_runs_on_the_committed_runs(script):
    done = subprocess.run([sys.executable, str(RESULTS / script[0]), *script[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert SCRIPTS[script] in done.stdout
