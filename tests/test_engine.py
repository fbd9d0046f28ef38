"""The loop end to end on tiny models (CPU): every strategy, exact resume, non-finite steps, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aria.training import checkpoint as ckpt
from aria.config import DistillConfig
from aria.training.distill import plan_with
from aria.training.engine import TrainingStopped, run_distillation
from aria.errors import UserError
from aria.training.metrics import read_jsonl
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


@pytest.mark.parametrize("name, fed", [("exp3", "switched"), ("aria", "all")])
def test_the_run_feeds_exp3_its_own_draws_only(tmp_path, capsys, name, fed):
    """The engine's distiller plans with the samples the strategy may learn from (``feedback_config``), and says
    so where that is not ``distillation.feedback_from``."""
    from aria.training.engine import DistillationRun

    config = tiny_config(tmp_path, strategy={"name": name}, logging={"progress": True})
    run = DistillationRun(config, bundle=make_bundle(), teacher=make_teacher())
    try:
        run.setup()
        assert config.distillation.feedback_from == "all" and run.distiller.config.feedback_from == fed
    finally:
        run.logger.close()
        run.close(False)
    assert ("exp3 learns from switched samples only" in capsys.readouterr().out) == (name == "exp3")


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


def test_resume_applies_a_changed_lr_weight_decay_and_schedule(tmp_path, capsys):
    """--resume with another distillation.lr, weight_decay and LR schedule: the optimizer and the schedule
    continue from the checkpoint's step with the new values (the saved ones are not kept), and the run says so."""
    from aria.training.backends import lr_factor

    run(tmp_path, distillation={"steps": 2, "warmup_steps": 4}, logging={"every": 1})
    changed = {"steps": 5, "lr": 1e-5, "weight_decay": 0.5, "warmup_steps": 3, "lr_schedule": "cosine",
               "lr_final": 0.1}
    capsys.readouterr()
    config, _, records = run(tmp_path, resume=True, distillation=changed, logging={"every": 1})
    out = capsys.readouterr().out
    assert "resume: distillation.lr 0.001 -> 1e-05, distillation.weight_decay 0.0 -> 0.5, " in out
    assert "distillation.lr_schedule 'constant' -> 'cosine'" in out and "applied from step 3 on" in out
    new = lr_factor(3, "cosine", 5, 0.1)
    assert [r["lr"] for r in records if "loss" in r] == [1e-3 * lr_factor(4)(s) for s in (0, 1)] + \
        [1e-5 * new(s) for s in (2, 3, 4)]
    training = torch.load(ckpt.latest_good(config.output_dir / "checkpoints") / "training.pt", weights_only=True)
    group = training["optimizer"]["param_groups"][0]
    assert (group["initial_lr"], group["weight_decay"]) == (1e-5, 0.5)
    assert training["scheduler"]["base_lrs"] == [1e-5] and training["scheduler"]["last_epoch"] == 5


DS_WORKER = """
import json, pathlib, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import conftest
from aria.training.engine import DistillationRun

config = conftest.tiny_config(pathlib.Path({tmp!r}), **json.loads({sections!r}))
bundle = conftest.make_bundle()
bundle.paired_images[5] = float("nan")  # with strategy aria, steps 1 to 3 are skipped
run = DistillationRun(config, resume={resume}, bundle=bundle, teacher=conftest.make_teacher())
try:
    run.setup()
    groups = [{{k: g[k] for k in ("lr", "initial_lr", "weight_decay")}}
              for g in run.backend.engine.lr_scheduler.optimizer.param_groups]
    run.train()
    run.finish()
finally:
    run.close()
pathlib.Path({tmp!r}, "groups.json").write_text(json.dumps(groups))
"""


DS_PLAIN_WORKER = """
import json, pathlib, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import conftest
from aria.training.engine import run_distillation

config = conftest.tiny_config(pathlib.Path({tmp!r}), **json.loads({sections!r}))
run_distillation(config, bundle=conftest.make_bundle(), teacher=conftest.make_teacher())
"""


def start_deepspeed(folder: Path, worker: str, sections: dict, resume=False, port: int | None = None):
    """One DeepSpeed process of ``worker`` (DS_WORKER, DS_PLAIN_WORKER) for ``sections`` under ``folder``, without a
    launcher (as tests/test_distributed.py runs it): the backend fills in RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
    and MASTER_PORT (given ``port``, MASTER_PORT is that one: processes that start together get distinct ones)."""
    import os
    import subprocess
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "ds_worker.py"
    script.write_text(worker.format(tests=str(Path(__file__).resolve().parent), tmp=str(folder),
                                    sections=json.dumps(sections), resume=resume))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if port is not None:
        env["MASTER_PORT"] = str(port)
    return subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish_deepspeed(proc) -> tuple[int, str]:
    """(exit status, the end of its stdout and stderr) of a process of ``start_deepspeed``."""
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out[-3000:] + err[-3000:]


def deepspeed_run(tmp_path, sections: dict, resume=False) -> list[dict]:
    """One DeepSpeed process of DS_WORKER; returns the optimizer's param groups (lr, initial_lr, weight_decay)
    after setup, checkpoint restored."""
    code, output = finish_deepspeed(start_deepspeed(tmp_path, DS_WORKER, sections, resume))
    assert code == 0, output
    return json.loads((tmp_path / "groups.json").read_text())


DS_BASE = {"backend": {"kind": "deepspeed", "zero_stage": 2}, "strategy": {"name": "aria"},
           "logging": {"every": 1, "checkpoint_every": 2}}
DS_BF16_ZERO0 = {"kind": "deepspeed", "zero_stage": 0, "precision": "bf16"}
DS_CLIPPED = {"distillation": {"steps": 2, "grad_clip": 0.05}, "logging": {"every": 1}}
# the DeepSpeed runs of this module's tests that start from nothing: (worker, sections) by name
DS_RUNS = {
    "skips": (DS_WORKER, {**DS_BASE, "distillation": {"steps": 2, "warmup_steps": 4}}),
    "bf16-ema": (DS_PLAIN_WORKER, {"backend": DS_BF16_ZERO0, "distillation": {"steps": 2, "ema_decay": 0.5}}),
    "bf16": (DS_PLAIN_WORKER, {"backend": DS_BF16_ZERO0, "distillation": {"steps": 2}}),
    "fp32": (DS_PLAIN_WORKER, {**DS_CLIPPED, "backend": {"kind": "deepspeed", "zero_stage": 0}}),
}


@pytest.fixture(scope="module")
def deepspeed_runs(tmp_path_factory) -> dict:
    """The runs of DS_RUNS, each in a fresh process of its own, started together: on 2 cores a lone process
    (mostly imports) leaves one core idle. name -> (folder, exit status, output); a test copies a folder it
    writes to, and checks the exit status of its own run."""
    import socket

    root = tmp_path_factory.mktemp("deepspeed")
    sockets = [socket.socket() for _ in DS_RUNS]
    try:  # distinct free ports: the processes start together
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        ports = [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    procs = {name: start_deepspeed(root / name, worker, sections, port=port)
             for (name, (worker, sections)), port in zip(DS_RUNS.items(), ports)}
    try:
        return {name: (root / name, *finish_deepspeed(proc)) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def deepspeed_result(deepspeed_runs: dict, name: str):
    """The folder of run ``name`` of ``deepspeed_runs`` (which must have succeeded) and its config."""
    folder, code, output = deepspeed_runs[name]
    assert code == 0, output
    return folder, tiny_config(folder, **DS_RUNS[name][1])


@pytest.mark.slow
def test_deepspeed_skips_advance_the_schedule_and_resume_applies_lr_and_weight_decay(deepspeed_runs, tmp_path):
    """DeepSpeed (ZeRO-2, one CPU process; host sync only): a step skipped on the host advances the LR
    schedule as with the torch backend, and --resume gives the engine's optimizer and schedule the changed
    distillation.lr and weight_decay. The first 2 steps: DS_RUNS["skips"]; the resume, to 4, in a copy of it."""
    import shutil

    from aria.training.backends import lr_factor

    first, _ = deepspeed_result(deepspeed_runs, "skips")
    shutil.copytree(first / "run", tmp_path / "run")
    groups = deepspeed_run(tmp_path, {**DS_BASE, "distillation": {"steps": 4, "warmup_steps": 4, "lr": 1e-5,
                                                                  "weight_decay": 0.5}}, resume=True)
    factor = lr_factor(4)
    assert groups and all(g == {"lr": 1e-5 * factor(2), "initial_lr": 1e-5, "weight_decay": 0.5} for g in groups)
    steps = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["nonfinite"] for r in steps] == [True, True, True, False]
    assert [r["lr"] for r in steps] == [1e-3 * factor(0), 1e-3 * factor(1), 1e-5 * factor(2), 1e-5 * factor(3)]


def exported_weights(config) -> dict:
    from safetensors.torch import load_file

    return load_file(next((config.output_dir / "student").glob("*.safetensors")))


@pytest.mark.slow
def test_deepspeed_bf16_exports_the_ema_in_fp32(deepspeed_runs):
    """DeepSpeed bf16 (ZeRO 0: bf16 weights in the engine's module): the exported EMA student is the EMA's
    fp32 shadow (the one saved in the last checkpoint), not its bf16 rounding, as with the torch backend."""
    _, config = deepspeed_result(deepspeed_runs, "bf16-ema")
    folder = ckpt.latest_good(config.output_dir / "checkpoints")
    trained, ema, exported = ckpt.load_weights(folder), ckpt.load_weights(folder, "ema"), exported_weights(config)
    assert {v.dtype for v in trained.values()} == {torch.bfloat16}  # what the engine's module holds
    assert set(exported) == set(ema) and {v.dtype for v in exported.values()} == {torch.float32}
    assert all(torch.equal(exported[k], ema[k]) for k in ema)


@pytest.mark.slow
def test_deepspeed_zero0_bf16_exports_the_fp32_master_weights(deepspeed_runs):
    """DeepSpeed bf16 at ZeRO 0 (its FP16_UnfusedOptimizer keeps whole fp32 masters on every rank): the exported
    student holds the fp32 master weights, whose bf16 rounding is the engine module's weights (checkpointed)."""
    _, config = deepspeed_result(deepspeed_runs, "bf16")
    trained = ckpt.load_weights(ckpt.latest_good(config.output_dir / "checkpoints"))
    exported = exported_weights(config)
    assert set(exported) == set(trained) and {v.dtype for v in exported.values()} == {torch.float32}
    assert all(torch.equal(exported[k].bfloat16(), trained[k]) for k in trained)  # the masters, rounded
    assert any(not torch.equal(exported[k], trained[k].float()) for k in trained)  # finer than bf16


@pytest.mark.slow
def test_deepspeed_zero0_fp32_and_torch_without_clipping_log_the_grad_norm(deepspeed_runs, tmp_path):
    """``grad_norm`` on every log step where neither the engine nor the clipping computes one: DeepSpeed ZeRO 0
    in fp32 (a plain torch optimizer) logs the norm the torch backend logs, and the torch backend logs it
    with grad_clip 0 too (the norm before clipping: step 1's is the same with and without clipping)."""
    _, ds = deepspeed_result(deepspeed_runs, "fp32")
    _, _, torch_records = run(tmp_path / "torch", **DS_CLIPPED)
    _, _, unclipped = run(tmp_path / "unclipped", distillation={"steps": 2, "grad_clip": 0}, logging={"every": 1})
    norms = [[r.get("grad_norm") for r in records if "loss" in r]
             for records in (read_jsonl(ds.output_dir / "metrics.jsonl"), torch_records, unclipped)]
    assert all(len(n) == 2 and all(v is not None and np.isfinite(v) and v > 0 for v in n) for n in norms), norms
    np.testing.assert_allclose(norms[0], norms[1], rtol=1e-5)
    assert norms[2][0] == pytest.approx(norms[1][0], rel=1e-6) and norms[1][0] > 0.05  # step 1 was clipped


def test_ema_turned_on_at_resume_starts_from_the_restored_weights(tmp_path):
    """distillation.ema_decay set at a resume from a checkpoint without EMA: the EMA starts from the restored
    student, not from the untrained one the run built before restoring."""
    config, _, _ = run(tmp_path, distillation={"steps": 4})
    run(tmp_path, resume=True, distillation={"steps": 5, "ema_decay": 0.5})
    new, old = ckpt.list_checkpoints(config.output_dir / "checkpoints")[:2]
    s4, s5, ema = ckpt.load_weights(old), ckpt.load_weights(new), ckpt.load_weights(new, "ema")
    assert not (old / "ema.safetensors").exists() and set(ema) == set(s5)
    assert any(not torch.equal(s4[k], s5[k]) for k in s4)
    for k in s4:  # one EMA step of decay 0.5 from the step-4 weights
        torch.testing.assert_close(ema[k], torch.lerp(s4[k].float(), s5[k].float(), 0.5), rtol=0, atol=1e-6)


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


def _teacher_in(folder, seed):
    """The conftest teacher of ``seed``, saved in ``folder`` and read from there (its weights' digest is recorded)."""
    import dataclasses

    teacher = make_teacher(seed=seed)
    teacher.unet.save_pretrained(folder)
    return dataclasses.replace(teacher, path=folder)


def _without_teacher_record(folder):
    """``folder``'s state.json as checkpoints wrote it before they recorded the teacher (manifest re-signed)."""
    from aria.files import file_sha256

    state = json.loads((folder / "state.json").read_text())
    del state["teacher"]
    (folder / "state.json").write_text(json.dumps(state))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["state.json"] = {"bytes": (folder / "state.json").stat().st_size,
                                       "sha256": file_sha256(folder / "state.json")}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_resume_distils_from_the_teacher_its_checkpoint_recorded(tmp_path, capsys):
    """Checkpoints, the student's card and the run's result record the teacher (its folder and its weight files'
    digest); a resume with a teacher of other weights is refused before any work, naming both; a checkpoint that
    records none (older ones) resumes, saying so and naming the teacher it uses now."""
    from aria.files import folder_weights_digest

    first, other = _teacher_in(tmp_path / "t0", 0), _teacher_in(tmp_path / "t1", 1)
    record = {"teacher": str(first.path), "weights": folder_weights_digest(first.path)}
    assert record["weights"] != folder_weights_digest(other.path)
    config = tiny_config(tmp_path, distillation={"steps": 2})
    result = run_distillation(config, bundle=make_bundle(), teacher=first)
    root = config.output_dir / "checkpoints"
    (folder,) = ckpt.list_checkpoints(root)
    assert ckpt.read_state(folder)[0]["teacher"] == result["teacher"] == record
    assert json.loads((config.output_dir / "student" / "aria.json").read_text())["teacher_weights"] == record["weights"]
    assert f"teacher: {first.path} (weights sha256 {record['weights']})" in capsys.readouterr().out

    resumed = tiny_config(tmp_path, distillation={"steps": 4})
    before = sorted(p.name for p in (config.output_dir).rglob("*"))
    with pytest.raises(UserError, match=rf"^cannot resume: checkpoint step-00000002 distilled from .*t0 \(weights "
                                        rf"{record['weights']}\) but this run's teacher is .*t1 \(weights "
                                        rf"{folder_weights_digest(other.path)}\)"):
        run_distillation(resumed, resume=True, bundle=make_bundle(), teacher=other)
    assert sorted(p.name for p in (config.output_dir).rglob("*")) == before

    _without_teacher_record(folder)
    capsys.readouterr()
    run_distillation(resumed, resume=True, bundle=make_bundle(), teacher=other)
    assert (f"resume: checkpoint step-00000002 does not record its teacher (written before checkpoints recorded "
            f"it); this run distils from {other.path} (weights {folder_weights_digest(other.path)})"
            in capsys.readouterr().out)
    assert ckpt.read_state(ckpt.latest_good(root))[0]["teacher"]["teacher"] == str(other.path)


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
    return [bad_image in plan_with(s, state, k, seed=0, batch_size=8, num_timesteps=1000, config=config,
                                   bundle=bundle).image_index for k in range(steps)]


SYNC_MODES = {"host": {}, "device": {"step_sync": "device"},
              "device-late": {"step_sync": "device", "feedback_delay": 1}}


@pytest.mark.parametrize("mode", list(SYNC_MODES))
def test_non_finite_steps_are_skipped(tmp_path, mode):
    bundle = make_bundle()
    bundle.paired_images[5] = np.nan
    expected = poisoned_steps(bundle, 5, 6)
    assert any(expected) and not all(expected)
    config, result, records = run(tmp_path, bundle=bundle, strategy={"name": "aria"},
                                  distillation={"steps": 6, "ema_decay": 0.9, **SYNC_MODES[mode]})
    steps = [r for r in records if "loss" in r]
    assert [r["nonfinite"] for r in steps] == expected
    assert all((r["loss"] is None) == r["nonfinite"] for r in steps)
    assert result["nonfinite"] == sum(expected)
    state = ckpt.read_state(ckpt.latest_good(config.output_dir / "checkpoints"))[0]
    assert json.loads(state["strategy"]["state"])["updates"] == 6 - sum(expected)  # no update when skipped


def checkpoint_of(config):
    folder = ckpt.latest_good(config.output_dir / "checkpoints")
    return ckpt.read_state(folder)[0], {name: ckpt.load_weights(folder, name) for name in ("student", "ema")}


def test_device_sync_computes_what_host_sync_does(tmp_path):
    """step_sync device (skips on the device, reads the statistics after the backward is queued) gives
    the host path's records, LR, weights, EMA and strategy state bit for bit, non-finite steps included:
    in both modes a skipped step advances the LR schedule (step s runs at lr x factor(s), warmup included)."""
    from aria.training.backends import lr_factor

    bundle = make_bundle()
    bundle.paired_images[5] = np.nan  # some steps are skipped
    keys = ("loss", "task", "out", "feat", "probabilities", "estimates", "nonfinite", "grad_norm", "lr")
    runs = {}
    for mode in ("host", "device"):
        config, _, records = run(tmp_path / mode, bundle=bundle, strategy={"name": "aria"}, logging={"every": 1},
                                 distillation={"steps": 6, "warmup_steps": 5, "ema_decay": 0.9, **SYNC_MODES[mode]})
        runs[mode] = ([{k: r.get(k) for k in keys} for r in records if "loss" in r], *checkpoint_of(config))
    (host_records, host_state, host_weights), (dev_records, dev_state, dev_weights) = runs["host"], runs["device"]
    assert host_records == dev_records and any(r["nonfinite"] for r in host_records)
    assert host_records[0]["nonfinite"]  # the first step is skipped: the schedule advances all the same
    assert [r["lr"] for r in host_records] == [1e-3 * lr_factor(5)(s) for s in range(6)]
    assert host_state["strategy"] == dev_state["strategy"] and host_state["distiller"] == dev_state["distiller"]
    for name in ("student", "ema"):
        assert all(torch.equal(host_weights[name][k], dev_weights[name][k]) for k in host_weights[name])


@pytest.mark.parametrize("mode", ["host", "device"])
def test_resume_continues_exactly_through_skipped_steps_and_warmup(tmp_path, mode):
    """Non-finite steps (the LR schedule advances at each) during a warmup: 4 steps then a resume to 6 give
    the uninterrupted run's records, LR, weights and EMA bit for bit."""
    bundle = make_bundle()
    bundle.paired_images[5] = np.nan  # steps 1 to 3 are skipped
    sections = dict(strategy={"name": "aria"}, logging={"every": 1, "checkpoint_every": 4})
    late = {"warmup_steps": 6, "ema_decay": 0.9, **SYNC_MODES[mode]}
    a_cfg, _, a = run(tmp_path / "a", bundle=bundle, distillation={"steps": 6, **late}, **sections)
    run(tmp_path / "b", bundle=bundle, distillation={"steps": 4, **late}, **sections)
    b_cfg, _, b = run(tmp_path / "b", resume=True, bundle=bundle, distillation={"steps": 6, **late}, **sections)
    keys = ("loss", "nonfinite", "probabilities", "estimates", "grad_norm", "lr")
    a_steps, b_steps = [r for r in a if "loss" in r], [r for r in b if "loss" in r]
    assert any(r["nonfinite"] for r in a_steps) and [r["step"] for r in b_steps] == list(range(1, 7))
    assert [{k: r.get(k) for k in keys} for r in a_steps] == [{k: r.get(k) for k in keys} for r in b_steps]
    (sa, wa), (sb, wb) = checkpoint_of(a_cfg), checkpoint_of(b_cfg)
    assert sa["strategy"] == sb["strategy"]
    for name in ("student", "ema"):
        assert all(torch.equal(wa[name][k], wb[name][k]) for k in wa[name])


def test_feedback_one_step_late_plans_with_the_state_of_two_steps_before(tmp_path):
    """feedback_delay 1: step s is planned before step s-1's feedback arrives; a checkpoint holds every
    step's feedback, and a resumed run continues exactly."""
    late = {"step_sync": "device", "feedback_delay": 1, "ema_decay": 0.9}
    sections = dict(strategy={"name": "aria"}, logging={"every": 1, "checkpoint_every": 4})
    a_cfg, _, a = run(tmp_path / "a", distillation={"steps": 6, **late}, **sections)
    _, _, host = run(tmp_path / "h", distillation={"steps": 6}, **sections)
    a_steps, host_steps = [r for r in a if "loss" in r], [r for r in host if "loss" in r]
    assert a_steps[0]["probabilities"] == host_steps[0]["probabilities"]  # no feedback yet either way
    assert a_steps[2]["probabilities"] != host_steps[2]["probabilities"]  # step 3 lacks step 2's feedback
    updates = [json.loads(ckpt.read_state(f)[0]["strategy"]["state"])["updates"]
               for f in sorted(ckpt.list_checkpoints(a_cfg.output_dir / "checkpoints"))]
    assert updates == [4, 6]  # drained at the checkpoint and at the end
    run(tmp_path / "b", distillation={"steps": 4, **late}, **sections)
    b_cfg, _, b = run(tmp_path / "b", resume=True, distillation={"steps": 6, **late}, **sections)
    keys = ("loss", "probabilities", "estimates", "grad_norm")
    b_steps = [r for r in b if "loss" in r]
    assert [{k: r.get(k) for k in keys} for r in a_steps] == [{k: r.get(k) for k in keys} for r in b_steps]
    (sa, wa), (sb, wb) = checkpoint_of(a_cfg), checkpoint_of(b_cfg)
    assert sa["strategy"] == sb["strategy"]
    assert all(torch.equal(wa["student"][k], wb["student"][k]) for k in wa["student"])


@pytest.mark.parametrize("mode, stop_step", [("host", 2), ("device", 2), ("device-late", 3)])
def test_too_many_non_finite_steps_stop_with_a_checkpoint(tmp_path, mode, stop_step):
    """With feedback_delay 1 the limit is seen one step late: the step already launched is completed
    first (it might have recovered), so the run stops one step later, weights still untouched."""
    bundle = make_bundle()
    bundle.paired_images[:] = np.nan
    with pytest.raises(TrainingStopped, match=f"{stop_step} consecutive non-finite losses") as err:
        run(tmp_path, bundle=bundle, distillation={"steps": 6, "max_nonfinite_steps": 2, **SYNC_MODES[mode]},
            logging={"checkpoint_every": 100})
    folder = ckpt.latest_good(tmp_path / "run" / "checkpoints")
    assert folder.name == f"step-{stop_step:08d}" and str(folder) in str(err.value)
    torch.manual_seed(0)
    from aria.models import build_student

    initial, _ = build_student(make_teacher().unet, tiny_config(tmp_path).student)
    saved = ckpt.load_weights(folder)
    assert all(torch.equal(saved[k], v) for k, v in initial.state_dict().items())  # weights never changed


def test_device_sync_needs_the_torch_backend(tmp_path):
    with pytest.raises(UserError, match="step_sync 'device' needs backend.kind 'torch'"):
        tiny_config(tmp_path, distillation={"step_sync": "device"}, backend={"kind": "deepspeed"})
    with pytest.raises(UserError, match="feedback_delay 1 needs step_sync 'device'"):
        tiny_config(tmp_path, distillation={"feedback_delay": 1})


def test_exported_student_samples_with_ddim_and_the_grid_command(tmp_path):
    from diffusers import UNet2DConditionModel
    from PIL import Image

    from aria.experiment.sample import cell_origin, ddim_sample, sample_grid
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
    cell = 128  # 16 px enlarged 8x (tests/test_sample_grid.py tests the layout)
    (y, x0), (_, x1) = cell_origin(0, 0, cell), cell_origin(0, 1, cell)
    assert image.shape[0] >= 3 * cell and image.shape[1] >= 2 * cell
    left, right = image[y:y + cell, x0:x0 + cell], image[y:y + cell, x1:x1 + cell]
    assert not np.array_equal(left, right)  # student and teacher differ, from the same noise


@pytest.mark.gpu
@pytest.mark.parametrize("mode", list(SYNC_MODES))
def test_gpu_bf16_trains_resumes_and_exports(tmp_path, mode):
    sync = SYNC_MODES[mode]
    sections = dict(backend={"device": "cuda", "precision": "bf16"}, logging={"every": 1},
                    distillation={"steps": 4, "ema_decay": 0.9, **sync})
    run(tmp_path, **{**sections, "distillation": {"steps": 2, "ema_decay": 0.9, **sync}})
    _, result, records = run(tmp_path, resume=True, **sections)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in steps)
    assert np.isfinite(result["regimes"]["all"]["discrepancy"])


@pytest.mark.gpu
def test_gpu_device_sync_skips_a_non_finite_step_on_the_device(tmp_path):
    """On CUDA the fused AdamW skips a poisoned step by itself: the same records as the host path."""
    bundle = make_bundle()
    bundle.paired_images[5] = np.nan
    keys = ("loss", "nonfinite", "probabilities", "estimates")
    records = {}
    for mode in ("host", "device"):
        _, _, recs = run(tmp_path / mode, bundle=bundle, logging={"every": 1},
                         backend={"device": "cuda", "precision": "bf16", "deterministic": True},
                         distillation={"steps": 6, **SYNC_MODES[mode]})
        records[mode] = [{k: r.get(k) for k in keys} for r in recs if "loss" in r]
    assert any(r["nonfinite"] for r in records["host"])
    assert records["host"] == records["device"]


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

    from aria.training.metrics import run_summary

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
