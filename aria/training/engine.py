"""The distillation loop: ``run_distillation(config, resume, check_consistency)``.

A recipe in three parts (``setup``, ``train``, ``finish``); the step itself is ``aria.training.distill``
and never branches on the backend. Everything random is a function of (seed, step): the paired
batch (rng [seed, step, 0], each rank its slice), timesteps, switches, CFG dropout, prompts and
noise, and the strategy draws ([seed, step]). A resumed run therefore needs no RNG state, and may
use another number of ranks with the same global batch. Every rank holds the same strategy state
(it is updated from all-reduced feedback); its hash is compared at every checkpoint, and at every
step with ``check_consistency``. Every allocation is checked against the strategy contract
(``check_allocation``): a strategy that breaks it stops the run at that step, naming the strategy
and its package. A run that stops on a ``UserError`` before its first checkpoint leaves no output
folder behind (nothing could resume from it).
"""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from aria.training import checkpoint as ckpt
from aria.config import RunConfig, config_to_dict
from aria.errors import UserError
from aria.training.checks import check_run
from aria.training.probe import probe_discrepancy_by_regime
from aria.training.metrics import RegionWindow, RunLogger, data_record, format_table, read_jsonl, regime_table, \
    run_summary, setup_line, summary_writer_class


if TYPE_CHECKING:
    from aria.training.distill import Reduced, StepPlan


class TrainingStopped(UserError):
    """Too many consecutive non-finite losses: the run stops, its last good state checkpointed."""


class StrategyContractError(UserError):
    """The strategy returned an allocation that breaks the contract (or a plugin's own code failed)."""


# what reading a tampered or foreign checkpoint raises (json, safetensors, torch.load weights_only, shapes)
_CHECKPOINT_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OSError,
                      pickle.UnpicklingError, EOFError)


@contextlib.contextmanager
def _checkpoint_part(folder: Path, what: str):
    """Any error while reading ``what`` of checkpoint ``folder`` becomes one line naming both."""
    try:
        yield
    except UserError:
        raise
    except _CHECKPOINT_ERRORS as err:
        reason = " ".join(str(err).split("\n")[0].split())
        reason = reason if len(reason) <= 160 else reason[:160] + "..."
        raise UserError(f"checkpoint {folder}: {what} cannot be restored ({type(err).__name__}: {reason}); "
                        f"move it away to resume from an older one, or use another output_dir") from err


def _hash63(state) -> int:
    from aria.strategies import state_hash

    return int(state_hash(state)[:15], 16)


def _inductor_cache_unset() -> bool:
    """TORCHINDUCTOR_CACHE_DIR is empty or torch's default: importing diffusers already writes the
    default into the environment, so "set" alone does not mean that the user chose a folder."""
    value = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not value:
        return True
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # pragma: no cover - other torch layouts
        return False
    return os.path.abspath(value) == os.path.abspath(default_cache_dir())


@dataclass
class _Launched:
    """A step whose device work is queued; ``DistillationRun._complete`` does its host part."""

    step: int
    plan: StepPlan
    red: Reduced
    record: dict
    norm: torch.Tensor | float | None = None


class DistillationRun:
    """Setup, train and finish one distillation run. ``bundle`` / ``teacher`` may be passed in
    (tests, comparisons) instead of being prepared from the config."""

    def __init__(self, config: RunConfig, resume: bool = False, check_consistency: bool = False,
                 bundle=None, teacher=None):
        self.config, self.resume, self.check_consistency = config, resume, check_consistency
        self.bundle, self.teacher = bundle, teacher
        self.output_dir = Path(config.output_dir)
        self.ckpt_root = ckpt.checkpoint_dir(self.output_dir)
        self.start_step = 0
        self.nonfinite = {"consecutive": 0, "total": 0}
        self.last_saved = -1
        self.new_output_dir = not self.output_dir.exists()  # all in it is this run's (see save)

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> "DistillationRun":
        """Checks, backend, teacher and data, student, strategy (restored on resume), logger."""
        c = self.config
        self.t0 = time.perf_counter()
        check_run(c, self.resume, data=self.bundle is None, teacher=self.teacher is None)
        self._setup_backend()
        self._setup_inputs()
        report = self._setup_models()
        self._setup_strategy()
        self.logger = RunLogger(self.output_dir, c.logging, c.distillation.steps, self.start_step,
                                c.distillation.batch_size, enabled=self.main)
        if self.main:
            self.logger.event(data_record(self.bundle))  # what the end-of-run plots need of the data
        if self.main and report is not None:
            self.logger.write(f"student {c.student.variant}: {report.summary()}; {len(self.pairs)} feature pairs")
        return self

    def _setup_backend(self) -> None:
        """The backend, and on resume the checkpoint to start from (before any heavy work)."""
        from aria.training.backends import create_backend

        c = self.config
        if c.logging.tensorboard:
            summary_writer_class()  # fail before any heavy work
        from aria.models.teacher import teacher_identity

        self.backend = create_backend(c.backend, c.distillation)
        self.main = self.backend.is_main
        self.teacher_identity = teacher_identity(c.teacher, c.data.source, loaded=self.teacher)  # recorded, checked
        if self.resume:  # --resume needs a checkpoint that verifies, and whose files can be read
            self.resume_step = self._choose_checkpoint()
            self._precheck_checkpoint()

    def _setup_inputs(self) -> None:
        """The frozen teacher and the data bundle (unless handed in), checked against each other."""
        from aria.models import load_teacher
        from aria.models.teacher import describe_teacher

        c, b = self.config, self.backend
        dtype = b.compute_dtype if b.device.type == "cuda" else torch.float32
        if self.teacher is None:
            self._stage(f"teacher: loading {describe_teacher(c.teacher, c.data.source)}")
            self.teacher = load_teacher(c.teacher, device=b.device, dtype=dtype, source=c.data.source)
        if self.bundle is None:  # rank 0 fills the caches first, the others then read them
            from aria.data.bundle import prepare_data

            self._stage(f"data: {c.data.source} prompt pool, paired set, text encoder ({c.encoder.kind}), prompt "
                        f"embeddings and {c.regions.k if c.regions.method == 'kmeans' else 'metadata'} regions "
                        f"(built once, then read from {c.data.cache_dir})")
            self.bundle = prepare_data(c, device=str(b.device) if c.encoder.device == "auto" else c.encoder.device)
        # a teacher handed in gets the dtype a loaded one has (fp8 inference, for one, needs its bf16 biases); only
        # where it differs: diffusers' to(dtype) logs a notice at every call
        for model in (self.teacher.unet, self.teacher.vae):
            if model is not None and model.dtype != dtype:
                model.to(dtype=dtype)
        self.teacher.unet.to(b.device).eval().requires_grad_(False)
        self._check_inputs()

    def _setup_models(self):
        """The student (built from the teacher), feature pairs, the backend's kernel levers (fp8,
        channels_last, SDPA kernel), compile, the backend's wrap, EMA, the distiller; returns the student's
        transfer report."""
        from aria.models import build_student, feature_pairs
        from aria.training.backends import fp8_lines
        from aria.strategies import get_strategy
        from aria.training.distill import Distiller, WeightEMA, feedback_config
        from diffusers import DDPMScheduler

        c, b = self.config, self.backend
        self._stage(f"student: building BK-SDM-{c.student.variant} from the teacher")
        torch.manual_seed(c.seed)  # the student's layers that are not copied from the teacher
        student, report = build_student(self.teacher.unet, c.student)
        self.pairs = feature_pairs(self.teacher.unet, student)
        self.scheduler = DDPMScheduler.from_config(self.teacher.scheduler_config)
        levers = b.prepare_models(self.teacher.unet, student)  # after the student copied the teacher, before compiling
        for line in fp8_lines(levers):
            self._stage(line)
        if c.backend.compile:  # compiled at the first step (the summary's "first step" row); the compiler's
            # caches go beside the data cache, so that a resumed or repeated run reuses them
            if _inductor_cache_unset():
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(c.data.cache_dir).resolve() / "inductor")
            self.teacher.unet.compile(**b.compile_kwargs())
            student.compile(**b.compile_kwargs())
        self.model = b.setup(student.train())
        self.student = b.unwrap()
        self.ema = WeightEMA(self.student, c.distillation.ema_decay) if c.distillation.ema_decay else None
        distill = feedback_config(c.distillation, get_strategy(c.strategy.name))
        if distill.feedback_from != c.distillation.feedback_from:
            self._stage(f"feedback: {c.strategy.name} learns from switched samples only (its estimator is weighted "
                        f"by its own draw probabilities), not from distillation.feedback_from "
                        f"{c.distillation.feedback_from!r}")
        self.distiller = Distiller(teacher=self.teacher.unet, student=self.model, backend=b, bundle=self.bundle,
                                   scheduler=self.scheduler, pairs=self.pairs, config=distill, seed=c.seed,
                                   vae=self.teacher.vae)
        return report

    def _stage(self, text: str) -> None:
        """A setup stage starts: one line (rank 0, with ``logging.progress``)."""
        if self.main and self.config.logging.progress:
            setup_line(text)

    def _setup_strategy(self) -> None:
        """The strategy of the config and its state (a resume restores it with everything else)."""
        c = self.config
        self.strategy = c.make_strategy()
        self.state = self.strategy.init(self.bundle.region_info, c.seed)
        self.window = RegionWindow(self.bundle.region_info.num_regions, c.distillation.timestep_bins)
        self.region_probe = None
        if getattr(self.strategy, "probe_every", None):  # the oracle: measured regions (evaluation data)
            from aria.training.probe import RegionProbe

            self.region_probe = RegionProbe(self.bundle, self.teacher.unet, c.eval, self.scheduler,
                                            encode=self.teacher.pixel_codec()[0])
        if self.resume:
            self._restore()

    def _check_inputs(self) -> None:
        """The data, encoder and teacher must fit together (one line naming what does not)."""
        cfg, bundle = self.teacher.unet.config, self.bundle
        cross = cfg.cross_attention_dim if isinstance(cfg.cross_attention_dim, int) else cfg.cross_attention_dim[0]
        dim = getattr(bundle.encoder, "dim", cross)
        if dim != cross:
            raise UserError(f"encoder.kind {self.config.encoder.kind} gives {dim}-d contexts but the teacher "
                            f"{self.teacher.path} cross-attends to {cross}-d ones")
        if len(bundle.paired_prompt_ids) == 0:
            raise UserError("the paired set is empty (data.paired_dir / data.world.paired_size)")
        shape = tuple(bundle.paired_images.shape[1:])
        if not self.teacher.latent and shape != (cfg.in_channels, self.teacher.sample_size, self.teacher.sample_size):
            raise UserError(f"paired images are {shape} but the pixel-space teacher {self.teacher.path} takes "
                            f"({cfg.in_channels}, {self.teacher.sample_size}, {self.teacher.sample_size})")

    def _choose_checkpoint(self) -> int:
        """The step of the checkpoint to resume from: rank 0 chooses (the newest that verifies; the
        damaged ones skipped are reported), every rank follows. None: a UserError on every rank."""
        b = self.backend
        found = torch.zeros(1, dtype=torch.int64, device=b.device)
        error = None
        if self.main:
            try:
                folder = ckpt.resume_checkpoint(self.ckpt_root, report=lambda m: print(m, flush=True))
                found[0] = int(folder.name[len(ckpt.PREFIX):]) + 1
            except UserError as err:
                error = err
        step = int(b.all_reduce(found, what="all-reduce choosing the checkpoint to resume")[0]) - 1
        if error is not None:
            raise error
        if step < 0:
            raise UserError(f"--resume: rank 0 found no usable checkpoint in {self.ckpt_root}")
        return step

    def _precheck_checkpoint(self) -> None:
        """What of the chosen checkpoint needs no models, checked before any heavy work: state.json
        (its strategy state parses), config.json, the fields a resume keeps, the step against
        ``distillation.steps``, the teacher it distilled from (``check_resume_teacher``), and that training.pt
        holds plain tensors (a pickle is never run)."""
        from aria.strategies import state_from_json

        c = self.config
        folder = self.ckpt_root / f"{ckpt.PREFIX}{self.resume_step:08d}"
        state, saved = ckpt.read_state(folder)
        ckpt.check_state(folder, state)
        ckpt.check_resume_config(saved, config_to_dict(c), state["strategy"]["config"],
                                 c.strategy_config().model_dump(mode="json"))
        ckpt.check_resume_steps(folder, state, c.distillation.steps)
        note = ckpt.check_resume_teacher(folder, state, self.teacher_identity)
        if note and self.main:
            print(note, flush=True)
        with _checkpoint_part(folder, f"the state of strategy {c.strategy.name!r} (state.json)"):
            state_from_json(state["strategy"]["state"])
        if c.backend.kind == "torch":
            with _checkpoint_part(folder, "the optimizer state (training.pt)"):
                torch.load(folder / "training.pt", map_location="cpu", weights_only=True, mmap=True)

    def _restore(self) -> None:
        """Everything of the chosen checkpoint, each part checked: a tampered or foreign checkpoint
        (garbage state.json, a pickle in training.pt, weights or a strategy state of other shapes)
        is one line naming the checkpoint and the part."""
        b = self.backend
        step = self.resume_step
        folder = self.ckpt_root / f"{ckpt.PREFIX}{step:08d}"
        state, saved_config = ckpt.read_state(folder)  # a UserError names a malformed state.json
        ckpt.check_state(folder, state)
        ckpt.check_resume_config(saved_config, config_to_dict(self.config), state["strategy"]["config"],
                                 self.strategy.config.model_dump(mode="json"))
        ckpt.check_resume_steps(folder, state, self.config.distillation.steps)
        if (self.config.backend.kind == "deepspeed" and self.config.backend.zero_stage > 0
                and state["world_size"] != b.world_size):
            raise UserError(f"cannot resume: the checkpoint has ZeRO shards of {state['world_size']} ranks, "
                            f"this run has {b.world_size}")
        with _checkpoint_part(folder, f"the state of strategy {self.strategy.name!r} (state.json)"):
            self.state = self._checked_strategy_state(state["strategy"]["state"], int(state["step"]))
        with _checkpoint_part(folder, "the distiller state (state.json)"):
            expected = self.distiller.feature_scale.shape
            self.distiller.load_state_dict(state["distiller"])
            if self.distiller.feature_scale.shape != expected:
                raise ValueError(f"feature scales of shape {tuple(self.distiller.feature_scale.shape)}, "
                                 f"expected {tuple(expected)}")
        with _checkpoint_part(folder, "the region window (state.json)"):
            self.nonfinite = {k: int(state["nonfinite"][k]) for k in ("consecutive", "total")}
            self.window.sums[:], self.window.counts[:] = state["window"]["sums"], state["window"]["counts"]
        with _checkpoint_part(folder, "student.safetensors"):
            self.student.load_state_dict(ckpt.load_weights(folder, "student"))
        with _checkpoint_part(folder, "the optimizer state (training.pt)"):
            schedule_at = b.load(folder, step=int(state["step"]))  # then this config's lr, weight_decay, LR schedule
        if self.ema is not None and (folder / "ema.safetensors").is_file():
            with _checkpoint_part(folder, "ema.safetensors"):
                shadow = {k: v.to(b.device) for k, v in ckpt.load_weights(folder, "ema").items()}
                if {k: v.shape for k, v in shadow.items()} != {k: v.shape for k, v in self.ema.shadow.items()}:
                    raise ValueError("its tensors differ from the student's")
                self.ema.shadow = shadow
        elif self.ema is not None:  # ema_decay turned on at this resume: the EMA starts from the restored weights
            from aria.training.distill import WeightEMA

            self.ema = WeightEMA(self.student, self.ema.decay)
        self.start_step = self.last_saved = int(state["step"])
        if self.main:
            print(f"resuming from {folder} (step {self.start_step})", flush=True)
            changed = self._resume_changes(saved_config)
            if changed:
                print(f"resume: {changed}; applied from step {self.start_step + 1} on", flush=True)
            if schedule_at != self.start_step:  # a checkpoint from before the schedule followed the step index
                print(f"resume: the LR schedule stood at step {schedule_at} in the checkpoint (skipped steps did not "
                      f"advance it then); it follows the step index, {self.start_step}, from here on", flush=True)

    def _resume_changes(self, saved_config: dict) -> str:
        """The optimizer and EMA settings (``distillation.*``) this resume changes, as 'name old -> new' (empty
        if none). They apply from the resumed step on (the LR schedule is a function of the step index; an EMA
        turned on starts from the restored weights)."""
        saved = saved_config.get("distillation")
        saved = saved if isinstance(saved, dict) else {}
        d = self.config.distillation
        names = ["lr", "weight_decay", "warmup_steps", "lr_schedule", "lr_final"]
        if d.lr_schedule == "cosine":
            names.append("steps")  # the cosine ends at the last step
        if self.ema is not None:
            names.append("ema_decay")
        return ", ".join(f"distillation.{n} {saved.get(n)!r} -> {getattr(d, n)!r}" for n in names
                         if n in saved and saved[n] != getattr(d, n))

    def _checked_strategy_state(self, text: str, step: int):
        """The strategy state of a checkpoint, checked against a fresh one of this run: same region
        sizes and seed, entries of the same kinds and region-sized axes, finite numbers, and an
        allocation and an update that work and keep the contract. Raises ValueError otherwise."""

        from aria.strategies import Feedback, check_allocation, state_from_json

        restored = state_from_json(text)
        if not isinstance(restored, dict):
            raise ValueError("not a mapping")
        fresh = self.strategy.init(self.bundle.region_info, self.config.seed)
        k = self.bundle.region_info.num_regions
        if not np.array_equal(np.asarray(restored.get("sizes")), fresh["sizes"]):
            raise ValueError(f"its region sizes are not those of this run's {k} regions")
        if restored.get("seed") != fresh["seed"]:
            raise ValueError(f"its seed {restored.get('seed')!r} is not the run's {fresh['seed']}")
        for key in set(restored) & set(fresh):
            new, old = restored[key], fresh[key]
            if isinstance(old, np.ndarray) != isinstance(new, np.ndarray):
                raise ValueError(f"entry {key!r} is {type(new).__name__}, expected {type(old).__name__}")
            if isinstance(old, np.ndarray):
                if new.ndim != old.ndim or any(o == k and n != k for o, n in zip(old.shape, new.shape)):
                    raise ValueError(f"entry {key!r} has shape {new.shape}, expected {old.shape}")
                if new.dtype.kind != old.dtype.kind:
                    raise ValueError(f"entry {key!r} has dtype {new.dtype}, expected {old.dtype}")
        for key, value in restored.items():
            if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
                raise ValueError(f"entry {key!r} holds non-finite numbers")
        active = self.bundle.region_info.active
        bins = self.config.distillation.timestep_bins
        check_allocation(self.strategy.allocate(restored, step, 1), k, 1, active)
        updated = self.strategy.update(restored, Feedback(np.zeros((k, bins)), np.zeros((k, bins)), step))
        check_allocation(self.strategy.allocate(updated, step, 1), k, 1, active)
        return restored

    def _strategy_failed(self, step: int, what: str, problem: str) -> StrategyContractError:
        """One line naming the strategy, its package, the step (counted from 1) and the problem."""
        s = self.strategy
        problem = " ".join(problem.split())
        return StrategyContractError(f"strategy {s.name!r} ({s.origin}) {what} at step {step + 1}: "
                                     f"{problem if len(problem) <= 200 else problem[:200] + '...'}; "
                                     "the run was stopped")

    def _allocate(self, step: int, n: int):
        """The strategy's allocation of ``step``, checked against the contract (``check_allocation``)."""
        from aria.strategies import check_allocation

        s = self.strategy
        try:
            allocation = s.allocate(self.state, step, n)
        except Exception as err:
            if s.origin == "built-in":
                raise
            raise self._strategy_failed(step, "failed in allocate", f"{type(err).__name__}: {err}") from err
        try:
            check_allocation(allocation, self.bundle.region_info.num_regions, n, self.bundle.region_info.active)
        except ValueError as err:
            raise self._strategy_failed(step, "broke the allocation contract", str(err)) from None
        return allocation

    def _update(self, step: int, feedback):
        s = self.strategy
        try:
            new = s.update(self.state, feedback)
        except Exception as err:
            if s.origin == "built-in":
                raise
            raise self._strategy_failed(step, "failed in update", f"{type(err).__name__}: {err}") from err
        if not isinstance(new, dict):
            raise self._strategy_failed(step, "broke the update contract",
                                        f"update returned {type(new).__name__}, not a state dict")
        return new

    # -- the loop ---------------------------------------------------------------------------
    def _launch(self, step: int) -> _Launched:
        """Plan, forward, reduce and (unless the host sees a non-finite step) backward and optimizer
        step. With ``step_sync: device`` nothing here waits for the GPU."""
        b, d = self.backend, self.distiller
        on_device = self.config.distillation.step_sync == "device"
        if self.region_probe is not None and step % self.strategy.probe_every == 0:
            measured = self.region_probe.measure(self.student, self.strategy.config.metric)
            self.state = self.strategy.observe(self.state, measured)
        draft = d.draft(step, self.strategy.switches)  # the strategy: allocate here, update in _complete
        allocation = self._allocate(step, draft.num_switched) if draft.num_switched else None
        plan = d.plan(draft, allocation)
        out = d.forward(plan)
        red = d.reduce(out, plan)
        launched = _Launched(step, plan, red, {"step": step + 1, "switched_fraction": float(plan.switched.mean()),
                                               "lr": b.lr()})
        if on_device or red.finite:  # host sync: reading ``finite`` waits for the forward and the all-reduce
            b.backward(d.loss(out, red))
            skip = ~red.device_finite if on_device else None
            launched.norm = b.step(skip=skip)  # a step skipped on the device advances the LR schedule too
            b.zero_grad()
            if self.ema is not None:
                self.ema.update(self.student, gate=red.device_finite if on_device else None)
        else:  # skipped on the host: the LR schedule still advances (a function of the step index, every mode)
            b.skip()
        return launched

    def _complete(self, done: _Launched) -> None:
        """The host's part of a launched step: strategy update, counters, the metrics record."""
        c, red, record = self.config, done.red, done.record
        step = done.step
        record["nonfinite"] = not red.finite
        if red.finite:
            self.state = self._update(step, red.feedback)
            self.window.add(red.feedback)
            self.nonfinite["consecutive"] = 0
            record.update(self.distiller.logged(red))
            if (step + 1) % c.logging.every == 0:  # reading the norm waits for the step: only on log steps
                record["grad_norm"] = None if done.norm is None else float(done.norm)
        else:
            self.nonfinite["consecutive"] += 1
            self.nonfinite["total"] += 1
            record.update({k: None for k in ("loss", "task", "out", "feat")})
        if (step + 1) % c.logging.every == 0 or step + 1 == c.distillation.steps:
            record["probabilities"] = done.plan.probabilities
            record["estimates"] = self.state.get("estimate")
            record["region_discrepancy"], record["region_discrepancy_tnorm"] = self.window.take()
            record["feat_blocks"] = [red.terms[f"feat/{i}"] for i in range(len(self.pairs))]
        self.logger.step(record)
        if self.check_consistency:
            self._check_consistency(step + 1)

    def train(self) -> None:
        """Launch every step; complete each ``feedback_delay`` steps later (at once at checkpoints, the
        last step and before stopping, so that a checkpoint holds every step's feedback)."""
        c = self.config
        delay = c.distillation.feedback_delay
        launched: deque[_Launched] = deque()
        for step in range(self.start_step, c.distillation.steps):
            launched.append(self._launch(step))
            checkpoint = (step + 1) % c.logging.checkpoint_every == 0
            drain = checkpoint or step + 1 == c.distillation.steps
            while launched and (drain or len(launched) > delay):
                self._complete(launched.popleft())
            if self.nonfinite["consecutive"] >= c.distillation.max_nonfinite_steps:
                while launched:  # steps already launched count: one of them may have recovered
                    self._complete(launched.popleft())
                if self.nonfinite["consecutive"] >= c.distillation.max_nonfinite_steps:
                    self._stop(step + 1)
            if checkpoint:
                self.save(step + 1)

    def _check_consistency(self, step: int) -> None:
        if not self.backend.same_on_all_ranks(_hash63(self.state)):
            raise RuntimeError(f"strategy state differs across ranks at step {step} (hash on rank "
                               f"{self.backend.rank}: {_hash63(self.state):x})")

    def _stop(self, step: int) -> None:
        """Non-finite losses in a row: the weights did not change since the last good step, so they are
        checkpointed as the last good state before stopping."""
        self.save(step)
        n = self.nonfinite["consecutive"]
        self.logger.close()
        raise TrainingStopped(f"stopped at step {step}: {n} consecutive non-finite losses "
                              f"(distillation.max_nonfinite_steps); the last good state is in "
                              f"{self.ckpt_root / f'{ckpt.PREFIX}{step:08d}'} "
                              f"(try --resume with a lower distillation.lr)")

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, step: int) -> Path:
        from aria.strategies import state_to_json

        self._check_consistency(step)
        try:
            strategy_state = state_to_json(self.state)
        except (TypeError, ValueError) as err:  # a plugin's state: arrays and finite numbers only
            raise self._strategy_failed(step - 1, "holds a state that cannot be saved",
                                        f"{type(err).__name__}: {err}") from err
        training_state = {
            "step": step, "world_size": self.backend.world_size, "backend": self.config.backend.kind,
            "strategy": {"name": self.strategy.name, "config": self.strategy.config.model_dump(mode="json"),
                         "state": strategy_state},
            "distiller": self.distiller.state_dict(), "nonfinite": self.nonfinite,
            "window": {"sums": self.window.sums.tolist(), "counts": self.window.counts.tolist()},
            "teacher": self.teacher_identity,
        }
        try:
            folder = ckpt.save_checkpoint(self.ckpt_root, step, self.backend, student=self.student,
                                          training_state=training_state, config=config_to_dict(self.config),
                                          ema=None if self.ema is None else self.ema.shadow,
                                          keep=self.config.logging.keep_checkpoints)
        except ckpt.CheckpointWriteError as err:
            if self.main and self.new_output_dir and not ckpt.list_checkpoints(self.ckpt_root):
                self._discard_output()  # nothing to resume from: no partial run left behind
                raise ckpt.CheckpointWriteError(f"{err}; {self.output_dir} (made by this run) was removed") from err
            raise
        self.last_saved = step
        return folder

    def _discard_output(self) -> None:
        """Remove what this run wrote in the output_dir it created (metrics, TensorBoard, checkpoints/)."""
        import shutil

        if getattr(self, "logger", None) is not None:
            self.logger.close()
        for name in ("metrics.jsonl", "tensorboard", self.ckpt_root.name):
            path = self.output_dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        try:
            self.output_dir.rmdir()  # only when nothing else (a data cache) is in it
        except OSError:
            pass

    # -- the end ----------------------------------------------------------------------------
    def finish(self) -> dict:
        from aria.models import export_student, parameter_count
        from aria.models.export import loading_snippet, pipeline_components

        c, b = self.config, self.backend
        steps = c.distillation.steps
        self.distiller.close()
        if self.last_saved != steps:
            self.save(steps)
        result = {"output_dir": str(self.output_dir), "steps": steps, "nonfinite": self.nonfinite["total"],
                  "teacher": self.teacher_identity}
        # the student is exported (and probed) in fp32 with every backend: DeepSpeed bf16's module holds bf16
        # weights, its optimizer the fp32 master weights (gathered here by every rank: a collective), and the
        # EMA's fp32 shadow replaces them all
        weights = b.export_weights() if self.ema is None else None
        if self.main:
            self.logger.write("exporting the student and measuring it on the probe set")
            student = self.student
            if self.ema is not None or weights is not None:
                student = copy.deepcopy(self.student).float()
                if weights is not None:
                    student.load_state_dict(weights)
                if self.ema is not None:
                    self.ema.copy_to(student)
            weights = None
            card = {"teacher": str(self.teacher.path), "variant": c.student.variant,
                    "teacher_parameters": parameter_count(self.teacher.unet),
                    "teacher_weights": self.teacher_identity["weights"], "strategy": c.strategy.name,
                    "steps": steps, "data": c.data.source, "seed": c.seed, "ema": self.ema is not None,
                    "scheduler": {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")},
                    "config": config_to_dict(c)}
            result["student"] = str(export_student(student, self.output_dir / "student", card,
                                                   pipeline=pipeline_components(c), teacher_root=self.teacher.path))
            result["regimes"] = probe_discrepancy_by_regime(student, self.teacher.unet, self.bundle, c.eval,
                                                            self.scheduler, encode=self.teacher.pixel_codec()[0])
            self.logger.event({"event": "end", "step": steps, "regimes": result["regimes"]})
            self.logger.close()
            wall = time.perf_counter() - self.t0
            records = read_jsonl(self.logger.path)
            run = [r for r in records if r.get("step", 0) > self.start_step and "loss" in r]
            print(format_table(["quantity", "value"], run_summary(run, wall, self.nonfinite["total"]),
                               title=f"\nRun summary ({c.strategy.name}, {b.kind}, {b.world_size} rank(s))"))
            print(f"teacher: {self.teacher_identity['teacher']} (weights sha256 {self.teacher_identity['weights']})")
            print(regime_table(result["regimes"]), flush=True)
            print(f"student exported to {result['student']}; load it with: {loading_snippet(result['student'])}",
                  flush=True)
        b.barrier()
        return result

    def close(self, ok: bool = True) -> None:
        if getattr(self, "distiller", None) is not None:
            self.distiller.close()
        if getattr(self, "backend", None) is not None:
            self.backend.close(ok)


def run_distillation(config: RunConfig, resume: bool = False, check_consistency: bool = False, *,
                     bundle=None, teacher=None) -> dict:
    """Distil ``config``'s teacher into its student; returns a summary dict (see ``finish``)."""
    run = DistillationRun(config, resume, check_consistency, bundle=bundle, teacher=teacher)
    ok = False
    try:
        run.setup()
        run.train()
        result = run.finish()
        ok = True
        return result
    except UserError:  # stopped before a checkpoint: the output_dir this run made holds nothing valid
        if getattr(run, "main", False) and run.new_output_dir and not ckpt.list_checkpoints(run.ckpt_root):
            run._discard_output()
        raise
    finally:
        if getattr(run, "logger", None) is not None:
            run.logger.close()
        run.close(ok)
