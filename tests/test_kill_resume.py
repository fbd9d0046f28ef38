"""Kill and resume, reduced: ``benchmarks/kill_resume.py`` on the tiny CPU config with 4 steps, a checkpoint
every 2, two SIGKILLs (the first while a checkpoint is being written, the second at a random point of the
run: with seed 5 it falls in step 3, after the step-2 checkpoint, so the last attempt resumes and trains
steps 3-4 again) and restarts with ``--resume``; the result must equal an uninterrupted run bit for bit
(weights, optimizer, strategy state, every step's metrics). The full benchmark (16 steps, 10 kills) is the
long version. About a minute on 2 shared cores: marked slow."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "kill_resume.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("kill_resume", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path, world_cache):
    bench = load_benchmark()
    summary = bench.main(["--steps", "4", "--checkpoint-every", "2", "--kills", "2", "--checkpoint-kills", "1",
                          "--aimed-first", "--batch-size", "2", "--seed", "5", "--work", str(tmp_path / "work"),
                          # every restart would re-encode the paired captions' contexts (most of its setup on
                          # a CPU): both runs encode per step instead, which changes no comparison
                          "--set", "distillation.context_cache_mb=0",
                          # the session's cache of the 2,000-prompt world (its embeddings: ~10 s once)
                          "--set", f"data.cache_dir={world_cache}",
                          # the final probe runs in the reference and in the finishing attempt: 2 per regime
                          "--set", "eval.probe_images=6", "--attempt-timeout", "600"])
    failed = {k: v["detail"] for k, v in summary["compare"].items() if isinstance(v, dict) and not v.get("equal", True)}
    assert summary["equal"], failed
    assert summary["kills_survived"] == 2
    assert summary["kills_during_checkpoint_write"] >= 1, summary["attempts"]
    # the random kill comes after the first complete checkpoint: a later attempt restarts with --resume
    assert any(a["resume"] for a in summary["attempts"]), summary["attempts"]
