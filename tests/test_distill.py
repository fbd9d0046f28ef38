"""The distillation step: switch schedules, the plan, per-rank slicing, loss terms and feedback."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from aria.config import DistillConfig
from aria.training.distill import ContextCache, Distiller, WeightEMA, plan_with, switch_probability
from aria.models import build_student, feature_pairs
from aria.strategies import Feedback, RegionInfo, create_strategy

torch.set_num_threads(1)


def plan_of(distiller, step, strategy, state):
    """The training loop's planning: draft, allocate, plan."""
    draft = distiller.draft(step, strategy.switches)
    allocation = strategy.allocate(state, step, draft.num_switched) if draft.num_switched else None
    return distiller.plan(draft, allocation)


def test_switch_schedules():
    t = np.array([0, 700, 1000])
    np.testing.assert_allclose(switch_probability(t, 1000, "exp", 5.0, 0), np.exp([-5.0, -1.5, 0.0]))
    np.testing.assert_allclose(switch_probability(t, 1000, "sigmoid", 0, 0), 1 / (1 + np.exp([14.0, 0.0, -6.0])))
    np.testing.assert_allclose(switch_probability(t, 1000, "constant", 0, 0.3), [0.3] * 3)


def plan(bundle, strategy="aria", step=3, params=None, **cfg):
    config = DistillConfig(batch_size=16, cfg_dropout=0.2, switch_schedule="constant", switch_constant=0.5, **cfg)
    s = create_strategy(strategy, params)
    state = s.init(bundle.region_info, 0)
    if strategy == "aria":  # past the warm start: the allocation follows the estimates
        state["visits"][:] = 1
        state["estimate"][:] = np.arange(len(state["estimate"])) + 1.0
    return plan_with(s, state, step, seed=0, batch_size=16, num_timesteps=1000, config=config, bundle=bundle)


def test_plan_is_a_function_of_seed_and_step(world):
    bundle, _ = world
    a, b, c = plan(bundle), plan(bundle), plan(bundle, step=4)
    for field in ("image_index", "prompt_ids", "timesteps", "switched", "dropped", "regions"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.timesteps, c.timesteps)


def test_switched_prompts_come_from_the_allocated_regions(world):
    bundle, _ = world
    p = plan(bundle)
    assert p.switched.any() and (~p.switched).any()
    paired = bundle.paired_prompt_ids[p.image_index]
    np.testing.assert_array_equal(p.prompt_ids[~p.switched], paired[~p.switched])
    own = bundle.region_of_prompt[p.prompt_ids]
    np.testing.assert_array_equal(p.regions, np.where(p.dropped, -1, own))  # CFG-dropped: no feedback
    assert p.probabilities is not None and p.probabilities.shape == (bundle.region_info.num_regions,)


def test_none_never_switches_and_feedback_from_switched(world):
    bundle, _ = world
    p = plan(bundle, "none")
    assert not p.switched.any() and p.probabilities is None
    q = plan(bundle, feedback_from="switched")
    assert (q.regions[~q.switched] == -1).all() and (q.regions[q.switched & ~q.dropped] >= 0).all()


def test_exp3_learns_from_its_own_draws_only_whatever_feedback_from_says(world):
    """EXP3 weights a region's reward by 1 / p_k, which holds only for samples drawn from p: the plan feeds it
    switched samples even with ``feedback_from: all``, and other strategies what the setting says."""
    bundle, _ = world
    e = plan(bundle, "exp3")
    assert e.switched.any() and (~e.switched & ~e.dropped).any()
    assert (e.regions[~e.switched] == -1).all() and (e.regions[e.switched & ~e.dropped] >= 0).all()
    a = plan(bundle, "rc")
    assert (a.regions[~a.switched & ~a.dropped] >= 0).all()


def test_exp3_fed_by_the_plan_does_not_starve_regions_without_paired_data():
    """Every region equally hard, paired captions in half of the regions: EXP3 fed as the engine feeds it
    (``plan_with``, ``feedback_from: all``) keeps every region near uniform. Fed with the paired samples too,
    its importance weights inflate the paired regions and the others sink to the floor."""
    k, batch = 8, 64
    paired_regions = np.array([0, 0, 0, 0, 1, 1, 2, 3])  # paired captions in regions 0-3 only
    offsets = np.arange(0, 10 * k + 1, 10)
    bundle = SimpleNamespace(paired_prompt_ids=paired_regions * 10, region_offsets=offsets,
                             region_members=np.arange(10 * k), region_of_prompt=np.repeat(np.arange(k), 10))
    config = DistillConfig(batch_size=batch, cfg_dropout=0.1)
    noise = np.random.default_rng(0)

    def allocation_after(own_draws_only: bool):
        s = create_strategy("exp3")
        if not own_draws_only:
            s.learns_from = None  # as before 2026-12-07: fed what feedback_from says
        state, seen = s.init(RegionInfo(np.full(k, 10)), 0), []
        for step in range(1500):
            p = plan_with(s, state, step, seed=0, batch_size=batch, num_timesteps=1000, config=config, bundle=bundle)
            valid = p.regions >= 0
            values = noise.gamma(4.0, 0.25, batch)  # the same mean discrepancy in every region
            state = s.update(state, Feedback.from_samples(p.regions[valid], values[valid], k, step=step))
            seen.append(s.probabilities(state))
        return np.mean(seen[500:], axis=0)  # the allocation's mean after the first 500 steps

    engine = allocation_after(own_draws_only=True)
    biased = allocation_after(own_draws_only=False)
    unpaired = slice(4, None)
    assert 0.8 / k < engine[unpaired].mean() < 1.2 / k and engine.min() > 0.5 / k, engine
    assert biased[unpaired].mean() < 0.6 / k, biased


def test_importance_weights_apply_to_switched_samples_only(world):
    bundle, _ = world
    p = plan(bundle, params={"importance_exponent": 1.0}, importance_weights=True)
    share = bundle.region_info.shares
    expected = share[p.regions[p.switched & ~p.dropped]] / p.probabilities[p.regions[p.switched & ~p.dropped]]
    np.testing.assert_allclose(p.kd_weight[p.switched & ~p.dropped], expected)
    assert (p.kd_weight[~p.switched] == 1).all() and not np.allclose(expected, 1)
    off = plan(bundle, params={"importance_exponent": 1.0})
    assert (off.kd_weight == 1).all()


@pytest.mark.parametrize("budget_mb", [1024, 0])
def test_context_cache_gives_the_encoder_contexts(world, budget_mb):
    bundle, _ = world
    enc = bundle.encoder
    cache = ContextCache(enc, bundle.pool, bundle.paired_prompt_ids, torch.device("cpu"), budget_mb)
    assert cache.ids.size == (len(np.unique(bundle.paired_prompt_ids)) if budget_mb else 0)
    unpaired = int(np.flatnonzero(bundle.regime_of_prompt != 0)[0])
    ids = np.array([bundle.paired_prompt_ids[0], unpaired, bundle.paired_prompt_ids[3]])
    out = cache(ids, np.array([False, False, True]))
    torch.testing.assert_close(out[:2], enc.token_states(bundle.pool.texts(ids[:2])))
    torch.testing.assert_close(out[2], enc.token_states([""])[0])  # CFG dropout: the empty prompt


class FakeRank:
    """A backend of one rank of ``world`` processes whose all-reduce is the identity."""

    input_dtype = torch.float32

    def __init__(self, rank=0, world=1):
        self.rank, self.world_size, self.device = rank, world, torch.device("cpu")

    def autocast(self):
        return contextlib.nullcontext()

    student_autocast = autocast

    def all_reduce(self, t, what="all_reduce"):
        return t


def distiller(world, backend, **cfg):
    bundle, teacher = world
    torch.manual_seed(0)
    student, _ = build_student(teacher.unet,
                               SimpleNamespace(variant="small", channel_scale=0.5, init_from_teacher=True))
    config = DistillConfig(batch_size=8, timestep_bins=4, cfg_dropout=0.25, switch_schedule="constant", **cfg)
    return Distiller(teacher=teacher.unet, student=student, backend=backend, bundle=bundle,
                     scheduler=DDPMScheduler.from_config(teacher.scheduler_config),
                     pairs=feature_pairs(teacher.unet, student), config=config, seed=0), student


def test_rank_slices_add_up_to_the_global_batch(world):
    """Per-rank terms are weighted so that their sum over ranks is the global-batch value."""
    s = create_strategy("aria")
    state = s.init(world[0].region_info, 0)
    full, _ = distiller(world, FakeRank())
    p = plan_of(full, 2, s, state)
    whole = full.forward(p).stats
    halves = sum(distiller(world, FakeRank(r, 2))[0].forward(p).stats for r in (0, 1))
    k = len(full.term_names)
    np.testing.assert_allclose(halves[:k].numpy(), whole[:k].numpy(), rtol=1e-5)  # loss terms
    nb = len(full.pairs)
    np.testing.assert_allclose(halves[k + nb:].numpy(), whole[k + nb:].numpy(), rtol=1e-5)  # per-sample D


def test_latent_draws_of_rank_slices_add_up_to_the_global_batch(world):
    """A latent teacher's posterior draws are a function of (seed, step) for the global batch, sliced per rank:
    the same latents with one rank or two."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8,), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4).eval()
    s = create_strategy("rc")
    state = s.init(world[0].region_info, 0)
    full, _ = distiller(world, FakeRank())
    p = plan_of(full, 3, s, state)
    latents = []
    for rank, size in ((0, 1), (0, 2), (1, 2)):
        d, _ = distiller(world, FakeRank(rank, size))
        d.vae = vae
        latents.append(d._x0(p, p.part(rank, size)))
    whole, halves = latents[0], torch.cat(latents[1:])
    assert whole.shape[0] == p.size and whole.shape[1] == 4
    torch.testing.assert_close(halves, whole, rtol=1e-5, atol=1e-6)
    again, _ = distiller(world, FakeRank())
    again.vae = vae
    assert not torch.equal(again._x0(plan_of(again, 4, s, state), p.part(0, 1)), whole)  # another step, other draws


def test_feedback_counts_every_conditioned_sample_per_region_and_bin(world):
    s = create_strategy("rc")
    d, _ = distiller(world, FakeRank())
    p = plan_of(d, 5, s, s.init(world[0].region_info, 0))
    red = d.reduce(d.forward(p), p)
    assert red.finite and red.feedback.step == 5
    counts = red.feedback.counts
    assert counts.sum() == (~p.dropped).sum()
    for i in np.flatnonzero(~p.dropped):
        assert counts[p.regions[i], p.timesteps[i] * 4 // 1000] >= 1
    assert (red.feedback.sums[counts == 0] == 0).all() and (red.feedback.sums[counts > 0] > 0).all()


def test_loss_combines_the_weighted_terms_and_trains(world):
    s = create_strategy("aria")
    d, student = distiller(world, FakeRank(), w_task=0.5, w_out=2.0, w_feat=0.1)
    state = s.init(world[0].region_info, 0)
    plan0 = plan_of(d, 0, s, state)
    out = d.forward(plan0)
    red = d.reduce(out, plan0)
    loss = d.loss(out, red)
    logged = d.logged(red)
    np.testing.assert_allclose(d.state_dict()["feature_scale"], red.teacher_ms)  # first step: the step's own
    np.testing.assert_allclose(red.scales, red.teacher_ms)
    expected = 0.5 * red.terms["task"] + 2.0 * red.terms["out"] + 0.1 * logged["feat"]
    assert loss.item() == pytest.approx(expected, rel=1e-5) and logged["loss"] == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in world[1].unet.parameters())  # the teacher never gets gradients
    before = np.array(d.state_dict()["feature_scale"])
    plan1 = plan_of(d, 1, s, state)
    red2 = d.reduce(d.forward(plan1), plan1)
    d.loss(d.forward(plan_of(d, 1, s, state)), red2)
    np.testing.assert_allclose(d.state_dict()["feature_scale"], 0.99 * before + 0.01 * red2.teacher_ms)
    np.testing.assert_allclose(red2.scales, d.state_dict()["feature_scale"])


def test_a_non_finite_step_leaves_the_feature_scales_unchanged(world):
    """The scales are committed on the device, gated by the step's finite flag (no host read)."""
    bundle, teacher = world
    s = create_strategy("rc")
    d, _ = distiller((bundle, teacher), FakeRank())
    state = s.init(bundle.region_info, 0)
    plan = plan_of(d, 0, s, state)
    out = d.forward(plan)
    d.loss(out, d.reduce(out, plan))
    committed = d.state_dict()["feature_scale"]
    bundle.paired_images[:] = np.nan
    plan = plan_of(d, 1, s, state)
    out = d.forward(plan)
    red = d.reduce(out, plan)
    assert not bool(red.device_finite) and not torch.isfinite(d.loss(out, red))
    assert d.state_dict()["feature_scale"] == committed
    d.load_state_dict({"feature_scale": None})
    out = d.forward(plan)
    d.loss(out, d.reduce(out, plan))
    assert d.state_dict() == {"feature_scale": None}  # no finite step yet


def test_nan_input_is_reported_non_finite(world):
    bundle, teacher = world
    bundle.paired_images[:] = np.nan
    s = create_strategy("rc")
    d, _ = distiller((bundle, teacher), FakeRank())
    plan = plan_of(d, 0, s, s.init(bundle.region_info, 0))
    assert not d.reduce(d.forward(plan), plan).finite


def test_weight_ema():
    m = torch.nn.Linear(2, 2)
    ema = WeightEMA(m, 0.9)
    start = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)
    torch.testing.assert_close(ema.shadow["weight"], start["weight"] + 0.1)
    target = torch.nn.Linear(2, 2)
    ema.copy_to(target)
    torch.testing.assert_close(target.weight, ema.shadow["weight"])
