"""Execution backends behind one small protocol: ``TorchBackend`` (CPU, one GPU, DDP) and
``DeepSpeedBackend`` (bf16, ZeRO 0-2; launched by ``deepspeed`` or ``torchrun``; also on CPU).

The step (``aria.training.distill``) and the loop (``aria.training.engine``) never branch on the backend: they call
``prepare_models``, ``compile_kwargs``, ``setup``, ``autocast``, ``backward``, ``step``, ``zero_grad``,
``all_reduce``, ``barrier``, ``unwrap``, ``save`` and ``load``. The rank layout comes from the launcher's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); the device from ``LOCAL_RANK``.

The kernel levers of ``backend`` (issue #20) are applied here too, the same for both backends:
``fp8`` (torchao fp8 linears: training for the student, inference for the teacher), ``channels_last``,
``compile_mode`` (``torch.compile`` modes, CUDA graphs included) and ``sdpa_backend`` (the attention
kernel, chosen inside each model's forward so that ``torch.compile`` traces the choice into its graph).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import types
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Iterable, Protocol

import torch
import torch.distributed as dist

from aria.devices import resolve_device, use_cpu_threads
from aria.errors import UserError


class Backend(Protocol):
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    compute_dtype: torch.dtype
    input_dtype: torch.dtype

    def prepare_models(self, teacher: torch.nn.Module, student: torch.nn.Module) -> dict: ...
    def compile_kwargs(self) -> dict: ...
    def setup(self, model: torch.nn.Module, params: Iterable[torch.nn.Parameter] | None = None) -> torch.nn.Module: ...
    def autocast(self) -> contextlib.AbstractContextManager: ...
    def student_autocast(self) -> contextlib.AbstractContextManager: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    # step returns the gradient norm, read by the caller only when logged
    def step(self, skip: torch.Tensor | None = None) -> torch.Tensor | float | None: ...
    # a step skipped on the host: weights and moments unchanged, the LR schedule advances
    def skip(self) -> None: ...
    def zero_grad(self) -> None: ...
    def all_reduce(self, tensor: torch.Tensor, what: str = "all_reduce") -> torch.Tensor: ...
    def same_on_all_ranks(self, value: int) -> bool: ...
    def barrier(self) -> None: ...
    def unwrap(self) -> torch.nn.Module: ...
    # a collective (every rank calls it): the student's fp32 weights where ``unwrap()`` holds lower-precision ones
    def export_weights(self) -> dict[str, torch.Tensor] | None: ...
    def save(self, folder: Path) -> list[str]: ...
    # returns the step the loaded LR schedule stood at (resume_schedule)
    def load(self, folder: Path, step: int | None = None) -> int: ...
    def lr(self) -> float: ...
    def close(self) -> None: ...


class CollectiveError(UserError):
    """A collective failed: another rank died or did not answer within backend.collective_timeout_s.
    One line (exit status 2), like a user mistake: the traceback would only show torch.distributed's insides."""

    exit_at_once = True  # the CLI exits without running destructors that could wait for the dead peer


# a plain RuntimeError that is a failed collective (gloo raises these; NCCL and the store raise DistError)
_COMM_FAILURE = re.compile(r"gloo|nccl|timed? ?out|connection|peer|socket|broken pipe|process group", re.I)


def _is_comm_failure(err: BaseException) -> bool:
    return isinstance(err, (dist.DistError, TimeoutError, ConnectionError)) or bool(_COMM_FAILURE.search(str(err)))


def _short_cause(err: BaseException) -> str:
    """The gist of a torch.distributed error: its first line, without the C++ source location prefix,
    up to the first sentence end ("Connection closed by peer [127.0.0.1]:5507", "Timed out waiting 4000ms
    for recv operation to complete")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = re.sub(r"^(\[[^\]]*\]\s*)+", "", lines[0]) if lines else ""
    text = re.split(r"(?<=[^.])\.\s", text, maxsplit=1)[0].rstrip(". ")
    text = text or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def env_layout() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment (1 process when absent)."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as err:
        raise UserError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({err})") from err
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"environment: RANK={rank} outside WORLD_SIZE={world}")
    return rank, world, local


def process_device(name: str, local_rank: int) -> torch.device:
    """This training process's device: ``backend.device`` checked, CUDA's by LOCAL_RANK."""
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"backend.device: expected auto, cpu or cuda (got {name!r})")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("backend.device is cuda but no CUDA device is visible")
    if resolve_device(name) == "cpu":
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def lr_factor(warmup_steps: int, schedule: str = "constant", total_steps: int = 1, final: float = 0.0):
    """The LR multiplier of optimizer step s (from 0): linear warmup over ``warmup_steps``, then constant,
    or a cosine from 1 down to ``final`` at the last of ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps - 1))
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def distill_lr_factor(distill):
    """``lr_factor`` of a ``DistillConfig`` (both backends)."""
    return lr_factor(distill.warmup_steps, distill.lr_schedule, distill.steps, distill.lr_final)


# The LR schedule is a function of the step index: step s (from 0) runs at distillation.lr x factor(s), whether
# earlier steps were skipped (non-finite) or not, in every step_sync mode and backend. A skipped step therefore
# advances the schedule too (``step_sync: device`` cannot know on the host in time that it skips).


def advance_schedule(scheduler) -> None:
    """One step of ``scheduler`` for a step whose optimizer update was skipped (torch's warning about a
    schedule stepped before the optimizer, where the run's first step is skipped, is expected here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before",
                                category=UserWarning)
        scheduler.step()


def resume_schedule(scheduler, distill, step: int | None = None) -> int:
    """After a resume loaded the optimizer's and the LR schedule's saved states (which hold the saved lr,
    weight_decay and base LR): this run's ``distillation.lr`` becomes the schedule's base LR and its
    ``weight_decay`` the optimizer's, the schedule stands at ``step`` (the checkpoint's; None: as loaded),
    and the param groups' current LR is recomputed for it with this run's schedule (the LambdaLR's factor
    is built from this run's warmup_steps, lr_schedule, lr_final and steps: its saved state holds no
    function). Unchanged settings give back the loaded values bit for bit. Returns the step the loaded
    schedule stood at (behind ``step`` in a checkpoint of a run whose skipped steps did not advance it, before
    2026-12-07)."""
    groups = scheduler.optimizer.param_groups
    base = float(distill.lr)
    loaded = int(scheduler.last_epoch)
    if step is not None:
        scheduler.last_epoch = int(step)
    scheduler.base_lrs = [base] * len(groups)
    for group, factor in zip(groups, scheduler.lr_lambdas):
        lr = base * factor(scheduler.last_epoch)  # what LambdaLR.get_lr computes
        group["initial_lr"] = base
        group["weight_decay"] = float(distill.weight_decay)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
    scheduler._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"] for g in groups]
    return loaded


def set_deterministic(enabled: bool, cudnn_benchmark: bool = False) -> None:
    """Deterministic kernels (needed for exact resume; cuBLAS needs its workspace setting), or, with
    ``cudnn_benchmark``, convolution algorithms that cuDNN times at each new shape (process-wide flags)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark) and not enabled
    torch.use_deterministic_algorithms(enabled, warn_only=True)


# -- kernel levers: fp8, the attention kernel ------------------------------------------------------

FP8_MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada (8.9), Hopper (9.0) and newer


def check_fp8(mode: str, device: torch.device, emulate: bool = False, rank_batch: int | None = None) -> None:
    """``backend.fp8`` can run here: a CUDA device of compute capability >= 8.9 (any device with ``emulate``),
    torchao's fp8 APIs importable and, for an fp8 student, a batch per GPU (``rank_batch``; None: not checked)
    that is a multiple of 16. A UserError (one line) otherwise; nothing is changed."""
    if mode == "none":
        return
    if not emulate:
        if device.type != "cuda":
            raise UserError(f"backend.fp8 {mode!r} needs a CUDA GPU of compute capability >= 8.9 (the run's device "
                            f"is {device.type}); set backend.fp8: none")
        capability = tuple(torch.cuda.get_device_capability(device))
        if capability < FP8_MIN_CAPABILITY:
            raise UserError(f"backend.fp8 {mode!r} needs compute capability >= 8.9 (fp8 tensor cores: Ada, Hopper "
                            f"or newer); {torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}")
        if mode in ("student", "both") and rank_batch is not None and rank_batch % 16:
            # the weight gradient's fp8 matmul contracts over the batch (the time embedding's Linear layers)
            raise UserError(f"backend.fp8 {mode!r} trains the student's Linear layers in fp8, which needs a batch "
                            f"per GPU (distillation.batch_size / WORLD_SIZE) that is a multiple of 16; it is "
                            f"{rank_batch}")
    try:  # emulated, the teacher goes through the training API too (fp8_inference)
        if emulate or mode in ("student", "both"):
            from torchao.float8 import Float8LinearConfig, convert_to_float8_training  # noqa: F401
        if not emulate and mode in ("teacher", "both"):
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_  # noqa: F401
    except Exception as err:  # noqa: BLE001 - ImportError, or a torchao built for another torch
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"backend.fp8 {mode!r} needs torchao's fp8 APIs (pip install torchao; 0.18 tested): "
                        f"{type(err).__name__}: {reason[:160]}") from err


def fp8_compatible(module: torch.nn.Module, fqn: str = "") -> bool:
    """An nn.Linear whose input and output sizes are multiples of 16 (what torch._scaled_mm takes)."""
    return isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


def _linear_counts(model: torch.nn.Module) -> dict:
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    skipped = sorted(name for name, m in linears.items() if not fp8_compatible(m))
    return {"linears": len(linears), "converted": len(linears) - len(skipped), "skipped": skipped}


def fp8_training(student: torch.nn.Module, emulate: bool = False) -> dict:
    """The student's nn.Linear layers (dimensions multiples of 16) become torchao ``Float8Linear``s with
    tensorwise dynamic scaling: fp8 matmuls forward and backward, weights and optimizer state unchanged
    (same parameters, same state_dict keys). ``emulate``: the same casts and scales, matmuls in the input's
    precision (no fp8 tensor cores needed). Returns the counts (converted, skipped by name)."""
    import dataclasses

    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    counts = _linear_counts(student)
    config = dataclasses.replace(Float8LinearConfig.from_recipe_name("tensorwise"), emulate=emulate)
    convert_to_float8_training(student, module_filter_fn=fp8_compatible, config=config)
    return counts


def fp8_inference(teacher: torch.nn.Module, emulate: bool = False) -> dict:
    """The teacher's nn.Linear weights (dimensions multiples of 16) become fp8 with a per-tensor scale, and
    their activations are quantised to fp8 dynamically at every call (torchao
    ``Float8DynamicActivationFloat8WeightConfig``). torchao's recommended inductor settings are not applied
    (``set_inductor_config=False``: they would change how everything else compiles too). ``emulate``: the
    teacher's Linear layers become emulated ``Float8Linear``s (``fp8_training``), whose forward rounds the
    activation and the weight to fp8 with the same per-tensor dynamic scales."""
    if emulate:
        return fp8_training(teacher, emulate=True)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

    counts = _linear_counts(teacher)
    quantize_(teacher, Float8DynamicActivationFloat8WeightConfig(set_inductor_config=False), filter_fn=fp8_compatible)
    return counts


def fp8_lines(levers: dict) -> list[str]:
    """What ``prepare_models`` made fp8, one line per model, for the run's setup log."""
    lines = []
    for model, how in (("student", "training"), ("teacher", "inference")):
        counts = levers.get(f"fp8_{model}")
        if counts is None:
            continue
        emulated = " (emulated)" if levers.get("fp8_emulate") else ""
        line = f"fp8 {how}{emulated}: {counts['converted']} of the {model}'s {counts['linears']} nn.Linear layers"
        skipped = counts["skipped"]
        if skipped:
            shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
            line += f" (kept in bf16, sizes not multiples of 16: {shown})"
        lines.append(line)
    return lines


_SDPA = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}


def sdpa_order(choice: str) -> list | None:
    """The SDPA kernels ``backend.sdpa_backend`` enables, first choice first (None for auto): ``math`` alone;
    otherwise the chosen kernel, then the others in torch's current priority order."""
    from torch.nn.attention import SDPBackend

    if choice == "auto":
        return None
    first = getattr(SDPBackend, _SDPA[choice])
    if choice == "math":
        return [first]
    known = {int(getattr(SDPBackend, name)): getattr(SDPBackend, name) for name in _SDPA.values()}
    rest = [known[i] for i in torch._C._get_sdp_priority_order() if i in known and i != int(first)]
    return [first, *rest]


def _sdpa_forward(order: list):
    from torch.nn.attention import sdpa_kernel

    def forward(self, *args, **kwargs):
        # inside the forward, so that torch.compile traces the choice into the graph (and its cache key)
        with sdpa_kernel(order, set_priority=True):
            return type(self).forward(self, *args, **kwargs)

    return forward


def use_sdpa_backend(model: torch.nn.Module, choice: str) -> None:
    """``model``'s forward runs under ``sdpa_kernel`` with ``sdpa_order(choice)`` (nothing for auto). Set on
    the instance, so that a deepcopy (the EMA export) keeps it and its state_dict is unchanged."""
    order = sdpa_order(choice)
    if order is not None:
        model.forward = types.MethodType(_sdpa_forward(order), model)


class _Base:
    """Rank layout, device, autocast, the kernel levers and the collectives shared by both backends."""

    def __init__(self, backend_config, distill_config):
        self.config = backend_config
        self.distill = distill_config
        self.rank, self.world_size, self.local_rank = env_layout()
        self.device = process_device(backend_config.device, self.local_rank)
        self.compute_dtype = torch.bfloat16 if backend_config.precision == "bf16" else torch.float32
        self.input_dtype = torch.float32  # dtype of the student's inputs (autocast does the rest)
        self.timeout = timedelta(seconds=backend_config.collective_timeout_s)
        self._owns_group = False
        self._failed = False  # a collective failed: the peers may be gone (no barrier, no orderly teardown)
        if distill_config.batch_size % self.world_size:
            raise UserError(
                f"distillation.batch_size {distill_config.batch_size} is not divisible by WORLD_SIZE {self.world_size}"
            )
        set_deterministic(backend_config.deterministic, backend_config.cudnn_benchmark)
        use_cpu_threads(backend_config.cpu_threads)
        check_fp8(backend_config.fp8, self.device, backend_config.fp8_emulate,  # before any heavy work
                  rank_batch=distill_config.batch_size // self.world_size)
        if backend_config.sdpa_backend not in ("auto", "math"):
            import inspect

            from torch.nn.attention import sdpa_kernel

            if "set_priority" not in inspect.signature(sdpa_kernel).parameters:
                raise UserError(f"backend.sdpa_backend {backend_config.sdpa_backend!r} needs a torch whose sdpa_kernel "
                                f"takes set_priority (this is torch {torch.__version__}); use auto or math")
        # CUDA graphs (torch's graph trees): a step begins at the teacher's forward (see ``autocast``)
        self._cudagraphs = self.device.type == "cuda" and backend_config.compile and \
            backend_config.compile_mode in ("reduce-overhead", "max-autotune")
        self.levers: dict = {}  # what prepare_models did

    def prepare_models(self, teacher: torch.nn.Module, student: torch.nn.Module) -> dict:
        """The kernel levers of ``backend`` on the teacher and on the student built from it, before
        ``torch.compile`` and ``setup``: channels_last memory format, fp8 linears (after the student copied
        the teacher's weights), the SDPA kernel order inside both forwards. Returns what was done (also
        ``self.levers``): the memory format, the sdpa_backend, and per model the Linear layers converted
        to fp8 and those skipped (sizes not multiples of 16)."""
        c = self.config
        if c.channels_last:
            teacher.to(memory_format=torch.channels_last)
            student.to(memory_format=torch.channels_last)
        levers: dict = {"channels_last": bool(c.channels_last), "sdpa_backend": c.sdpa_backend, "fp8": c.fp8,
                        "fp8_emulate": c.fp8_emulate}
        if c.fp8 in ("student", "both"):
            levers["fp8_student"] = fp8_training(student, c.fp8_emulate)
        if c.fp8 in ("teacher", "both"):
            levers["fp8_teacher"] = fp8_inference(teacher, c.fp8_emulate)
        for model in (teacher, student):
            use_sdpa_backend(model, c.sdpa_backend)
        self.levers = levers
        return levers

    def compile_kwargs(self) -> dict:
        """The keyword arguments of ``Module.compile`` for teacher and student (``backend.compile_mode``)."""
        mode = self.config.compile_mode
        return {} if mode == "default" else {"mode": mode}

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def autocast(self):
        """The context of the teacher's forward (a step's first model call; also the VAE's encoding). With
        CUDA graphs a new step of torch's graph trees begins here: the previous step's graph outputs may be
        overwritten from now on (the step holds none of them past its backward)."""
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def student_autocast(self):
        """The context of the student's forward (DeepSpeed: none, its engine runs bf16 weights itself)."""
        return self.autocast() if self.input_dtype == torch.float32 else contextlib.nullcontext()

    @contextlib.contextmanager
    def _collective(self, what: str):
        """Turns a failed collective (a peer died: connection reset or closed; or it hung: timeout) into one
        CollectiveError line naming this rank, the collective and backend.collective_timeout_s."""
        try:
            yield
        except (RuntimeError, TimeoutError, ConnectionError) as err:
            if not _is_comm_failure(err):
                raise
            self._failed = True
            raise CollectiveError(
                f"rank {self.rank} of {self.world_size}: {what} failed: another rank died or did not answer "
                f"within backend.collective_timeout_s = {self.config.collective_timeout_s} s "
                f"({_short_cause(err)}); see the other ranks' output for the cause"
            ) from err

    def all_reduce(self, tensor: torch.Tensor, what: str = "all_reduce") -> torch.Tensor:
        """Sum over ranks, in place (a no-op on one process). ``what`` names it in the error of a failed one."""
        if self.distributed:
            with self._collective(what):
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def same_on_all_ranks(self, value: int) -> bool:
        """Whether every rank passed the same 63-bit integer (e.g. a state hash)."""
        if not self.distributed:
            return True
        v = torch.tensor([value, -value], dtype=torch.int64, device=self.device)
        with self._collective("all_reduce of the state hash (same_on_all_ranks)"):
            dist.all_reduce(v, op=dist.ReduceOp.MAX)
            return int(v[0]) == value and int(v[1]) == -value  # reading it waits for NCCL

    def barrier(self) -> None:
        if self.distributed:
            with self._collective("barrier"):
                if self.device.type == "cuda":
                    dist.barrier(device_ids=[self.device.index])
                else:
                    dist.barrier()

    def close(self, ok: bool = True) -> None:
        """End of run: a barrier (skipped after an error or a failed collective: peers may be gone), then
        the process group is destroyed (when this backend made it; aborted, not waited on, after a failed
        collective, so that the process exits at once)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        try:
            if ok and not self._failed:
                self.barrier()
        finally:
            if self._owns_group:
                self._owns_group = False
                self._teardown()

    def _teardown(self) -> None:
        if not self._failed:
            dist.destroy_process_group()
            return
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        try:  # NCCL: abort the communicators (an orderly destroy may wait on the dead peer)
            if abort is not None and dist.get_backend() == "nccl":
                abort()
            else:
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the collective's error is the one to report
            pass

    def _optimizer_kwargs(self) -> dict:
        d = self.distill
        return {"lr": d.lr, "weight_decay": d.weight_decay, "betas": (0.9, 0.999), "eps": 1e-8}


class TorchBackend(_Base):
    """Plain PyTorch: CPU or one GPU per process; DDP (gloo on CPU, NCCL on GPU) when WORLD_SIZE > 1."""

    kind = "torch"

    def __init__(self, backend_config, distill_config):
        super().__init__(backend_config, distill_config)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if self.device.type == "cuda" else "gloo",
                rank=self.rank, world_size=self.world_size, timeout=self.timeout,
            )
            self._owns_group = True
        self.model = self.module = self.optimizer = self.scheduler = None

    def setup(self, model, params=None):
        self.module = model.to(self.device)
        self.model = model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        # fused AdamW (CPU and GPU): one kernel on the GPU, and the AdamW that skips a step on the device (found_inf)
        self.optimizer = torch.optim.AdamW(params, **self._optimizer_kwargs(), fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, distill_lr_factor(self.distill))
        return self.model

    def backward(self, loss):
        loss.backward()

    def step(self, skip=None):
        """Clip, step the optimizer and the LR schedule; returns the gradient norm before clipping (a device
        tensor; also where ``grad_clip`` is 0).
        ``skip``: a device bool; where True the fused AdamW leaves weights and moments unchanged
        (the LR schedule still advances, as after ``skip``)."""
        if self.distill.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.distill.grad_clip)
        else:  # no clipping: the norm all the same (one foreach pass over the gradients, no host sync)
            norm = _total_norm([p.grad for p in self.module.parameters() if p.grad is not None])
        self.optimizer.found_inf = None if skip is None else skip.float()  # read by the fused AdamW's step
        self.optimizer.step()
        self.scheduler.step()
        return norm

    def skip(self):
        """A step skipped on the host (non-finite): no optimizer update, the LR schedule advances."""
        advance_schedule(self.scheduler)

    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    def unwrap(self):
        return self.module

    def export_weights(self) -> None:
        """None: the module's weights are the fp32 ones (bf16 is autocast's compute dtype only)."""
        return None

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self, folder: Path) -> list[str]:
        """Optimizer and LR schedule (tensors and primitives only); rank 0 writes."""
        if self.is_main:
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
            with open(Path(folder) / "training.pt", "wb") as f:  # a failed write keeps its OSError (full disk)
                torch.save(state, f)
        return ["training.pt"]

    def load(self, folder: Path, step: int | None = None) -> int:
        """The saved optimizer and LR schedule states, then this run's lr, weight_decay and schedule from
        ``step`` on (``resume_schedule``, whose loaded step it returns)."""
        state = torch.load(Path(folder) / "training.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return resume_schedule(self.scheduler, self.distill, step)


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all ``grads`` together, in fp32, on their device (no host sync)."""
    if not grads:
        return torch.zeros(())
    total = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6: foreach kernels
    if total is not None:
        return total(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _replicated_masters(optimizer) -> dict[int, torch.Tensor]:
    """The fp32 master weight of each low-precision parameter (by id) that DeepSpeed's ZeRO-0 mixed-precision
    optimizers hold whole on every rank: FP16_UnfusedOptimizer (``fp16_groups`` and ``fp32_groups``, parameter
    for parameter) and FP16_Optimizer (``fp32_groups_flat``, one flat tensor per group); empty for others."""
    from torch._utils import _unflatten_dense_tensors

    low = getattr(optimizer, "fp16_groups", None)
    if low is None:
        return {}
    if hasattr(optimizer, "fp32_groups"):
        high = optimizer.fp32_groups
    elif hasattr(optimizer, "fp32_groups_flat"):
        high = [_unflatten_dense_tensors(flat, group) for flat, group in zip(optimizer.fp32_groups_flat, low)]
    else:
        return {}
    return {id(lp): hp for lps, hps in zip(low, high) for lp, hp in zip(lps, hps)}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DeepSpeedBackend(_Base):
    """DeepSpeed: config built in code (bf16, ZeRO stage, clipping, AdamW, warmup schedule)."""

    kind = "deepspeed"

    def __init__(self, backend_config, distill_config):
        if "RANK" not in os.environ:  # a single process started without a launcher
            for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
                os.environ.setdefault(key, value)
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        super().__init__(backend_config, distill_config)
        self.input_dtype = self.compute_dtype  # bf16 weights, and the engine's forward turns autocast off
        if self.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
        if self.device.type == "cpu":  # gloo is enough: skip JIT-compiling DeepSpeed's shared-memory all-reduce
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self._ds = deepspeed
        if not dist.is_initialized():
            self._owns_group = True
        deepspeed.init_distributed(
            dist_backend="nccl" if self.device.type == "cuda" else "gloo", timeout=self.timeout, verbose=False
        )
        self.engine = self.module = None
        self._norm_params: list[torch.nn.Parameter] | None = None  # where the engine keeps no gradient norm

    def ds_config(self) -> dict:
        d, b = self.distill, self.config
        kwargs = self._optimizer_kwargs()
        return {
            "train_batch_size": d.batch_size,
            "train_micro_batch_size_per_gpu": d.batch_size // self.world_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": d.grad_clip,
            "bf16": {"enabled": b.precision == "bf16"},
            "zero_optimization": {"stage": b.zero_stage},
            "optimizer": {
                "type": "AdamW",
                "params": {
                    "lr": kwargs["lr"], "weight_decay": kwargs["weight_decay"], "betas": list(kwargs["betas"]),
                    "eps": kwargs["eps"], "torch_adam": True,  # torch's AdamW: no JIT-compiled extension
                    **({"fused": True} if self.device.type == "cuda" else {}),
                },
            },
            "steps_per_print": 2**62,
            "wall_clock_breakdown": False,
        }

    def setup(self, model, params=None):
        self.module = model
        params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        factor = distill_lr_factor(self.distill)
        self.engine, _, _, _ = self._ds.initialize(
            model=model, model_parameters=params, config=self.ds_config(),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
        )
        self.module = self.engine.module
        # ZeRO stage 0 in fp32 steps a plain torch optimizer, which keeps no gradient norm (get_global_grad_norm()
        # stays None; ZeRO 1-2 and the bf16 optimizers keep it): step computes it from the gradients
        plain = self.config.zero_stage == 0 and self.compute_dtype == torch.float32
        self._norm_params = params if plain else None
        return self.engine

    def backward(self, loss):
        self.engine.backward(loss)

    def step(self, skip=None):
        if skip is not None:  # RunConfig rejects step_sync 'device' with DeepSpeed
            raise ValueError("DeepSpeedBackend cannot skip a step on the device")
        norm = None
        if self._norm_params is not None:  # before the step, which zeroes them (all-reduced: same on every rank)
            norm = _total_norm([p.grad for p in self._norm_params if p.grad is not None])
        self.engine.step()  # clips, steps the optimizer and the LR schedule, zeroes the gradients
        if not self.engine.was_step_applied():  # the engine skipped the update (overflow) and its LR step
            advance_schedule(self.engine.lr_scheduler)
        # the norm before clipping, as TorchBackend's; a device tensor: read it only when logged
        return norm if self._norm_params is not None else self.engine.get_global_grad_norm()

    def skip(self):
        """A step skipped on the host (non-finite): no engine step, the LR schedule advances."""
        advance_schedule(self.engine.lr_scheduler)

    def zero_grad(self):
        self.engine.zero_grad()

    def unwrap(self):
        return self.engine.module

    def export_weights(self) -> dict[str, torch.Tensor] | None:
        """Under bf16 the engine's module holds bf16 weights and the optimizer the fp32 master weights: the
        module's state_dict with the optimizer's fp32 master weights for its trained parameters and the rest
        cast to fp32, on every rank. ZeRO 1-2 partition the masters: ``safe_get_full_fp32_param`` all-reduces
        each one, a collective that every rank calls; ZeRO 0 (DeepSpeed's FP16_UnfusedOptimizer or
        FP16_Optimizer with bf16) holds them whole on every rank. None under fp32, where the module's weights
        are the master weights."""
        if self.compute_dtype == torch.float32:
            return None
        from deepspeed.utils import safe_get_full_fp32_param

        state = self.engine.module.state_dict(keep_vars=True)
        replicated = _replicated_masters(self.engine.optimizer)
        masters: dict[int, torch.Tensor] = {}
        with self._collective("gathering the fp32 master weights for the export"):
            for p in self.engine.module.parameters():  # the same order on every rank
                full = safe_get_full_fp32_param(p)  # None: not a partitioned (ZeRO 1-2) parameter
                if full is None:
                    full = replicated.get(id(p))  # None: a parameter that the optimizer does not hold
                if full is not None:
                    masters[id(p)] = full.detach()
        return {k: masters[id(v)] if id(v) in masters else (v.detach().float() if v.is_floating_point() else v.detach())
                for k, v in state.items()}

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, folder: Path) -> list[str]:
        """The engine's own checkpoint (every rank writes its optimizer shard) under ``deepspeed/``."""
        self.engine.save_checkpoint(str(Path(folder) / "deepspeed"), tag="state", save_latest=False)
        self.barrier()
        return sorted(str(p.relative_to(folder)) for p in (Path(folder) / "deepspeed").rglob("*") if p.is_file())

    def load(self, folder: Path, step: int | None = None) -> int:
        """The engine's checkpoint (weights, optimizer, LR schedule), then this run's lr, weight_decay and
        schedule from ``step`` on (``resume_schedule``, on the optimizer the schedule drives; its loaded step
        is returned)."""
        path, _ = self.engine.load_checkpoint(str(Path(folder) / "deepspeed"), tag="state")
        if path is None:
            raise UserError(f"checkpoint {folder}: DeepSpeed state could not be loaded")
        return resume_schedule(self.engine.lr_scheduler, self.distill, step)


BACKENDS = {"torch": TorchBackend, "deepspeed": DeepSpeedBackend}


def create_backend(backend_config, distill_config) -> TorchBackend | DeepSpeedBackend:
    return BACKENDS[backend_config.kind](backend_config, distill_config)
