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


@pytest.mark.parametrize("name", ["rc", "uniform"])
def test_static_strategies_ignore_the_discrepancy(name):
    p = simulate(name, hot_levels(300))
    assert p[200:, HOT].mean() < 1.5 / K
    assert (p[200:] == p[200]).all()  # no feedback reaches the allocation


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
