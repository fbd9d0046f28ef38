"""Issue #20's attention lever without a compilation: every SDPA kernel torch offers, timed at every attention
shape of the teacher (inference, forward) and of the BK-SDM student (training, forward and backward), weighted
by how often one step calls each shape.

Attention is an extern kernel inside inductor's graphs, so a kernel that is faster here makes the compiled step
faster by about the difference, and one that is slower cannot pay there. The table says in seconds what
``levers.sh``'s ``sdpa_*`` levers need a compilation each (2-4 minutes on an H100) to say.

    python benchmarks/attention_kernels.py --device cuda --json benchmarks/results/attention_kernels/h100.json

The shapes come from one eager forward of each model at batch 1 (a spy on ``F.scaled_dot_product_attention``
counts the calls); each shape is then timed at ``--batch`` with random q, k, v in ``--dtype``, per kernel under
``sdpa_kernel([kernel])``: the median of ``--repeats`` CUDA-event (or clock) timings after ``--warmup`` runs.
"auto" is what torch picks by itself, the production path's choice. A kernel that refuses a shape is reported
with torch's reason and has no step total. ``math`` is left out by default: it materialises the attention
matrix (17 GB at the teacher's first block, batch 64) and is never the fast choice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
KERNELS = ("auto", "cudnn", "flash", "efficient", "math")


def attention_key(q, k) -> tuple[int, int, int, int]:
    """(heads, query length, key length, head dim) of an SDPA call on (batch, heads, length, dim) tensors."""
    return q.shape[1], q.shape[2], k.shape[2], q.shape[3]


def shape_name(key) -> str:
    return "h{} q{} kv{} d{}".format(*key)


@contextlib.contextmanager
def sdpa_spy(on_call):
    """Inside, every ``F.scaled_dot_product_attention`` call is first shown to ``on_call(q, k, v, *args,
    **kwargs)``, then runs as it would."""
    original = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        on_call(q, k, v, *args, **kwargs)
        return original(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def attention_calls(unet, sample_size: int, context_length: int, device, dtype) -> dict:
    """{attention_key: calls} of one forward of ``unet`` at batch 1."""
    cfg = unet.config
    cross = cfg.cross_attention_dim if isinstance(cfg.cross_attention_dim, int) else cfg.cross_attention_dim[0]
    x = torch.zeros(1, int(cfg.in_channels), sample_size, sample_size, device=device, dtype=dtype)
    t = torch.full((1,), 500, device=device, dtype=torch.long)
    context = torch.zeros(1, context_length, int(cross), device=device, dtype=dtype)
    calls: dict[tuple[int, int, int, int], int] = {}

    def count(q, k, *_args, **_kwargs):
        key = attention_key(q, k)
        calls[key] = calls.get(key, 0) + 1

    with sdpa_spy(count), torch.no_grad():
        unet(x, t, encoder_hidden_states=context)
    return calls


def _timer(device):
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return run


def time_kernel(kernel: str, shape, batch: int, training: bool, device, dtype, warmup: int, repeats: int):
    """Median ms of one SDPA call (forward, or forward and backward when ``training``), or torch's reason."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, q_len, kv_len, dim = shape
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, heads, q_len, dim, device=device, dtype=dtype, generator=gen)
    k = torch.randn(batch, heads, kv_len, dim, device=device, dtype=dtype, generator=gen)
    v = torch.randn(batch, heads, kv_len, dim, device=device, dtype=dtype, generator=gen)
    grad = torch.randn(batch, heads, q_len, dim, device=device, dtype=dtype, generator=gen)
    if training:
        q, k, v = (x.requires_grad_() for x in (q, k, v))
    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}.get(kernel)

    def call():
        with contextlib.nullcontext() if backend is None else sdpa_kernel([backend]):
            if training:
                out = F.scaled_dot_product_attention(q, k, v)
                torch.autograd.grad(out, (q, k, v), grad)
            else:
                with torch.inference_mode():
                    F.scaled_dot_product_attention(q, k, v)

    timer = _timer(device)
    try:
        for _ in range(warmup):
            call()
        times = [timer(call) for _ in range(repeats)]
    except RuntimeError as err:  # the kernel does not take this shape, dtype or device
        return " ".join(str(err).split())[:200] or "RuntimeError"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return statistics.median(times)


def measure(args) -> dict:
    from aria.models import unet_from_config_file
    from aria.models.students import student_unet_config

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its notice at every .to(dtype) of a UNet
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    teacher = unet_from_config_file(args.unet).to(device, dtype).eval()
    from diffusers import UNet2DConditionModel

    student = UNet2DConditionModel.from_config(student_unet_config(teacher.config, args.student)).to(device, dtype)
    size = args.sample_size or int(teacher.config.sample_size)
    roles = {"training": attention_calls(student, size, args.context_length, device, dtype),
             "inference": attention_calls(teacher, size, args.context_length, device, dtype)}
    del teacher, student
    rows = []
    for role, calls in roles.items():
        for shape, count in sorted(calls.items(), key=lambda kv: -kv[0][1]):
            heads, q_len, kv_len, dim = shape  # model FLOPs: QK^T and PV forward, twice that backward
            flops = 4 * args.batch * heads * q_len * kv_len * dim * (3 if role == "training" else 1)
            row = {"model": "student" if role == "training" else "teacher", "pass": role,
                   "shape": shape_name(shape), "calls": count, "flops": flops, "ms": {}}
            for kernel in args.kernels:
                row["ms"][kernel] = time_kernel(kernel, shape, args.batch, role == "training", device, dtype,
                                                args.warmup, args.repeats)
            rows.append(row)
            print(f"{row['model']:8} {row['shape']:24} x{count}: " + ", ".join(
                f"{k} {v:.3f} ms" if isinstance(v, float) else f"{k} n/a" for k, v in row["ms"].items()), flush=True)
    totals = {}
    for kernel in args.kernels:
        times = [row["ms"][kernel] for row in rows]
        ok = all(isinstance(ms, float) for ms in times)
        totals[kernel] = sum(row["calls"] * row["ms"][kernel] for row in rows) if ok else None
    best = sum(row["calls"] * min(v for v in row["ms"].values() if isinstance(v, float)) for row in rows
               if any(isinstance(v, float) for v in row["ms"].values()))
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"},
            "rows": rows, "step_ms": totals, "step_ms_best_per_shape": best}


def table(report: dict) -> str:
    """Markdown: per shape the ms of each kernel and the model TFLOP/s of the fastest, then one step's attention
    time per kernel and its ratio to auto."""
    kernels = list(report["step_ms"])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "n/a"  # noqa: E731
    lines = ["| model | pass | shape | calls | " + " | ".join(f"{k} ms" for k in kernels) + " | best TFLOP/s |",
             "|---" * (5 + len(kernels)) + "|"]
    for row in report["rows"]:
        best = min((v for v in row["ms"].values() if isinstance(v, float)), default=None)
        lines.append(f"| {row['model']} | {row['pass']} | {row['shape']} | {row['calls']} | "
                     + " | ".join(fmt(row["ms"][k]) for k in kernels)
                     + (f" | {row['flops'] / best / 1e9:.3g} |" if best else " | n/a |"))
    auto = report["step_ms"].get("auto")
    lines.append("| **one step** | | | | " + " | ".join(
        fmt(v) + (f" ({v / auto:.2f}x auto)" if isinstance(v, float) and auto else "")
        for v in report["step_ms"].values()) + " | |")
    lines.append(f"\nbest kernel per shape: {report['step_ms_best_per_shape']:.3f} ms a step"
                 + (f" ({report['step_ms_best_per_shape'] / auto:.2f}x auto)" if auto else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--unet", type=Path, default=REPO / "configs" / "unets" / "sd-v1-4-unet.json",
                        help="the teacher's UNet config (random weights)")
    parser.add_argument("--student", default="small", help="BK-SDM variant (student.variant)")
    parser.add_argument("--sample-size", type=int, default=None, help="latent size (default: the UNet's)")
    parser.add_argument("--context-length", type=int, default=77, help="text tokens (CLIP: 77)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--kernels", default="auto,cudnn,flash,efficient",
                        help=f"comma-separated, from {', '.join(KERNELS)}")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    args.kernels = [k for k in args.kernels.split(",") if k]
    unknown = [k for k in args.kernels if k not in KERNELS]
    if unknown or not args.kernels:
        parser.error(f"--kernels: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(KERNELS)}")
    if not args.unet.is_file():
        parser.error(f"--unet: {args.unet} is not a file")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here (--device cpu runs the smoke check)")
    report = measure(args)
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
