"""EXP3 fed its own draws only (the fix of 2026-12-07) or the paired samples too (before it), on the quickstart's
world (configs/concepts-quick.yaml, CPU) at 250 steps of 16: where the switched samples go, per regime.

    python docs/results/exp3-feedback/run.py fixed  OUT_DIR [--set KEY=VALUE ...]
    python docs/results/exp3-feedback/run.py before OUT_DIR [--set KEY=VALUE ...]

Prints one JSON line: the variant, the run's wall time and the shares of its switched samples per regime and
family (``aria.experiment.allocation.switched_by_group``), with rc's expected shares (the pool's: rc draws
regions in proportion to their size, prompts uniformly inside them).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from aria.config import load_config
from aria.experiment.allocation import switched_by_group
from aria.strategies import get_strategy
from aria.training.engine import run_distillation
from aria.training.metrics import read_jsonl

variant, out = sys.argv[1], Path(sys.argv[2])
extra = [a for a in sys.argv[3:] if a != "--set"]
if variant not in ("fixed", "before"):
    sys.exit("variant: fixed or before")
if variant == "before":
    get_strategy("exp3").learns_from = None  # fed what distillation.feedback_from says ('all'), as before the fix
sets = [f"output_dir={out}", "distillation.steps=250", "distillation.batch_size=16", "logging.every=1",
        "logging.checkpoint_every=1000", "logging.progress=false", "backend.cpu_threads=1", *extra]
config = load_config(Path("configs/concepts-quick.yaml"), sets, strategy="exp3")
t0 = time.time()
run_distillation(config)
records = read_jsonl(out / "metrics.jsonl")
data = next(r for r in records if r.get("event") == "data")
regime = data["groups"]["regime"]
sizes = np.asarray(data["sizes"], dtype=float)
rc = dict(zip(regime["names"], (sizes / sizes.sum() @ np.asarray(regime["fractions"])).round(4).tolist()))
print(json.dumps({"variant": variant, "seconds": round(time.time() - t0), "rc_expected_regime": rc,
                  **switched_by_group(records)}))
