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
  lever that the candidate already has (e.g. fused AdamW on CUDA) is recorded as skipped.

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

REPO = Path(__file__).resolve().parents[1]
SD_UNET = REPO / "configs" / "unets" / "sd-v1-4-unet.json"
TINY_UNET = REPO / "configs" / "unets" / "tiny-sd.json"
PRODUCTION = REPO / "configs" / "sd-bk-small.yaml"
LEVERS = ("compile", "fused_adamw", "teacher_bf16", "channels_last", "channels_last_teacher", "zero0", "flash_sdpa",
          "torch_backend", "host_sync", "late_feedback")


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


@contextlib.contextmanager
def channels_last_student():
    """The student built in channels_last memory format, before the backend wraps it."""
    import aria.models as models

    build = models.build_student

    def build_channels_last(*args, **kwargs):
        student, report = build(*args, **kwargs)
        return student.to(memory_format=torch.channels_last), report

    with patched(models, "build_student", build_channels_last):
        yield


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
        "cudnn_sdpa": bool(torch.backends.cuda.cudnn_sdp_enabled()),
        "step_sync": run.config.distillation.step_sync,
        "feedback_delay": run.config.distillation.feedback_delay,
    }


def _channels_last(weight: torch.Tensor) -> bool:
    return bool(weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last)
                and not weight.is_contiguous())


def lever_is_noop(lever: str, facts: dict) -> str | None:
    """Why a lever would change nothing in the candidate (None: it changes something)."""
    checks = {"compile": facts.get("compiled"), "fused_adamw": facts.get("fused_adamw"),
              "teacher_bf16": facts.get("teacher_dtype") == str(torch.bfloat16),
              "channels_last": facts.get("channels_last"), "zero0": facts.get("zero_stage") == 0,
              "channels_last_teacher": facts.get("teacher_channels_last"),
              "flash_sdpa": facts.get("cudnn_sdpa") is False, "torch_backend": facts.get("backend") == "torch",
              "host_sync": facts.get("step_sync") == "host", "late_feedback": facts.get("feedback_delay") == 1}
    parts = lever.split("+")
    return f"already in the candidate ({lever})" if all(checks.get(p) for p in parts) else None


def candidate_run(ctx, teacher_master, student_variant: str, batch: int, total_steps: int, warmup: int,
                  lever: str | None) -> PathResult:
    """``DistillationRun.setup`` + ``DistillationRun.train`` over the synthetic bundle."""
    from aria.config import RunConfig
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
    if "teacher_bf16" in levers:
        teacher_dtype = torch.bfloat16
    if "fused_adamw" in levers:
        patches.append(fused_adamw)
    if "flash_sdpa" in levers:
        patches.append(flash_sdpa)
    distill = {**ctx.distill_section, "batch_size": batch, "steps": steps_to_run(ctx, total_steps)}
    if "host_sync" in levers or backend["kind"] != "torch":  # read the statistics before backward, skip on the host
        distill.update(step_sync="host", feedback_delay=0)
    if "late_feedback" in levers:  # the strategy sees a step's feedback one step late
        distill.update(step_sync="device", feedback_delay=1)
    if "channels_last" in levers:  # DeepSpeed 0.19.8 rejects it at initialize (byte view of the params)
        patches.append(channels_last_student)
    result = PathResult("candidate" if lever is None else f"candidate+{lever}", lever)
    with tempfile.TemporaryDirectory(prefix="aria-bench-") as out, contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p())
        config = RunConfig(
            seed=ctx.seed, output_dir=Path(out),
            student={"variant": student_variant, "init_from_teacher": True},
            distillation=distill,
            strategy={"name": ctx.strategy_name, "params": {ctx.strategy_name: ctx.strategy_params}},
            backend=backend,
            logging={"every": 10**9, "checkpoint_every": 10**9, "progress": False, "tensorboard": False},
        )
        t0 = time.perf_counter()
        unet = copy.deepcopy(teacher_master).to(dtype=teacher_dtype)
        if levers & {"channels_last", "channels_last_teacher"}:
            unet = unet.to(memory_format=torch.channels_last)
        size = unet.config.sample_size
        teacher = Teacher(unet=unet, vae=None, latent=False, sample_size=int(size if isinstance(size, int) else size[0]),
                          in_channels=int(unet.config.in_channels), scheduler_config=ctx.scheduler_config,
                          path=ctx.teacher_path)
        # several ranks: the strategy state's hash is compared across ranks after every step
        run = DistillationRun(config, bundle=ctx.bundle, teacher=teacher, check_consistency=ctx.world_size > 1)
        ok = False
        try:
            run.setup()
            result.facts = candidate_facts(run)
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


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


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


def measure(fn, device: torch.device) -> PathResult:
    free(device)
    before = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
    with global_flags():
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001  one failed path (e.g. out of memory) does not stop the others
            import traceback

            traceback.print_exc()
            result = PathResult(getattr(fn, "path", "?"), getattr(fn, "lever", None),
                                error=f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
    result.memory_before_gb = before
    if device.type == "cuda" and result.error is None:
        result.peak_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
    free(device)
    return result


def summarise(r: PathResult, batch: int, flops: int | None, peak: float, base: dict | None, loss_steps: int) -> dict:
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
    if base is not None and "images_per_s" in base:
        row["speedup_vs_baseline"] = row["images_per_s"] / base["images_per_s"]
        rels = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(row["losses"], base["losses"])
                if a is not None and b is not None]
        row["loss_max_rel_diff_vs_baseline"] = max(rels) if rels else None
        row["loss_rel_diff_first_step"] = rels[0] if rels else None
    return row


def table(results: list[dict]) -> str:
    head = ["student", "batch", "path", "img/s", "x base", "step ms", "TFLOP/s", "% peak", "peak GB", "warm-up s",
            "loss max rel diff"]
    rows = []
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    for group in results:
        for r in group["paths"]:
            if "images_per_s" not in r:
                rows.append([group["student"], str(group["batch"]), r["path"],
                             f"skipped: {r['skipped']}" if r.get("skipped") else f"error: {r['error'][:60]}"] + [""] * 7)
                continue
            rows.append([group["student"], str(group["batch"]), r["path"], fmt(r["images_per_s"], ".2f"),
                         fmt(r.get("speedup_vs_baseline"), ".2f"), fmt(r["step_s_median"] * 1e3, ".1f"),
                         fmt(r["tflops"], ".3f"), fmt(None if r["fraction_of_matmul_peak"] is None
                                                      else 100 * r["fraction_of_matmul_peak"], ".1f"),
                         fmt(r["peak_memory_gb"], ".2f"), fmt(r["warmup_s"], ".2f"),
                         fmt(r.get("loss_max_rel_diff_vs_baseline"), ".2e")])
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
    p.add_argument("--out", type=Path, default=Path("engine_throughput.json"), help="JSON results")
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
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
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

    results, failed = [], False
    for variant in args.variants:
        torch.manual_seed(args.seed)  # as DistillationRun.setup does before building the student
        student_master, _ = build_student(teacher_master, SimpleNamespace(variant=variant, channel_scale=0.5,
                                                                          init_from_teacher=True))
        pairs = feature_pairs(teacher_master, student_master)
        for batch in args.batches:
            ctx.variant, ctx.batch = variant, batch
            ctx.distill = DistillConfig(**{**distill_section, "batch_size": batch, "steps": total_steps})
            flops: dict = {}
            print(f"== student {variant}, batch {batch}", flush=True)

            def base_fn():
                return baseline_run(ctx, teacher_master, student_master, pairs, batch, total_steps, args.warmup, flops)
            base_fn.path = "baseline"
            raw = [] if args.candidate_only else [measure(base_fn, dev)]
            if args.bf16_reference and not args.candidate_only and dev.type == "cuda":
                def ref_fn():
                    return baseline_run(ctx, teacher_master, student_master, pairs, batch, total_steps, args.warmup,
                                        flops, half_dtype=torch.bfloat16)
                ref_fn.path = "baseline-bf16"
                references = [measure(ref_fn, dev)]
            else:
                references = []

            def cand_fn(lever=None):
                fn = lambda: candidate_run(ctx, teacher_master, variant, batch, total_steps, args.warmup, lever)  # noqa: E731
                fn.path, fn.lever = ("candidate" if lever is None else f"candidate+{lever}"), lever
                return fn
            raw.append(measure(cand_fn(), dev))
            cand = raw[-1]
            for lever in args.lever_list:
                why = lever_is_noop(lever, cand.facts) if cand.error is None else None
                raw.append(PathResult(f"candidate+{lever}", lever, skipped=why) if why else measure(cand_fn(lever), dev))
            failed |= any(r.error for r in raw[:len(raw) - len(args.lever_list)])  # a failing lever is a result
            if args.candidate_only:
                rows = [summarise(r, batch, None, peak["tflops"], None, args.loss_steps) for r in raw]
            else:
                base_row = summarise(raw[0], batch, flops.get("flops"), peak["tflops"], None, args.loss_steps)
                rows = [base_row] + [summarise(r, batch, flops.get("flops"), peak["tflops"], base_row, args.loss_steps)
                                     for r in references + raw[1:]]
            for r in rows[1:]:
                if r.get("loss_max_rel_diff_vs_baseline") is not None:
                    print(f"   {r['path']}: loss max relative difference to the baseline over the first "
                          f"{len(r['losses'])} steps: {r['loss_max_rel_diff_vs_baseline']:.3e}", flush=True)
            results.append({"student": variant, "batch": batch, "student_parameters": parameter_count(student_master),
                            "feature_pairs": len(pairs), "flops_per_step": flops.get("flops"),
                            "flop_ops": flops.get("ops"), "paths": rows})
        del student_master

    notes = [
        "baseline: BK-SDM recipe (fp32 master weights, fp16 autocast + GradScaler, fp16 teacher under no_grad, "
        "forward hooks, torch.optim.AdamW) on CUDA; fp32 without autocast/GradScaler on CPU",
        f"candidate: aria.training.engine.DistillationRun setup + train with {PRODUCTION.relative_to(REPO)}'s distillation, "
        "strategy and backend sections (batch, steps, device, precision overridden)",
        "images/s and TFLOP/s from the median timed step; FLOPs: FlopCounterMode over one step (student forward "
        "+ backward, teacher forward), the same model FLOPs for every path",
        "VAE and text encoder are outside both paths (random latents, stub token states)",
    ]
    if dev.type == "cpu":
        notes.append("CPU: the peak is an fp32 matmul's rate (not a bf16 card rate); peak memory n/a")
        if results and not any("attention" in op for r in results for op in (r["flop_ops"] or [])):
            notes.append("CPU: FlopCounterMode has no formula for the CPU attention kernel: attention FLOPs are "
                         "not counted")
    report = {
        "command": shlex.join(["python", str(Path(__file__).resolve().relative_to(REPO)),
                               *(argv if argv is not None else sys.argv[1:])]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "world_size": world_size,
        "device": {"type": dev.type, "name": device_name(dev), "matmul_peak_tflops": peak["tflops"],
                   "matmul_peak_kind": peak["kind"], "matmul_peak_note": peak["note"]},
        "torch": torch.__version__,
        "versions": {name: _version(name) for name in ("deepspeed", "diffusers", "aria-distill")},
        "python": platform.python_version(),
        "settings": {"teacher_config": str(unet_file.relative_to(REPO)),
                     "teacher_parameters": parameter_count(teacher_master), "latent": [int(cfg.in_channels), size, size],
                     "context": [77, int(cross)], "steps": args.steps, "warmup": args.warmup,
                     "loss_steps": args.loss_steps, "seed": args.seed, "distillation": distill_section,
                     "backend": backend_section, "strategy": {"name": strategy_name, "params": strategy_params},
                     "levers": args.lever_list},
        "notes": notes,
        "results": results,
    }
    if rank == 0:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
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
