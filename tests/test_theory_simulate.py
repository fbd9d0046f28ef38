"""The simulation drives the real aria strategy, and the check holds where it should and fails where it must."""

from collections import deque

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from aria.errors import UserError
from aria.strategies import Feedback, RegionInfo, list_strategies
from aria.theory import bounds as Bd
from aria.theory.config import load_config
from aria.theory.simulate import Stream, aria, run_allocation, run_every_step, run_sampled
from aria.theory.sweep import Row, allocation_params, allocation_setup, allocation_summary, judge, strategies_to_compare

FEW = settings(max_examples=6, deadline=None, derandomize=True)


def test_every_step_run_is_the_ema_with_delayed_reads():
    s = Stream("sinusoid", "gaussian", 0.2, 0.003, regions=3, seeds=2, steps=300)
    out = run_every_step(0.1, [s], burn=50, max_delay=2)[0]["mse"]
    d = s.truth().reshape(300, -1)
    y = d + s.noise_draws(3).reshape(300, -1)
    m = [y[0]]
    for t in range(1, 300):
        m.append(0.9 * m[-1] + 0.1 * y[t])
    m = np.array(m)
    for lag in range(3):
        ref = np.mean((m[50 - lag:300 - lag] - d[50:]) ** 2, axis=0).reshape(2, 3)
        assert np.allclose(out[lag], ref, rtol=1e-9, atol=1e-15)


def reference_sampled(alpha, eps, draws, delay, s, burn):
    """One strategy instance per seed, real allocate/update, feedback ``delay`` steps late."""
    truth, noise = s.truth(), s.noise_draws(draws)
    shift = max(0.0, -(truth.min() + noise.min()))
    strategy = aria(alpha, eps)
    mse = np.zeros((s.seeds, s.regions))
    for i in range(s.seeds):
        state = strategy.init(RegionInfo(np.ones(s.regions, dtype=np.int64)), s.seed * 1000 + i)
        hist = deque([state], maxlen=delay + 1)
        for t in range(s.steps):
            alloc = strategy.allocate(hist[0], t, draws)
            y = truth[t, i, alloc.regions] + noise[t, i] + shift
            state = strategy.update(state, Feedback.from_samples(alloc.regions, y, s.regions, step=t))
            hist.append(state)
            if t >= burn:
                mse[i] += (hist[0]["estimate"] - shift - truth[t, i]) ** 2
    return mse / (s.steps - burn)


@pytest.mark.parametrize("delay", [0, 1, 2])
def test_batched_sampled_run_equals_one_instance_per_seed(delay):
    s = Stream("random_walk", "gaussian", 0.5, 0.003, regions=5, seeds=3, steps=250, seed=4)
    got = run_sampled(0.2, 0.3, 2, delay, s, burn=30)["mse"]
    assert np.array_equal(got, reference_sampled(0.2, 0.3, 2, delay, s, burn=30))


def test_sampled_regions_are_updated_at_least_at_p_min():
    s = Stream("linear", "uniform", 0.1, 0.002, regions=8, seeds=2, steps=1000)
    rate = run_sampled(0.1, 0.2, 2, 0, s, burn=100)["rate"]
    p = Bd.update_probability(0.2, 8, 2)
    assert rate.min() >= p - 4 * np.sqrt(p / 1000)


def measured(kind, s, alpha, delay, burn, eps=1.0, draws=1):
    if kind == "every":
        mse = run_every_step(alpha, [s], burn, delay)[0]["mse"][delay]
        bound = Bd.window_bound(alpha, s.sigma, s.delta, 1.0, delay, burn, s.steps)
        p = 1.0
    else:
        mse = run_sampled(alpha, eps, draws, delay, s, burn)["mse"]
        p = Bd.update_probability(eps, s.regions, draws)
        t0 = Bd.warmup_steps(s.regions, eps, draws, delay, Bd.warmup_eta(0.999, s.seeds))
        assert burn >= t0 + delay, (burn, t0)  # as the config validator demands
        bound = Bd.window_bound(alpha, s.sigma, s.delta, p, delay, burn, s.steps, t0)
    row = Row(kind, s.process, s.noise, alpha, s.sigma, s.delta, delay, s.regions, s.seeds, eps, draws, p)
    return judge(row, mse, bound, 0.999, cells=kind == "every")


@FEW
@given(st.floats(0.02, 0.6), st.floats(0.05, 0.5), st.floats(1e-4, 5e-3), st.integers(0, 1))
def test_every_step_linear_trend_is_within_and_the_bound_is_tight(alpha, sigma, delta, delay):
    s = Stream("linear", "gaussian", sigma, delta, regions=8, seeds=8, steps=1200, seed=11)
    row = measured("every", s, alpha, delay, 300)
    assert row.within, row
    assert row.ratio > 0.65  # the worst-case drift: Minkowski costs at most 1/sqrt(2)


@FEW
@given(st.floats(0.05, 0.5), st.floats(0.05, 0.3), st.floats(5e-4, 5e-3), st.sampled_from([0.3, 1.0]),
       st.sampled_from(["linear", "sinusoid", "piecewise"]))
def test_sampled_runs_are_within(alpha, sigma, delta, eps, process):
    s = Stream(process, "gaussian", sigma, delta, regions=4, seeds=5, steps=500, seed=5)
    row = measured("sampled", s, alpha, 1, 150, eps, 1)
    assert row.within, row
    if eps == 1.0 and process == "linear":  # oblivious updates at exactly p_min, worst-case drift
        assert row.ratio > 0.6, row


@pytest.mark.parametrize("delay", [0, 1])
def test_sampled_bound_is_tight_for_oblivious_updates_and_the_worst_drift(delay):
    s = Stream("linear", "gaussian", 0.1, 0.002, regions=4, seeds=5, steps=600, seed=2)
    row = measured("sampled", s, 0.1, delay, 200, eps=1.0, draws=1)
    assert row.within and row.ratio > 0.65, row


def test_the_check_fails_on_jumps_heavy_tails_and_a_halved_bound():
    jumps = Stream("jumps", "gaussian", 0.1, 0.0005, regions=4, seeds=8, steps=1500, jump=0.5, jump_every=300)
    assert not measured("every", jumps, 0.05, 0, 300).within
    heavy = Stream("random_walk", "heavy_t", 0.1, 0.0005, regions=4, seeds=8, steps=1500, df=1.5)
    assert not measured("every", heavy, 0.1, 0, 300).within
    lin = Stream("linear", "gaussian", 0.2, 0.002, regions=4, seeds=8, steps=1000)
    row = measured("every", lin, 0.05, 0, 300)
    assert row.within and not judge(row, run_every_step(0.05, [lin], 300, 0)[0]["mse"][0],
                                    row.bound / 2, 0.999, cells=True).within


def test_aria_lowers_the_worst_region_more_than_uniform_on_the_coupled_process():
    cfg = load_config(None, quick=True)
    setup = allocation_setup(cfg)
    names = strategies_to_compare(cfg)
    assert {"aria", "uniform", "rc"} <= set(names) and "none" not in names
    common = dict(sizes=setup["sizes"], start=setup["start"], floor=setup["floor"], delta=0.01, sigma=0.1,
                  noise_law="uniform", draws=4, steps=400, seeds=2)
    worst = {n: run_allocation(n, p, **common)["final"].max(1).mean()
             for n, p in [("aria", {"alpha": 0.1, "eps": 0.2, "timestep_norm": False}), ("uniform", {})]}
    assert worst["aria"] < worst["uniform"] - 0.05


# -- warm-up: every region observed by t0 (theory/README.md, "warm-up") ---------------------------

def unvisited_after(steps, regions, eps, draws, delay, seeds):
    """Seeds of the real aria (warm start, feedback ``delay`` steps late) with a region unobserved after ``steps``."""
    strategy = aria(0.1, eps)
    late = 0
    for seed in range(seeds):
        state = strategy.init(RegionInfo(np.ones(regions, dtype=np.int64)), seed)
        hist = deque([state], maxlen=delay + 1)
        for t in range(steps):
            r = strategy.allocate(hist[0], t, draws).regions
            state = strategy.update(state, Feedback.from_samples(r, np.ones(r.size), regions, step=t))
            hist.append(state)
        late += bool((np.asarray(state["visits"]) == 0).any())
    return late


@pytest.mark.parametrize("regions,eps,draws,delay,seeds", [
    (8, 1.0, 2, 0, 1000),   # eps = 1: warm start does nothing, the floor argument
    (16, 1.0, 1, 1, 300),   # the reviewer's design, with a delay
    (4, 0.5, 1, 1, 1000),   # the warm-start argument in blocks of D + 1 steps
    (16, 0.3, 4, 1, 400),
])
def test_warmup_steps_hold_for_the_real_strategy(regions, eps, draws, delay, seeds):
    eta = 0.1  # large, so that a direct simulation can see the probability it bounds
    t0 = Bd.warmup_steps(regions, eps, draws, delay, eta)
    late = unvisited_after(t0, regions, eps, draws, delay, seeds)
    assert binom.sf(late - 1, seeds, eta) > 1e-3, (t0, late / seeds)  # late / seeds <= eta within sampling error
    if eps == 1.0:  # the old t0 = (D + 1) K: most seeds still miss a region
        assert unvisited_after((delay + 1) * regions, regions, eps, draws, delay, 200) > 100


def test_warmup_steps_take_the_better_of_the_two_arguments():
    floor = lambda k, eps, b, eta: int(np.ceil(np.log(k / eta) / (-b * np.log1p(-eps / k))))  # noqa: E731
    assert Bd.warmup_steps(16, 1.0, 1, 0, 1e-5) == floor(16, 1.0, 1, 1e-5)  # warm start adds nothing at eps = 1
    assert Bd.warmup_steps(16, 1.0, 1, 3, 1e-5) == floor(16, 1.0, 1, 1e-5)  # the floor argument ignores the delay
    t0 = Bd.warmup_steps(16, 0.3, 4, 1, 1e-5)
    assert t0 < floor(16, 0.3, 4, 1e-5) and t0 % 2 == 0 and t0 >= 2 * 16  # whole blocks of D + 1 steps, >= K
    assert Bd.warmup_steps(1, 0.5, 1, 2, 1e-5) == 1
    assert Bd.warmup_steps(8, 1.0, 2, 0, 1e-3) < Bd.warmup_steps(8, 1.0, 2, 0, 1e-6)


REVIEWED = {"sampled": {"designs": [[16, 1.0, 1]], "burn_in": 32, "steps": 60, "delays": [0, 1]}}


def test_reviewers_warm_start_config_is_rejected(tmp_path):
    path = tmp_path / "warm.yaml"
    path.write_text(yaml.safe_dump(REVIEWED))
    for quick in (False, True):
        with pytest.raises(UserError, match=r"sampled.burn_in 32 is shorter than the warm-up of design \[16, 1, 1\]"):
            load_config(path, quick=quick)


@pytest.mark.parametrize("delay", [0, 1])
def test_reviewers_design_is_within_the_bound_from_the_burn_in_the_validator_asks(delay):
    seeds = 40
    t0 = Bd.warmup_steps(16, 1.0, 1, delay, Bd.warmup_eta(0.999, seeds))
    s = Stream("linear", "gaussian", 0.2, 0.002, regions=16, seeds=seeds, steps=t0 + delay + 60, seed=0)
    row = measured("sampled", s, 0.1, delay, t0 + delay, eps=1.0, draws=1)
    assert row.within, row


# -- the allocation check: a real oracle, one floor for all ----------------------------------------

def test_the_oracle_observes_the_true_discrepancy_and_every_floor_is_the_configured_one():
    cfg = load_config(None, quick=True)
    cfg = cfg.model_copy(update={"allocation": cfg.allocation.model_copy(update={"eps": 0.35})})
    names = strategies_to_compare(cfg)
    for name in names:
        params = allocation_params(name, cfg)
        has_floor = "eps" in list_strategies()[name].Config.model_fields
        assert params.get("eps") == (0.35 if has_floor else None), (name, params)
    assert {"aria", "oracle", "dts", "ducb", "swucb", "invfreq"} <= set(names)
    setup = allocation_setup(cfg)
    common = dict(sizes=setup["sizes"], start=setup["start"], floor=setup["floor"], delta=0.01, sigma=0.1,
                  noise_law="uniform", draws=4, steps=50, seeds=2)
    res = run_allocation("oracle", allocation_params("oracle", cfg), trace=True, **common)
    assert res["measurements"] == 50  # measured at every step, before allocating it
    start = setup["start"]  # the true discrepancy at step 0
    assert np.allclose(res["probabilities"][0], 0.65 * start / start.sum() + 0.35 / start.size)
    uniform = run_allocation("uniform", {}, **common)
    assert res["final"].max(1).mean() < uniform["final"].max(1).mean()
    rows = allocation_summary({"oracle": {**res, "params": allocation_params("oracle", cfg)}})
    assert rows[0]["eps"] == 0.35 and rows[0]["measurements"] == 50
