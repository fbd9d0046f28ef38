"""Several ranks (torchrun, gloo on CPU) and the DeepSpeed backend (one and two processes, CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
TORCHRUN = Path(sys.executable).with_name("torchrun")

WORKER = textwrap.dedent("""
    import hashlib, json, os, sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import conftest
    from aria import distill
    from aria.engine import DistillationRun

    plans = []
    original = distill.Distiller.plan
    def plan(self, step, strategy, state):
        p = original(self, step, strategy, state)
        plans.append([step, p.prompt_ids.tolist(), p.regions.tolist(), p.timesteps.tolist()])
        return p
    distill.Distiller.plan = plan

    config = conftest.tiny_config(__import__("pathlib").Path({tmp!r}), **json.loads({sections!r}))
    bundle = conftest.make_bundle()
    bundle.paired_images[{poison}] = float("nan")  # steps drawing these images are skipped
    run = DistillationRun(config, resume={resume}, check_consistency=True, bundle=bundle,
                          teacher=conftest.make_teacher())
    try:
        run.setup(); run.train(); run.finish()
        from aria.strategies import state_hash
        weights = hashlib.sha256(b"".join(v.detach().float().cpu().numpy().tobytes()
                                          for v in run.student.state_dict().values())).hexdigest()
        out = {{"rank": run.backend.rank, "world": run.backend.world_size, "plans": plans,
               "state": state_hash(run.state), "weights": weights}}
        with open(os.path.join({tmp!r}, f"rank{{run.backend.rank}}.json"), "w") as f:
            json.dump(out, f)
    finally:
        run.close()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, ranks: int, sections: dict, resume=False, poison=(), timeout=240) -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS), tmp=str(tmp_path), sections=json.dumps(sections),
                                    resume=resume, poison=list(poison)))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if ranks == 1:
        cmd = [sys.executable, str(script)]
    else:
        cmd = [str(TORCHRUN), f"--nproc_per_node={ranks}", f"--master_port={free_port()}", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(ranks)]


def steps(tmp_path) -> list[dict]:
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


SECTIONS = {"strategy": {"name": "aria"}, "distillation": {"steps": 4}, "logging": {"every": 1}}


@pytest.mark.slow
def test_two_ranks_agree_and_match_one_rank(tmp_path, monkeypatch):
    """Two gloo ranks: identical plans, strategy state and weights on both; same data order and
    (up to float reduction order) the same losses as one process; a non-finite step is skipped
    by both ranks together (DDP forward without backward)."""
    from aria import distill
    from aria.engine import run_distillation
    from conftest import make_bundle, make_teacher, tiny_config

    two = launch(tmp_path / "two", 2, SECTIONS, poison=[22])
    assert [r["world"] for r in two] == [2, 2]
    assert two[0]["plans"] == two[1]["plans"]  # identical global allocations on both ranks
    assert two[0]["state"] == two[1]["state"] and two[0]["weights"] == two[1]["weights"]

    plans, original = [], distill.Distiller.plan
    monkeypatch.setattr(distill.Distiller, "plan", lambda self, *a: plans.append(original(self, *a)) or plans[-1])
    bundle = make_bundle()
    bundle.paired_images[22] = np.nan
    run_distillation(tiny_config(tmp_path / "one", **SECTIONS), bundle=bundle, teacher=make_teacher())
    assert [p.prompt_ids.tolist() for p in plans[:2]] == [p[1] for p in two[0]["plans"][:2]]  # same data order
    a, b = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert [r["nonfinite"] for r in a] == [r["nonfinite"] for r in b] and a[1]["nonfinite"]
    np.testing.assert_allclose([r["loss"] or 0 for r in a], [r["loss"] or 0 for r in b], rtol=1e-4)


@pytest.mark.slow
def test_deepspeed_single_process_zero2_trains_and_resumes(tmp_path):
    """No launcher: the backend fills in RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT."""
    sections = {"backend": {"kind": "deepspeed", "zero_stage": 2}, "distillation": {"steps": 2}, "logging": {"every": 1}}
    launch(tmp_path, 1, sections)
    folder = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert any(name.startswith("deepspeed/") and "optim_states" in name for name in manifest["files"])
    launch(tmp_path, 1, {**sections, "distillation": {"steps": 3}}, resume=True)
    records = steps(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)


@pytest.mark.slow
def test_deepspeed_two_ranks_zero2_identical_weights(tmp_path):
    sections = {"backend": {"kind": "deepspeed", "zero_stage": 2}, "distillation": {"steps": 2}}
    ranks = launch(tmp_path, 2, sections)
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["state"] == ranks[1]["state"]


@pytest.mark.gpu
def test_deepspeed_gpu_bf16_zero2(tmp_path):
    sections = {"backend": {"kind": "deepspeed", "zero_stage": 2, "device": "cuda", "precision": "bf16"},
                "distillation": {"steps": 3}, "logging": {"every": 1}}
    launch(tmp_path, 1, sections)
    assert all(np.isfinite(r["loss"]) for r in steps(tmp_path))


@pytest.mark.gpu
def test_two_gpus_ddp_identical_weights(tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    sections = {**SECTIONS, "backend": {"device": "cuda", "precision": "bf16"}}
    ranks = launch(tmp_path, 2, sections)
    assert ranks[0]["plans"] == ranks[1]["plans"] and ranks[0]["weights"] == ranks[1]["weights"]
