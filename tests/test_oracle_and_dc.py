"""World v2's measuring instruments: the condition-specific discrepancy D_c and the oracle allocator."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from aria.strategies import RegionInfo, create_strategy
from aria.training.probe import RegionProbe, condition_discrepancy, guided_discrepancy
from conftest import make_bundle, make_teacher, tiny_config


def eps(seed, shape=(5, 3, 2, 4, 4)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_condition_discrepancy_ignores_what_the_prompt_does_not_change():
    t_c, t_u = eps(0), eps(1)
    assert np.all(condition_discrepancy(t_c, t_u, t_c, t_u) == 0)  # a student equal to the teacher
    blind = eps(2)  # a prompt-blind error: the same with and without the prompt
    assert np.allclose(condition_discrepancy(t_c + blind, t_u + blind, t_c, t_u), 0, atol=1e-10)
    wrong = condition_discrepancy(t_u, t_u, t_c, t_u)  # a student that ignores the prompt
    assert wrong.shape == (5, 3) and np.allclose(wrong, ((t_c - t_u).astype(np.float64) ** 2).mean(axis=(2, 3, 4)))


def test_guided_discrepancy_is_the_error_of_the_guided_prediction():
    s_c, s_u, t_c, t_u = eps(3), eps(4), eps(5), eps(6)

    def mse(a, b):
        return ((a.astype(np.float64) - b) ** 2).mean(axis=(2, 3, 4))

    reference = mse(s_u + 1.5 * (s_c - s_u), t_u + 1.5 * (t_c - t_u))  # what a sampler at g = 1.5 predicts
    assert np.allclose(guided_discrepancy(s_c, s_u, t_c, t_u, 1.5), reference, rtol=1e-5)
    assert np.allclose(guided_discrepancy(s_c, s_u, t_c, t_u, 1.0), mse(s_c, t_c), rtol=1e-5)  # probe discrepancy
    assert np.allclose(guided_discrepancy(s_c, s_u, t_c, t_u, 0.0), mse(s_u, t_u), rtol=1e-5)  # prompt-blind error
    assert np.all(guided_discrepancy(t_c, t_u, t_c, t_u, 1.5) == 0)  # a student equal to the teacher
    # for a large g it is g^2 D_c: the guidance direction dominates
    g = 1e3
    assert np.allclose(guided_discrepancy(s_c, s_u, t_c, t_u, g) / g ** 2, condition_discrepancy(s_c, s_u, t_c, t_u),
                       rtol=1e-2)


def test_the_oracle_allocates_in_proportion_to_the_measurement_with_the_floor():
    oracle = create_strategy("oracle", {"eps": 0.2, "every": 7})
    sizes = np.array([5, 0, 3, 2, 4])
    state = oracle.init(RegionInfo(sizes), seed=0)
    p = oracle.allocate(state, 0, 10).probabilities
    assert np.allclose(p, np.where(sizes > 0, 0.25, 0))  # nothing measured yet: uniform over the active
    state = oracle.observe(state, np.array([1.0, np.nan, 3.0, 0.0, np.nan]))
    p = oracle.allocate(state, 1, 10).probabilities
    assert np.allclose(p, 0.8 * np.array([0.25, 0, 0.75, 0, 0]) + 0.2 * (sizes > 0) / 4)
    later = oracle.observe(state, np.array([2.0, np.nan, np.nan, 2.0, 4.0]))  # NaN keeps the last value
    assert np.allclose(later["measured"], [2.0, 0.0, 3.0, 2.0, 4.0]) and later["measurements"] == 2
    assert oracle.probe_every == 7
    with pytest.raises(ValueError, match="regions"):
        oracle.observe(state, np.ones(3))


def test_region_probe_measures_zero_for_the_teacher_and_more_for_a_perturbed_student(tmp_path):
    bundle, teacher = make_bundle(), make_teacher()
    config = tiny_config(tmp_path)
    from diffusers import DDPMScheduler

    probe = RegionProbe(bundle, teacher.unet, config.eval, DDPMScheduler(num_train_timesteps=1000), per_region=2)
    for metric in ("discrepancy", "cond_discrepancy"):
        assert np.allclose(probe.measure(teacher.unet, metric), 0)
    student = copy.deepcopy(teacher.unet)
    with torch.no_grad():
        student.conv_out.bias.add_(0.5)  # a prompt-blind error: D_c stays 0, the probe discrepancy does not
    assert np.allclose(probe.measure(student, "discrepancy"), 0.25, rtol=1e-4)
    assert np.allclose(probe.measure(student, "cond_discrepancy"), 0, atol=1e-8)
    assert probe.measure(student).shape == (len(bundle.region_info.sizes),)


def test_the_training_loop_hands_the_oracle_its_measurements(tmp_path):
    from aria.training.engine import run_distillation
    from aria.training.metrics import read_jsonl

    config = tiny_config(tmp_path, strategy={"name": "oracle"}, distillation={"steps": 3}, logging={"every": 1})
    config.strategy.params["oracle"] = {"every": 2, "eps": 0.0}
    config._strategy_config = None
    run_distillation(config, bundle=make_bundle(), teacher=make_teacher())
    probs = [r["probabilities"] for r in read_jsonl(config.output_dir / "metrics.jsonl") if r.get("probabilities")]
    assert probs and not np.allclose(probs[-1], probs[-1][0])  # measured regions differ: not uniform
