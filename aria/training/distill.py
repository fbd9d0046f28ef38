"""The one distillation step, shared by every backend (docs/ARCHITECTURE.md, "The step", says why).

    draft = distiller.draft(step, switches)       # paired batch, timesteps, switched samples: (seed, step)
    alloc = strategy.allocate(state, step, n)     # in the training loop, the strategy's only call site
    plan  = distiller.plan(draft, alloc)          # the global batch; each rank takes its ``part``
    out   = distiller.forward(plan)               # teacher (inference mode) + student, loss terms
    red   = distiller.reduce(out, plan)           # ONE all-reduce; the host copy starts, unawaited
    loss  = distiller.loss(out, red)              # weights x terms, feature scales on the device

Loss = w_task MSE(eps_S, noise) [paired] + w_out MSE(eps_S, eps_T) + w_feat sum_b MSE(F_S, F_T) / scale_b,
each term weighted so that the sum over ranks is the mean over the global batch. Feedback: the
per-sample D_i = mean over pixels of (eps_S - eps_T)^2, summed per (region, timestep bin) on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from aria.models import FeatureCapture
from aria.strategies.base import Feedback, draw_members

# streams of a step's data draws (paired batch, timesteps, switches, CFG dropout, noise, latents)
STREAM_DATA, STREAM_TIMESTEP, STREAM_PROMPT, STREAM_SWITCH, STREAM_CFG, STREAM_NOISE, STREAM_LATENT = range(7)


def data_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    """The generator of a step's data draws: ``default_rng([seed, step, stream])``. The strategy's
    draws (regions, then prompts inside them) come from ``aria.strategies.step_rng`` instead, a
    generator of its own that needs no torch and that ``aria.theory`` shares."""
    return np.random.default_rng([seed, step, stream])


def to_device(array, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host array -> device tensor without a stream sync (pinned, non-blocking copy on CUDA)."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if dtype is not None:
        t = t.to(dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def switch_probability(t, num_timesteps: int, schedule: str, lam: float, constant: float) -> np.ndarray:
    """p(t) of switching a sample's condition (Random Conditioning schedules)."""
    x = np.asarray(t, dtype=np.float64) / num_timesteps
    if schedule == "exp":
        return np.exp(-lam * (1.0 - x))
    if schedule == "sigmoid":
        return 1.0 / (1.0 + np.exp(-20.0 * (x - 0.7)))
    if schedule == "constant":
        return np.full_like(x, constant)
    raise ValueError(f"unknown switch schedule {schedule!r}")


@dataclass
class StepPlan:
    """The global batch of one step (identical on every rank); ``part`` slices one rank's share."""

    step: int
    image_index: np.ndarray  # (B,) index into the paired set
    prompt_ids: np.ndarray  # (B,) pool prompt of each condition (caption or switched prompt)
    timesteps: np.ndarray  # (B,)
    switched: np.ndarray  # (B,) bool
    dropped: np.ndarray  # (B,) bool: condition replaced by the empty prompt (CFG dropout)
    regions: np.ndarray  # (B,) region of the condition; -1: no feedback from this sample
    kd_weight: np.ndarray  # (B,) importance weights of the KD terms (1 for paired samples)
    probabilities: np.ndarray | None  # the allocation's distribution (None: nothing switched)

    @property
    def size(self) -> int:
        return int(self.image_index.size)

    def part(self, rank: int, world_size: int) -> slice:
        n = self.size // world_size
        return slice(rank * n, (rank + 1) * n)


@dataclass
class StepDraft:
    """The part of a step's plan that needs no strategy: paired batch, timesteps, switched samples."""

    step: int
    image_index: np.ndarray  # (B,) index into the paired set
    timesteps: np.ndarray  # (B,)
    switched: np.ndarray  # (B,) bool

    @property
    def num_switched(self) -> int:
        return int(self.switched.sum())


def draft_step(step, *, seed, batch_size, num_timesteps, config, bundle, switches: bool) -> StepDraft:
    """The paired images, timesteps and switched samples of ``step``, from (seed, step) alone."""
    m = len(bundle.paired_prompt_ids)
    index = data_rng(seed, step, STREAM_DATA).choice(m, size=batch_size, replace=m < batch_size)
    t = data_rng(seed, step, STREAM_TIMESTEP).integers(0, num_timesteps, size=batch_size)
    switched = np.zeros(batch_size, dtype=bool)
    if switches:
        p = switch_probability(t, num_timesteps, config.switch_schedule, config.switch_lambda, config.switch_constant)
        switched = data_rng(seed, step, STREAM_SWITCH).random(batch_size) < p
    return StepDraft(step, index, t, switched)


def plan_step(draft: StepDraft, allocation, *, seed, config, bundle) -> StepPlan:
    """The global batch of a step: the draft's switched samples get prompts of ``allocation``'s regions
    (an ``Allocation`` for ``draft.num_switched`` draws, or None when nothing is switched)."""
    step, batch_size = draft.step, draft.image_index.size
    prompts = np.asarray(bundle.paired_prompt_ids)[draft.image_index].astype(np.int64)
    weights = np.ones(batch_size, dtype=np.float64)
    probabilities = None
    if allocation is not None:
        prompts[draft.switched] = draw_members(bundle.region_offsets, bundle.region_members, allocation.regions,
                                               seed, step)
        probabilities = np.asarray(allocation.probabilities, dtype=np.float64)
        if config.importance_weights and allocation.weights is not None:
            weights[draft.switched] = np.asarray(allocation.weights, dtype=np.float64)
    dropped = data_rng(seed, step, STREAM_CFG).random(batch_size) < config.cfg_dropout
    regions = np.asarray(bundle.region_of_prompt)[prompts].astype(np.int64)  # index first: no pool-sized copy
    excluded = dropped | (~draft.switched if config.feedback_from == "switched" else False)
    regions = np.where(excluded, -1, regions)
    return StepPlan(step, draft.image_index, prompts, draft.timesteps, draft.switched, dropped, regions, weights,
                    probabilities)


def feedback_config(config, strategy):
    """``config`` (the distillation section) with the samples that feed ``strategy``: one that learns only
    from its own draws (``learns_from = "switched"``, e.g. ``exp3``'s importance weights) gets switched
    samples whatever ``feedback_from`` says; other strategies get what it says."""
    if getattr(strategy, "learns_from", None) == "switched" and config.feedback_from != "switched":
        return config.model_copy(update={"feedback_from": "switched"})
    return config


def plan_with(strategy, state, step, **kwargs) -> StepPlan:
    """``draft_step`` then ``plan_step`` with ``strategy``'s allocation (the training loop does the same
    in its own lines; tests and benchmarks plan with this)."""
    kwargs["config"] = feedback_config(kwargs["config"], strategy)
    draft = draft_step(step, switches=strategy.switches, **kwargs)
    allocation = strategy.allocate(state, step, draft.num_switched) if draft.num_switched else None
    return plan_step(draft, allocation, seed=kwargs["seed"], config=kwargs["config"], bundle=kwargs["bundle"])


class ContextCache:
    """Cross-attention contexts of pool prompts: paired captions precomputed once (fixed chunks, so
    a resumed run sees bit-identical contexts), other prompts encoded per step; ``""`` for CFG."""

    def __init__(self, encoder, pool, paired_prompt_ids, device, budget_mb: float):
        self.encoder, self.pool, self.device = encoder, pool, device
        self.uncond = self._encode([""])[0]
        ids = np.unique(np.asarray(paired_prompt_ids, dtype=np.int64))
        per_prompt = self.uncond.numel() * 4
        self.ids = ids if ids.size * per_prompt <= budget_mb * 2**20 else np.zeros(0, np.int64)
        chunk = max(1, int(getattr(encoder, "batch_size", 256)))
        parts = [self._encode(self.pool_texts(self.ids[i:i + chunk])) for i in range(0, self.ids.size, chunk)]
        self.table = torch.cat(parts) if parts else None

    def pool_texts(self, ids) -> list[str]:
        return list(self.pool.texts(np.asarray(ids, dtype=np.int64)))

    def _encode(self, texts) -> torch.Tensor:
        enc = self.encoder
        out = enc.token_states(texts) if hasattr(enc, "token_states") else torch.as_tensor(enc.encode_tokens(texts))
        if out.device.type == "cpu" and self.device.type == "cuda":  # a host encoder: pinned, non-blocking copy
            return out.float().pin_memory().to(self.device, non_blocking=True)
        return out.to(self.device, torch.float32)

    def __call__(self, prompt_ids: np.ndarray, dropped: np.ndarray) -> torch.Tensor:
        n = len(prompt_ids)
        out = self.uncond.expand(n, *self.uncond.shape).clone()
        rows, cached = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        if self.ids.size:
            rows = np.minimum(np.searchsorted(self.ids, prompt_ids), self.ids.size - 1)
            cached = self.ids[rows] == prompt_ids
        use = cached & ~dropped
        if use.any():
            out[to_device(np.flatnonzero(use), self.device)] = self.table[to_device(rows[use], self.device)]
        fresh = ~cached & ~dropped
        if fresh.any():
            out[to_device(np.flatnonzero(fresh), self.device)] = self._encode(
                self.pool_texts(prompt_ids[fresh]))
        return out


@dataclass
class Forward:
    terms: dict[str, torch.Tensor]  # "task", "out", "feat/<i>": per-rank weighted sums (graph)
    stats: torch.Tensor  # flat: terms (detached), teacher feature mean squares, feedback sums, counts


class Reduced:
    """The all-reduced statistics of one step. On the device: ``device_finite`` (all loss terms finite)
    and ``device_scales`` (the feature-balance divisors of this step's loss). On the host, read on first
    access (waiting for the copy that ``Distiller.reduce`` started): ``finite``, ``terms``,
    ``teacher_ms``, ``scales`` and ``feedback``."""

    def __init__(self, payload: torch.Tensor, device_finite, device_scales, unpack):
        self.device_finite, self.device_scales = device_finite, device_scales
        self._unpack = unpack  # host float64 array -> (terms, teacher_ms, scales, feedback)
        if payload.device.type == "cuda":  # pinned host copy, awaited at the first read only
            self._host = torch.empty(payload.shape, dtype=payload.dtype, pin_memory=True)
            self._host.copy_(payload, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host, self._ready = payload, None
        self._values = None

    def _read(self):
        if self._values is None:
            if self._ready is not None:
                self._ready.synchronize()
            self._values = self._unpack(self._host.numpy())
        return self._values

    @property
    def terms(self) -> dict[str, float]:
        """Global values of the loss terms."""
        return self._read()[0]

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in self.terms.values())

    @property
    def teacher_ms(self) -> np.ndarray:
        """Per feature block, the global mean square of the teacher's features."""
        return self._read()[1]

    @property
    def scales(self) -> np.ndarray:
        """The feature-balance divisors this step's loss used."""
        return self._read()[2]

    @property
    def feedback(self) -> Feedback:
        return self._read()[3]


class Distiller:
    """The step: owns the teacher, the student (as wrapped by the backend), the feature pairs and
    the feature-balance scales. ``state_dict`` / ``load_state_dict`` carry the scales."""

    def __init__(self, *, teacher, student, backend, bundle, scheduler, pairs, config, seed, vae=None):
        self.teacher, self.student, self.backend = teacher, student, backend
        self.bundle, self.scheduler, self.config, self.seed, self.vae = bundle, scheduler, config, int(seed), vae
        self.pairs = list(pairs)
        self.device = backend.device
        self.num_timesteps = int(scheduler.config.num_train_timesteps)
        self.num_regions = int(bundle.region_info.num_regions)
        self.bins = int(config.timestep_bins)
        self.scaling = float(getattr(getattr(vae, "config", None), "scaling_factor", 1.0) or 1.0)
        self.contexts = ContextCache(bundle.encoder, bundle.pool, bundle.paired_prompt_ids, self.device,
                                     config.context_cache_mb)
        self.feature_scale = self._no_scales()  # float64 on the device, committed by ``loss``
        self.term_names = ["task", "out"] + [f"feat/{i}" for i in range(len(self.pairs))]
        # hooks stay for the whole run (stable for torch.compile); ``close`` removes them
        self.cap_t = FeatureCapture(teacher, [p.teacher_name for p in self.pairs]).__enter__()
        self.cap_s = FeatureCapture(student, [p.student_name for p in self.pairs]).__enter__()

    def close(self) -> None:
        self.cap_t.__exit__(None, None, None)
        self.cap_s.__exit__(None, None, None)

    # -- planning ---------------------------------------------------------------------------
    def draft(self, step: int, switches: bool) -> StepDraft:
        return draft_step(step, seed=self.seed, batch_size=self.config.batch_size, num_timesteps=self.num_timesteps,
                          config=self.config, bundle=self.bundle, switches=switches)

    def plan(self, draft: StepDraft, allocation) -> StepPlan:
        return plan_step(draft, allocation, seed=self.seed, config=self.config, bundle=self.bundle)

    def _noise(self, step: int, shape, part: slice) -> torch.Tensor:
        """Noise of the *global* batch from a (seed, step) generator, sliced: independent of the rank count."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(data_rng(self.seed, step, STREAM_NOISE).integers(2**62)))
        return torch.randn(shape, generator=gen, device=self.device)[part]

    def _x0(self, plan: StepPlan, part: slice) -> torch.Tensor:
        images = np.asarray(self.bundle.paired_images[plan.image_index[part]], dtype=np.float32)
        x0 = to_device(images, self.device)
        if self.vae is None:
            return x0
        with torch.inference_mode(), self.backend.autocast():
            posterior = self.vae.encode(x0.to(self.vae.dtype)).latent_dist
        # the posterior's draw (mean + std * noise) with the noise of the *global* batch from a (seed, step)
        # generator, sliced as ``_noise`` is: the same latents whatever the rank count
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(data_rng(self.seed, plan.step, STREAM_LATENT).integers(2**62)))
        noise = torch.randn((plan.size, *posterior.mean.shape[1:]), generator=gen, device=self.device)[part]
        return (posterior.mean.float() + posterior.std.float() * noise) * self.scaling

    # -- the forward ------------------------------------------------------------------------
    def forward(self, plan: StepPlan) -> Forward:
        b = self.backend
        part = plan.part(b.rank, b.world_size)
        dev = self.device
        x0 = self._x0(plan, part)
        noise = self._noise(plan.step, (plan.size, *x0.shape[1:]), part)
        t = to_device(plan.timesteps[part], dev)
        x_t = self.scheduler.add_noise(x0, noise, t)
        context = self.contexts(plan.prompt_ids[part], plan.dropped[part])

        paired = ~plan.switched
        n_paired = int(paired.sum())
        task_w = paired[part] / n_paired if n_paired else np.zeros(part.stop - part.start)
        kd_w = plan.kd_weight[part] / plan.kd_weight.sum()
        task_w, kd_w = to_device(task_w, dev, torch.float32), to_device(kd_w, dev, torch.float32)

        with torch.inference_mode(), b.autocast():
            dtype = self.teacher.dtype
            # fp32 copies now: with CUDA graphs the student's run may reuse the memory of the teacher's outputs
            eps_t = self.teacher(x_t.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample.to(
                torch.float32, copy=True)
            feats_t = [self.cap_t.outputs[p.teacher_name].to(torch.float32, copy=True) for p in self.pairs]
        with b.student_autocast():
            dtype = b.input_dtype
            eps_s = self.student(x_t.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample
        feats_s = [self.cap_s.outputs[p.student_name].float() for p in self.pairs]
        self.cap_t.outputs.clear(), self.cap_s.outputs.clear()  # the graph keeps what backward needs

        eps_s = eps_s.float()
        per_sample = lambda d: d.pow(2).flatten(1).mean(1)  # noqa: E731
        task = per_sample(eps_s - noise)
        out = per_sample(eps_s - eps_t)  # eps_t is an inference tensor: subtract first, never save it
        terms = {"task": (task * task_w).sum(), "out": (out * kd_w).sum()}
        teacher_ms = []
        for i, (fs, ft) in enumerate(zip(feats_s, feats_t)):
            terms[f"feat/{i}"] = (per_sample(fs - ft) * kd_w).sum()
            teacher_ms.append(ft.pow(2).mean() / b.world_size)
        # the global batch's per-sample discrepancy D_i, this rank's slice filled (zeros elsewhere): the
        # all-reduce assembles it exactly, whatever the rank count (B values, not K x bins sums and counts)
        samples = torch.zeros(plan.size, device=dev)
        samples[part] = out.detach()
        stats = torch.cat([torch.stack([v.detach() for v in terms.values()]),
                           torch.stack(teacher_ms) if teacher_ms else torch.zeros(0, device=dev), samples])
        return Forward(terms, stats)

    def _feedback(self, discrepancy: np.ndarray, plan: StepPlan, step: int) -> Feedback:
        """Per (region, timestep bin) sums and counts of D_i over the conditioned samples of the plan."""
        valid = plan.regions >= 0
        bins = np.minimum(plan.timesteps * self.bins // self.num_timesteps, self.bins - 1)
        return Feedback.from_samples(plan.regions[valid], discrepancy[valid], self.num_regions, bins[valid],
                                     self.bins, step)

    def reduce(self, out: Forward, plan: StepPlan) -> Reduced:
        """All-reduce the step statistics and start their copy to the host (not awaited here)."""
        stats = self.backend.all_reduce(out.stats, what="all-reduce of the step's losses and feedback")
        k, nb = len(self.term_names), len(self.pairs)
        finite = torch.isfinite(stats[:k]).all()
        scales = self._scales(stats[k:k + nb].double())
        payload = torch.cat([stats.double(), scales])

        def unpack(values: np.ndarray):
            terms = dict(zip(self.term_names, values[:k].tolist()))
            n = values.size - nb
            feedback = self._feedback(values[k + nb:n], plan, plan.step)
            return terms, values[k:k + nb], values[n:], feedback

        return Reduced(payload, finite, scales, unpack)

    # -- the loss ---------------------------------------------------------------------------
    def _no_scales(self) -> torch.Tensor:
        """The feature scales before any finite step: NaN per block."""
        return torch.full((len(self.pairs),), float("nan"), dtype=torch.float64, device=self.device)

    def _scales(self, teacher_ms: torch.Tensor) -> torch.Tensor:
        """Feature-balance divisors for this step (float64, on the device): the EMA of the teacher's
        mean squares, this step included; the step's own mean squares at the first step."""
        nb = len(self.pairs)
        if not self.config.feature_balance or nb == 0:
            return torch.ones(nb, dtype=torch.float64, device=self.device)
        ms = teacher_ms.clamp_min(1e-12)
        d = self.config.feature_balance_decay
        previous = self.feature_scale
        return torch.where(torch.isnan(previous), ms, d * previous + (1 - d) * ms)  # NaN: no finite step yet

    def loss(self, out: Forward, red: Reduced) -> torch.Tensor:
        """The loss to backpropagate (scaled by WORLD_SIZE for gradient averaging). Commits the
        feature-balance scales if the step is finite (decided on the device: no host read)."""
        c = self.config
        scales = red.device_scales
        self.feature_scale = torch.where(red.device_finite, scales, self.feature_scale)
        divisors = scales.float()
        feat = sum((out.terms[f"feat/{i}"] / divisors[i] for i in range(len(self.pairs))),
                   torch.zeros((), device=self.device))
        total = c.w_task * out.terms["task"] + c.w_out * out.terms["out"] + c.w_feat * feat
        return total * self.backend.world_size

    def logged(self, red: Reduced) -> dict[str, float]:
        """The step's loss and its terms as logged (host values: reads ``red``)."""
        c, terms = self.config, red.terms
        logged = {"task": terms["task"], "out": terms["out"],
                  "feat": float(sum(terms[f"feat/{i}"] / s for i, s in enumerate(red.scales)))}
        logged["loss"] = c.w_task * logged["task"] + c.w_out * logged["out"] + c.w_feat * logged["feat"]
        return logged

    def state_dict(self) -> dict:
        scale = self.feature_scale.cpu().numpy()
        if scale.size == 0 or np.isnan(scale).any():  # no feature pairs, or no finite step yet
            return {"feature_scale": None}
        return {"feature_scale": [float(x) for x in scale]}

    def load_state_dict(self, state: dict) -> None:
        scale = state.get("feature_scale")
        self.feature_scale = (self._no_scales() if scale is None
                              else torch.tensor(scale, dtype=torch.float64, device=self.device))


class WeightEMA:
    """Exponential moving average of the student's floating-point weights (kept in checkpoints)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().float().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, gate: torch.Tensor | None = None) -> None:
        """One EMA step; ``gate``: a device bool, False leaves the shadow unchanged (no host read)."""
        current = module.state_dict()
        keys = list(self.shadow)
        shadow, target = [self.shadow[k] for k in keys], [current[k].float() for k in keys]
        if gate is None:
            torch._foreach_lerp_(shadow, target, 1.0 - self.decay)
        else:
            weight = gate.float() * (1.0 - self.decay)
            torch._foreach_lerp_(shadow, target, [weight] * len(keys))

    def copy_to(self, module: torch.nn.Module) -> None:
        state = module.state_dict()
        with torch.no_grad():
            for k, v in self.shadow.items():
                state[k].copy_(v.to(state[k].dtype))
