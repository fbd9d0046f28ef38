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

from .base import AllocationStrategy, State, StrategyConfig, mix_floor, nonzero_entries, softmax_floor
from .registry import register_strategy


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
        n_active = np.count_nonzero(active)
        visited = np.asarray(state["visits"]) > 0
        if n_active < active.size:
            visited &= active
        n_visited = np.count_nonzero(visited)
        if n_visited == 0:
            return mix_floor(active.astype(np.float64), 0.0, active)
        if n_visited < n_active and cfg.warm_start:  # unvisited regions first, floor kept
            return mix_floor((active & ~visited).astype(np.float64), cfg.eps, active)
        m = np.asarray(state["estimate"], dtype=np.float64)
        if n_visited < n_active:
            m = np.where(visited, m, m[visited].max())  # optimism for regions never observed
        if cfg.rule == "softmax":
            scale = (m.sum() if n_active == m.size else m[active].sum()) / n_active
            if not scale > 0:
                return mix_floor(active.astype(np.float64), cfg.eps, active)
            return softmax_floor(m / scale, cfg.temperature, cfg.eps, active)
        top = np.where(active, m, 0.0).max()  # normalise by the max so m^power cannot overflow
        q = (m / top) ** cfg.power if top > 0 else np.ones_like(m)
        return mix_floor(q, cfg.eps, active)

    def weights(self, state, p, regions):
        beta = self.config.importance_exponent
        if beta == 0:
            return None
        share = np.asarray(state["sizes"]) / np.sum(state["sizes"])
        ratio = np.divide(share, p, out=np.ones_like(p), where=p > 0)
        return ratio[regions] ** beta

    def apply_feedback(self, state, sums, counts, step) -> State:
        idx = nonzero_entries(counts)  # a step touches few of the K * bins entries: work on those
        if idx.size == 0:
            return {}
        num_bins = sums.shape[1]
        rows, bins = np.divmod(idx, num_bins)
        values, weights = sums.reshape(-1)[idx], counts.reshape(-1)[idx]
        new: State = {}
        if self.config.timestep_norm:
            bin_mean, new["bin_seen"] = self._bin_means(state, bins, values, weights, num_bins)
            new["bin_mean"] = bin_mean
            values = values / (bin_mean if bin_mean.all() else np.where(bin_mean > 0, bin_mean, 1.0))[bins]
        # idx is sorted, so each observed region is a run of entries: sum the runs
        starts = np.concatenate(([True], rows[1:] != rows[:-1])).nonzero()[0]
        seen = rows[starts]
        y = np.add.reduceat(values, starts) / np.add.reduceat(weights, starts)
        alpha = self.config.alpha
        m = np.array(state["estimate"], dtype=np.float64)
        visits = np.array(state["visits"], dtype=np.int64)
        old, seen_visits = m[seen], visits[seen]
        tracked = (1 - alpha) * old + alpha * y
        m[seen] = tracked if seen_visits.all() else np.where(seen_visits > 0, tracked, y)
        visits[seen] = seen_visits + 1
        new.update(estimate=m, visits=visits)
        return new

    def _bin_means(self, state, bins, values, weights, num_bins) -> tuple[np.ndarray, np.ndarray]:
        """Running mean of the observations of every timestep bin (over all regions), and visits."""
        a = self.config.norm_alpha
        mean = np.asarray(state["bin_mean"], dtype=np.float64)
        seen = np.asarray(state["bin_seen"], dtype=np.int64)
        if mean.size != num_bins:
            mean, seen = np.zeros(num_bins), np.zeros(num_bins, dtype=np.int64)
        bin_sum = np.bincount(bins, values, minlength=num_bins)
        bin_count = np.bincount(bins, weights, minlength=num_bins)
        if bin_count.all() and seen.all():  # the usual case: every bin tracked and observed
            return (1 - a) * mean + a * (bin_sum / bin_count), seen + 1
        has = bin_count > 0
        obs = np.divide(bin_sum, bin_count, out=np.zeros(num_bins), where=has)
        tracked = np.where(seen > 0, (1 - a) * mean + a * obs, obs)
        return np.where(has, tracked, mean), seen + has
