"""The learning-rate schedule: linear warmup, then constant or a cosine down to ``lr * lr_final``."""

from __future__ import annotations

import math

import pytest
import torch

from aria.errors import UserError
from aria.training.backends import lr_factor
from aria.training.engine import run_distillation
from aria.training.metrics import read_jsonl
from conftest import make_bundle, make_teacher, tiny_config

torch.set_num_threads(1)


def reference(step: int, warmup: int, schedule: str, total: int, final: float) -> float:
    """Written out: warmup (step+1)/warmup; cosine over the steps after the warmup, ending at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    last = total - 1
    progress = (step - warmup) / (last - warmup)
    return final + (1 - final) * (1 + math.cos(math.pi * progress)) / 2


@pytest.mark.parametrize("warmup,schedule,total,final", [(0, "constant", 8, 0.0), (3, "constant", 8, 0.0),
                                                          (0, "cosine", 8, 0.0), (3, "cosine", 10, 0.1),
                                                          (5, "cosine", 100, 0.5)])
def test_factor_matches_the_written_out_schedule(warmup, schedule, total, final):
    factor = lr_factor(warmup, schedule, total, final)
    for step in range(total):
        assert factor(step) == pytest.approx(reference(step, warmup, schedule, total, final), rel=1e-12)
    if schedule == "cosine":
        assert factor(total - 1) == pytest.approx(final) and factor(warmup) == pytest.approx(1.0)
        assert all(factor(s + 1) <= factor(s) + 1e-15 for s in range(warmup, total - 1))


def test_a_run_steps_with_the_cosine_learning_rate(tmp_path):
    config = tiny_config(tmp_path, distillation={"steps": 6, "warmup_steps": 2, "lr_schedule": "cosine",
                                                 "lr_final": 0.25}, logging={"every": 1})
    run_distillation(config, bundle=make_bundle(), teacher=make_teacher())
    steps = [r for r in read_jsonl(config.output_dir / "metrics.jsonl") if "loss" in r]
    lr = config.distillation.lr
    assert [r["lr"] for r in steps] == pytest.approx([lr * reference(s, 2, "cosine", 6, 0.25) for s in range(6)])
    assert steps[-1]["lr"] == pytest.approx(lr * 0.25)


def test_lr_final_without_the_cosine_is_refused(tmp_path):
    with pytest.raises(UserError, match="lr_final is read only with lr_schedule 'cosine'"):
        tiny_config(tmp_path, distillation={"lr_final": 0.1})
