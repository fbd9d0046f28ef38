"""The shipped judge reads every attribute back from fresh renders; training and I/O work."""

import json

import numpy as np
import pytest
import torch

from aria.world import judge as judge_module
from aria.world import shapes
from aria.world.judge import Judge

ALL = np.arange(shapes.NUM_COMBOS)


@pytest.fixture(scope="module")
def judge():
    torch.set_num_threads(2)
    return Judge.load()


def test_shipped_weights_are_small_fp16_with_recorded_accuracy():
    weights = judge_module.ASSETS / judge_module.WEIGHTS_FILE
    assert weights.stat().st_size < 1_000_000
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(weights)).values()} == {torch.float16}
    config = json.loads((judge_module.ASSETS / judge_module.CONFIG_FILE).read_text())
    assert min(config["accuracy"]["clean"][a] for a in shapes.ATTRIBUTES) >= 0.99


def test_round_trip_on_fresh_renders_of_every_combination(judge):
    images = shapes.render(ALL, seed=987_654)  # a seed used neither in training nor for judge.json
    correct = judge.correct(images, ALL)
    for attr in shapes.ATTRIBUTES:
        assert correct[attr].mean() >= 0.99, attr
    assert correct["all"].mean() >= 0.97


def test_input_formats_agree_and_features(judge):
    images = shapes.render(ALL[::7], seed=11)
    from_uint8 = judge.predict(images)
    from_float = judge.predict(shapes.to_tensor_range(images))
    from_tensor = judge.predict(torch.from_numpy(shapes.to_tensor_range(images)))
    for attr in shapes.ATTRIBUTES:
        assert from_uint8[attr].dtype == np.int64 and len(from_uint8[attr]) == len(images)
        assert np.array_equal(from_uint8[attr], from_float[attr])
        assert np.array_equal(from_uint8[attr], from_tensor[attr])
    feats = judge.features(images)
    assert feats.dtype == np.float32 and feats.shape == (len(images), judge.config["arch"]["features"])
    with pytest.raises(ValueError):
        judge.predict(np.zeros((2, 3, 32, 32), dtype=np.uint8))


def test_robust_to_mild_noise(judge):
    x = shapes.to_tensor_range(shapes.render(ALL, seed=4242))
    x = x + 0.05 * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    correct = judge.correct(x, ALL)
    assert min(correct[a].mean() for a in shapes.ATTRIBUTES) >= 0.97


def test_training_step_and_save_load(tmp_path):
    net = judge_module.train(steps=3, batch_size=16, log_every=0)
    judge_module.save(net, tmp_path, {"arch": judge_module.DEFAULT_ARCH})
    loaded = Judge.load(tmp_path)
    images = shapes.render(ALL[:8], seed=0)
    with torch.no_grad():
        expected = [head_logits.argmax(1).numpy() for head_logits in net(judge_module.as_model_input(images))[1]]
    predicted = loaded.predict(images)
    agree = np.mean([np.mean(predicted[a] == e) for a, e in zip(shapes.ATTRIBUTES, expected)])
    assert agree > 0.9  # fp16 storage barely changes an untrained net's decisions


def test_augmentation_keeps_shape_and_changes_pixels():
    x = torch.from_numpy(shapes.to_tensor_range(shapes.render(ALL[:64], seed=1)))
    out = judge_module.augment(x.clone(), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (out - x).abs().mean() > 0.01
