"""The loop end to end on tiny models (CPU): every strategy, exact resume, non-finite steps, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aria import checkpoint as ckpt
from aria.config import DistillConfig
from aria.distill import plan_step
from aria.engine import TrainingStopped, run_distillation
from aria.errors import UserError
from aria.metrics import read_jsonl
from aria.strategies import create_strategy, list_strategies
from conftest import make_bundle, make_teacher, tiny_config

torch.set_num_threads(1)


def run(tmp_path, resume=False, bundle=None, **sections):
    config = tiny_config(tmp_path, **sections)
    result = run_distillation(config, resume=resume, bundle=bundle or make_bundle(), teacher=make_teacher())
    return config, result, read_jsonl(config.output_dir / "metrics.jsonl")


@pytest.mark.parametrize("name", list(list_strategies()))
def test_every_strategy_trains_and_exports(tmp_path, name):
    from diffusers import UNet2DConditionModel

    config, result, records = run(tmp_path, strategy={"name": name}, distillation={"steps": 2},
                                  logging={"every": 1})
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and not any(r["nonfinite"] for r in steps)
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)
    switched = [r["switched_fraction"] for r in steps]
    assert (max(switched) == 0) == (name == "none")
    assert set(result["regimes"]) == {"seen", "under", "unseen", "all"}
    assert records[-1]["event"] == "end"
    folder = ckpt.latest_good(config.output_dir / "checkpoints")
    state, _ = ckpt.read_state(folder)
    assert state["step"] == 2 and state["strategy"]["name"] == name
    student = UNet2DConditionModel.from_pretrained(result["student"])
    assert json.loads((config.output_dir / "student" / "aria.json").read_text())["strategy"] == name
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in make_teacher().unet.parameters())


def test_resume_continues_exactly(tmp_path):
    """4 steps, then resume to 6 == 6 steps uninterrupted: losses, allocations and weights, bit for bit."""
    sections = dict(strategy={"name": "aria"}, distillation={"steps": 6, "ema_decay": 0.9}, logging={"every": 1})
    a_cfg, _, a = run(tmp_path / "a", **sections)
    run(tmp_path / "b", **{**sections, "distillation": {"steps": 4, "ema_decay": 0.9}})
    b_cfg, _, b = run(tmp_path / "b", resume=True, **sections)
    keys = ("loss", "task", "out", "feat", "probabilities", "estimates", "switched_fraction", "grad_norm")
    a_steps, b_steps = [r for r in a if "loss" in r], [r for r in b if "loss" in r]
    assert [r["step"] for r in b_steps] == list(range(1, 7))  # appended after the checkpoint's step
    for ra, rb in zip(a_steps, b_steps):
        assert {k: ra.get(k) for k in keys} == {k: rb.get(k) for k in keys}
    for name in ("student", "ema"):
        wa = ckpt.load_weights(ckpt.latest_good(a_cfg.output_dir / "checkpoints"), name)
        wb = ckpt.load_weights(ckpt.latest_good(b_cfg.output_dir / "checkpoints"), name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = ckpt.read_state(ckpt.latest_good(a_cfg.output_dir / "checkpoints"))[0]
    sb = ckpt.read_state(ckpt.latest_good(b_cfg.output_dir / "checkpoints"))[0]
    assert sa["strategy"] == sb["strategy"] and sa["distiller"] == sb["distiller"]


def test_resume_guards(tmp_path, capsys):
    """--resume continues from the newest checkpoint that verifies (a damaged latest is reported and an
    older one used); without one, none or only damaged ones, it is a UserError naming the folder and what
    it holds, raised before any work: nothing is trained or written."""
    root = tmp_path / "run" / "checkpoints"
    with pytest.raises(UserError, match=r"--resume: no checkpoint in .*run/checkpoints \(the folder does not exist\)"):
        run(tmp_path, resume=True, distillation={"steps": 2})
    assert not (tmp_path / "run").exists()
    run(tmp_path, distillation={"steps": 4})  # checkpoints at steps 2 and 4
    with pytest.raises(UserError, match="already holds checkpoints"):
        run(tmp_path, distillation={"steps": 4})
    with pytest.raises(UserError, match="distillation.batch_size is 8 in the checkpoint but 4"):
        run(tmp_path, resume=True, distillation={"steps": 4, "batch_size": 4})
    (root / "step-00000004" / "state.json").write_text("{}")  # damaged: the manifest no longer verifies
    capsys.readouterr()
    _, _, records = run(tmp_path, resume=True, distillation={"steps": 5})
    out = capsys.readouterr().out
    assert "step-00000004 is damaged" in out and "resuming from" in out and "step-00000002 (step 2)" in out
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-00000005", "step-00000004"]
    for folder in ckpt.list_checkpoints(root):
        (folder / "student.safetensors").write_bytes(b"x")
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*")}
    with pytest.raises(UserError, match=r"--resume: no usable checkpoint in .*run/checkpoints: 2 damaged "
                                        r"\(step-00000005: student.safetensors has 1 bytes.*; step-00000004: "):
        run(tmp_path, resume=True, distillation={"steps": 6})
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*")} == before


def test_mismatched_inputs_are_named(tmp_path):
    bundle = make_bundle()
    bundle.encoder.dim = 8
    with pytest.raises(UserError, match="gives 8-d contexts but the teacher .* cross-attends to 16-d"):
        run(tmp_path, bundle=bundle)
    with pytest.raises(UserError, match=r"paired images are \(3, 8, 8\) but the pixel-space teacher"):
        run(tmp_path, bundle=make_bundle(size=8))


def poisoned_steps(bundle, bad_image, steps):
    config = DistillConfig(batch_size=8)
    s = create_strategy("rc")
    state = s.init(bundle.region_info, 0)
    return [bad_image in plan_step(k, seed=0, batch_size=8, num_timesteps=1000, config=config, bundle=bundle,
                                   strategy=s, state=state).image_index for k in range(steps)]


def test_non_finite_steps_are_skipped(tmp_path):
    bundle = make_bundle()
    bundle.paired_images[5] = np.nan
    expected = poisoned_steps(bundle, 5, 6)
    assert any(expected) and not all(expected)
    config, result, records = run(tmp_path, bundle=bundle, strategy={"name": "aria"}, distillation={"steps": 6})
    steps = [r for r in records if "loss" in r]
    assert [r["nonfinite"] for r in steps] == expected
    assert all((r["loss"] is None) == r["nonfinite"] for r in steps)
    assert result["nonfinite"] == sum(expected)
    state = ckpt.read_state(ckpt.latest_good(config.output_dir / "checkpoints"))[0]
    assert json.loads(state["strategy"]["state"])["updates"] == 6 - sum(expected)  # no update when skipped


def test_too_many_non_finite_steps_stop_with_a_checkpoint(tmp_path):
    bundle = make_bundle()
    bundle.paired_images[:] = np.nan
    with pytest.raises(TrainingStopped, match="2 consecutive non-finite losses") as err:
        run(tmp_path, bundle=bundle, distillation={"steps": 6, "max_nonfinite_steps": 2})
    folder = ckpt.latest_good(tmp_path / "run" / "checkpoints")
    assert folder.name == "step-00000002" and str(folder) in str(err.value)
    torch.manual_seed(0)
    from aria.models import build_student

    initial, _ = build_student(make_teacher().unet, tiny_config(tmp_path).student)
    saved = ckpt.load_weights(folder)
    assert all(torch.equal(saved[k], v) for k, v in initial.state_dict().items())  # weights never changed


def test_exported_student_samples_with_ddim_and_the_grid_command(tmp_path):
    from diffusers import UNet2DConditionModel
    from PIL import Image

    from aria.sample import ddim_sample, sample_grid
    from conftest import FakeEncoder

    _, result, _ = run(tmp_path, distillation={"steps": 2})
    student = UNet2DConditionModel.from_pretrained(result["student"])
    enc = FakeEncoder()
    card = json.loads((tmp_path / "run" / "student" / "aria.json").read_text())
    x = ddim_sample(student, enc.token_states(["a", "b"]), enc.token_states([""]), torch.randn(2, 3, 16, 16), 4, 2.0,
                    card["scheduler"])
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    teacher_dir = tmp_path / "teacher"
    make_teacher().unet.save_pretrained(teacher_dir)
    out = sample_grid(tmp_path / "run", ["p1", "p2", "p3"], tmp_path / "grid.png", teacher_dir, steps=3, encoder=enc)
    image = np.asarray(Image.open(out))
    assert image.shape == (3 * 18 + 2, 2 * 18 + 2, 3)
    left, right = image[2:18, 2:18], image[2:18, 20:36]
    assert not np.array_equal(left, right)  # student and teacher differ, from the same noise


@pytest.mark.gpu
def test_gpu_bf16_trains_resumes_and_exports(tmp_path):
    sections = dict(backend={"device": "cuda", "precision": "bf16"}, distillation={"steps": 4, "ema_decay": 0.9},
                    logging={"every": 1})
    run(tmp_path, **{**sections, "distillation": {"steps": 2, "ema_decay": 0.9}})
    _, result, records = run(tmp_path, resume=True, **sections)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in steps)
    assert np.isfinite(result["regimes"]["all"]["discrepancy"])


def test_tensorboard_logs_or_names_the_missing_package(tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="tensorboard package is not installed"):
            run(tmp_path, logging={"tensorboard": True}, distillation={"steps": 1})
    else:
        run(tmp_path, logging={"tensorboard": True}, distillation={"steps": 1})
        assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_sample_command_names_a_folder_that_is_not_a_student(tmp_path, capsys):
    from aria.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--model", str(tmp_path), "--prompt", "a red circle", "--out", str(tmp_path / "g.png")])
    assert exit_.value.code == 2 and "no aria.json" in capsys.readouterr().err


def test_compile_caches_beside_the_data_and_the_summary_separates_the_first_step(tmp_path, monkeypatch, capsys):
    """backend.compile: the compiler's caches go to data.cache_dir/inductor (a resumed run reuses
    them); the closing summary gives the first step's time (compilation included) apart from the
    steady samples/s. Compiling is stubbed: this checks the wiring, not the compiler."""
    import os

    from aria.metrics import run_summary

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # what importing diffusers leaves in the environment: torch's default, which the run replaces
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # restored after the test
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    config, _, records = run(tmp_path, backend={"compile": True}, distillation={"steps": 3}, logging={"every": 1})
    assert len(compiled) == 2  # teacher and student
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((config.data.cache_dir).resolve() / "inductor")
    mine = tmp_path / "my-inductor-cache"  # a folder the user chose is kept
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(mine))
    run(tmp_path / "again", backend={"compile": True}, distillation={"steps": 1})
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(mine)
    rows = dict((q, v) for q, v in run_summary(records, 1.0, 0))
    steps = [r for r in records if "loss" in r]
    assert rows["first step (s), compilation included"] == pytest.approx(steps[0]["batch"] / steps[0]["samples_per_s"])
    assert rows["samples / s after the first step"] == pytest.approx(np.mean([r["samples_per_s"] for r in steps[1:]]))
