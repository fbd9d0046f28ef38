"""aria eval end to end on tiny models (CPU): a tiny random world teacher, a student built from it,
a small world (300 prompts), a 9-image probe set, 6 sampled prompts and 2 DDIM steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aria.experiment import evaluate
from aria.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
EVAL_SETS = ["eval.probe_images=9", "eval.probe_timesteps=2", "eval.sample_prompts=6", "eval.sample_steps=2",
             "eval.batch_size=32"]


def make_world_teacher(folder: Path) -> Path:
    """A tiny random pixel-space world teacher (MiniLM context, the world's scheduler) saved as a folder."""
    from diffusers import UNet2DConditionModel

    from aria.world.teacher import make_scheduler

    config = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(8, 16, 16),
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  cross_attention_dim=384, attention_head_dim=4, norm_num_groups=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**config)
    unet.save_pretrained(folder, safe_serialization=True)
    make_scheduler().save_pretrained(folder)
    return folder


def world_sets(tmp: Path, cache: Path) -> list[str]:
    """--set overrides for a small world (1800 prompts, 360 paired images, regions by shape: no
    embedding pass) with the teacher in ``tmp`` and the data cache in ``cache``."""
    world = ["num_prompts=1800", "paired_size=360", "unseen_fraction=0.85", "under_fraction=0.1"]
    return [f"teacher.path={tmp / 'teacher'}", f"data.cache_dir={cache}", *[f"data.world.{w}" for w in world],
            "regions.method=metadata", "regions.metadata_keys=[shape]", *EVAL_SETS]


def export_student(teacher_dir: Path, out: Path, seed: int) -> Path:
    from aria.config import StudentConfig
    from aria.models import build_student, export_student as export
    from diffusers import UNet2DConditionModel

    teacher = UNet2DConditionModel.from_pretrained(teacher_dir)
    torch.manual_seed(seed)
    student, _ = build_student(teacher, StudentConfig(variant="small"))
    card = {"teacher": str(teacher_dir), "variant": "small", "teacher_parameters": 0, "strategy": "none",
            "steps": 0, "data": "shapes"}
    return export(student, out / "student", card)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from aria.config import load_config
    from aria.data.bundle import prepare_data

    torch.set_num_threads(1)  # shared CPU cores: one thread avoids oversubscription stalls
    tmp = tmp_path_factory.mktemp("eval")
    make_world_teacher(tmp / "teacher")
    export_student(tmp / "teacher", tmp / "run", seed=1)
    sets = world_sets(tmp, tmp_path_factory.getbasetemp() / "world-cache")  # shared with test_compare
    config = load_config(ROOT / "configs" / "tiny-test.yaml", sets)
    return {"tmp": tmp, "sets": sets, "config": config, "bundle": prepare_data(config)}


def cli(*args):
    from aria.cli import main

    try:
        main(list(args))
    except SystemExit as err:
        return err.code
    return 0


@pytest.mark.slow
def test_eval_end_to_end_writes_json_table_and_plot(setup, capsys):
    tmp, sets = setup["tmp"], setup["sets"]
    args = [a for s in sets for a in ("--set", s)]
    assert cli("eval", "--student", str(tmp / "run"), "--config", str(ROOT / "configs" / "tiny-test.yaml"),
               *args) == 0
    out = tmp / "run" / "eval"
    for name in ("eval.json", "eval.md", "region_discrepancy.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    result = json.loads((out / "eval.json").read_text())
    assert list(result["metrics"]) == ["seen", "under", "unseen", "all"]
    assert {g: c["probes"] for g, c in result["counts"].items()} == {"seen": 3, "under": 3, "unseen": 3, "all": 9}
    assert {g: c["prompts"] for g, c in result["counts"].items()} == {"seen": 2, "under": 2, "unseen": 2, "all": 6}
    for g, m in result["metrics"].items():
        assert set(m) == {"discrepancy", "cond_discrepancy", "guided_discrepancy", "pixel_mse", "judge_accuracy",
                          "teacher_accuracy", "accuracy_gap", "agreement", "kid"}
        assert m["discrepancy"] > 0 and m["guided_discrepancy"] > 0 and m["pixel_mse"] > 0  # a random student differs
        assert 0 <= m["judge_accuracy"] <= 1 and 0 <= m["agreement"] <= 1
        assert m["accuracy_gap"] == pytest.approx(m["teacher_accuracy"] - m["judge_accuracy"])
    regions = result["regions"]
    assert len(regions["discrepancy"]) == 8 and sum(regions["probes"]) == 9  # one region per shape
    assert "| seen |" in (out / "eval.md").read_text() and "| seen |" in capsys.readouterr().out


def test_guided_discrepancy_gets_the_arrays_of_d_c_and_the_samplers_guidance(setup, monkeypatch):
    """The wiring in evaluate: the guided discrepancy is computed from the same four eps arrays as D_c (whose
    values the CPU/GPU comparisons check), at the teacher's guidance scale, and reported per group."""
    from aria.training import probe

    calls = {}

    def spy(name, real):
        def wrapped(*args):
            calls[name] = args
            return real(*args)
        return wrapped

    monkeypatch.setattr(evaluate, "condition_discrepancy", spy("cond", probe.condition_discrepancy))
    monkeypatch.setattr(evaluate, "guided_discrepancy", spy("guided", probe.guided_discrepancy))
    config = setup["config"]
    result = evaluate.evaluate(config, setup["tmp"] / "run", bundle=setup["bundle"],
                               reference=setup["tmp"] / "reference")
    *arrays, guidance = calls["guided"]
    assert all(a is b for a, b in zip(arrays, calls["cond"], strict=True))
    assert guidance == config.teacher.guidance_scale
    expected = probe.guided_discrepancy(*arrays, guidance).mean()
    assert result["metrics"]["all"]["guided_discrepancy"] == pytest.approx(expected, rel=1e-9)


def test_probe_set_is_fixed_by_eval_seed_and_world_only(setup):
    from aria.config import load_config
    from aria.data.bundle import prepare_data

    config, bundle = setup["config"], setup["bundle"]
    first = evaluate.build_probe_set(bundle, config.eval, 1000)
    other = load_config(ROOT / "configs" / "tiny-test.yaml", setup["sets"] + ["seed=7", "strategy.name=rc"])
    again = evaluate.build_probe_set(prepare_data(other), other.eval, 1000)
    assert first.digest == again.digest
    assert np.array_equal(first.prompt_ids, again.prompt_ids) and np.array_equal(first.noise, again.noise)
    assert first.timesteps.tolist() == [250, 750]
    regimes = bundle.regime_of_prompt[first.prompt_ids]
    assert np.bincount(regimes, minlength=3).tolist() == [3, 3, 3]
    moved = config.eval.model_copy(update={"seed": config.eval.seed + 1})
    assert evaluate.build_probe_set(bundle, moved, 1000).digest != first.digest


@pytest.mark.slow
def test_teacher_as_student_scores_zero_and_reference_cache_is_reused(setup):
    tmp, config, bundle = setup["tmp"], setup["config"], setup["bundle"]
    ref = tmp / "reference"
    a = evaluate.evaluate(config, tmp / "teacher", bundle=bundle, reference=ref)
    assert len(list(ref.glob("teacher-*.safetensors"))) == 1
    b = evaluate.evaluate(config, tmp / "teacher", bundle=bundle, reference=ref)
    assert a["metrics"] == b["metrics"] and a["probe"] == b["probe"]
    for m in a["metrics"].values():
        assert m["discrepancy"] == 0 and m["pixel_mse"] == 0
        assert m["agreement"] == 1 and m["accuracy_gap"] == 0
    student = evaluate.evaluate(config, tmp / "run", bundle=bundle, reference=ref)
    assert student["probe"]["digest"] == a["probe"]["digest"]
    for g in a["metrics"]:  # the teacher's reference does not depend on the student
        assert student["metrics"][g]["teacher_accuracy"] == a["metrics"][g]["teacher_accuracy"]


def test_stratified_prompts_split_regimes_evenly_and_visit_regions():
    from aria.training.probe import stratified_prompts

    rng = np.random.default_rng(0)
    region = rng.integers(0, 5, 500)
    regime = rng.integers(0, 3, 500).astype(np.int8)
    ids = stratified_prompts(regime, region, 31, np.random.default_rng(1))
    counts = np.bincount(regime[ids], minlength=3)
    assert counts.tolist() == [11, 10, 10]
    for r in range(3):
        assert set(region[ids][regime[ids] == r]) == set(range(5))
    single = stratified_prompts(None, region, 10, np.random.default_rng(1))
    assert len(single) == 10 and set(region[single]) == set(range(5))


def test_user_mistakes_name_the_student(setup, tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    code = cli("eval", "--student", str(tmp_path / "nope"), "--config", str(ROOT / "configs" / "tiny-test.yaml"))
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and err.count("\n") == 1
    cfg = dict(UNet2DConditionModel.load_config(setup["tmp"] / "teacher"))
    cfg.update(in_channels=4, out_channels=4)
    UNet2DConditionModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")}).save_pretrained(
        tmp_path / "wrong")
    with pytest.raises(UserError, match="in_channels 4 differs"):
        evaluate.evaluate(setup["config"], tmp_path / "wrong", bundle=setup["bundle"])


def test_kid_is_unbiased_mmd_with_cubic_kernel():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(50, 4))
    same = np.mean([evaluate.kid(rng.normal(size=(60, 4)), rng.normal(size=(50, 4))) for _ in range(40)])
    assert abs(same) < 0.05  # unbiased: about 0 for one distribution
    assert evaluate.kid(x, y + 1.0) > 0.5
    k = lambda a, b: (a @ b.T / 4 + 1) ** 3  # noqa: E731
    xs, ys = x[:3], y[:2]
    brute = ((k(xs, xs).sum() - np.trace(k(xs, xs))) / 6 + (k(ys, ys).sum() - np.trace(k(ys, ys))) / 2
             - 2 * k(xs, ys).mean())
    assert evaluate.kid(xs, ys) == pytest.approx(brute)


def test_evaluation_sets_the_configs_cpu_threads(setup, monkeypatch):
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    config = setup["config"].model_copy(deep=True)
    config.backend.cpu_threads = 3
    evaluate.load_components(config, teacher=object(), bundle=setup["bundle"], judge=object())
    config.backend.cpu_threads = None  # torch's default is left alone
    evaluate.load_components(config, teacher=object(), bundle=setup["bundle"], judge=object())
    assert threads == [3]
