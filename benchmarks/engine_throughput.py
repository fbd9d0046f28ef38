"""Training throughput of the engine against a plain BK-SDM loop (GitHub issue "GPU performance").

Both paths distil the same teacher into the same BK-SDM student from the same seed, on the same
batches (plans from ``aria.training.distill.plan_with``, noise from the same (seed, step) generator), in
one process:

- ``baseline``: a plain loop written out below, as BK-SDM trains (fp32 master weights, fp16
  ``torch.autocast`` + ``torch.amp.GradScaler``, the teacher in fp16 under ``no_grad``, plain
  forward hooks for the features, ``torch.optim.AdamW``, no compilation). It computes aria's loss
  (task + output KD + feature KD with aria's feature balance) and feeds the strategy, with one
  host read a step, as BK-SDM's loop reads its loss every step. On CPU it runs in fp32.
- ``candidate``: the engine itself. ``aria.training.engine.DistillationRun`` is set up with a synthetic
  data bundle and a random teacher passed in (its documented seam for tests and comparisons), and
  ``DistillationRun.train`` runs the steps: ``Distiller.plan/forward/reduce/loss`` and the
  backend's ``backward/step/zero_grad``, exactly as in a real run. Distillation, strategy and
  backend settings come from ``configs/sd-bk-small.yaml`` (torch backend + torch.compile, bf16 on
  CUDA, step_sync device, aria strategy, feature balance, CFG dropout 0.1; ``--backend deepspeed``
  for ZeRO 2, which skips non-finite steps on the host); on CPU the candidate runs in fp32.
- ``candidate+<lever>``: the candidate with one lever applied (``--levers``; ``a+b`` applies both); a
  lever that the candidate already has (e.g. fused AdamW on CUDA) is recorded as skipped. The backend's
  kernel levers (issue #20) set its config switches: ``fp8_student`` / ``fp8_teacher`` / ``fp8_both``
  (``backend.fp8``, torchao), ``channels_last`` (teacher and student), ``cudnn_benchmark`` (cuDNN times its
  convolution algorithms at each shape, ``backend.cudnn_benchmark``), ``reduce_overhead`` (CUDA graphs),
  ``max_autotune`` (``max-autotune-no-cudagraphs``, convolutions left to cuDNN to bound the compilation;
  ``max_autotune_convs`` autotunes them too; ``autotune_matmuls``, the default mode with only the matmuls
  autotuned, which leaves the fused kernels untuned), ``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_cudnn`` /
  ``sdpa_math`` (``backend.sdpa_backend``). Each lever row also gives its loss difference to the candidate
  (same weights, batches and noise: at the first step, the forward's numerics), and its facts what was
  applied (fp8 layers converted, the attention kernel torch picks per shape, graphs compiled, graph breaks,
  CUDA-graph skips). A lever that fails (its config refused, a compiler error, out of memory, its time limit)
  is recorded with its one-line error and the next one runs.

Not in either path: the VAE (the paired "images" are random 4x64x64 latents) and the text encoder
(a stub returns fixed random 77x768 token states per prompt, as ``ContextCache`` expects).

Per (student, batch, path): images/s and TFLOP/s from the median of the timed steps (CUDA events
at step boundaries; ``time.perf_counter`` on CPU), the warm-up (compilation included) separately,
model FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode`` (student forward +
backward, teacher forward), their fraction of a bf16 matmul's rate measured in the same run (CPU:
an fp32 matmul's), peak ``torch.cuda.max_memory_allocated`` (CPU: n/a), and the logged loss of
the first ``--loss-steps`` steps, with its largest relative difference to the baseline's.

    python benchmarks/engine_throughput.py --device cuda --batch 32,64 --students base,small,tiny \\
        --steps 20 --warmup 5 --levers all \\
        --out benchmarks/results/engine_throughput.json
    python benchmarks/engine_throughput.py --tiny --device cpu --steps 2 --warmup 1 --batch 2 --students small

``--time-budget S`` (seconds from the start): no path starts with less than ``--min-path-s`` left and a
running one is stopped when it is spent; ``--path-timeout`` bounds each path. The JSON is rewritten after
every path (``complete`` false until the end), so that a run killed from outside keeps what it measured.
``--reuse FILE`` (an earlier process's ``--out``, same settings, same machine) takes the paths that finished
there instead of measuring them again: ``benchmarks/levers.sh`` runs one process per lever this way, so that a
lever stuck in compilation costs itself and not the levers after it.

One process, one device (WORLD_SIZE 1): the script sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT when absent and owns the process group (barrier + destroy at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import gc
import json
import os
import platform
import shlex
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
from attention_kernels import attention_key, sdpa_spy, shape_name  # beside this script

REPO = Path(__file__).resolve().parents[1]
SD_UNET = REPO / "configs" / "unets" / "sd-v1-4-unet.json"
TINY_UNET = REPO / "configs" / "unets" / "tiny-sd.json"
PRODUCTION = REPO / "configs" / "sd-bk-small.yaml"
LEVERS = ("compile", "fused_adamw", "channels_last", "channels_last_teacher", "zero0", "flash_sdpa",
          "torch_backend", "host_sync", "late_feedback",
          # the backend's kernel levers (backend.fp8 / compile_mode / sdpa_backend / cudnn_benchmark; issue #20)
          "fp8_student", "fp8_teacher", "fp8_both", "max_autotune", "max_autotune_convs", "autotune_matmuls",
          "reduce_overhead", "cudnn_benchmark",
          "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math")
FP8_LEVERS = {"fp8_student": "student", "fp8_teacher": "teacher", "fp8_both": "both"}
COMPILE_MODE_LEVERS = {"max_autotune": "max-autotune-no-cudagraphs", "max_autotune_convs": "max-autotune-no-cudagraphs",
                       "reduce_overhead": "reduce-overhead"}
SDPA_LEVERS = {"sdpa_flash": "flash", "sdpa_efficient": "efficient", "sdpa_cudnn": "cudnn", "sdpa_math": "math"}
SDPA_KERNEL_NAMES = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                     "math": "MATH"}


# ---------------------------------------------------------------------------------------------
# process group


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_process_group(device: torch.device, candidate_only: bool) -> None:
    """The launcher's group (torchrun: candidate paths only), or one rank that this script owns."""
    import torch.distributed as dist

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if os.environ["WORLD_SIZE"] != "1" and not candidate_only:
        raise SystemExit("several ranks time the engine only: add --candidate-only (the baseline is one process)")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]))


def close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# synthetic world: latents, prompts, regions, a stub text encoder


class SyntheticPool:
    """A prompt pool of ``n`` texts ``"synthetic prompt <i>"`` (``texts(ids)`` as ``PromptPool``)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def texts(self, ids) -> list[str]:
        return [f"synthetic prompt {int(i)}" for i in np.asarray(ids, dtype=np.int64)]


class StubEncoder:
    """Fixed random token states per prompt, like ``TextEncoder.token_states``: prompt ``i`` gets row
    ``i % rows`` of a table (at most 4,096 distinct rows, so a 10M pool fits); ``""`` the last row."""

    batch_size = 256

    def __init__(self, n: int, length: int, dim: int, seed: int, rows: int = 4096):
        gen = torch.Generator().manual_seed(seed)
        self.n = min(n, rows)
        self.table = torch.randn(self.n + 1, length, dim, generator=gen)
        self.max_length, self.dim = length, dim

    def rows(self, texts) -> list[int]:
        return [self.n if t == "" else int(t.rsplit(" ", 1)[1]) % self.n for t in texts]

    def token_states(self, texts) -> torch.Tensor:
        return self.table[self.rows(texts)]

    def encode_tokens(self, texts) -> np.ndarray:
        return self.token_states(texts).numpy()


def make_bundle(*, latent_size: int, channels: int, context: tuple[int, int], paired: int, prompts: int,
                regions: int, seed: int):
    """The fields of ``aria.data.bundle.DataBundle`` (docs/ARCHITECTURE.md) over synthetic data."""
    from aria.data.bundle import DataBundle
    from aria.strategies import RegionInfo

    rng = np.random.default_rng(seed)
    region = rng.integers(regions, size=prompts, dtype=np.int32)
    region[:regions] = np.arange(regions)  # no empty region
    members = np.argsort(region, kind="stable").astype(np.int64)  # 10M prompts: about 1 s
    offsets = np.concatenate([[0], np.cumsum(np.bincount(region, minlength=regions))]).astype(np.int64)
    latents = rng.standard_normal((paired, channels, latent_size, latent_size)).astype(np.float32)
    paired_ids = rng.integers(prompts, size=paired, dtype=np.int64)
    return DataBundle(pool=SyntheticPool(prompts), region_of_prompt=region, region_offsets=offsets,
                      region_members=members, region_info=RegionInfo(np.bincount(region, minlength=regions)),
                      paired_images=latents, paired_prompt_ids=paired_ids, regime_of_prompt=None,
                      encoder=StubEncoder(prompts, *context, seed=seed + 1))


def sd_scheduler_config() -> dict:
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012).config)


# ---------------------------------------------------------------------------------------------
# timing, FLOPs, matmul peak


class Clock:
    """Marks at step boundaries: CUDA events (no sync) or host time; durations read at the end.
    ``profiler`` (a ``StepProfiler``) sees every mark."""

    def __init__(self, device: torch.device, profiler: "StepProfiler | None" = None):
        self.cuda = device.type == "cuda"
        self.marks: list = []
        self.profiler = profiler

    def mark(self) -> None:
        if self.profiler is not None:
            self.profiler.at_mark(len(self.marks))
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def durations(self) -> list[float]:
        """Seconds between consecutive marks (call after a final ``mark``)."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class StepProfiler:
    """``torch.profiler`` over the steps after the timed ones (marks ``first`` .. ``first + steps``):
    the kernels' table by self device time and the device's busy fraction, written to ``out``."""

    def __init__(self, out: Path, first: int, steps: int, device: torch.device):
        self.out, self.first, self.steps, self.device = out, first, steps, device
        self.prof = None
        self.t0 = 0.0

    def at_mark(self, index: int) -> None:
        from torch.profiler import ProfilerActivity, profile

        if index == self.first:
            sync(self.device)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.prof = profile(activities=acts)
            self.prof.__enter__()
            self.t0 = time.perf_counter()
        elif index == self.first + self.steps and self.prof is not None:
            sync(self.device)
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            avg = self.prof.key_averages()
            sort = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
            self.out.parent.mkdir(parents=True, exist_ok=True)
            head = f"{self.steps} steps, wall {wall:.3f} s (profiler on)\n"
            if self.device.type == "cuda":
                head += kernel_summary(self.prof.events(), self.steps)
            self.out.write_text(head + "\n" + avg.table(sort_by=sort, row_limit=45) + "\n")
            self.prof = None


KERNEL_GROUPS = (  # first match wins (kernel names, lower case)
    ("attention", ("sdpa", "flash", "fmha", "attention", "dot_do_o", "convert_dq")),
    ("layout", ("nchwtonhwc", "nhwctonchw")),
    ("convolution", ("fprop", "dgrad", "wgrad", "implicit_gemm", "conv")),
    ("matmul", ("gemm", "nvjet", "cutlass", "sm90_xmma")),
    ("optimizer", ("adam", "multi_tensor")),
    ("triton (fused)", ("triton",)),
    ("copy", ("memcpy", "memset", "copy")),
    ("norm", ("norm", "moments")),
    ("elementwise / reduce", ("elementwise", "reduce", "vectorized", "index", "scatter", "cat")),
)


def kernel_summary(events, steps: int) -> str:
    """Device time per kernel group, the union of kernel intervals (busy) and the largest idle gaps."""
    spans, groups = [], {}
    for e in events:
        if str(getattr(e, "device_type", "")).endswith("CUDA") and e.time_range.end > e.time_range.start:
            spans.append((e.time_range.start, e.time_range.end, e.name))
            name = e.name.lower()
            group = next((g for g, keys in KERNEL_GROUPS if any(k in name for k in keys)), "other")
            groups[group] = groups.get(group, 0.0) + (e.time_range.end - e.time_range.start)
    if not spans:
        return "no device kernels recorded\n"
    spans.sort()
    busy, gaps, (lo, hi, _) = 0.0, [], spans[0]
    for start, end, name in spans[1:]:
        if start > hi:
            busy += hi - lo
            gaps.append((start - hi, name))
            lo, hi = start, end
        else:
            hi = max(hi, end)
    busy += hi - lo
    window = spans[-1][1] - spans[0][0]
    total = sum(groups.values())
    lines = [f"device window {window / 1e3:.1f} ms ({window / 1e3 / steps:.1f} ms/step), kernels busy "
             f"{busy / 1e3:.1f} ms ({100 * busy / window:.1f}%), idle {(window - busy) / 1e3:.1f} ms in "
             f"{len(gaps)} gaps; per step:"]
    lines += [f"  {g:<22} {t / 1e3 / steps:8.1f} ms  {100 * t / total:5.1f}%"
              for g, t in sorted(groups.items(), key=lambda kv: -kv[1])]
    lines.append("largest idle gaps (ms, next kernel): " + "; ".join(
        f"{g / 1e3:.2f} {n[:40]}" for g, n in sorted(gaps, reverse=True)[:6]))
    return "\n".join(lines) + "\n"


def timed(fn, sink: list):
    """``fn`` that appends the host seconds of every call to ``sink``."""
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - t)
    return wrapper


def steps_to_run(ctx, total_steps: int) -> int:
    """The timed and warm-up steps, plus the profiled ones with ``--profile``."""
    return total_steps + (ctx.profile_steps if ctx.profile_dir is not None else 0)


def profiler_for(ctx, path: str, total_steps: int) -> StepProfiler | None:
    """The profiler of one path when ``--profile`` is set (it runs ``ctx.profile_steps`` extra steps)."""
    if ctx.profile_dir is None:
        return None
    name = f"{ctx.variant}-b{ctx.batch}-{path}.txt".replace("+", "_")
    return StepProfiler(ctx.profile_dir / name, total_steps, ctx.profile_steps, ctx.device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device) -> dict:
    """The matrix rate this card/CPU reaches in this run: bf16 8192^3 on CUDA, fp32 on CPU."""
    if device.type == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 20
    else:
        n, dtype, reps = 1024, torch.float32, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(5):
        clock = Clock(device)
        clock.mark()
        for _ in range(reps):
            a @ b
        clock.mark()
        times.append(clock.durations()[0] / reps)
    rate = 2 * n ** 3 / statistics.median(times) / 1e12
    return {"tflops": rate, "kind": f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} matmul {n}x{n}x{n}",
            "note": None if device.type == "cuda" else "CPU: fraction of an fp32 matmul's rate, not a bf16 card rate"}


def primary(output) -> torch.Tensor:
    """The hidden state of a block's output (tensor, tuple / list, or diffusers output)."""
    while not isinstance(output, torch.Tensor):
        output = next(iter(output.values())) if hasattr(output, "values") else output[0]
    return output


# ---------------------------------------------------------------------------------------------
# the baseline: a plain BK-SDM loop (the reference; written out, no aria step code)


@dataclass
class PathResult:
    path: str
    lever: str | None = None
    step_s: list[float] = field(default_factory=list)  # timed steps
    warmup_s: list[float] = field(default_factory=list)
    losses: list[float | None] = field(default_factory=list)
    peak_memory_gb: float | None = None
    memory_before_gb: float | None = None  # allocated when the path started (a leak of an earlier path shows here)
    setup_s: float | None = None
    facts: dict = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None


def baseline_run(ctx, teacher_master, student_master, pairs, batch: int, total_steps: int, warmup: int,
                 flops_out: dict, half_dtype: torch.dtype = torch.float16) -> PathResult:
    """BK-SDM's loop on aria's batches and loss; also counts one step's FLOPs into ``flops_out``.
    ``half_dtype=torch.bfloat16``: the same loop in bf16 autocast without a scaler, the loss-noise
    reference (how far bf16 alone moves the losses from the fp16 baseline's)."""
    from aria.training.distill import STREAM_NOISE, data_rng, plan_with
    from aria.strategies import Feedback, create_strategy
    from diffusers import DDPMScheduler

    dev, dc, bundle, seed = ctx.device, ctx.distill, ctx.bundle, ctx.seed
    cuda = dev.type == "cuda"
    half = half_dtype if cuda else torch.float32
    path_name = "baseline" if half_dtype == torch.float16 else "baseline-bf16"
    t0 = time.perf_counter()
    teacher = copy.deepcopy(teacher_master).to(dev, half).eval().requires_grad_(False)
    student = copy.deepcopy(student_master).to(dev).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=dc.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=dc.weight_decay)
    scaler = torch.amp.GradScaler(dev.type, enabled=cuda and half == torch.float16)
    autocast = lambda: torch.autocast(dev.type, dtype=half, enabled=cuda)  # noqa: E731
    scheduler = DDPMScheduler.from_config(ctx.scheduler_config)
    num_t = int(scheduler.config.num_train_timesteps)
    strategy = create_strategy(ctx.strategy_name, ctx.strategy_params)
    state = strategy.init(bundle.region_info, seed)
    k, nbins = bundle.region_info.num_regions, dc.timestep_bins

    feats_t, feats_s, hooks = {}, {}, []
    for store, model, names in ((feats_t, teacher, [p.teacher_name for p in pairs]),
                                (feats_s, student, [p.student_name for p in pairs])):
        modules = dict(model.named_modules())
        for name in names:
            hooks.append(modules[name].register_forward_hook(
                lambda _m, _i, out, name=name, store=store: store.__setitem__(name, primary(out))))
    enc = bundle.encoder
    contexts = enc.table.to(dev)  # every prompt's token states: row (id % rows), as StubEncoder.rows
    uncond = enc.token_states([""])[0].to(dev)
    scales = None

    def h2d(array, dtype=None):
        t = torch.from_numpy(np.ascontiguousarray(array))
        t = t.to(dtype) if dtype is not None else t
        return t.pin_memory().to(dev, non_blocking=True) if cuda else t

    def forward(step: int):
        plan = plan_with(strategy, state, step, seed=seed, batch_size=batch, num_timesteps=num_t, config=dc,
                         bundle=bundle)
        x0 = h2d(bundle.paired_images[plan.image_index])
        gen = torch.Generator(device=dev).manual_seed(int(data_rng(seed, step, STREAM_NOISE).integers(2**62)))
        noise = torch.randn(x0.shape, generator=gen, device=dev)
        t = h2d(plan.timesteps)
        x_t = scheduler.add_noise(x0, noise, t)
        cond = contexts[h2d(plan.prompt_ids % enc.n)]
        cond[h2d(plan.dropped)] = uncond
        with torch.no_grad(), autocast():
            eps_t = teacher(x_t.to(half), t, encoder_hidden_states=cond.to(half)).sample.float()
            ft = [feats_t[p.teacher_name].float() for p in pairs]
        with autocast():
            eps_s = student(x_t, t, encoder_hidden_states=cond).sample.float()
        fs = [feats_s[p.student_name].float() for p in pairs]
        mse = lambda a, b: (a - b).pow(2).flatten(1).mean(1)  # noqa: E731  per-sample
        paired = ~plan.switched
        task_w = h2d(paired / max(int(paired.sum()), 1), torch.float32)
        kd_w = h2d(plan.kd_weight / plan.kd_weight.sum(), torch.float32)
        d = mse(eps_s, eps_t)
        task, out = (mse(eps_s, noise) * task_w).sum(), (d * kd_w).sum()
        feat = [(mse(a, b) * kd_w).sum() for a, b in zip(fs, ft)]
        teacher_ms = [b.pow(2).mean() for b in ft]
        return plan, task, out, feat, teacher_ms, d

    def train_step(step: int):
        nonlocal scales, state
        plan, task, out, feat, teacher_ms, d = forward(step)
        nf = len(feat)
        host = torch.cat([torch.stack([task, out, *feat]).detach(), torch.stack(teacher_ms).detach() if nf else
                          torch.zeros(0, device=dev), d.detach()]).double().cpu().numpy()  # the step's one read
        terms, ms, disc = host[:2 + nf], host[2 + nf:2 + 2 * nf], host[2 + 2 * nf:]
        if not np.isfinite(terms).all():
            optimizer.zero_grad(set_to_none=True)
            return None
        ms = np.maximum(ms, 1e-12)
        if dc.feature_balance:
            scales = ms if scales is None else dc.feature_balance_decay * scales + (1 - dc.feature_balance_decay) * ms
        else:
            scales = np.ones(nf)
        loss = dc.w_task * task + dc.w_out * out + dc.w_feat * sum(f / float(s) for f, s in zip(feat, scales))
        logged = dc.w_task * terms[0] + dc.w_out * terms[1] + dc.w_feat * float(np.sum(terms[2:] / scales))
        scaler.scale(loss).backward()
        if dc.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(student.parameters(), dc.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        valid = plan.regions >= 0
        bins = np.minimum(plan.timesteps * nbins // num_t, nbins - 1)
        state = strategy.update(state, Feedback.from_samples(plan.regions[valid], disc[valid], k, bins[valid],
                                                             nbins, step))
        return float(logged)

    result = PathResult(path_name)
    try:
        if "flops" not in flops_out:  # model FLOPs of one step (no optimizer step: the weights stay as they are)
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                _, task, out, feat, _, _ = forward(0)
                (task + out + sum(feat)).backward()
            optimizer.zero_grad(set_to_none=True)
            flops_out["flops"] = int(counter.get_total_flops())
            flops_out["ops"] = sorted({str(op) for ops in counter.get_flop_counts().values() for op in ops})
        sync(dev)
        result.setup_s = time.perf_counter() - t0
        clock = Clock(dev, profiler_for(ctx, path_name, total_steps))
        for step in range(steps_to_run(ctx, total_steps)):
            clock.mark()
            result.losses.append(train_step(step))
        clock.mark()
        times = clock.durations()
        result.warmup_s, result.step_s = times[:warmup], times[warmup:total_steps]
        result.losses = result.losses[:total_steps]
        result.facts = {"teacher_dtype": str(half), "student_params": "fp32", "autocast": str(half) if cuda else None,
                        "grad_scaler": scaler.is_enabled(),
                        "final_loss_scale": float(scaler.get_scale()) if scaler.is_enabled() else None}
    finally:
        for h in hooks:
            h.remove()
    return result


# ---------------------------------------------------------------------------------------------
# the candidate: the engine's own setup and loop


@contextlib.contextmanager
def patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def fused_adamw():
    """DeepSpeed's torch AdamW with ``fused=True`` on every device (the backend asks for it on CUDA)."""
    import aria.training.backends as backends

    base = backends.BACKENDS["deepspeed"]

    class FusedDeepSpeedBackend(base):
        def ds_config(self):
            cfg = super().ds_config()
            cfg["optimizer"]["params"]["fused"] = True
            return cfg

    with patched(backends, "BACKENDS", {**backends.BACKENDS, "deepspeed": FusedDeepSpeedBackend}):
        yield


@contextlib.contextmanager
def flash_sdpa():
    """Scaled-dot-product attention without the cuDNN kernel (torch then picks FlashAttention-2)."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


CONVS_TO_CUDNN = {"max_autotune_conv_backends": "ATEN"}  # inductor settings of the two patches below
MATMULS_AUTOTUNED = {"max_autotune_gemm": True, **CONVS_TO_CUDNN}


@contextlib.contextmanager
def convs_not_autotuned():
    """``max_autotune``'s cap on compilation time: convolutions stay with cuDNN (inductor's
    ``max_autotune_conv_backends`` = ATEN; torch's own default for the convolution backward on CUDA), matmuls
    and the fused kernels are autotuned as the mode asks (``max_autotune_convs`` lifts the cap)."""
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config, "max_autotune_conv_backends"):
        yield
        return
    with inductor_config.patch(CONVS_TO_CUDNN):
        yield


@contextlib.contextmanager
def matmuls_autotuned():
    """``autotune_matmuls``: inductor's matmul templates benchmarked against cuBLAS at compilation
    (``max_autotune_gemm``), convolutions left to cuDNN and the fused kernels to their default configs: the part
    of max-autotune that touches the step's matmuls (18% of it), without tuning every fused kernel."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(MATMULS_AUTOTUNED):
        yield


@contextlib.contextmanager
def no_aot_autograd_cache():
    """AOTAutograd's on-disk cache off for a path whose attention kernel differs from an earlier path's: its key
    is the traced graph, and an SDPA choice made outside the graph (``flash_sdpa``'s global flag) is not in it,
    so a later path would reuse the earlier path's attention kernel (seen on the H100 on 2026-11-26). Inductor's
    own cache stays on: its key is the lowered graph, which names the attention kernel."""
    try:
        import torch._functorch.config as functorch_config
    except ImportError:  # pragma: no cover - other torch layouts
        yield
        return
    if not hasattr(functorch_config, "enable_autograd_cache"):
        yield
        return
    with functorch_config.patch(enable_autograd_cache=False):
        yield


def dynamo_counters() -> dict:
    """Dynamo / inductor counters: graphs compiled, graph breaks, graphs that CUDA graphs skipped."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return {}
    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0))}


def sdpa_choices(run) -> dict:
    """The attention kernel torch picks for every SDPA call of one sample's eager forward, student (with
    gradients, as in training) and teacher (inference), under the run's settings (``backend.sdpa_backend``
    included): {model: {"h<heads> q<len> kv<len> d<head dim>": kernel}}. Batch 1, so the choice of the
    kernel, not its speed; the compiled graphs take the same choice at the first step."""
    from torch.nn.attention import SDPBackend

    names = {int(v): k for k, v in SDPBackend.__members__.items()}
    b, dev = run.backend, run.backend.device
    unet = run.teacher.unet
    cfg = unet.config
    size = int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
    cross = cfg.cross_attention_dim if isinstance(cfg.cross_attention_dim, int) else cfg.cross_attention_dim[0]
    length = int(getattr(run.bundle.encoder, "max_length", 77))
    x = torch.zeros(1, int(cfg.in_channels), size, size, device=dev)
    t = torch.full((1,), 500, device=dev, dtype=torch.long)
    context = torch.zeros(1, length, int(cross), device=dev)
    found: dict[str, dict[str, str]] = {}

    def choice_into(store):
        def record(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_kwargs):
            try:
                choice = names.get(int(torch._fused_sdp_choice(q, k, v, attn_mask, dropout_p, is_causal, scale=scale)),
                                   "?")
            except Exception as err:  # noqa: BLE001 - what torch says instead
                choice = f"error: {type(err).__name__}"
            store.setdefault(shape_name(attention_key(q, k)), choice)
        return record

    student, teacher = run.student, unet
    try:
        with sdpa_spy(choice_into(found.setdefault("student", {}))), b.student_autocast():
            dtype = b.input_dtype
            student.forward(x.to(dtype), t, encoder_hidden_states=context.to(dtype))  # eager: not the compiled call
        with sdpa_spy(choice_into(found.setdefault("teacher", {}))), torch.inference_mode(), \
                contextlib.nullcontext() if b.compute_dtype == torch.float32 else \
                torch.autocast(dev.type, dtype=b.compute_dtype):
            teacher.forward(x.to(teacher.dtype), t, encoder_hidden_states=context.to(teacher.dtype))
    finally:
        run.distiller.cap_s.outputs.clear(), run.distiller.cap_t.outputs.clear()
    return found


def optimizer_of(engine):
    opt = getattr(engine, "optimizer", None)
    while opt is not None and not isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "optimizer"):
        opt = opt.optimizer
    return opt


def candidate_facts(run) -> dict:
    engine = getattr(run.backend, "engine", None)
    opt = optimizer_of(engine) if engine is not None else getattr(run.backend, "optimizer", None)
    conv = run.student.conv_in.weight
    return {
        "backend": run.backend.kind,
        "precision": run.config.backend.precision,
        "zero_stage": int(engine.zero_optimization_stage()) if engine is not None else None,
        "teacher_dtype": str(run.teacher.unet.dtype),
        "student_params": str(conv.dtype),
        "fused_adamw": bool(opt.defaults.get("fused")) if opt is not None else None,
        "optimizer": type(opt).__name__ if opt is not None else None,
        "compiled": bool(run.config.backend.compile),
        "channels_last": _channels_last(conv),
        "teacher_channels_last": _channels_last(run.teacher.unet.conv_in.weight),
        "deterministic": bool(run.config.backend.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_sdpa": bool(torch.backends.cuda.cudnn_sdp_enabled()),
        "step_sync": run.config.distillation.step_sync,
        "feedback_delay": run.config.distillation.feedback_delay,
        "compile_mode": run.config.backend.compile_mode,
        "sdpa_backend": run.config.backend.sdpa_backend,
        "fp8": run.config.backend.fp8,
        "levers": getattr(run.backend, "levers", {}),  # what the backend's prepare_models did (fp8 layer counts)
    }


def _channels_last(weight: torch.Tensor) -> bool:
    return bool(weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last)
                and not weight.is_contiguous())


def _sdpa_already(choice: str, facts: dict) -> bool:
    """The candidate already runs ``choice``'s kernel for every attention call of both models (putting it first
    would change nothing), or already has that sdpa_backend."""
    if facts.get("sdpa_backend") == choice:
        return True
    picked = [k for model in (facts.get("sdpa_choice") or {}).values() if isinstance(model, dict)
              for k in model.values()]
    return bool(picked) and all(k == SDPA_KERNEL_NAMES[choice] for k in picked)


def lever_is_noop(lever: str, facts: dict) -> str | None:
    """Why a lever would change nothing in the candidate (None: it changes something)."""
    checks = {"compile": facts.get("compiled"), "fused_adamw": facts.get("fused_adamw"),
              "channels_last": facts.get("channels_last") and facts.get("teacher_channels_last"),
              "zero0": facts.get("zero_stage") == 0,
              "channels_last_teacher": facts.get("teacher_channels_last"),
              "flash_sdpa": facts.get("cudnn_sdpa") is False, "torch_backend": facts.get("backend") == "torch",
              "host_sync": facts.get("step_sync") == "host", "late_feedback": facts.get("feedback_delay") == 1,
              "cudnn_benchmark": facts.get("cudnn_benchmark")}
    checks.update({name: facts.get("fp8") == mode for name, mode in FP8_LEVERS.items()})
    checks.update({name: facts.get("compiled") and facts.get("compile_mode") == mode
                   for name, mode in COMPILE_MODE_LEVERS.items()})
    checks.update({name: _sdpa_already(choice, facts) for name, choice in SDPA_LEVERS.items()})
    parts = lever.split("+")
    return f"already in the candidate ({lever})" if all(checks.get(p) for p in parts) else None


def candidate_run(ctx, teacher_master, student_variant: str, batch: int, total_steps: int, warmup: int,
                  lever: str | None) -> PathResult:
    """``DistillationRun.setup`` + ``DistillationRun.train`` over the synthetic bundle."""
    from pydantic import ValidationError

    from aria.config import RunConfig
    from aria.errors import UserError, format_validation_error
    from aria.training.engine import DistillationRun
    from aria.models import Teacher

    dev = ctx.device
    backend = {**ctx.backend_section}
    teacher_dtype = torch.bfloat16 if (dev.type == "cuda" and backend["precision"] == "bf16") else torch.float32
    patches: list[Callable[[], Any]] = []
    levers = set(lever.split("+")) if lever else set()
    if "compile" in levers:
        backend["compile"] = True
    if "torch_backend" in levers:  # the engine's other backend: fp32 weights, bf16 autocast, fused AdamW
        backend["kind"] = "torch"
    if "zero0" in levers:
        backend["zero_stage"] = 0
    if "fused_adamw" in levers:
        patches.append(fused_adamw)
    if "flash_sdpa" in levers:
        patches += [flash_sdpa, no_aot_autograd_cache]
    fp8 = {FP8_LEVERS[x] for x in levers if x in FP8_LEVERS}
    if fp8:  # the backend's fp8 switch: student, teacher or both
        backend["fp8"] = "both" if "both" in fp8 or fp8 == {"student", "teacher"} else fp8.pop()
    modes = {COMPILE_MODE_LEVERS[x] for x in levers if x in COMPILE_MODE_LEVERS}
    if len(modes) > 1:
        raise ValueError(f"levers {lever!r} ask for several compile modes ({', '.join(sorted(modes))})")
    if "autotune_matmuls" in levers:  # a patch of the default mode
        if modes:
            raise ValueError(f"levers {lever!r}: autotune_matmuls patches the default compile mode, not another")
        backend["compile"] = True
        patches.append(matmuls_autotuned)
    if modes:
        backend.update(compile=True, compile_mode=modes.pop())
        if "max_autotune" in levers and "max_autotune_convs" not in levers:
            patches.append(convs_not_autotuned)
    sdpa = [SDPA_LEVERS[x] for x in levers if x in SDPA_LEVERS]
    if len(sdpa) > 1:
        raise ValueError(f"levers {lever!r} ask for several attention kernels ({', '.join(sdpa)})")
    if sdpa:
        backend["sdpa_backend"] = sdpa[0]
        patches.append(no_aot_autograd_cache)
    distill = {**ctx.distill_section, "batch_size": batch, "steps": steps_to_run(ctx, total_steps)}
    if "host_sync" in levers or backend["kind"] != "torch":  # read the statistics before backward, skip on the host
        distill.update(step_sync="host", feedback_delay=0)
    if "late_feedback" in levers:  # the strategy sees a step's feedback one step late
        distill.update(step_sync="device", feedback_delay=1)
    if "channels_last" in levers:  # the backend's switch (teacher and student); RunConfig refuses it with DeepSpeed
        backend["channels_last"] = True
    if "cudnn_benchmark" in levers:  # cuDNN times its convolution algorithms (RunConfig: not with deterministic)
        backend.update(cudnn_benchmark=True, deterministic=False)
    result = PathResult("candidate" if lever is None else f"candidate+{lever}", lever)
    with tempfile.TemporaryDirectory(prefix="aria-bench-") as out, contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p())
        try:  # a lever the config refuses (fp8 on a CPU, channels_last with DeepSpeed): its one line
            config = RunConfig(
                seed=ctx.seed, output_dir=Path(out),
                student={"variant": student_variant, "init_from_teacher": True},
                distillation=distill,
                strategy={"name": ctx.strategy_name, "params": {ctx.strategy_name: ctx.strategy_params}},
                backend=backend,
                logging={"every": 10**9, "checkpoint_every": 10**9, "progress": False, "tensorboard": False},
            )
        except ValidationError as err:
            raise UserError(format_validation_error(err)) from None
        t0 = time.perf_counter()
        unet = copy.deepcopy(teacher_master).to(dtype=teacher_dtype)
        if "channels_last_teacher" in levers:
            unet = unet.to(memory_format=torch.channels_last)
        size = unet.config.sample_size
        teacher = Teacher(unet=unet, vae=None, latent=False,
                          sample_size=int(size if isinstance(size, int) else size[0]),
                          in_channels=int(unet.config.in_channels), scheduler_config=ctx.scheduler_config,
                          path=ctx.teacher_path)
        # several ranks: the strategy state's hash is compared across ranks after every step
        run = DistillationRun(config, bundle=ctx.bundle, teacher=teacher, check_consistency=ctx.world_size > 1)
        ok = False
        if backend["compile"]:  # compiled code of earlier paths: dropped (the on-disk caches stay), so that no
            torch._dynamo.reset()  # path runs into dynamo's recompile limit and falls back to eager
        counters = dynamo_counters()
        try:
            run.setup()
            result.facts = candidate_facts(run)
            try:  # a fact, not the path: its failure is recorded, the path goes on
                result.facts["sdpa_choice"] = sdpa_choices(run)
            except Exception as err:  # noqa: BLE001
                result.facts["sdpa_choice"] = {"error": one_line(err)}
            result.facts["aot_autograd_cache"] = no_aot_autograd_cache not in patches
            if "max_autotune" in levers and "max_autotune_convs" not in levers:
                result.facts["inductor_patches"] = dict(CONVS_TO_CUDNN)
            if "autotune_matmuls" in levers:
                result.facts["inductor_patches"] = dict(MATMULS_AUTOTUNED)
            clock = Clock(dev, profiler_for(ctx, result.path, total_steps))
            plan = run.distiller.plan

            host = {"plan": [], "update": []}
            timed_plan = timed(plan, host["plan"])

            def marked_plan(*args, **kwargs):  # the first call of every engine step: a step boundary
                clock.mark()
                return timed_plan(*args, **kwargs)

            run.distiller.plan, run.strategy.update = marked_plan, timed(run.strategy.update, host["update"])
            sync(dev)
            result.setup_s = time.perf_counter() - t0
            run.train()
            clock.mark()
            times = clock.durations()
            result.warmup_s, result.step_s = times[:warmup], times[warmup:total_steps]
            result.facts["strategy_host_us"] = {k: 1e6 * statistics.median(v[warmup:total_steps] or v)
                                                for k, v in host.items() if v}
            run.logger.close()
            log = run.logger.path
            records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] \
                if run.main and log.is_file() else []  # rank 0 logs
            by_step = {r["step"]: r.get("loss") for r in records if "step" in r and "event" not in r}
            result.losses = [by_step.get(s + 1) for s in range(total_steps)]
            after = dynamo_counters()
            result.facts["dynamo"] = {k: (None if v is None or counters.get(k) is None else v - counters[k])
                                      for k, v in after.items()}
            ok = True
        finally:
            if getattr(run, "logger", None) is not None:
                run.logger.close()
            engine = getattr(getattr(run, "backend", None), "engine", None)
            run.close(ok)
            if engine is not None and hasattr(engine, "destroy"):
                engine.destroy()
            del run, teacher, unet
    return result


# ---------------------------------------------------------------------------------------------
# driver


def free(device: torch.device) -> str | None:
    """Memory of the last path released, peak statistics reset; the error's line if the device refuses (after
    a path that failed inside a CUDA graph capture, say), so that the next paths are still tried."""
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        except Exception as err:  # noqa: BLE001
            return one_line(err)
    return None


class PathTimeout(Exception):
    """A path ran past its time limit (--path-timeout, or what was left of --time-budget)."""


class Budget:
    """``--time-budget``: no path starts with less than ``--min-path-s`` of it left, and a running path is
    stopped when it is spent; ``--path-timeout``: the longest a path may run. Stopped paths are recorded
    with their reason (``PathTimeout``) and the next paths go on."""

    def __init__(self, total_s: float, path_s: float, min_path_s: float):
        self.total_s, self.path_s, self.min_path_s = total_s, path_s, min_path_s
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def why_not(self) -> str | None:
        """Why the next path may not start (None: it may)."""
        if self.total_s and self.total_s - self.elapsed() < self.min_path_s:
            return (f"not started: {max(0.0, self.total_s - self.elapsed()):.0f} s of --time-budget "
                    f"{self.total_s:.0f} s left (--min-path-s {self.min_path_s:.0f})")
        return None

    def limit(self) -> tuple[float, str] | None:
        """The running path's time limit in seconds and its name, or None."""
        limits = []
        if self.path_s:
            limits.append((self.path_s, f"--path-timeout {self.path_s:.0f} s"))
        if self.total_s:
            limits.append((max(1.0, self.total_s - self.elapsed()), f"--time-budget {self.total_s:.0f} s"))
        return min(limits) if limits else None


@contextlib.contextmanager
def time_limit(limit: tuple[float, str] | None):
    """Raise ``PathTimeout`` in the main thread after ``limit`` seconds (SIGALRM; none where unavailable).
    Two seconds before, every thread's stack goes to stderr (faulthandler): a compilation that does not see the
    signal, or that ``timeout`` ends, still says where it was (tracing, lowering or waiting for Triton)."""
    import faulthandler
    import signal
    import threading

    if limit is None or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    seconds, name = limit

    def handler(signum, frame):
        raise PathTimeout(f"stopped after {seconds:.0f} s ({name}): setup, compilation and steps did not finish")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(max(1.0, seconds - 2))
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(err: BaseException) -> str:
    """``Type: first line`` of an error, the root ``PathTimeout`` when a compiler wrapped one (at most 300 chars)."""
    seen, cause = set(), err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, PathTimeout):
            err = cause
            break
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    text = str(err).strip().splitlines()[0].strip() if str(err).strip() else ""
    text = f"{type(err).__name__}: {text}"
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def global_flags():
    """Backends set process-wide flags (deterministic algorithms, cuDNN autotuning): restore them."""
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    bench = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.backends.cudnn.benchmark = bench


def measure(fn, device: torch.device, budget: Budget | None = None) -> PathResult:
    """One path, its failure (e.g. out of memory, a compiler error, its time limit) recorded in one line:
    the other paths go on."""
    path, lever = getattr(fn, "path", "?"), getattr(fn, "lever", None)
    why = budget.why_not() if budget is not None else None
    if why:
        print(f"   {path}: {why}", flush=True)
        return PathResult(path, lever, skipped=why)
    problem = free(device)
    before = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" and problem is None else None
    t0 = time.perf_counter()
    with global_flags():
        try:
            if problem is not None:
                raise RuntimeError(f"the device failed before this path: {problem}")
            with time_limit(budget.limit() if budget is not None else None):
                result = fn()
        except Exception as err:  # noqa: BLE001  one failed path (e.g. out of memory) does not stop the others
            import traceback

            traceback.print_exc()
            result = PathResult(path, lever, error=one_line(err))
    result.memory_before_gb = before
    if device.type == "cuda" and result.error is None:
        result.peak_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
    problem = free(device)
    if problem is not None and result.error is None:
        result.error = f"the device failed after the path: {problem}"
    result.facts["path_wall_s"] = time.perf_counter() - t0
    done = "" if result.error else (f"{len(result.step_s)} timed steps, median "
                                    f"{1e3 * statistics.median(result.step_s):.1f} ms, warm-up "
                                    f"{sum(result.warmup_s):.1f} s, path {result.facts['path_wall_s']:.0f} s")
    print(f"   {path}: " + (f"error: {result.error}" if result.error else done), flush=True)
    return result


def summarise(r: PathResult, batch: int, flops: int | None, peak: float, base: dict | None, loss_steps: int,
              cand: dict | None = None) -> dict:
    """One row; ``base``: the baseline's row (ratios, loss differences); ``cand``: the candidate's, for a lever
    (its loss difference to the same engine path without the lever)."""
    row: dict[str, Any] = {"path": r.path, "lever": r.lever}
    if r.skipped or r.error:
        row.update({"skipped": r.skipped, "error": r.error, "facts": r.facts})
        return row
    med = statistics.median(r.step_s)
    row.update({
        "images_per_s": batch / med,
        "step_s_median": med,
        "step_s": r.step_s,
        "images_per_s_mean": batch * len(r.step_s) / sum(r.step_s),
        "tflops": None if flops is None else flops / med / 1e12,
        "fraction_of_matmul_peak": None if flops is None else flops / med / 1e12 / peak,
        "peak_memory_gb": r.peak_memory_gb,
        "memory_before_gb": r.memory_before_gb,
        "warmup_s": sum(r.warmup_s),
        "warmup_steps_s": r.warmup_s,
        "setup_s": r.setup_s,
        "losses": r.losses[:loss_steps],
        "facts": r.facts,
    })
    host = r.facts.get("strategy_host_us")
    if host:
        row["strategy_host_fraction_of_step"] = sum(host.values()) / 1e6 / med
    for ref, suffix, first_key in ((base, "baseline", "loss_rel_diff_first_step"),
                                   (cand, "candidate", "loss_rel_diff_first_step_vs_candidate")):
        if ref is not None and "images_per_s" in ref:
            row[f"speedup_vs_{suffix}"] = row["images_per_s"] / ref["images_per_s"]
            rels = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(row["losses"], ref["losses"])
                    if a is not None and b is not None]
            row[f"loss_max_rel_diff_vs_{suffix}"] = max(rels) if rels else None
            row[first_key] = rels[0] if rels else None
    return row


def group_rows(paths: dict, batch: int, flops: int | None, peak: float, loss_steps: int) -> list[dict]:
    """The rows of one (student, batch): baseline, references, candidate, levers (those measured so far)."""
    base = summarise(paths["baseline"], batch, flops, peak, None, loss_steps) if paths["baseline"] else None
    cand = summarise(paths["candidate"], batch, flops, peak, base, loss_steps) if paths["candidate"] else None
    rows = ([base] if base else []) + [summarise(r, batch, flops, peak, base, loss_steps) for r in paths["references"]]
    rows += ([cand] if cand else []) + [summarise(r, batch, flops, peak, base, loss_steps, cand)
                                        for r in paths["levers"]]
    return rows


def table(results: list[dict]) -> str:
    """The closing table: one row per path; a lever's row also gives its loss difference to the candidate (the
    same engine path without the lever): at the first step (same weights, batch and noise: the forward's
    numerics) and the largest over the compared steps."""
    head = ["student", "batch", "path", "img/s", "x base", "step ms", "TFLOP/s", "% peak", "peak GB", "warm-up s",
            "loss max rel diff", "loss vs cand: 1st / max"]
    rows = []
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    for group in results:
        for r in group["paths"]:
            if "images_per_s" not in r:
                text = f"skipped: {r['skipped']}" if r.get("skipped") else f"error: {r['error']}"
                rows.append([group["student"], str(group["batch"]), r["path"],
                             text if len(text) <= 110 else text[:107] + "..."] + [""] * (len(head) - 4))
                continue
            vs_cand = ("" if "loss_max_rel_diff_vs_candidate" not in r else
                       f"{fmt(r.get('loss_rel_diff_first_step_vs_candidate'), '.2e')} / "
                       f"{fmt(r.get('loss_max_rel_diff_vs_candidate'), '.2e')}")
            rows.append([group["student"], str(group["batch"]), r["path"], fmt(r["images_per_s"], ".2f"),
                         fmt(r.get("speedup_vs_baseline"), ".2f"), fmt(r["step_s_median"] * 1e3, ".1f"),
                         fmt(r["tflops"], ".3f"), fmt(None if r["fraction_of_matmul_peak"] is None
                                                      else 100 * r["fraction_of_matmul_peak"], ".1f"),
                         fmt(r["peak_memory_gb"], ".2f"), fmt(r["warmup_s"], ".2f"),
                         fmt(r.get("loss_max_rel_diff_vs_baseline"), ".2e"), vs_cand])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", default="32,64", help="global batch sizes, comma-separated")
    p.add_argument("--students", default="base,small,tiny", help="BK-SDM variants, comma-separated")
    p.add_argument("--steps", type=int, default=20, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--levers", default="", help=f"candidate levers, one path each: {','.join(LEVERS)} (or 'all'); "
                   "join levers with '+' for one path with several (compile+zero0)")
    p.add_argument("--profile", type=Path, default=None,
                   help="folder: torch.profiler tables of a few extra steps after the timed ones, per path")
    p.add_argument("--profile-steps", type=int, default=3, help="steps profiled per path with --profile")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="the candidate's backend.precision; auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--zero-stage", type=int, default=None, help="override the production config's ZeRO stage")
    p.add_argument("--backend", choices=("deepspeed", "torch"), default=None,
                   help="override the production config's backend.kind")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="override the production config's backend.compile")
    p.add_argument("--strategy", default=None, help="override the production config's strategy (default: its own)")
    p.add_argument("--loss-steps", type=int, default=5, help="steps whose losses are compared (from step 0)")
    p.add_argument("--candidate-only", action="store_true",
                   help="no baseline paths (FLOPs not counted); required under torchrun, where each rank takes "
                        "batch / WORLD_SIZE samples and the allocations are checked identical every step")
    p.add_argument("--bf16-reference", action="store_true",
                   help="also run the baseline loop in bf16 autocast: the loss-noise reference of bf16 (CUDA)")
    p.add_argument("--tiny", action="store_true", help="configs/unets/tiny-sd.json, 8x8 latents, 77x32 contexts")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--regions", type=int, default=16, help="regions K of the synthetic pool")
    p.add_argument("--pool", type=int, default=512, help="prompts in the synthetic pool (10000000: the issue's 10M)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("engine_throughput.json"),
                   help="JSON results (rewritten after every path, so that a killed run keeps what it measured)")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds from the script's start: no path starts with less than --min-path-s left, a "
                        "running path is stopped when it is spent (recorded as failed); 0: none")
    p.add_argument("--min-path-s", type=float, default=40.0, help="with --time-budget: the least time a path is "
                   "started with")
    p.add_argument("--path-timeout", type=float, default=0.0, help="seconds a path may run (setup, warm-up with "
                   "compilation, steps) before it is stopped and recorded as failed; 0: no limit")
    p.add_argument("--reuse", type=Path, default=None,
                   help="the --out JSON of an earlier process with the same settings on this machine: its finished "
                        "baseline, reference and candidate paths are taken instead of measured again, its levers "
                        "are kept unless listed again (measured anew); --out may be the same file")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batch.split(",") if b.strip()]
    args.variants = [s.strip() for s in args.students.split(",") if s.strip()]
    args.lever_list = list(LEVERS) if args.levers.strip() == "all" else \
        [x.strip() for x in args.levers.split(",") if x.strip()]
    unknown = [p for x in args.lever_list for p in x.split("+") if p not in LEVERS]
    if unknown:
        p.error(f"unknown lever(s) {', '.join(unknown)}; choose from {', '.join(LEVERS)}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.time_budget < 0 or args.path_timeout < 0 or args.min_path_s < 0:
        p.error("--time-budget, --min-path-s and --path-timeout must be >= 0")
    return args


REUSE_IGNORES = ("levers", "time_budget_s", "path_timeout_s")  # settings that may differ between reused processes


def path_from_row(row: dict) -> PathResult:
    """The PathResult that ``summarise`` turned into ``row`` (a row read back from a JSON)."""
    return PathResult(row["path"], row.get("lever"), step_s=list(row.get("step_s", [])),
                      warmup_s=list(row.get("warmup_steps_s", [])), losses=list(row.get("losses", [])),
                      peak_memory_gb=row.get("peak_memory_gb"), memory_before_gb=row.get("memory_before_gb"),
                      setup_s=row.get("setup_s"), facts=dict(row.get("facts") or {}), skipped=row.get("skipped"),
                      error=row.get("error"))


def read_reuse(path: Path, settings: dict, device: str) -> dict:
    """The earlier JSON at ``path``, checked to come from the same settings and device (SystemExit otherwise)."""
    try:
        earlier = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"--reuse {path}: cannot be read as JSON ({err})") from None
    if not isinstance(earlier, dict) or not isinstance(earlier.get("settings"), dict):
        raise SystemExit(f"--reuse {path}: not a JSON written by this benchmark (--out)")
    theirs = {k: v for k, v in earlier.get("settings", {}).items() if k not in REUSE_IGNORES}
    ours = json.loads(json.dumps({k: v for k, v in settings.items() if k not in REUSE_IGNORES}, default=_json_default))
    if theirs != ours or earlier.get("device", {}).get("name") != device:
        differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise SystemExit(f"--reuse {path}: measured with other settings or on another device "
                         f"({', '.join(differ) or 'device'}); run without --reuse")
    return earlier


def reused_paths(earlier: dict | None, variant: str, batch: int) -> tuple[dict, dict]:
    """(paths, flops) of the (student, batch) group in ``earlier``: the finished baseline, references and
    candidate, and every lever row; empty where there is none."""
    paths: dict[str, Any] = {"baseline": None, "references": [], "candidate": None, "levers": []}
    group = next((g for g in (earlier or {}).get("results", []) if g["student"] == variant and g["batch"] == batch),
                 None)
    if group is None:
        return paths, {}
    for row in group["paths"]:
        finished = row.get("error") is None and row.get("skipped") is None
        if row.get("lever"):
            paths["levers"].append(path_from_row(row))
        elif row["path"] in ("baseline", "candidate") and finished:
            paths[row["path"]] = path_from_row(row)
        elif finished:
            paths["references"].append(path_from_row(row))
    flops = {"flops": group["flops_per_step"], "ops": group["flop_ops"]} if group.get("flops_per_step") else {}
    return paths, flops


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.time_budget, args.path_timeout, args.min_path_s)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is visible")
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local_rank) if args.device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    init_process_group(dev, args.candidate_only)
    world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    with contextlib.suppress(ImportError):  # diffusers warns at every .to(dtype) of a UNet
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()

    from aria.config import read_yaml
    from aria.models import build_student, feature_pairs, parameter_count, unet_from_config_file

    production = read_yaml(PRODUCTION)
    distill_section = {k: v for k, v in production["distillation"].items() if k not in ("steps", "batch_size")}
    distill_section["max_nonfinite_steps"] = 10**6  # a benchmark never stops on non-finite losses
    backend_section = {**production["backend"], "device": args.device}
    backend_section["precision"] = (("bf16" if dev.type == "cuda" else "fp32") if args.precision == "auto"
                                    else args.precision)
    if args.zero_stage is not None:
        backend_section["zero_stage"] = args.zero_stage
    if args.backend is not None:
        backend_section["kind"] = args.backend
    if args.compile is not None:
        backend_section["compile"] = args.compile
    strategy_name = args.strategy or production["strategy"]["name"]
    strategy_params = dict(production["strategy"].get("params", {}).get(strategy_name, {}))
    from aria.config import DistillConfig

    unet_file = TINY_UNET if args.tiny else SD_UNET
    torch.manual_seed(args.seed)
    teacher_master = unet_from_config_file(unet_file).eval().requires_grad_(False)
    if dev.type == "cuda" and backend_section["precision"] == "bf16":
        # values exactly representable in bf16: the engine's bf16 teacher, the students copied from it and the
        # baseline's fp32 student start from the same numbers
        with torch.no_grad():
            for t in teacher_master.parameters():
                t.copy_(t.to(torch.bfloat16).float())
    cfg = teacher_master.config
    size = int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
    cross = cfg.cross_attention_dim if isinstance(cfg.cross_attention_dim, int) else cfg.cross_attention_dim[0]
    total_steps = args.warmup + args.steps
    bundle = make_bundle(latent_size=size, channels=int(cfg.in_channels), context=(77, int(cross)),
                         paired=4 * max(args.batches), prompts=args.pool, regions=args.regions, seed=args.seed)
    ctx = SimpleNamespace(device=dev, seed=args.seed, bundle=bundle, scheduler_config=sd_scheduler_config(),
                          distill_section=distill_section, backend_section=backend_section,
                          strategy_name=strategy_name, strategy_params=strategy_params, teacher_path=unet_file,
                          profile_dir=args.profile if rank == 0 else None, profile_steps=args.profile_steps,
                          world_size=world_size)
    peak = matmul_peak(dev)
    print(f"device: {device_name(dev)}; {peak['kind']}: {peak['tflops']:.2f} TFLOP/s", flush=True)

    command = shlex.join(["python", str(Path(__file__).resolve().relative_to(REPO)),
                          *(argv if argv is not None else sys.argv[1:])])
    results: list[dict] = []
    settings = {"teacher_config": str(unet_file.relative_to(REPO)),
                "teacher_parameters": parameter_count(teacher_master),
                "latent": [int(cfg.in_channels), size, size], "context": [77, int(cross)],
                "steps": args.steps, "warmup": args.warmup, "loss_steps": args.loss_steps, "seed": args.seed,
                "distillation": distill_section, "backend": backend_section,
                "strategy": {"name": strategy_name, "params": strategy_params}, "levers": args.lever_list,
                "pool": args.pool, "regions": args.regions, "world_size": world_size,
                "bf16_reference": args.bf16_reference, "candidate_only": args.candidate_only, "threads": args.threads,
                "time_budget_s": args.time_budget or None, "path_timeout_s": args.path_timeout or None}
    earlier = read_reuse(args.reuse, settings, device_name(dev)) if args.reuse else None
    commands = [command]
    if earlier is not None:  # the levers of the JSON: the earlier ones, then these
        settings["levers"] = list(dict.fromkeys([*earlier["settings"].get("levers", []), *args.lever_list]))
        commands = [*(earlier.get("commands") or [earlier["command"]]), command]
        measured_here = {(v, b) for v in args.variants for b in args.batches}  # the other groups are kept as they are
        results += [g for g in earlier.get("results", []) if (g["student"], g["batch"]) not in measured_here]

    def write(complete: bool) -> None:
        """The JSON, rewritten after every path (``complete`` false until the end: a row of a path that was
        running when the process was killed says so)."""
        if rank != 0:
            return
        notes = [
            "baseline: BK-SDM recipe (fp32 master weights, fp16 autocast + GradScaler, fp16 teacher under no_grad, "
            "forward hooks, torch.optim.AdamW) on CUDA; fp32 without autocast/GradScaler on CPU",
            f"candidate: aria.training.engine.DistillationRun setup + train with {PRODUCTION.relative_to(REPO)}'s "
            "distillation, strategy and backend sections (batch, steps, device, precision overridden)",
            "images/s and TFLOP/s from the median timed step; FLOPs: FlopCounterMode over one step (student forward "
            "+ backward, teacher forward), the same model FLOPs for every path",
            "VAE and text encoder are outside both paths (random latents, stub token states)",
            "levers: loss_*_vs_candidate compare a lever's losses with the candidate's (same weights, batches and "
            "noise); sdpa_choice: the attention kernel torch picks per attention shape (one eager sample)",
        ]
        if dev.type == "cpu":
            notes.append("CPU: the peak is an fp32 matmul's rate (not a bf16 card rate); peak memory n/a")
            if results and not any("attention" in op for r in results for op in (r["flop_ops"] or [])):
                notes.append("CPU: FlopCounterMode has no formula for the CPU attention kernel: attention FLOPs are "
                             "not counted")
        report = {
            "command": command,
            **({"commands": commands, "reused": str(args.reuse)} if earlier is not None else {}),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "complete": complete,
            "elapsed_s": budget.elapsed(),
            "world_size": world_size,
            "device": {"type": dev.type, "name": device_name(dev), "matmul_peak_tflops": peak["tflops"],
                       "matmul_peak_kind": peak["kind"], "matmul_peak_note": peak["note"],
                       "capability": list(torch.cuda.get_device_capability(dev)) if dev.type == "cuda" else None},
            "torch": torch.__version__,
            "versions": {name: _version(name) for name in ("deepspeed", "diffusers", "torchao", "aria-distill")},
            "python": platform.python_version(),
            "settings": settings,
            "notes": notes,
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        tmp.replace(args.out)

    failed = False
    for variant in args.variants:
        torch.manual_seed(args.seed)  # as DistillationRun.setup does before building the student
        student_master, _ = build_student(teacher_master, SimpleNamespace(variant=variant, channel_scale=0.5,
                                                                          init_from_teacher=True))
        pairs = feature_pairs(teacher_master, student_master)
        for batch in args.batches:
            ctx.variant, ctx.batch = variant, batch
            ctx.distill = DistillConfig(**{**distill_section, "batch_size": batch, "steps": total_steps})
            print(f"== student {variant}, batch {batch}", flush=True)
            group = {"student": variant, "batch": batch, "student_parameters": parameter_count(student_master),
                     "feature_pairs": len(pairs), "flops_per_step": None, "flop_ops": None, "paths": []}
            results.append(group)
            paths, flops = reused_paths(earlier, variant, batch)  # nothing without --reuse
            paths["levers"] = [r for r in paths["levers"] if r.lever not in args.lever_list]  # listed: measured anew
            for r in [paths["baseline"], *paths["references"], paths["candidate"], *paths["levers"]]:
                if r is not None:
                    print(f"   {r.path}: reused from {args.reuse}", flush=True)

            def run_path(fn, slot: str) -> PathResult:
                """Measure one path into ``paths[slot]``; the JSON is written before (the path marked as running)
                and after it."""
                running = PathResult(fn.path, getattr(fn, "lever", None), error=(
                    f"did not finish: the process ended while this path ran (started at "
                    f"{budget.elapsed():.0f} s; killed at the caller's time limit?)"))
                place = (lambda r: paths[slot].append(r)) if isinstance(paths[slot], list) else \
                    (lambda r: paths.__setitem__(slot, r))
                place(running)
                publish(complete=False)
                result = measure(fn, dev, budget)
                if isinstance(paths[slot], list):
                    paths[slot][-1] = result
                else:
                    paths[slot] = result
                publish(complete=False)
                return result

            def publish(complete: bool) -> None:
                group["flops_per_step"], group["flop_ops"] = flops.get("flops"), flops.get("ops")
                group["paths"] = group_rows(paths, batch, flops.get("flops"), peak["tflops"], args.loss_steps)
                write(complete)

            def base_fn():
                return baseline_run(ctx, teacher_master, student_master, pairs, batch, total_steps, args.warmup, flops)
            base_fn.path = "baseline"
            if not args.candidate_only and paths["baseline"] is None:
                run_path(base_fn, "baseline")
            if args.bf16_reference and not args.candidate_only and dev.type == "cuda" and not paths["references"]:
                def ref_fn():
                    return baseline_run(ctx, teacher_master, student_master, pairs, batch, total_steps, args.warmup,
                                        flops, half_dtype=torch.bfloat16)
                ref_fn.path = "baseline-bf16"
                run_path(ref_fn, "references")

            def cand_fn(lever=None):
                fn = lambda: candidate_run(ctx, teacher_master, variant, batch, total_steps, args.warmup, lever)  # noqa: E731
                fn.path, fn.lever = ("candidate" if lever is None else f"candidate+{lever}"), lever
                return fn
            cand = paths["candidate"] if paths["candidate"] is not None else run_path(cand_fn(), "candidate")
            for lever in args.lever_list:
                why = lever_is_noop(lever, cand.facts) if cand.error is None else None
                if why:
                    paths["levers"].append(PathResult(f"candidate+{lever}", lever, skipped=why))
                    print(f"   candidate+{lever}: skipped: {why}", flush=True)
                else:
                    run_path(cand_fn(lever), "levers")
            # a failing lever is a result; a failing (or skipped) baseline or candidate fails the run
            failed |= any(r is not None and (r.error or r.skipped)
                          for r in [paths["baseline"], paths["candidate"], *paths["references"]])
            publish(complete=False)
            for r in group["paths"][1:]:
                if r.get("loss_max_rel_diff_vs_baseline") is not None:
                    print(f"   {r['path']}: loss max relative difference to the baseline over the first "
                          f"{len(r['losses'])} steps: {r['loss_max_rel_diff_vs_baseline']:.3e}"
                          + (f"; to the candidate: {r['loss_max_rel_diff_vs_candidate']:.3e} (first step "
                             f"{r['loss_rel_diff_first_step_vs_candidate']:.3e})"
                             if r.get("loss_max_rel_diff_vs_candidate") is not None else ""), flush=True)
        student_master = None  # frees this variant's student before the next one is built

    write(complete=True)
    if rank == 0:
        print(f"\nresults written to {args.out}")
        print("\n" + table(results), flush=True)
    close_process_group()
    return 1 if failed else 0


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
