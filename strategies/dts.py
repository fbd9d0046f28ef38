"""``dts``: discounted Thompson sampling with a Gaussian model (after Raj & Kalyani, "Taming
non-stationary bandits: a Bayesian approach", 2017, whose discounted Beta posterior becomes a
Gaussian one here, since the discrepancy is not a Bernoulli reward).

Per region, discounted sums S_k and sample counts N_k (raw discrepancies pooled over timestep
bins, multiplied by ``gamma`` every update). In units of the pooled mean B = sum S / sum N
(scale-free), the posterior of region k's mean under a Gaussian prior N(1, noise^2 / n0) and a
per-sample noise of ``noise`` (relative standard deviation) is

    N((S_k / B + n0) / (N_k + n0),  noise^2 / (N_k + n0)).

``allocate(state, step, n)`` draws one posterior sample theta from ``step_rng(seed, step, 1)``
(the strategy's own stream of the step, so every rank and a resume draw the same) and uses
softmax(theta / temperature) mixed with the uniform floor ``eps``: a distribution rather than
the argmax, since each step draws many regions. ``probabilities(state)`` (no step) is the same
rule on the posterior means: deterministic, the allocation the posterior expects.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from .base import (STREAM_STRATEGY, Allocation, AllocationStrategy, State, StrategyConfig, draw_regions, softmax_floor,
                   step_rng)
from .registry import register_strategy
from .stats import discounted_state, discounted_update


class DtsConfig(StrategyConfig):
    gamma: float = Field(0.95, gt=0, le=1, description="discount per step (0.95: the memory of aria's alpha=0.05)")
    noise: float = Field(1.0, gt=0, le=1e6,
                         description="per-sample standard deviation of the discrepancy, relative to its mean")
    prior_count: float = Field(1.0, gt=0, description="n0: weight of the prior (mean = pooled mean) in samples")
    temperature: float = Field(0.5, gt=0, description="softmax temperature on the scale-free posterior sample")
    eps: float = Field(0.2, ge=0, le=1, description="uniform floor mixed into the allocation")


@register_strategy("dts")
class DiscountedThompson(AllocationStrategy):
    """Discounted Gaussian Thompson sampling; softmax over the step's posterior sample, uniform floor."""

    description = "discounted Thompson sampling (Gaussian): softmax over a posterior sample, uniform floor"
    Config = DtsConfig

    def init_state(self, regions) -> State:
        return discounted_state(regions.num_regions)

    def posterior(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        """Scale-free posterior mean and standard deviation of every region's discrepancy."""
        sums, counts = np.asarray(state["discounted_sums"]), np.asarray(state["discounted_counts"])
        total_count = counts.sum()
        pooled_mean = sums.sum() / total_count if total_count > 0 else 0.0
        n0 = self.config.prior_count
        scaled = sums / pooled_mean if pooled_mean > 0 else np.zeros(sums.size)
        return (scaled + n0) / (counts + n0), self.config.noise / np.sqrt(counts + n0)

    def probabilities(self, state: State) -> np.ndarray:
        mean, _ = self.posterior(state)
        return softmax_floor(mean, self.config.temperature, self.config.eps, self.active(state))

    def allocate(self, state: State, step: int, n: int) -> Allocation:
        mean, std = self.posterior(state)
        theta = mean + std * step_rng(int(state["seed"]), int(step), STREAM_STRATEGY).standard_normal(mean.size)
        p = softmax_floor(theta, self.config.temperature, self.config.eps, self.active(state))
        return Allocation(regions=draw_regions(p, int(state["seed"]), int(step), int(n)), probabilities=p)

    def apply_feedback(self, state, sums, counts, step) -> State:
        return discounted_update(state, sums, counts, self.config.gamma)
