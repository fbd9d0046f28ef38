"""``exp3``: EXP3 with a uniform floor, as in Online Data Mixing (Albalak et al., 2023).

Regions are arms; the reward of a step is the discrepancy of the samples drawn from the region
(sums pooled over timestep bins, raw: no timestep normalisation). As in ODM, the allocation is
``(1 - eps) * softmax(eta * R) + eps / K`` where ``R`` is a smoothed importance-weighted reward:

    R_k <- a * R_k + (1 - a) * r_k,    r_k = (sums_k / n) / (p_k * scale)

with n the number of samples in the step and p_k the probability of region k (recomputed from
the state the feedback is applied to; with feedback one step late this is the next step's
probability, which differs by one small update). ``r_k`` is 0 for unobserved regions and its
expectation is the mean discrepancy of region k over ``scale``, whatever the allocation, provided
every sample of the feedback was drawn from p: EXP3 learns from switched samples only
(``learns_from``), whatever ``distillation.feedback_from`` says. Paired samples fall in their
captions' regions, not in p's: fed with them, r_k's expectation is mu_k (f + (1 - f) pi_k / p_k)
(f the switched fraction, pi_k the region's share of paired captions), which inflates the regions
of the paired data and starves those without any (before 2026-12-07 it was fed so).

Scale-free rewards: ``scale`` is a running mean of the observed per-sample discrepancy with the
same smoothing ``a``, so ``eta`` does not depend on the units of the discrepancy. Deviation from
ODM: its learning rate sqrt(ln K / (K t)) was set for unnormalised losses and sends the
allocation back to uniform as t grows; with scale-free rewards ``eta`` is a constant.

Bounds: p_k >= eps / K (``eps`` > 0) and scale >= (1 - a) * step mean, so every r_k is at most
K / (eps * (1 - a)); log-weights eta * R are shifted by their maximum before exp, so nothing
overflows.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from .base import AllocationStrategy, State, StrategyConfig, softmax_floor
from .registry import register_strategy
from .stats import region_totals


class Exp3Config(StrategyConfig):
    eps: float = Field(0.2, gt=0, le=1,
                       description="uniform floor (ODM's K*epsilon); > 0 bounds the importance weights")
    learning_rate: float = Field(2.0, gt=0, le=1e6,
                                 description="eta: log-weights are eta x smoothed scale-free rewards")
    smoothing: float = Field(0.95, ge=0, lt=1, description="ODM's alpha: EMA factor of rewards and of their scale")


@register_strategy("exp3")
class Exp3(AllocationStrategy):
    """EXP3 with a uniform floor and importance-weighted, smoothed, scale-free rewards (ODM)."""

    description = "EXP3 / Online Data Mixing: importance-weighted rewards, softmax with a uniform floor"
    Config = Exp3Config
    learns_from = "switched"  # importance weights 1 / p_k hold only for samples drawn from p

    def init_state(self, regions) -> State:
        return {"reward_estimate": np.zeros(regions.num_regions), "reward_scale": 0.0}

    def probabilities(self, state: State) -> np.ndarray:
        cfg = self.config
        return softmax_floor(np.asarray(state["reward_estimate"]), 1.0 / cfg.learning_rate, cfg.eps, self.active(state))

    def apply_feedback(self, state, sums, counts, step) -> State:
        region_sum, region_count = region_totals(sums, counts)
        n = region_count.sum()
        if n == 0:
            return {}
        a = self.config.smoothing
        step_mean = region_sum.sum() / n
        old_scale = float(state["reward_scale"])
        scale = float(a * old_scale + (1 - a) * step_mean if old_scale > 0 else step_mean)
        if scale <= 0:  # only zero discrepancy so far: no reward information
            return {"reward_scale": scale}
        p = self.probabilities(state)
        reward = np.divide(region_sum / (n * scale), p, out=np.zeros_like(p), where=p > 0)
        estimate = a * np.asarray(state["reward_estimate"]) + (1 - a) * reward
        return {"reward_estimate": estimate, "reward_scale": scale}
