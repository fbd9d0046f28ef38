"""The backend's kernel levers (issue #20) on the CPU: ``backend.fp8`` / ``channels_last`` / ``compile_mode`` /
``sdpa_backend`` are validated in one line (exit status 2), fp8 is refused where it cannot run (no CUDA, an old
GPU, no torchao), and the other switches reach the models: a tiny run with channels_last and the math
attention kernel trains the losses of the run without them, the attention kernel is chosen inside the traced
forward (so that ``torch.compile`` bakes it into the graph and its cache key), and the compile mode reaches
``Module.compile``. What the levers cost on a GPU: ``benchmarks/engine_throughput.py --levers``."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo

from aria.errors import UserError
from aria.training.backends import check_fp8, fp8_compatible, sdpa_order, use_sdpa_backend
from aria.training.engine import DistillationRun
from aria.training.metrics import read_jsonl
from conftest import make_bundle, make_teacher, tiny_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny-test.yaml"


def aria_main(args, capsys):
    """(exit status, stderr lines) of ``aria <args>`` in this process."""
    from aria.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return exit_.value.code, err


@pytest.mark.parametrize("sets, needle", [
    (["backend.fp8=all"], "backend.fp8"),
    (["backend.fp8=true"], "backend.fp8"),
    (["backend.sdpa_backend=flash3"], "backend.sdpa_backend"),
    (["backend.compile_mode=fast"], "backend.compile_mode"),
    (["backend.compile_mode=max-autotune"], "needs backend.compile: true"),
    (["backend.channels_last=1"], "expected true or false"),
    (["backend.channels_last=true", "backend.kind=deepspeed"], "backend.channels_last needs backend.kind 'torch'"),
    (["backend.fp8=student", "backend.device=cpu"], "needs a CUDA GPU of compute capability >= 8.9"),
    (["backend.fp8_emulate=true"], "emulates backend.fp8: set backend.fp8 to student, teacher or both"),
    (["backend.cudnn_benchmark=true"], "can differ between runs: set backend.deterministic: false"),
])
def test_bad_lever_values_are_one_line(tmp_path, capsys, sets, needle):
    args = ["run", "--config", str(TINY), "--dry-run", "--set", f"output_dir={tmp_path / 'out'}"]
    code, err = aria_main(args + [a for s in sets for a in ("--set", s)], capsys)
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "out").exists()


def test_good_lever_values_validate(tmp_path):
    config = tiny_config(tmp_path, backend={"fp8": "both", "device": "cuda", "channels_last": "true", "compile": "true",
                                            "compile_mode": "reduce-overhead", "sdpa_backend": "cudnn"})
    b = config.backend
    assert (b.fp8, b.channels_last, b.compile_mode, b.sdpa_backend) == ("both", True, "reduce-overhead", "cudnn")
    defaults = tiny_config(tmp_path).backend
    assert (defaults.fp8, defaults.channels_last, defaults.compile_mode, defaults.sdpa_backend) == \
        ("none", False, "default", "auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of fp8 where no CUDA device is visible")
def test_fp8_without_a_gpu_stops_the_run_in_one_line(tmp_path, capsys):
    """backend.device auto on a machine without CUDA: the backend refuses fp8 before any heavy work, and the
    run leaves no output folder."""
    out = tmp_path / "out"
    code, err = aria_main(["run", "--config", str(TINY), "--set", f"output_dir={out}", "--set", "backend.fp8=student",
                           "--set", "backend.device=auto", "--set", f"data.cache_dir={tmp_path / 'cache'}"], capsys)
    assert code == 2 and len(err) == 1, err
    assert "backend.fp8 'student' needs a CUDA GPU" in err[0] and "device is cpu" in err[0]
    assert not out.exists()


def test_fp8_names_the_old_gpu_and_the_missing_torchao(monkeypatch):
    cuda = torch.device("cuda", 0)
    check_fp8("none", torch.device("cpu"))  # nothing asked, nothing checked
    with pytest.raises(UserError, match="needs a CUDA GPU .* device is cpu"):
        check_fp8("teacher", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(UserError, match=r"compute capability >= 8.9 .* NVIDIA A100 has 8.0"):
        check_fp8("both", cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    for name in ("torchao", "torchao.float8", "torchao.quantization"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of it raises ImportError
    for mode in ("student", "teacher", "both"):
        with pytest.raises(UserError, match=rf"backend.fp8 '{mode}' needs torchao's fp8 APIs \(pip install torchao"):
            check_fp8(mode, cuda)
    err = pytest.raises(UserError, check_fp8, "student", cuda).value
    assert "\n" not in str(err)


def test_an_fp8_student_needs_a_batch_per_gpu_of_multiples_of_16(monkeypatch):
    """torch._scaled_mm contracts the weight gradient over the batch: the time embedding's M is the batch."""
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    for mode in ("student", "both"):
        with pytest.raises(UserError, match=rf"backend.fp8 '{mode}' .* multiple of 16; it is 8$"):
            check_fp8(mode, cuda, rank_batch=8)
    for name in ("torchao.float8", "torchao.quantization"):
        monkeypatch.setitem(sys.modules, name, None)  # the batch check, where it applies, comes before the imports
    with pytest.raises(UserError, match="needs torchao's fp8 APIs"):
        check_fp8("teacher", cuda, rank_batch=8)  # fp8 inference: any batch
    with pytest.raises(UserError, match="needs torchao's fp8 APIs"):
        check_fp8("student", torch.device("cpu"), emulate=True, rank_batch=8)  # emulated: no fp8 matmul


def test_fp8_takes_linear_layers_of_multiples_of_16():
    assert fp8_compatible(torch.nn.Linear(32, 48)) and not fp8_compatible(torch.nn.Linear(32, 40))
    assert not fp8_compatible(torch.nn.Linear(20, 32)) and not fp8_compatible(torch.nn.Conv2d(32, 32, 1))


def test_fp8_training_swaps_the_student_s_linears_and_keeps_its_parameters():
    """Where torchao imports (the GPU machine): the module swap, without running an fp8 matmul."""
    pytest.importorskip("torchao.float8")
    from types import SimpleNamespace

    from aria.models import build_student
    from aria.training.backends import fp8_training

    student, _ = build_student(make_teacher().unet, SimpleNamespace(variant="small", channel_scale=0.5,
                                                                    init_from_teacher=True))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    counts = fp8_training(student)
    after = student.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    swapped = [n for n, m in student.named_modules() if type(m).__name__ == "Float8Linear"]
    assert len(swapped) == counts["converted"] > 0 and counts["linears"] == counts["converted"] + len(counts["skipped"])
    assert all(fp8_compatible(torch.nn.Linear(m.in_features, m.out_features))
               for n, m in student.named_modules() if n in swapped)


def test_sdpa_order_puts_the_choice_first():
    from torch.nn.attention import SDPBackend

    assert sdpa_order("auto") is None
    assert sdpa_order("math") == [SDPBackend.MATH]
    for choice, first in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        order = sdpa_order(choice)
        assert order[0] == first and len(order) == len(set(order)) == 4 and SDPBackend.MATH in order


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x):
        q = self.proj(x).view(x.shape[0], x.shape[1], 2, 8).transpose(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(q, q, q).transpose(1, 2).flatten(2)


def test_the_attention_kernel_is_chosen_inside_the_traced_forward():
    """sdpa_backend wraps the forward on the instance: eager calls run under the choice, torch.compile puts the
    choice into the graph it traces (so that its caches cannot hand a graph of another kernel back), and a
    deepcopy (the EMA export) keeps it; the state_dict is unchanged."""
    seen = []
    model = _Attention()
    keys = list(model.state_dict())
    use_sdpa_backend(model, "math")
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((torch._C._get_math_sdp_enabled(), torch._C._get_flash_sdp_enabled()))
        return original(*args, **kwargs)

    x = torch.randn(2, 5, 16)
    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        expected = model(x)
        copy.deepcopy(model)(x)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    assert seen == [(True, False), (True, False)]  # math only, inside the forward; the copy too
    assert torch._C._get_flash_sdp_enabled()  # restored after it
    assert list(model.state_dict()) == keys

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend=capture)
        assert torch.allclose(compiled(x), expected)
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1 and "_sdpa_kernel" in graphs[0] and "MATH" in graphs[0], graphs


def _losses(tmp_path, seen=None, **backend):
    """Losses of 3 steps of the tiny run (DistillationRun on the conftest world) and facts of its setup;
    ``seen``: a list that gets, for every attention call of the steps, whether the fused kernels were on."""
    config = tiny_config(tmp_path, distillation={"steps": 3}, logging={"every": 1}, backend=backend)
    run = DistillationRun(config, bundle=make_bundle(), teacher=make_teacher())
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(torch._C._get_flash_sdp_enabled() or torch._C._get_mem_efficient_sdp_enabled())
        return original(*args, **kwargs)

    ok = False
    try:
        run.setup()
        facts = {"levers": dict(run.backend.levers), "cudnn_benchmark": torch.backends.cudnn.benchmark,
                 "student_channels_last": run.student.conv_in.weight.is_contiguous(memory_format=torch.channels_last),
                 "teacher_channels_last": run.teacher.unet.conv_in.weight.is_contiguous(
                     memory_format=torch.channels_last)}
        if seen is not None:
            torch.nn.functional.scaled_dot_product_attention = spy
        run.train()
        run.logger.close()
        ok = True
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
        run.close(ok)
    records = read_jsonl(config.output_dir / "metrics.jsonl")
    return [r["loss"] for r in records if "loss" in r], facts


def test_channels_last_and_math_attention_train_the_losses_of_the_default(tmp_path):
    plain_seen, seen = [], []
    plain, plain_facts = _losses(tmp_path / "plain", plain_seen)
    levers, facts = _losses(tmp_path / "levers", seen, channels_last="true", sdpa_backend="math")
    assert not plain_facts["student_channels_last"] and not plain_facts["teacher_channels_last"]
    assert facts["student_channels_last"] and facts["teacher_channels_last"]
    assert facts["levers"] == {"channels_last": True, "sdpa_backend": "math", "fp8": "none", "fp8_emulate": False}
    assert all(plain_seen) and len(seen) == len(plain_seen) > 0
    assert not any(seen)  # every attention call of both models in the steps ran with the fused kernels off
    assert len(plain) == len(levers) == 3
    assert levers == pytest.approx(plain, rel=1e-4)  # same weights, batches and noise; other kernels


def test_cudnn_benchmark_is_on_only_in_a_run_that_asks_for_it(tmp_path):
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True  # left on by earlier code: a run that does not ask turns it off
        plain, plain_facts = _losses(tmp_path / "plain", deterministic="false")
        tuned, facts = _losses(tmp_path / "tuned", deterministic="false", cudnn_benchmark="true")
    finally:
        torch.backends.cudnn.benchmark = before
    assert not plain_facts["cudnn_benchmark"] and facts["cudnn_benchmark"]
    assert len(tuned) == len(plain) == 3


def test_the_compile_mode_reaches_module_compile(tmp_path, monkeypatch):
    """Compiling is stubbed: this checks the wiring (teacher and student, the mode), not the compiler."""
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append((type(self).__name__, k)))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    config = tiny_config(tmp_path, backend={"compile": "true", "compile_mode": "max-autotune-no-cudagraphs"},
                         distillation={"steps": 1})
    run = DistillationRun(config, bundle=make_bundle(), teacher=make_teacher())
    try:
        run.setup()
        assert run.backend.compile_kwargs() == {"mode": "max-autotune-no-cudagraphs"}
        assert not run.backend._cudagraphs  # CPU: no CUDA graph steps to mark
    finally:
        run.close(False)
    assert calls == [("UNet2DConditionModel", {"mode": "max-autotune-no-cudagraphs"})] * 2
    default = tiny_config(tmp_path / "d", backend={"compile": "true"})
    run = DistillationRun(default, bundle=make_bundle(), teacher=make_teacher())
    try:
        run.setup()
    finally:
        run.close(False)
    assert calls[2:] == [("UNet2DConditionModel", {})] * 2


BENCH = [sys.executable, str(REPO / "benchmarks" / "engine_throughput.py"), "--tiny", "--device", "cpu", "--steps", "2",
         "--warmup", "1", "--batch", "2", "--students", "small", "--no-compile", "--candidate-only"]


def bench_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def bench(*extra, wait=True):
    """engine_throughput.py with BENCH's settings and ``extra`` (a CompletedProcess; a Popen if not ``wait``)."""
    if wait:
        return subprocess.run([*BENCH, *map(str, extra)], cwd=REPO, env=bench_env(), capture_output=True, text=True,
                              timeout=600)
    return subprocess.Popen([*BENCH, *map(str, extra)], cwd=REPO, env=bench_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def levers_process(tmp_path_factory):
    """One engine_throughput.py --levers process on the CPU (the candidate, fp8_student, channels_last+sdpa_math):
    the test of a failing lever reads it, and the --reuse test continues from a copy of its JSON."""
    out = tmp_path_factory.mktemp("levers") / "levers.json"
    proc = bench("--levers", "fp8_student,channels_last+sdpa_math", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_benchmark_records_a_failing_lever_and_goes_on(levers_process):
    """engine_throughput.py --levers on the CPU: fp8 cannot run there and is recorded as failed in one line; the
    levers after it are measured, each with its loss difference to the candidate, and the run succeeds."""
    out, proc = levers_process
    report = json.loads(out.read_text())
    assert report["complete"] is True
    rows = {r["path"]: r for r in report["results"][0]["paths"]}
    assert list(rows) == ["candidate", "candidate+fp8_student", "candidate+channels_last+sdpa_math"]
    fp8 = rows["candidate+fp8_student"]
    assert "images_per_s" not in fp8 and "\n" not in fp8["error"]
    assert "backend.fp8" in fp8["error"] and "needs a CUDA GPU" in fp8["error"]
    lever = rows["candidate+channels_last+sdpa_math"]
    assert lever["images_per_s"] > 0 and lever["facts"]["channels_last"] and lever["facts"]["sdpa_backend"] == "math"
    assert lever["facts"]["levers"]["sdpa_backend"] == "math"
    assert set(lever["facts"]["sdpa_choice"]) == {"student", "teacher"}
    assert {k for model in lever["facts"]["sdpa_choice"].values() for k in model.values()} == {"MATH"}
    assert lever["loss_max_rel_diff_vs_candidate"] < 1e-4  # fp32 on the CPU: other kernels, same numbers
    assert "error: UserError: config: backend: backend.fp8 'student' needs a CUDA GPU" in proc.stdout


def test_benchmark_reuses_an_earlier_process_s_paths_and_adds_its_levers(levers_process, tmp_path):
    """levers.sh runs one process per lever: a second process with --reuse takes the first one's candidate row
    as it was (not measured again), keeps its levers (a failed one too), adds its own; other settings are refused
    in one line, and a JSON this benchmark did not write is refused."""
    import re

    out = tmp_path / "levers.json"
    shutil.copy(levers_process[0], out)
    before = {r["path"]: r for r in json.loads(out.read_text())["results"][0]["paths"]}
    # the second process, and one with other settings (steps, pool: other batches and losses, not reusable),
    # start together; the refused one reads the first process's own JSON, which nothing writes
    second = bench("--levers", "channels_last", "--reuse", out, "--out", out, wait=False)
    other = bench("--levers", "channels_last", "--reuse", levers_process[0], "--steps", "3", "--pool", "600",
                  "--out", tmp_path / "x.json", wait=False)
    second, other = finish(second), finish(other)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["path"]: r for r in report["results"][0]["paths"]}
    assert list(rows) == ["candidate", "candidate+fp8_student", "candidate+channels_last+sdpa_math",
                          "candidate+channels_last"]
    assert all(rows[path] == before[path] for path in before)  # the candidate and the earlier levers, as they were
    assert "candidate: reused from" in second.stdout and rows["candidate+channels_last"]["images_per_s"] > 0
    assert rows["candidate+channels_last"]["loss_max_rel_diff_vs_candidate"] < 1e-4  # against the reused candidate
    assert report["settings"]["levers"] == ["fp8_student", "channels_last+sdpa_math", "channels_last"]
    assert len(report["commands"]) == 2
    assert other.returncode != 0 and "--reuse" in other.stderr, other.stderr[-3000:]
    refusal = other.stderr.strip().splitlines()[-1]
    assert re.search(r"measured with other settings or on another device \((.*)\); run without --reuse",
                     refusal).group(1).split(", ") == ["pool", "steps"], refusal  # each named, nothing else
    assert not (tmp_path / "x.json").exists()
    # a JSON not written by this benchmark: refused by the same check (engine_throughput.read_reuse), here in-process
    (tmp_path / "list.json").write_text("[1, 2]")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import engine_throughput
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    with pytest.raises(SystemExit, match="not a JSON written by this benchmark") as refused:
        engine_throughput.read_reuse(tmp_path / "list.json", {}, "cpu")
    assert "\n" not in str(refused.value.code)


def test_inductor_cache_travels_in_parts_and_comes_back_whole(tmp_path):
    """benchmarks/inductor_cache.sh: save packs a cache folder into numbered parts of PART_SIZE, restore unpacks
    them (in order) into another folder, file for file; a missing part unpacks nothing; no parts is a cold
    start, not an error."""
    script = REPO / "benchmarks" / "inductor_cache.sh"
    cache = tmp_path / "cache"
    rng = torch.Generator().manual_seed(0)
    files = {"fxgraph/ab/entry": 3000, "triton/0/k1/kernel.cubin": 5000, "aotautograd/x": 10}
    for name, size in files.items():
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_bytes(bytes(torch.randint(0, 256, (size,), generator=rng, dtype=torch.uint8).tolist()))

    def sh(*args, **env):
        return subprocess.run(["bash", str(script), *map(str, args)], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=60)

    (tmp_path / "out").mkdir()
    saved = sh("save", cache, tmp_path / "out" / "c.tgz", PART_SIZE="2K")
    parts = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert saved.returncode == 0 and "saved 3 files" in saved.stdout and len(parts) > 2
    assert parts == [f"c.tgz.{i:02d}" for i in range(len(parts))]
    restored = sh("restore", tmp_path / "again", tmp_path / "out" / "c.tgz")
    assert restored.returncode == 0 and f"unpacked {len(parts)} part(s)" in restored.stdout
    for name in files:
        assert (tmp_path / "again" / name).read_bytes() == (cache / name).read_bytes()
    (tmp_path / "out" / parts[-1]).unlink()  # a part left behind: nothing unpacked
    partial = sh("restore", tmp_path / "partial", tmp_path / "out" / "c.tgz")
    assert partial.returncode == 0 and "did not unpack whole" in partial.stdout
    assert not any(p.is_file() for p in (tmp_path / "partial").rglob("*"))
    cold = sh("restore", tmp_path / "empty", tmp_path / "none" / "c.tgz")
    assert cold.returncode == 0 and "compiling cold" in cold.stdout
    assert sh("pack", cache, tmp_path / "x").returncode == 2
    (tmp_path / "big").mkdir()  # above MAX_MB: nothing in the call's output, one line saying why
    big = sh("save", cache, tmp_path / "big" / "c.tgz", MAX_MB="0")
    assert big.returncode == 0 and "above MAX_MB=0" in big.stdout and not any((tmp_path / "big").iterdir())


def test_fp8_lines_say_what_was_converted_and_what_was_kept():
    from aria.training.backends import fp8_lines

    assert fp8_lines({"fp8": "none"}) == []
    lines = fp8_lines({"fp8": "both", "fp8_student": {"linears": 3, "converted": 3, "skipped": []},
                       "fp8_teacher": {"linears": 9, "converted": 4, "skipped": list("abcde")}})
    assert lines == ["fp8 training: 3 of the student's 3 nn.Linear layers",
                     "fp8 inference: 4 of the teacher's 9 nn.Linear layers (kept in bf16, sizes not multiples of "
                     "16: a, b, c and 2 more)"]


def assert_plain_unet(folder):
    """The exported student of an fp8 run loads as a plain diffusers UNet (no fp8 module left) and runs."""
    from diffusers import UNet2DConditionModel

    student = UNet2DConditionModel.from_pretrained(folder)
    assert not any("Float8" in type(m).__name__ for m in student.modules())
    sample = torch.randn(1, student.config.in_channels, 16, 16)
    context = torch.randn(1, 4, student.config.cross_attention_dim)
    assert torch.isfinite(student(sample, 10, context).sample).all()


@pytest.mark.gpu
def test_gpu_fp8_run_trains_resumes_and_exports_a_plain_student(tmp_path, capsys):
    """On a GPU with fp8 tensor cores and torchao (the GPU machine): backend.fp8=both says what it converted,
    trains finite losses, resumes from its checkpoint and exports a student that loads as a plain UNet."""
    pytest.importorskip("torchao.float8")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("backend.fp8 needs compute capability >= 8.9")
    import numpy as np

    from aria.training.engine import run_distillation

    backend = {"device": "cuda", "precision": "bf16", "fp8": "both"}
    for steps, resume in ((2, False), (4, True)):
        config = tiny_config(tmp_path, backend=backend, distillation={"steps": steps, "batch_size": 16},
                             logging={"every": 1, "progress": "true"})
        result = run_distillation(config, resume=resume, bundle=make_bundle(), teacher=make_teacher())
    out = capsys.readouterr().out
    assert "fp8 training: " in out and "fp8 inference: " in out
    steps = [r for r in read_jsonl(config.output_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in steps)
    assert_plain_unet(result["student"])


def test_the_step_reads_the_teacher_s_outputs_before_the_student_runs(tmp_path):
    """CUDA graph trees may give the memory of one graph's outputs to the next graph's run: on the H100
    (2026-12-07) the student's graph overwrote the teacher's prediction before the step read it. Here, on the
    CPU, the teacher returns its prediction and its blocks' hidden states in buffers that the student's forward
    fills with NaN, as such a run would: the step's losses must be those of a plain teacher."""
    import numpy as np

    def losses(graph_like: bool):
        config = tiny_config(tmp_path / str(graph_like), distillation={"steps": 3}, logging={"every": 1})
        teacher = make_teacher()
        buffers: dict[tuple, torch.Tensor] = {}  # one per (module, shape), as a graph per input shape

        def into_buffer(module, output):
            if (id(module), output.shape) not in buffers:
                with torch.inference_mode(False):  # a plain tensor, which the student's run may overwrite
                    buffers[id(module), output.shape] = torch.empty_like(output)
            return buffers[id(module), output.shape].copy_(output)

        def overwrite(*_):  # what a graph replayed for the student may do to the teacher's outputs
            for buffer in buffers.values():
                buffer.fill_(float("nan"))

        def reused(module, _inputs, output):  # the output handed on in the module's buffer
            if isinstance(output, torch.Tensor):
                return into_buffer(module, output)
            if isinstance(output, tuple):
                return (into_buffer(module, output[0]), *output[1:])
            output.sample = into_buffer(module, output.sample)
            return output

        if graph_like:
            unet = teacher.unet
            for module in (*unet.down_blocks, unet.mid_block, *unet.up_blocks, unet):
                module.register_forward_hook(reused)
        run = DistillationRun(config, bundle=make_bundle(), teacher=teacher)
        try:
            run.setup()
            if graph_like:
                run.student.register_forward_pre_hook(overwrite)
            run.train()
        finally:
            if getattr(run, "logger", None) is not None:
                run.logger.close()
            run.close(False)
        modules = len({module for module, _ in buffers})
        return [r["loss"] for r in read_jsonl(config.output_dir / "metrics.jsonl") if "loss" in r], modules

    (plain, _), (reused_memory, modules) = losses(False), losses(True)
    unet = make_teacher().unet
    assert modules == len(unet.down_blocks) + 1 + len(unet.up_blocks) + 1  # every block and the prediction
    assert len(plain) == 3 and np.isfinite(plain).all()
    assert reused_memory == plain


@pytest.mark.gpu
def test_gpu_cuda_graphs_give_the_losses_of_the_compiled_run(tmp_path):
    """compile_mode reduce-overhead (CUDA graph trees): the teacher's outputs outlive the student's graph run
    (2026-12-07 on the H100 they were overwritten by it), and every step gives the plain compiled run's loss."""
    import numpy as np

    from aria.training.engine import run_distillation

    losses = {}
    for mode in ("default", "reduce-overhead"):
        config = tiny_config(tmp_path / mode, backend={"device": "cuda", "precision": "bf16", "compile": "true",
                                                       "compile_mode": mode},
                             distillation={"steps": 4}, logging={"every": 1}, data={"cache_dir": tmp_path / "cache"})
        result = run_distillation(config, bundle=make_bundle(), teacher=make_teacher())
        losses[mode] = [r["loss"] for r in read_jsonl(config.output_dir / "metrics.jsonl") if "loss" in r]
        assert np.isfinite(result["regimes"]["all"]["discrepancy"])
    assert len(losses["default"]) == 4 and np.isfinite(losses["default"]).all()
    assert losses["reduce-overhead"] == pytest.approx(losses["default"], rel=1e-3)  # same kernels, replayed


def test_emulated_fp8_run_resumes_exactly_exports_a_plain_student_and_changes_the_numerics(tmp_path, capsys):
    """backend.fp8_emulate on the CPU, where torchao imports (pip install -e ".[fp8]": the dev VM, the GPU
    machine; the test extra leaves it out, since importing diffusers then imports torchao, whose build for another
    torch logs at every start): the fp8 paths of a run (conversion, steps, checkpoint, resume, export) with
    torchao's emulated fp8. Two steps and a resume give the records of four steps in one go; the exported
    student loads as a plain UNet; the losses differ from the run without fp8 by fp8's rounding, not more."""
    pytest.importorskip("torchao.float8")
    import numpy as np

    from aria.training.engine import run_distillation

    fp8 = {"device": "cpu", "fp8": "both", "fp8_emulate": "true"}
    keys = ("step", "loss", "probabilities", "estimates")

    def records(folder, backend, plan):
        for steps, resume in plan:
            config = tiny_config(folder, backend=backend, distillation={"steps": steps},
                                 logging={"every": 1, "progress": "true"})
            result = run_distillation(config, resume=resume, bundle=make_bundle(), teacher=make_teacher())
        rows = [{k: r.get(k) for k in keys} for r in read_jsonl(config.output_dir / "metrics.jsonl") if "loss" in r]
        return rows, result

    resumed, result = records(tmp_path / "resumed", fp8, ((2, False), (4, True)))
    out = capsys.readouterr().out
    assert "fp8 training (emulated): " in out and "fp8 inference (emulated): " in out
    straight, _ = records(tmp_path / "straight", fp8, ((4, False),))
    assert resumed == straight and [r["step"] for r in resumed] == [1, 2, 3, 4]
    plain, _ = records(tmp_path / "plain", {"device": "cpu"}, ((4, False),))
    fp8_loss, bf_loss = np.array([r["loss"] for r in resumed]), np.array([r["loss"] for r in plain])
    assert np.all(np.isfinite(fp8_loss)) and not np.array_equal(fp8_loss, bf_loss)  # fp8 was applied
    assert np.allclose(fp8_loss, bf_loss, rtol=0.1)  # e4m3 keeps 3 mantissa bits: a few % per matmul
    assert_plain_unet(result["student"])
