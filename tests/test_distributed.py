"""Several ranks (torchrun, gloo on CPU) and the DeepSpeed backend (one and two processes, CPU).

Issue #7, item 5: two ranks keep identical strategy state and allocations over 1,000 steps (hash compared
every step: ``test_two_ranks_keep_identical_strategy_state_for_1000_steps``); a rank that dies or hangs
makes the others stop instead of hanging (``test_a_dead_rank_is_one_line_on_the_others``,
``test_a_hung_rank_stops_the_others``); a checkpoint written by two ranks resumes on one with the same
allocation and data order (``test_a_two_rank_checkpoint_resumes_on_one_rank``)."""

from __future__ import annotations

import json
import re
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
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
    from aria.training import distill
    from aria.training.engine import DistillationRun

    plans = []
    original = distill.Distiller.plan
    def plan(self, draft, allocation):
        p = original(self, draft, allocation)
        plans.append([p.step, p.prompt_ids.tolist(), p.regions.tolist(), p.timesteps.tolist()])
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


SECTIONS = {"strategy": {"name": "aria"}, "distillation": {"steps": 4},
            "logging": {"every": 1, "checkpoint_every": 2, "keep_checkpoints": 2}}
POISON = [22]  # paired image 22 is NaN: a step drawing it (step 2) is non-finite and skipped by every rank


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One run of 4 steps on two gloo ranks (state hashes compared every step, checkpoints at 2 and 4), shared
    by the two tests below: its folder and both ranks' plans, strategy state and weights."""
    folder = tmp_path_factory.mktemp("two")
    return folder, launch(folder, 2, SECTIONS, poison=POISON)


@pytest.mark.slow
def test_two_ranks_agree_and_match_one_rank(two_ranks, tmp_path, monkeypatch):
    """Two gloo ranks: identical plans, strategy state and weights on both; same data order and
    (up to float reduction order) the same losses as one process; a non-finite step is skipped
    by both ranks together (DDP forward without backward)."""
    from aria.training import distill
    from aria.training.engine import run_distillation
    from conftest import make_bundle, make_teacher, tiny_config

    folder, two = two_ranks
    assert [r["world"] for r in two] == [2, 2]
    assert two[0]["plans"] == two[1]["plans"]  # identical global allocations on both ranks
    assert two[0]["state"] == two[1]["state"] and two[0]["weights"] == two[1]["weights"]

    plans, original = [], distill.Distiller.plan
    monkeypatch.setattr(distill.Distiller, "plan", lambda self, *a: plans.append(original(self, *a)) or plans[-1])
    bundle = make_bundle()
    bundle.paired_images[POISON] = np.nan
    run_distillation(tiny_config(tmp_path / "one", **SECTIONS), bundle=bundle, teacher=make_teacher())
    assert [p.prompt_ids.tolist() for p in plans[:2]] == [p[1] for p in two[0]["plans"][:2]]  # same data order
    a, b = steps(tmp_path / "one"), steps(folder)
    assert [r["nonfinite"] for r in a] == [r["nonfinite"] for r in b] and a[1]["nonfinite"]
    np.testing.assert_allclose([r["loss"] or 0 for r in a], [r["loss"] or 0 for r in b], rtol=1e-4)


AGREE_WORKER = textwrap.dedent("""
    # The engine's strategy path without the models (a step of the tiny UNets costs ~0.1 s on a CPU):
    # plan_with from (seed, step) and the state, each rank's share of the per (region, timestep bin)
    # feedback summed in float32 as the Distiller does, the backend's all_reduce, the strategy update,
    # and the engine's per-step consistency check (backend.same_on_all_ranks of the state hash). The
    # strategies advance side by side, so that one all_reduce and one hash check per step serve them all
    # (the collectives, not the strategies, are the cost on 2 cores: 10,000 of them took ~30 s).
    import hashlib, json, os, sys
    sys.path.insert(0, {tests!r})
    import numpy as np, torch
    torch.set_num_threads(1)
    import conftest
    from aria.training.backends import TorchBackend
    from aria.config import BackendConfig, DistillConfig
    from aria.training.distill import plan_with
    from aria.training.engine import _hash63
    from aria.strategies import create_strategy
    from aria.strategies.base import Feedback

    steps, bins, batch, names = {steps}, 4, 8, {strategies!r}
    config = DistillConfig(batch_size=batch, timestep_bins=bins, switch_schedule="constant", switch_constant=0.75)
    backend = TorchBackend(BackendConfig(device="cpu", collective_timeout_s=60), config)
    bundle = conftest.make_bundle()
    k = bundle.region_info.num_regions
    strategies = [create_strategy(name) for name in names]
    states = [strategy.init(bundle.region_info, 0) for strategy in strategies]
    digests = [hashlib.sha256() for _ in names]
    for step in range(steps):
        plans, parts = [], []
        for strategy, state in zip(strategies, states):
            plan = plan_with(strategy, state, step, seed=0, batch_size=batch, num_timesteps=1000, config=config,
                             bundle=bundle)
            part = plan.part(backend.rank, backend.world_size)
            # a drifting, region-dependent discrepancy of every sample of the global batch
            d = (np.random.default_rng([7, step]).gamma(2.0, size=batch) * (1 + np.abs(plan.regions) % 3)
                 * (1.5 + np.sin(step / 40)))
            regions, t_bins = plan.regions[part], np.minimum(plan.timesteps[part] * bins // 1000, bins - 1)
            mask = torch.from_numpy((regions >= 0).astype(np.float32))
            flat = torch.from_numpy(np.where(regions >= 0, regions, 0) * bins + t_bins)
            sums = torch.zeros(k * bins).scatter_add_(0, flat, torch.from_numpy(d[part].astype(np.float32)) * mask)
            counts = torch.zeros(k * bins).scatter_add_(0, flat, mask)
            plans.append(plan)
            parts += [sums, counts]
        stats = backend.all_reduce(torch.cat(parts)).double().numpy().reshape(len(names), 2, k, bins)
        hashes = []
        for i, (strategy, plan) in enumerate(zip(strategies, plans)):
            states[i] = strategy.update(states[i], Feedback(stats[i, 0], np.rint(stats[i, 1]), step))
            hashes.append(_hash63(states[i]))
            digests[i].update(np.int64(hashes[i]).tobytes() + plan.prompt_ids.tobytes() + plan.regions.tobytes()
                              + (b"" if plan.probabilities is None else plan.probabilities.tobytes()))
        combined = int(hashlib.sha256(np.array(hashes, dtype=np.int64).tobytes()).hexdigest()[:15], 16)
        if not backend.same_on_all_ranks(combined):
            for name, h in zip(names, hashes):  # every rank takes this branch: the same checks on each
                if not backend.same_on_all_ranks(h):
                    raise SystemExit(f"{{name}}: strategy state differs across ranks after step {{step}}")
    with open(os.path.join({tmp!r}, f"rank{{backend.rank}}.json"), "w") as f:
        json.dump({{name: d.hexdigest() for name, d in zip(names, digests)}}, f)
    backend.close()
""")


def torchrun(script: Path, ranks: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [str(TORCHRUN), f"--nproc_per_node={ranks}", f"--master_port={free_port()}", str(script)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_ranks_keep_identical_strategy_state_for_1000_steps(tmp_path):
    """1,000 steps of every strategy with a learnt state, two gloo ranks: the state hashes agree after every
    step (checked in the loop, through the backend's all-reduce) and the per-step hashes, allocations and
    drawn prompts are identical on both ranks (compared here). ~10 s on 2 cores."""
    strategies = ["aria", "dts", "ducb", "exp3", "swucb"]
    script = tmp_path / "agree.py"
    script.write_text(AGREE_WORKER.format(tests=str(TESTS), tmp=str(tmp_path), steps=1000, strategies=strategies))
    proc = torchrun(script, 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert sorted(ranks[0]) == sorted(strategies) and ranks[0] == ranks[1]


DEATH_WORKER = textwrap.dedent("""
    # Two ranks of the real engine (started by hand, not by torchrun, whose agent would stop the survivor
    # itself); rank 1 dies (os._exit) or hangs (sleeps) when it plans step 2.
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import conftest
    from aria.training import distill
    from aria.cli.main import exit_for_user_error
    from aria.training.engine import run_distillation
    from aria.errors import UserError

    original = distill.Distiller.plan
    def plan(self, draft, allocation):
        if self.backend.rank == 1 and draft.step == 2:
            print("rank 1 stops", flush=True)
            if {mode!r} == "dies":
                os._exit(9)
            time.sleep(300)
        return original(self, draft, allocation)
    distill.Distiller.plan = plan

    config = conftest.tiny_config(__import__("pathlib").Path({tmp!r}), distillation={{"steps": 6}},
                                  backend={{"collective_timeout_s": {timeout}}}, logging={{"checkpoint_every": 100}})
    try:  # as aria.cli.main: a UserError is one line and exit status 2
        run_distillation(config, bundle=conftest.make_bundle(), teacher=conftest.make_teacher())
    except UserError as err:
        exit_for_user_error(err)
""")


def start_two_ranks(tmp_path: Path, mode: str, timeout_s: int) -> tuple[list[subprocess.Popen], float]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "worker.py"
    script.write_text(DEATH_WORKER.format(tests=str(TESTS), tmp=str(tmp_path), mode=mode, timeout=timeout_s))
    base = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port())}
    procs = [subprocess.Popen([sys.executable, str(script)], env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    return procs, time.perf_counter()


def stop_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


@pytest.mark.slow
def test_a_hung_rank_stops_the_others(tmp_path):
    """Rank 1 hangs: rank 0's collective times out after backend.collective_timeout_s and rank 0 stops with
    an error naming the failed collective instead of waiting forever (a rank that dies: the next test)."""
    timeout_s = 4
    procs, t0 = start_two_ranks(tmp_path, "hangs", timeout_s)
    try:
        out, err = procs[0].communicate(timeout=180)
        waited = time.perf_counter() - t0
    finally:
        stop_all(procs)
    assert procs[0].returncode != 0, out[-2000:] + err[-2000:]
    assert any(needle in err for needle in ("Connection reset", "Connection closed", "Timed out")), err[-3000:]
    assert waited < 120, f"rank 0 took {waited:.0f} s to stop"


@pytest.mark.slow
def test_a_dead_rank_is_one_line_on_the_others(tmp_path):
    """Rank 1 dies: rank 0's collective fails at once (connection reset or closed) and rank 0 stops instead
    of waiting forever, with one line (the CLI's UserError form, exit status 2, no traceback) naming its
    rank, the collective, backend.collective_timeout_s and the cause, and rank 0 exits promptly."""
    procs, t0 = start_two_ranks(tmp_path, "dies", 4)
    try:
        out, err = procs[0].communicate(timeout=180)
        waited = time.perf_counter() - t0
    finally:
        stop_all(procs)
    lines = [line for line in err.splitlines() if line.strip()]
    assert procs[0].returncode == 2 and len(lines) == 1, err[-3000:]
    assert re.match(r"error: rank 0 of 2: (all-reduce of the step's losses and feedback|all_reduce\S*( of [^:]+)?)"
                    r" failed: another rank died or did not answer within backend.collective_timeout_s = 4 s \(",
                    lines[0]), lines[0]
    assert any(needle in lines[0] for needle in ("Connection reset", "Connection closed", "Timed out")), lines[0]
    assert "Traceback" not in err and waited < 120, (waited, lines[0])


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_one_rank(two_ranks, tmp_path, monkeypatch):
    """The two ranks' run folder (4 steps, checkpoints at 2 and 4), without its step-4 checkpoint, resumes on
    one rank (same global batch): steps 3 and 4 draw the same data, timesteps, switches and allocations as
    the two ranks did, and metrics.jsonl continues at step 3. The one rank runs in this process (the worker's
    run: same config, poisoned image, consistency checks; nothing of the two ranks' processes is in it)."""
    from aria.training import distill
    from aria.training.engine import DistillationRun
    from conftest import make_bundle, make_teacher, tiny_config

    folder, two = two_ranks
    assert two[0]["plans"] == two[1]["plans"] and two[0]["state"] == two[1]["state"]
    run = tmp_path / "run"
    shutil.copytree(folder / "run", run)
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    saved = json.loads((run / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert saved["world_size"] == 2 and saved["step"] == 2
    plans, original = [], distill.Distiller.plan

    def plan(self, draft, allocation):  # as the worker records them
        p = original(self, draft, allocation)
        plans.append([p.step, p.prompt_ids.tolist(), p.regions.tolist(), p.timesteps.tolist()])
        return p

    monkeypatch.setattr(distill.Distiller, "plan", plan)
    bundle = make_bundle()
    bundle.paired_images[POISON] = np.nan
    one = DistillationRun(tiny_config(tmp_path, **SECTIONS), resume=True, check_consistency=True, bundle=bundle,
                          teacher=make_teacher())
    try:
        one.setup()
        one.train()
        one.finish()
        assert one.backend.world_size == 1
    finally:
        one.close()
    assert [p[0] for p in plans] == [2, 3]
    # step, prompts (data order and allocation), regions, timesteps; as the workers wrote them (JSON)
    assert json.loads(json.dumps(plans)) == two[0]["plans"][2:]
    assert [r["step"] for r in steps(tmp_path)] == [1, 2, 3, 4]
    a, b = steps(tmp_path), steps(folder)
    assert [r["nonfinite"] for r in a] == [r["nonfinite"] for r in b]
    np.testing.assert_allclose([r["loss"] or 0 for r in a], [r["loss"] or 0 for r in b], rtol=1e-4)


@pytest.mark.slow
def test_deepspeed_single_process_zero2_trains_and_resumes(tmp_path):
    """No launcher: the backend fills in RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT."""
    sections = {"backend": {"kind": "deepspeed", "zero_stage": 2}, "distillation": {"steps": 2},
                "logging": {"every": 1}}
    launch(tmp_path, 1, sections)
    folder = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert any(name.startswith("deepspeed/") and "optim_states" in name for name in manifest["files"])
    launch(tmp_path, 1, {**sections, "distillation": {"steps": 3}}, resume=True)
    records = steps(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)


@pytest.fixture(scope="module")
def zero2_bf16_two_ranks(tmp_path_factory):
    """One run of 3 steps of ZeRO-2 on the bf16 engine path on two gloo ranks (CPU), shared by the two tests
    below: its folder (checkpoints, the exported student, metrics) and both ranks' strategy state and weights."""
    folder = tmp_path_factory.mktemp("zero2-bf16")
    sections = {"backend": {"kind": "deepspeed", "zero_stage": 2, "device": "cpu", "precision": "bf16"},
                "distillation": {"steps": 3}, "logging": {"every": 1}}
    return folder, launch(folder, 2, sections)


@pytest.mark.slow
def test_deepspeed_two_ranks_zero2_bf16_identical_weights(zero2_bf16_two_ranks):
    """Two ranks of ZeRO-2 on the bf16 engine path (bf16 weights, inputs cast to the engine's dtype) on CPU,
    as on a GPU: identical weights and strategy state on both ranks, finite losses that decrease (3 steps:
    the fixture's run, which the next test reads too)."""
    folder, ranks = zero2_bf16_two_ranks
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["state"] == ranks[1]["state"]
    losses = [r["loss"] for r in steps(folder)]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.slow
def test_deepspeed_two_ranks_bf16_export_the_fp32_master_weights(zero2_bf16_two_ranks):
    """Two ranks of ZeRO-2 bf16: every rank gathers DeepSpeed's fp32 master weights (a collective) and rank 0
    exports them in fp32, as the torch backend exports its fp32 weights: not the engine module's bf16 copy
    (saved in the last checkpoint, at the last step), which is their bf16 rounding."""
    import torch
    from safetensors.torch import load_file

    from aria.training import checkpoint as ckpt

    folder, ranks = zero2_bf16_two_ranks
    assert ranks[0]["weights"] == ranks[1]["weights"]
    last = ckpt.latest_good(folder / "run" / "checkpoints")
    assert json.loads((last / "state.json").read_text())["step"] == 3  # the weights the export was made from
    trained = ckpt.load_weights(last)
    exported = load_file(next((folder / "run" / "student").glob("*.safetensors")))
    assert set(exported) == set(trained) and {v.dtype for v in exported.values()} == {torch.float32}
    assert all(torch.equal(exported[k].bfloat16(), trained[k]) for k in trained)  # the masters, rounded
    assert any(not torch.equal(exported[k], trained[k].float()) for k in trained)  # finer than bf16


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
