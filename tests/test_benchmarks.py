"""benchmarks/engine_throughput.py: the CPU smoke run writes complete JSON, and the engine's path
computes the same loss as the plain baseline (fp32 on CPU: the first step bit for bit, the next
steps to float rounding). benchmarks/cpu_threads.py: its commands parse and bad arguments are refused."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "engine_throughput.py"
SMOKE = ["--tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--batch", "2", "--students", "small",
         "--backend", "deepspeed", "--no-compile"]  # the DeepSpeed engine path; compilation is a GPU lever
TIMED = ("images_per_s", "step_s_median", "tflops", "fraction_of_matmul_peak", "warmup_s", "setup_s")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def wait(proc: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def bench_processes(tmp_path_factory):
    """The CPU smoke run of engine_throughput.py and the attention_kernels.py run, each a process of its own,
    started together (one process alone leaves one of 2 cores idle): name -> (output file, CompletedProcess)."""
    folder = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # the script sets them itself
    runs = {"smoke": (folder / "results.json", [str(SCRIPT), *SMOKE, "--out"], env),
            "attention": (folder / "attention.json", [str(REPO / "benchmarks" / "attention_kernels.py"), *ATTENTION,
                                                      "--json"], {**os.environ, "OMP_NUM_THREADS": "1"})}
    procs = {name: subprocess.Popen([sys.executable, *args, str(out)], cwd=REPO, env=run_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, (out, args, run_env) in runs.items()}
    try:
        return {name: (runs[name][0], wait(proc)) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def smoke(bench_processes):
    out, proc = bench_processes["smoke"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_smoke_run_writes_every_field_with_finite_numbers(smoke):
    report, stdout = smoke
    assert report["command"].startswith("python benchmarks/engine_throughput.py --tiny")
    assert report["torch"] and report["date"] and report["device"]["type"] == "cpu" and report["device"]["name"]
    assert _finite(report["device"]["matmul_peak_tflops"]) and report["device"]["matmul_peak_tflops"] > 0
    assert "fp32" in report["device"]["matmul_peak_kind"]
    (group,) = report["results"]
    assert (group["student"], group["batch"]) == ("small", 2)
    assert group["flops_per_step"] > 0 and group["feature_pairs"] > 0
    paths = {r["path"]: r for r in group["paths"]}
    assert set(paths) == {"baseline", "candidate"}
    for row in paths.values():
        assert row.get("error") is None and row.get("skipped") is None
        for key in TIMED:
            assert _finite(row[key]) and row[key] > 0, (row["path"], key, row[key])
        assert len(row["step_s"]) == 2 and all(_finite(t) for t in row["step_s"])
        assert row["peak_memory_gb"] is None  # CPU: n/a
        assert len(row["losses"]) == 3 and all(_finite(v) for v in row["losses"])
    cand = paths["candidate"]
    assert _finite(cand["speedup_vs_baseline"]) and _finite(cand["loss_max_rel_diff_vs_baseline"])
    assert cand["facts"]["backend"] == "deepspeed" and cand["facts"]["precision"] == "fp32"
    assert "| student" in stdout and "candidate" in stdout.rsplit("| student", 1)[1]  # the table comes last


def test_engine_and_baseline_compute_the_same_loss(smoke):
    report, _ = smoke
    paths = {r["path"]: r for r in report["results"][0]["paths"]}
    base, cand = paths["baseline"]["losses"], paths["candidate"]["losses"]
    assert cand[0] == pytest.approx(base[0], rel=1e-6)  # same weights, batch and noise: same forward
    assert cand == pytest.approx(base, rel=1e-4)  # after AdamW steps (DeepSpeed's vs torch's clipping)
    assert paths["candidate"]["loss_rel_diff_first_step"] <= 1e-6


def test_two_ranks_compute_the_losses_of_one(tmp_path):
    """``--candidate-only`` under torchrun: each rank takes half the global batch, the allocations are
    checked identical every step, and the logged losses equal the one-rank run's to float rounding."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    args = ["--candidate-only", "--tiny", "--device", "cpu", "--threads", "1", "--steps", "2", "--warmup", "1",
            "--batch", "4", "--students", "small", "--backend", "torch", "--no-compile"]
    procs = {}  # the two runs are independent: they start together, so that their start-ups overlap
    for ranks in (1, 2):
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"] if ranks == 2 else \
            [sys.executable]
        with open(tmp_path / f"r{ranks}.log", "w") as log:  # files, not pipes: neither run waits on a full pipe
            procs[ranks] = subprocess.Popen([*launch, str(SCRIPT), *args, "--out", str(tmp_path / f"r{ranks}.json")],
                                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for proc in procs.values():
            proc.wait(timeout=600)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    losses = {}
    for ranks, proc in procs.items():
        assert proc.returncode == 0, (tmp_path / f"r{ranks}.log").read_text()[-6000:]
        report = json.loads((tmp_path / f"r{ranks}.json").read_text())
        assert report["world_size"] == ranks
        (row,) = report["results"][0]["paths"]
        assert row["path"] == "candidate" and row["facts"]["backend"] == "torch" and row["facts"]["compiled"] is False
        assert row["facts"]["strategy_host_us"]["plan"] > 0
        losses[ranks] = row["losses"]
    assert len(losses[1]) == 3 and losses[2] == pytest.approx(losses[1], rel=1e-5)


def test_cpu_threads_commands_are_ones_the_cli_accepts(tmp_path):
    """benchmarks/cpu_threads.py times `aria run`, `eval` and `sample`: every option it passes parses."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import cpu_threads
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    import click

    from aria.cli.main import cli

    (tmp_path / "run").mkdir()
    for setting in ("default", "1"):
        argvs = cpu_threads.commands(str(REPO / "configs" / "concepts-quick.yaml"), tmp_path / "run", setting)
        assert set(argvs) == {"run", "eval", "sample"}
        for argv in argvs.values():
            assert argv[1:3] == ["-m", "aria.cli"]
            command = cli.get_command(click.Context(cli), argv[3])
            command.make_context(argv[3], argv[4:])  # raises click.UsageError on an unknown or bad option
        assert f"backend.cpu_threads={'null' if setting == 'default' else setting}" in argvs["eval"]


@pytest.mark.parametrize("args", [["--repeats", "0"], ["--threads", "0"], ["--threads", "two"]])
def test_cpu_threads_refuses_bad_arguments(args):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_threads.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--repeats is at least 1" in proc.stderr


ATTENTION = ["--device", "cpu", "--unet", str(REPO / "configs" / "unets" / "tiny-sd.json"), "--batch", "2",
             "--kernels", "auto,efficient", "--warmup", "0", "--repeats", "1"]


def test_attention_kernels_counts_every_attention_call_and_names_refused_kernels(bench_processes, tmp_path,
                                                                                  monkeypatch, capsys):
    """benchmarks/attention_kernels.py on the CPU with the tiny UNet: one row per attention shape of student
    (training) and teacher (inference), whose calls add up to the models' Attention modules (each runs once a
    forward); a kernel the CPU lacks (efficient) is reported with torch's reason and gets no step total."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

    from aria.models import unet_from_config_file
    from aria.models.students import student_unet_config

    out, proc = bench_processes["attention"]  # ATTENTION's run
    unet = REPO / "configs" / "unets" / "tiny-sd.json"
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    teacher = unet_from_config_file(unet)
    student = UNet2DConditionModel.from_config(student_unet_config(teacher.config, "small"))
    for model, pass_, unet_module in (("student", "training", student), ("teacher", "inference", teacher)):
        rows = [r for r in report["rows"] if r["model"] == model]
        assert rows and all(r["pass"] == pass_ for r in rows)
        assert sum(r["calls"] for r in rows) == sum(isinstance(m, Attention) for m in unet_module.modules())
    assert all(_finite(r["ms"]["auto"]) and isinstance(r["ms"]["efficient"], str) for r in report["rows"])
    assert _finite(report["step_ms"]["auto"]) and report["step_ms"]["efficient"] is None
    assert "| **one step** |" in proc.stdout
    # bad arguments: argparse's usage error (exit status 2, the problem on the last line), before any work; the
    # script's main() in this process (the measuring run above is the separate process)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import attention_kernels
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    monkeypatch.setattr(attention_kernels, "measure", lambda args: pytest.fail("measured despite a bad argument"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as CUDA_VISIBLE_DEVICES="" did
    for bad, says in ((["--kernels", "fast"], "--kernels: unknown fast"), (["--device", "gpu"], "--device"),
                      (["--unet", str(tmp_path)], "is not a file")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            attention_kernels.main(bad)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and says in err.strip().splitlines()[-1], err


def test_autotune_matmuls_patches_the_matmuls_only_while_its_path_runs():
    """engine_throughput's autotune_matmuls lever: inductor autotunes matmul templates (not the fused kernels,
    not the convolutions) inside the path, and the settings are back after it."""
    import torch._inductor.config as inductor_config

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import engine_throughput
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    before = (inductor_config.max_autotune_gemm, inductor_config.max_autotune_conv_backends)
    with engine_throughput.matmuls_autotuned():
        assert inductor_config.max_autotune_gemm and inductor_config.max_autotune_conv_backends == "ATEN"
        assert not inductor_config.max_autotune and not inductor_config.max_autotune_pointwise
    assert (inductor_config.max_autotune_gemm, inductor_config.max_autotune_conv_backends) == before
    assert "autotune_matmuls" in engine_throughput.LEVERS


AUTOTUNE_LOG = """\
noise before
Autotune Choices Stats:
{"num_choices": 3, "num_triton_choices": 2, "best_kernel": "bias_addmm", "best_time": 0.5}
AUTOTUNE addmm(64x640, 64x320, 320x640)
strides: [0, 1], [320, 1], [1, 320]
dtypes: torch.bfloat16, torch.bfloat16, torch.bfloat16
  bias_addmm 0.5000 ms 100.0%
  triton_mm_2 0.6000 ms 83.3% ACC_TYPE='tl.float32', BLOCK_K=32, num_stages=3, num_warps=4
  triton_mm_1 0.7000 ms 71.4% ACC_TYPE='tl.float32', BLOCK_K=64, num_stages=3, num_warps=4
SingleProcess AUTOTUNE benchmarking takes 2.5000 seconds and 0.0002 seconds precompiling for 3 choices
[rank0]:E1208 select_algorithm.py:3924] [1/0] Runtime error during autotuning: out of resource
Autotune Choices Stats:
{"num_choices": 12, "num_triton_choices": 11, "best_kernel": "triton_mm_9", "best_time": 0.01}
AUTOTUNE mm(4928x768, 768x320)
strides: [768, 1], [1, 768]
dtypes: torch.bfloat16, torch.bfloat16
  triton_mm_9 0.0100 ms 100.0% ACC_TYPE='tl.float32'
  triton_mm_8 0.0150 ms 66.7% ACC_TYPE='tl.float32'
  triton_mm_7 0.0200 ms 50.0% ACC_TYPE='tl.float32'
SingleProcess AUTOTUNE benchmarking takes 4.0000 seconds and 0.0003 seconds precompiling for 12 choices
"""


def test_autotune_table_reads_cublas_against_the_chosen_kernel_per_shape(tmp_path, capsys):
    """benchmarks/autotune_table.py: cuBLAS's time where inductor printed it, else a lower bound (the slowest
    printed choice); the tuning seconds; a shape repeated in a later log keeps its first entry; a log without
    tables or a missing file is exit 2."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import autotune_table
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    shapes = autotune_table.parse(AUTOTUNE_LOG)
    assert shapes == {
        "addmm(64x640, 64x320, 320x640)": {"best": "bias_addmm", "best_ms": 0.5, "cublas_ms": 0.5,
                                           "cublas_above_ms": None, "tuning_s": 2.5},
        "mm(4928x768, 768x320)": {"best": "triton_mm_9", "best_ms": 0.01, "cublas_ms": None,
                                  "cublas_above_ms": 0.02, "tuning_s": 4.0}}
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_text(AUTOTUNE_LOG)
    second.write_text(AUTOTUNE_LOG.replace("takes 4.0000", "takes 9.0000"))
    assert autotune_table.main([str(first), str(second)]) == 0
    out = capsys.readouterr().out
    assert "| `mm(4928x768, 768x320)` | triton_mm_9 | 0.0100 | > 0.0200 | > 2.00 | 4.0 |" in out
    assert "| `addmm(64x640, 64x320, 320x640)` | bias_addmm | 0.5000 | 0.5000 | 1.00 | 2.5 |" in out
    assert "2 shapes, 6 s of tuning benchmarks; Triton chosen at 1, cuBLAS at 1." in out
    empty = tmp_path / "empty.log"
    empty.write_text("nothing tuned\n")
    assert autotune_table.main([str(empty)]) == 2
    assert autotune_table.main([str(tmp_path / "missing.log")]) == 2
    assert "no such file" in capsys.readouterr().err
