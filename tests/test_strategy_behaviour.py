"""Strategies on a synthetic discrepancy process: one region of K=16 is persistently 3x harder.

Per-sample discrepancy = level[region] * timestep factor (grows over 10 bins, as the real one
does with t) * gamma noise (relative std 0.5); 256 draws per step.
"""

from __future__ import annotations

import numpy as np
import pytest

from aria.strategies import Feedback, RegionInfo, create_strategy

K, HOT, DRAWS, BINS = 16, 5, 256, 10
ADAPTIVE = ["aria", "exp3", "ducb", "swucb", "dts"]
SIZES = np.random.default_rng(3).integers(500, 1500, K)
SIZES[HOT] = int(np.median(SIZES))  # the hot region is neither large nor small: RC gives it ~1/K
TIMESTEP_FACTOR = np.linspace(0.2, 2.0, BINS)


def simulate(name: str, levels: np.ndarray, late: bool = False, params: dict | None = None) -> np.ndarray:
    """Allocation probabilities per step (steps, K); ``levels`` (steps, K) is the true discrepancy.

    With ``late``, step s is allocated before the feedback of step s-1 is applied.
    """
    strategy = create_strategy(name, params)
    state = strategy.init(RegionInfo(SIZES), seed=0)
    rng = np.random.default_rng(1)
    history, pending = [], None
    for step, level in enumerate(levels):
        alloc = strategy.allocate(state, step, DRAWS)
        history.append(alloc.probabilities)
        bins = rng.integers(0, BINS, DRAWS)
        values = level[alloc.regions] * TIMESTEP_FACTOR[bins] * rng.gamma(4.0, 0.25, DRAWS)
        feedback = Feedback.from_samples(alloc.regions, values, K, bins, BINS, step)
        if late:
            feedback, pending = pending, feedback
        if feedback is not None:
            state = strategy.update(state, feedback)
    return np.array(history)


def hot_levels(steps: int, hot_until: int | None = None) -> np.ndarray:
    levels = np.ones((steps, K))
    levels[:hot_until, HOT] = 3.0
    return levels


@pytest.mark.parametrize("late", [False, True], ids=["prompt-feedback", "late-feedback"])
@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_strategies_favour_the_hard_region(name, late):
    p = simulate(name, hot_levels(300), late=late)
    hot_share = p[200:, HOT].mean()
    assert hot_share > 2.5 / K, f"{name}: {hot_share:.3f} on the hard region"
    assert (np.delete(p[200:], HOT, axis=1).mean(0) < 1.0 / K).all()


@pytest.mark.parametrize("name", ["rc", "uniform", "invfreq"])
def test_static_strategies_ignore_the_discrepancy(name):
    p = simulate(name, hot_levels(300))
    assert p[200:, HOT].mean() < 1.5 / K
    assert (p[200:] == p[200]).all()  # no feedback reaches the allocation


@pytest.mark.parametrize("frequency", ["paired", "pool"])
def test_invfreq_is_the_floored_inverse_frequency(frequency):
    sizes, paired = np.array([40, 0, 10, 25, 5]), np.array([30, 0, 0, 4, 1])
    strategy = create_strategy("invfreq", {"frequency": frequency, "power": 1.5, "pseudo_count": 2.0, "eps": 0.1})
    p = strategy.probabilities(strategy.init(RegionInfo(sizes, paired), seed=0))
    counts = paired if frequency == "paired" else sizes
    active = sizes > 0
    weights = [(c + 2.0) ** -1.5 if a else 0.0 for c, a in zip(counts, active)]  # written out: the docstring's rule
    expected = [0.9 * w / sum(weights) + (0.1 / active.sum() if a else 0.0) for w, a in zip(weights, active)]
    assert p == pytest.approx(expected, rel=1e-12)
    unknown = create_strategy("invfreq").init(RegionInfo(sizes), seed=0)  # no paired counts: region-uniform
    assert create_strategy("invfreq").probabilities(unknown) == pytest.approx(np.where(active, 1 / active.sum(), 0))
    with pytest.raises(ValueError, match="paired counts must be 5 non-negative integers"):
        RegionInfo(sizes, paired[:4])


def test_aria_forgets_within_c_over_alpha_steps():
    """After the region gets easy, ARIA's EMA keeps (1 - alpha)^t <= exp(-alpha t) of the old gap.

    With c = 5, c/alpha steps leave exp(-5) < 1% of the 2x excess (~1.3% of the level), below
    the tracker's own noise; the floor keeps the region observed at every step, so the EMA does
    move at every step. Near = within 25% of the other regions' median probability.
    """
    alpha, c, drop = 0.05, 5.0, 300
    p = simulate("aria", hot_levels(drop + 120, hot_until=drop), params={"alpha": alpha})
    others = np.median(np.delete(p, HOT, axis=1), axis=1)
    assert p[drop, HOT] > 4 * others[drop]  # it had been favoured
    back = drop + int(c / alpha)
    assert p[back, HOT] < 1.25 * others[back]
    assert p[drop + 10, HOT] > 1.25 * others[drop + 10]  # and it is the EMA, not a reset, that forgets


@pytest.mark.parametrize("window", [1, 2, 5, 8, 40])
def test_swucb_window_totals_are_the_sums_of_the_last_window_steps(window):
    """The sum tree gives the totals of exactly the last ``window`` updates (no running subtraction:
    a huge value that left the window leaves no trace), and an update shares untouched nodes."""
    strategy = create_strategy("swucb", {"window": window})
    state = strategy.init(RegionInfo(SIZES), seed=0)
    rng = np.random.default_rng(window)
    history = []
    for step in range(3 * window + 2):
        sums = rng.gamma(2.0, 1.0, (K, BINS)) * (rng.random((K, BINS)) < 0.3)
        if step == 1:
            sums[3, 0] = 1e150
        counts = np.where(sums > 0, rng.integers(1, 4, (K, BINS)), 0).astype(float)
        previous, state = state, strategy.update(state, Feedback(sums, counts, step))
        history.append((sums.sum(1), counts.sum(1)))
        recent = history[-window:]
        np.testing.assert_allclose(state["window_sums"], np.sum([s for s, _ in recent], axis=0), rtol=1e-12)
        np.testing.assert_array_equal(state["window_counts"], np.sum([c for _, c in recent], axis=0))
        shared = [key for key in state if key.startswith("tree_") and state[key] is previous[key]]
        assert len(shared) >= len([key for key in state if key.startswith("tree_")]) - 2 * window.bit_length()


def test_swucb_converts_a_state_of_the_former_ring_layout():
    strategy = create_strategy("swucb", {"window": 4})
    fresh = strategy.init(RegionInfo(SIZES), seed=0)
    ring_sums, ring_counts = np.random.default_rng(0).random((4, K)), np.full((4, K), 2.0)
    old = {key: fresh[key] for key in ("seed", "sizes", "dropped")}
    old.update(updates=6, ring_sums=ring_sums, ring_counts=ring_counts,
               window_sums=ring_sums.sum(0), window_counts=ring_counts.sum(0))
    new = strategy.update(old, Feedback(np.ones((K, 1)), np.ones((K, 1)), 6))
    assert "ring_sums" not in new and "ring_counts" not in new and new["window"] == 4
    ring_sums[6 % 4], ring_counts[6 % 4] = 1.0, 1.0
    np.testing.assert_allclose(new["window_sums"], ring_sums.sum(0), rtol=1e-12)
    np.testing.assert_array_equal(new["window_counts"], ring_counts.sum(0))
    assert set(new) == set(strategy.update(fresh, Feedback(np.ones((K, 1)), np.ones((K, 1)), 0)))



# -- ARIA against a plain reference, and reproducibility ---------------------------------------------
# Experiments ran with these five configurations, so they are checked against ARIA's definition
# (a reference written out below), and a run must repeat exactly: in the same process, in a second
# process, and across a save and resume of the state mid-run.

ARIA_CASES = {  # K, params, all regions non-empty, draws per step, timestep bins, steps
    "k16-default": (16, {}, False, 256, 10, 40),
    "k4096-empty-regions": (4096, {}, False, 256, 10, 120),
    "k4096-full": (4096, {}, True, 256, 10, 120),
    "k3000-dense-no-norm": (3000, {"timestep_norm": False, "alpha": 0.2}, False, 1024, 4, 40),
    "k700-power-weights": (700, {"rule": "power", "power": 2.0, "warm_start": False, "importance_exponent": 0.5},
                           False, 128, 3, 40),
}
REFERENCE_RTOL = 1e-9


def aria_case(case: str):
    """The region sizes, the true levels, the sample generator and the strategy of a case."""
    k, params, full, draws, bins, _ = ARIA_CASES[case]
    rng = np.random.default_rng([k, draws, bins])
    sizes = rng.integers(0, 50, k) * (rng.random(k) > 0.05)
    sizes[0], sizes[1] = 0, 7  # an empty first region, a small second one
    if full:
        sizes = rng.integers(1, 50, k)
    level = 0.5 + rng.random(k)
    return sizes, level, rng, create_strategy("aria", params)


def case_feedback(rng, level, regions, k, bins, step) -> Feedback:
    """The step's feedback: sample feedback, or (every third step) the dense arrays of the engine's all-reduce."""
    b = rng.integers(0, bins, regions.size)
    values = level[regions] * (1 + b) * rng.gamma(4.0, 0.25, regions.size)
    feedback = Feedback.from_samples(regions, values, k, b, bins, step)
    if step % 3 == 2:
        feedback = Feedback(feedback.sums.copy(), feedback.counts.copy(), step)
    return feedback


def aria_run(case: str, resume_at: int | None = None, via: str = "json") -> list[dict[str, np.ndarray]]:
    """Every step's regions, probabilities, weights and the state after the update.

    With ``resume_at``, the state after that many steps goes through ``via`` (json or arrays) and a
    new strategy object continues from the copy, as a resumed run does.
    """
    from aria.strategies import state_from_arrays, state_from_json, state_to_arrays, state_to_json

    k, params, _, draws, bins, steps = ARIA_CASES[case]
    sizes, level, rng, strategy = aria_case(case)
    state = strategy.init(RegionInfo(sizes), seed=k)
    records = []
    for step in range(steps):
        if step == resume_at:
            state = (state_from_json(state_to_json(state)) if via == "json"
                     else state_from_arrays(state_to_arrays(state)))
            strategy = create_strategy("aria", params)
        alloc = strategy.allocate(state, step, draws)
        record = {"regions": alloc.regions, "probabilities": alloc.probabilities}
        if alloc.weights is not None:
            record["weights"] = alloc.weights
        state = strategy.update(state, case_feedback(rng, level, alloc.regions, k, bins, step))
        record.update({f"state/{key}": np.asarray(value) for key, value in state.items()})
        records.append(record)
    return records


def flatten(records: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"{step}/{key}": value for step, record in enumerate(records) for key, value in record.items()}


def assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Same keys, and every array the same dtype, shape and bytes (bit for bit)."""
    assert sorted(a) == sorted(b)
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert (x.dtype, x.shape) == (y.dtype, y.shape), key
        assert x.tobytes() == y.tobytes(), f"{key} differs"


SECOND_PROCESS = """
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("behaviour", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
np.savez(sys.argv[2], **{f"{case}/{key}": value for case in module.ARIA_CASES
                          for key, value in module.flatten(module.aria_run(case)).items()})
"""


@pytest.fixture(scope="module")
def second_process_runs(tmp_path_factory):
    """Every case run in a fresh Python process (its own imports, allocator and caches)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("aria-runs") / "runs.npz"
    subprocess.run([sys.executable, "-c", SECOND_PROCESS, __file__, str(out)], check=True, timeout=600)
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("case", list(ARIA_CASES))
def test_aria_run_repeats_exactly_in_this_and_another_process(case, second_process_runs):
    first = flatten(aria_run(case))
    assert_identical(flatten(aria_run(case)), first)
    prefix = f"{case}/"
    assert_identical({key[len(prefix):]: v for key, v in second_process_runs.items() if key.startswith(prefix)}, first)


@pytest.mark.parametrize("via", ["json", "arrays"])
@pytest.mark.parametrize("case", list(ARIA_CASES))
def test_aria_resumed_mid_run_equals_the_uninterrupted_run(case, via):
    steps = ARIA_CASES[case][-1]
    assert_identical(flatten(aria_run(case, resume_at=steps // 2, via=via)), flatten(aria_run(case)))


def reference_aria_update(state, sums, counts, alpha, norm_alpha, timestep_norm):
    """ARIA's update written out region by region and bin by bin (the docstring's definition)."""
    m, visits = state["estimate"].copy(), state["visits"].copy()
    bin_mean, bin_seen = state["bin_mean"].copy(), state["bin_seen"].copy()
    bins = sums.shape[1]
    if bin_mean.size != bins:
        bin_mean, bin_seen = np.zeros(bins), np.zeros(bins, dtype=np.int64)
    norm = np.ones(bins)
    if timestep_norm:
        for b in range(bins):
            if counts[:, b].sum() > 0:
                obs = sums[:, b].sum() / counts[:, b].sum()
                bin_mean[b] = (1 - norm_alpha) * bin_mean[b] + norm_alpha * obs if bin_seen[b] else obs
                bin_seen[b] += 1
        norm = np.where(bin_mean > 0, bin_mean, 1.0)
    for r in np.flatnonzero(counts.sum(axis=1) > 0):  # the observed regions
        y = (sums[r] / norm).sum() / counts[r].sum()
        m[r] = (1 - alpha) * m[r] + alpha * y if visits[r] else y
        visits[r] += 1
    return m, visits, bin_mean, bin_seen


def reference_aria_probabilities(state, cfg) -> np.ndarray:
    """ARIA's allocation as its docstring defines it: warm start (unvisited regions first), then
    softmax(m / mean(m) / temperature) or m^power over the non-empty regions, mixed with the floor eps."""
    active = state["sizes"] > 0
    visited = active & (state["visits"] > 0)

    def with_floor(q, eps):
        q = np.where(active, q, 0.0)
        return np.where(active, (1 - eps) * q / q.sum() + eps / active.sum(), 0.0)

    if not visited.any():
        return with_floor(np.ones(active.size), 0.0)
    if cfg.warm_start and (active & ~visited).any():
        return with_floor((~visited).astype(float), cfg.eps)
    m = np.where(visited, state["estimate"], state["estimate"][visited].max())  # optimism for the unvisited
    if cfg.rule == "softmax":
        z = m / m[active].mean() / cfg.temperature
        return with_floor(np.exp(z - z[active].max()), cfg.eps)
    return with_floor((m / m[active].max()) ** cfg.power, cfg.eps)


def reference_regions(p, seed, step, n):
    """Inverse-CDF draws from the step's first n uniforms: a draw's region is the number of CDF values at
    or below its uniform. Also says which draws lie within REFERENCE_RTOL of a CDF value (ambiguous)."""
    from aria.strategies.base import step_rng

    u = step_rng(seed, step, 0).random(2 * n)[:n]
    cdf = np.cumsum(p) / p.sum()
    regions = (cdf[None, :] <= u[:, None]).sum(axis=1)
    ambiguous = (np.abs(cdf[None, :] - u[:, None]) <= REFERENCE_RTOL * cdf[None, :]).any(axis=1)
    return regions, ambiguous


@pytest.mark.parametrize("case", list(ARIA_CASES))
def test_aria_equals_the_plain_reference(case):
    """Probabilities, weights and states within REFERENCE_RTOL of the reference at every step, fed the
    same feedback; regions equal to the reference's draws except where a uniform lies within the
    tolerance of a CDF value (in practice none)."""
    k, _, _, draws, bins, steps = ARIA_CASES[case]
    sizes, level, rng, strategy = aria_case(case)
    cfg = strategy.config
    state = strategy.init(RegionInfo(sizes), seed=k)
    expected = {"estimate": state["estimate"], "visits": state["visits"], "bin_mean": state["bin_mean"],
                "bin_seen": state["bin_seen"], "sizes": sizes}
    ambiguous_draws = 0
    for step in range(steps):
        p = reference_aria_probabilities(expected, cfg)
        alloc = strategy.allocate(state, step, draws)
        np.testing.assert_allclose(alloc.probabilities, p, rtol=REFERENCE_RTOL, atol=0)
        regions, ambiguous = reference_regions(p, k, step, draws)
        np.testing.assert_array_equal(alloc.regions[~ambiguous], regions[~ambiguous])
        ambiguous_draws += int(ambiguous.sum())
        if cfg.importance_exponent > 0:
            weights = (sizes[alloc.regions] / sizes.sum() / p[alloc.regions]) ** cfg.importance_exponent
            np.testing.assert_allclose(alloc.weights, weights, rtol=REFERENCE_RTOL)
        else:
            assert alloc.weights is None
        feedback = case_feedback(rng, level, alloc.regions, k, bins, step)
        state = strategy.update(state, feedback)
        m, visits, bin_mean, bin_seen = reference_aria_update(expected, feedback.sums, feedback.counts, cfg.alpha,
                                                              cfg.norm_alpha, cfg.timestep_norm)
        expected.update(estimate=m, visits=visits, bin_mean=bin_mean, bin_seen=bin_seen)
        np.testing.assert_allclose(state["estimate"], m, rtol=REFERENCE_RTOL, atol=0)
        np.testing.assert_array_equal(state["visits"], visits)
        if cfg.timestep_norm:
            np.testing.assert_allclose(state["bin_mean"], bin_mean, rtol=REFERENCE_RTOL, atol=0)
            np.testing.assert_array_equal(state["bin_seen"], bin_seen)
        assert (state["updates"], state["dropped"], state["seed"]) == (step + 1, 0, k)
    assert ((state["visits"] > 0) | (sizes == 0)).all()  # past the warm start
    assert ambiguous_draws <= 2, f"{ambiguous_draws} draws within {REFERENCE_RTOL} of a CDF value"


@pytest.mark.parametrize("timestep_norm", [True, False])
@pytest.mark.parametrize("k, draws", [(16, 256), (3000, 64)], ids=["dense", "sparse"])
def test_aria_update_is_the_per_region_ema(k, draws, timestep_norm):
    params = {"alpha": 0.1, "norm_alpha": 0.2, "timestep_norm": timestep_norm, "warm_start": False}
    strategy = create_strategy("aria", params)
    rng = np.random.default_rng(k)
    state = strategy.init(RegionInfo(rng.integers(0, 3, k) + (np.arange(k) % 7 > 0)), seed=0)
    for step in range(30):
        alloc = strategy.allocate(state, step, draws)
        bins = rng.integers(0, BINS, draws)
        feedback = Feedback.from_samples(alloc.regions, rng.gamma(2.0, 1.0, draws) * (1 + bins), k, bins, BINS, step)
        expected = reference_aria_update(state, feedback.sums, feedback.counts, 0.1, 0.2, timestep_norm)
        state = strategy.update(state, feedback)
        np.testing.assert_allclose(state["estimate"], expected[0], rtol=1e-12)
        np.testing.assert_array_equal(state["visits"], expected[1])
        if timestep_norm:
            np.testing.assert_allclose(state["bin_mean"], expected[2], rtol=1e-12)
            np.testing.assert_array_equal(state["bin_seen"], expected[3])
