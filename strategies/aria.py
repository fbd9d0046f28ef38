"""ARIA: adaptive region allocation by tracked teacher-student discrepancy (Mualem et al., 2026).

One exponential moving average of the discrepancy per region, updated with step ``alpha`` when
the region receives observations:  m_k <- (1 - alpha) m_k + alpha * y_k, where y_k is the mean
observed discrepancy of region k in the step (the first observation initialises m_k). The
allocation is increasing in the estimates (softmax with a temperature, or a power law) and mixed
with a uniform floor ``eps`` over the non-empty regions, so that every region keeps probability
at least eps/K and its estimate stays fresh (``aria.theory`` checks the tracking bound this
gives). The loss is unchanged; optional importance weights (pool share / probability)^beta let
the engine keep the objective unbiased.

Timestep normalisation: the discrepancy depends strongly on the timestep, and switched samples
sit mostly at large t. With ``timestep_norm`` each observation is divided by a running mean of
its timestep bin over all regions before it enters the region's average.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from .base import AllocationStrategy, State, StrategyConfig, mix_floor, softmax_floor
from .registry import register_strategy
from .stats import ema_update, observed_cells


class AriaConfig(StrategyConfig):
    alpha: float = Field(0.05, gt=0, le=1, description="EMA step of the per-region tracker")
    eps: float = Field(0.2, ge=0, le=1, description="uniform floor mixed into the allocation")
    rule: Literal["softmax", "power"] = Field("softmax", description="how estimates become probabilities")
    temperature: float = Field(0.5, gt=0, description="softmax temperature on estimates / their mean")
    power: float = Field(1.0, ge=0, description="exponent of the power rule p ~ m^power")
    importance_exponent: float = Field(0.0, ge=0, le=1, description="importance weights (share/p)^beta; 0 = off")
    timestep_norm: bool = Field(True, description="divide observations by a running mean of their timestep bin")
    norm_alpha: float = Field(0.01, gt=0, le=1, description="EMA step of the timestep-bin means")
    warm_start: bool = Field(True, description="visit every region once before adapting")


@register_strategy("aria")
class Aria(AllocationStrategy):
    """Tracked-discrepancy allocation with a uniform floor (EMA per region)."""

    description = "EMA of discrepancy per region; softmax/power allocation with a uniform floor"
    Config = AriaConfig

    def init_state(self, regions) -> State:
        k = regions.num_regions
        return {
            "estimate": np.zeros(k, dtype=np.float64),
            "visits": np.zeros(k, dtype=np.int64),
            "bin_mean": np.zeros(0, dtype=np.float64),
            "bin_seen": np.zeros(0, dtype=np.int64),
        }

    def probabilities(self, state: State) -> np.ndarray:
        cfg = self.config
        active = self.active(state)
        visited = active & (np.asarray(state["visits"]) > 0)
        if not visited.any():
            return mix_floor(active.astype(np.float64), 0.0, active)
        if cfg.warm_start and (active & ~visited).any():  # unvisited regions first, floor kept
            return mix_floor((active & ~visited).astype(np.float64), cfg.eps, active)
        m = np.asarray(state["estimate"], dtype=np.float64)
        m = np.where(visited, m, m[visited].max())  # optimism for regions never observed
        if cfg.rule == "power":
            top = m[active].max()  # normalised by the max: m^power cannot overflow
            return mix_floor((m / top) ** cfg.power if top > 0 else np.ones_like(m), cfg.eps, active)
        scale = m[active].mean()
        if not 0 < scale < np.inf:  # nothing but zeros observed (or an infinite estimate): uniform
            return mix_floor(active.astype(np.float64), cfg.eps, active)
        return softmax_floor(m / scale, cfg.temperature, cfg.eps, active)

    def weights(self, state, p, regions):
        beta = self.config.importance_exponent
        if beta == 0:
            return None
        sizes = np.asarray(state["sizes"])
        return (sizes[regions] / sizes.sum() / p[regions]) ** beta  # drawn regions have p > 0

    def apply_feedback(self, state, sums, counts, step) -> State:
        regions, bins, values, samples = observed_cells(sums, counts)  # the cells with samples
        if regions.size == 0:
            return {}
        cfg = self.config
        new: State = {}
        if cfg.timestep_norm:  # observations in units of the running mean of their timestep bin
            num_bins = sums.shape[1]
            bin_mean, bin_seen = np.asarray(state["bin_mean"], dtype=np.float64), np.asarray(state["bin_seen"])
            if bin_mean.size != num_bins:
                bin_mean, bin_seen = np.zeros(num_bins), np.zeros(num_bins, dtype=np.int64)
            bin_count = np.bincount(bins, samples, minlength=num_bins)
            bin_obs = np.divide(np.bincount(bins, values, minlength=num_bins), bin_count, out=np.zeros(num_bins),
                                where=bin_count > 0)
            bin_mean, new["bin_seen"] = ema_update(bin_mean, bin_seen, bin_obs, bin_count > 0, cfg.norm_alpha)
            new["bin_mean"] = bin_mean
            values = values / np.where(bin_mean > 0, bin_mean, 1.0)[bins]
        k = sums.shape[0]
        n_obs = np.bincount(regions, samples, minlength=k)
        y = np.divide(np.bincount(regions, values, minlength=k), n_obs, out=np.zeros(k), where=n_obs > 0)  # mean
        new["estimate"], new["visits"] = ema_update(np.asarray(state["estimate"], dtype=np.float64),
                                                    np.asarray(state["visits"]), y, n_obs > 0, cfg.alpha)
        return new
