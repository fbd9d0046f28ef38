"""Kill and resume, reduced: ``benchmarks/kill_resume.py`` on the tiny CPU config with 4 steps, a checkpoint
every 2, three SIGKILLs (the first while a checkpoint is being written, the others at random times) and
restarts with ``--resume``; the result must equal an uninterrupted run bit for bit (weights, optimizer,
strategy state, every step's metrics). Several minutes on 2 shared cores: marked slow."""

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
def test_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    bench = load_benchmark()
    summary = bench.main(["--steps", "4", "--checkpoint-every", "2", "--kills", "3", "--checkpoint-kills", "1",
                          "--aimed-first", "--batch-size", "2", "--seed", "1", "--work", str(tmp_path / "work"),
                          # every restart would re-encode the paired captions' contexts (most of its setup on
                          # a CPU): both runs encode per step instead, which changes no comparison
                          "--set", "distillation.context_cache_mb=0", "--attempt-timeout", "600"])
    failed = {k: v["detail"] for k, v in summary["compare"].items() if isinstance(v, dict) and not v.get("equal", True)}
    assert summary["equal"], failed
    assert summary["kills_survived"] == 3
    assert summary["kills_during_checkpoint_write"] >= 1, summary["attempts"]
