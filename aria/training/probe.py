"""The fixed probe set and the probe discrepancy: what training logs and ``aria eval`` both measure.

A probe is (prompt, its image, a midpoint grid of timesteps, fixed noises), every piece derived
from ``eval.seed`` and the data config, never from the student; the discrepancy of a probe is the
mean over pixels of (eps_S - eps_T)^2, averaged over its timesteps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from aria.world.worlds import REGIME_NAMES


# -- probe set and sample prompts ---------------------------------------------------------------

def stratified_prompts(regime_of_prompt, region_of_prompt, n: int, rng: np.random.Generator) -> np.ndarray:
    """n pool indices: split evenly over the regimes present, then round-robin over the regions
    holding prompts of that regime (in random order), uniformly inside (region, regime)."""
    region = np.asarray(region_of_prompt, dtype=np.int64)
    regime = np.zeros(len(region), np.int8) if regime_of_prompt is None else np.asarray(regime_of_prompt)
    present = [r for r in np.unique(regime) if r >= 0]
    picks = []
    for i, r in enumerate(present):
        count = n // len(present) + (i < n % len(present))
        members = np.flatnonzero(regime == r)
        cells = {k: members[region[members] == k] for k in np.unique(region[members])}
        order = rng.permutation(list(cells))
        for j in range(count):
            cell = cells[order[j % len(order)]]
            picks.append(cell[rng.integers(len(cell))])
    return np.asarray(picks, dtype=np.int64)


@dataclass
class ProbeSet:
    prompt_ids: np.ndarray  # (N,) pool indices
    x0: np.ndarray  # (N, C, H, W) in the model's space (pixels, or latents of a latent teacher)
    timesteps: np.ndarray  # (J,) midpoint grid over the training timesteps
    noise: np.ndarray  # (N, J, C, H, W)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.prompt_ids, self.x0, self.timesteps, self.noise):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


def probe_images(bundle, prompt_ids: np.ndarray, seed: int) -> np.ndarray:
    """Images for the probe prompts: a world renders each prompt's item; other data sources use
    paired images drawn with ``seed`` (as switched conditions pair them)."""
    items = items_of_pool(bundle)
    if items is not None:
        from aria.world.shapes import to_tensor_range

        return to_tensor_range(world_of(bundle).render(items[prompt_ids], seed=seed))
    rng = np.random.default_rng([seed, 11])
    return np.asarray(bundle.paired_images[rng.integers(len(bundle.paired_images), size=len(prompt_ids))],
                      dtype=np.float32)


def build_probe_set(bundle, eval_config, num_train_timesteps: int, encode=None) -> ProbeSet:
    """The fixed probe set of ``eval_config`` (``encode``: pixels -> model space, for latent teachers)."""
    seed, n, j = eval_config.seed, eval_config.probe_images, eval_config.probe_timesteps
    ids = stratified_prompts(bundle.regime_of_prompt, bundle.region_of_prompt, n, np.random.default_rng([seed, 1]))
    x0 = probe_images(bundle, ids, seed)
    if encode is not None:
        x0 = encode(x0)
    timesteps = ((np.arange(j) + 0.5) * num_train_timesteps / j).astype(np.int64)
    noise = np.random.default_rng([seed, 2]).standard_normal((n, j, *x0.shape[1:]), dtype=np.float32)
    return ProbeSet(ids, x0.astype(np.float32), timesteps, noise)


def sample_prompt_ids(bundle, eval_config) -> np.ndarray:
    return stratified_prompts(bundle.regime_of_prompt, bundle.region_of_prompt, eval_config.sample_prompts,
                              np.random.default_rng([eval_config.seed, 3]))


@torch.no_grad()
def probe_eps(unet, probe: ProbeSet, contexts: dict, scheduler, batch: int) -> dict[str, np.ndarray]:
    """eps predictions (N, J, C, H, W) of ``unet`` on every (probe image, timestep), one array per
    context (name -> tensor (N, L, D), or (1, L, D) for every probe); the noisy input is
    ``scheduler.add_noise(x0, noise, t)`` and the contexts of ``batch`` inputs share one forward."""
    param = next(unet.parameters())
    n, j = probe.noise.shape[:2]
    out = {name: np.empty_like(probe.noise) for name in contexts}
    rows, steps = np.divmod(np.arange(n * j), j)  # probe-major, as the probe's digest orders them
    for s in range(0, n * j, batch):
        i, k = rows[s:s + batch], steps[s:s + batch]
        t = torch.from_numpy(probe.timesteps[k]).to(param.device)
        x0 = torch.from_numpy(probe.x0[i]).to(param.device)
        xt = scheduler.add_noise(x0, torch.from_numpy(probe.noise[i, k]).to(param.device), t)
        ctx = torch.cat([c[i] if len(c) == n else c.expand(len(i), *c.shape[1:]) for c in contexts.values()])
        m = len(contexts)
        pred = unet(xt.repeat(m, 1, 1, 1).to(param), t.repeat(m), encoder_hidden_states=ctx.to(param)).sample
        for name, eps in zip(contexts, pred.float().cpu().numpy().reshape(m, len(i), *pred.shape[1:])):
            out[name][i, k] = eps
    return out


def world_of(bundle):
    """The embedded world of a bundle's pool (``aria.world.worlds.World``), or None for user files."""
    from aria.world.worlds import world_of_pool

    return getattr(bundle, "world", None) or world_of_pool(bundle.pool)


def items_of_pool(bundle) -> np.ndarray | None:
    """The world item of every pool prompt, or None for a pool of user prompts."""
    world = world_of(bundle)
    return None if world is None else np.asarray(bundle.pool.meta(world.meta_key), dtype=np.int64)


def condition_discrepancy(student_cond, student_uncond, teacher_cond, teacher_uncond) -> np.ndarray:
    """D_c per probe and timestep: mean over pixels of ((eps_S(c) - eps_S(0)) - (eps_T(c) - eps_T(0)))^2.

    The part of the student-teacher gap that depends on the condition: a prompt-blind error (the
    same with and without the prompt) cancels, and a student equal to the teacher scores 0.
    Arrays (N, J, C, H, W); returns (N, J).
    """
    diff = (student_cond - student_uncond) - (teacher_cond - teacher_uncond)
    return (diff.astype(np.float64) ** 2).mean(axis=(2, 3, 4))


def guided_discrepancy(student_cond, student_uncond, teacher_cond, teacher_uncond, guidance: float) -> np.ndarray:
    """Per probe and timestep: mean over pixels of the squared error of the guided prediction
    eps(0) + g (eps(c) - eps(0)) that a sampler with classifier-free guidance g uses.

    g = 1 gives the probe discrepancy and g = 0 the prompt-blind error; as g grows it approaches g^2 D_c.
    Arrays (N, J, C, H, W); returns (N, J). At g = 1 it repeats the probe discrepancy (no shipped world
    config samples without guidance).
    """
    diff = guidance * (student_cond - teacher_cond) + (1 - guidance) * (student_uncond - teacher_uncond)
    return (diff.astype(np.float64) ** 2).mean(axis=(2, 3, 4))


# -- the per-regime probe -------------------------------------------------------------------------

@torch.no_grad()
def probe_discrepancy_by_regime(student, teacher, bundle, eval_config, scheduler, encode=None,
                                batch: int | None = None) -> dict:
    """Mean probe discrepancy and condition-specific discrepancy (``condition_discrepancy``) per regime.

    The probe set is ``build_probe_set`` of ``eval_config`` (prompts stratified over regimes and
    regions, rendered images, a midpoint timestep grid, fixed noise); the discrepancy of a probe is
    the mean over pixels of (eps_S - eps_T)^2, averaged over its timesteps. Returns
    ``{group: {"discrepancy": float, "cond_discrepancy": float, "probes": int}}`` for every regime
    present and ``all``.
    """
    probe = build_probe_set(bundle, eval_config, scheduler.config.num_train_timesteps, encode)
    texts = list(bundle.pool.texts(probe.prompt_ids))
    contexts = {"c": torch.as_tensor(bundle.encoder.encode_tokens(texts)),
                "u": torch.as_tensor(bundle.encoder.encode_tokens([""]))}
    batch = batch or eval_config.batch_size
    was = [m.training for m in (student, teacher)]
    student.eval(), teacher.eval()
    try:
        eps = {(who, c): e for who, model in (("s", student), ("t", teacher))
               for c, e in probe_eps(model, probe, contexts, scheduler, batch).items()}
    finally:
        student.train(was[0]), teacher.train(was[1])
    disc = ((eps["s", "c"] - eps["t", "c"]) ** 2).mean(axis=(1, 2, 3, 4))
    cond = condition_discrepancy(eps["s", "c"], eps["s", "u"], eps["t", "c"], eps["t", "u"]).mean(axis=1)
    groups = {}
    if bundle.regime_of_prompt is not None:
        regimes = np.asarray(bundle.regime_of_prompt)[probe.prompt_ids]
        groups = {name: regimes == r for r, name in enumerate(REGIME_NAMES) if (regimes == r).any()}
    groups["all"] = np.ones(len(disc), dtype=bool)
    return {name: {"discrepancy": float(disc[m].mean()), "cond_discrepancy": float(cond[m].mean()),
                   "probes": int(m.sum())} for name, m in groups.items()}


class RegionProbe:
    """A fixed probe set with ``per_region`` prompts of every non-empty region and the teacher's
    predictions on it, computed once; ``measure(student)`` gives the per-region mean discrepancy.

    What the ``oracle`` strategy allocates by (evaluation data, not the training feedback): the same
    probe construction as ``build_probe_set`` (rendered images, midpoint timesteps, fixed noise),
    its prompts drawn from ``eval.seed`` per region instead of per regime.
    """

    def __init__(self, bundle, teacher, eval_config, scheduler, per_region: int = 4, encode=None):
        seed, j = eval_config.seed, eval_config.probe_timesteps
        rng = np.random.default_rng([seed, 7])
        offsets, members = np.asarray(bundle.region_offsets), np.asarray(bundle.region_members)
        k = len(offsets) - 1
        ids, regions = [], []
        for r in range(k):
            inside = members[offsets[r]:offsets[r + 1]]
            if len(inside):
                ids.append(rng.choice(inside, per_region, replace=len(inside) < per_region))
                regions.append(np.full(per_region, r))
        ids, self.regions, self.num_regions = np.concatenate(ids), np.concatenate(regions), k
        x0 = probe_images(bundle, ids, seed)
        if encode is not None:
            x0 = encode(x0)
        timesteps = ((np.arange(j) + 0.5) * scheduler.config.num_train_timesteps / j).astype(np.int64)
        noise = np.random.default_rng([seed, 8]).standard_normal((len(ids), j, *x0.shape[1:]), dtype=np.float32)
        self.probe = ProbeSet(ids, x0.astype(np.float32), timesteps, noise)
        self.contexts = {"c": torch.as_tensor(bundle.encoder.encode_tokens(list(bundle.pool.texts(ids)))),
                         "u": torch.as_tensor(bundle.encoder.encode_tokens([""]))}
        self.scheduler, self.batch = scheduler, eval_config.batch_size
        self.teacher = probe_eps(teacher, self.probe, self.contexts, scheduler, self.batch)

    @torch.no_grad()
    def measure(self, student, metric: str = "discrepancy") -> np.ndarray:
        """Per-region mean probe ``discrepancy`` or ``cond_discrepancy`` of ``student`` (NaN: no probe)."""
        was = student.training
        student.eval()
        try:
            if metric == "cond_discrepancy":
                s = probe_eps(student, self.probe, self.contexts, self.scheduler, self.batch)
                per_probe = condition_discrepancy(s["c"], s["u"], self.teacher["c"], self.teacher["u"]).mean(1)
            else:
                s_c = probe_eps(student, self.probe, {"c": self.contexts["c"]}, self.scheduler, self.batch)["c"]
                per_probe = ((s_c - self.teacher["c"]).astype(np.float64) ** 2).mean(axis=(1, 2, 3, 4))
        finally:
            student.train(was)
        sums = np.bincount(self.regions, weights=per_probe, minlength=self.num_regions)
        counts = np.bincount(self.regions, minlength=self.num_regions)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
