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

from .base import AllocationStrategy, State, StrategyConfig, _count_nonzero, _max, _mix_floor, _sum, feedback_entries
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
        sizes, visits = np.asarray(state["sizes"]), np.asarray(state["visits"])
        n_active = int(_count_nonzero(sizes))  # sizes and visits are counts (>= 0)
        empty = None if n_active == sizes.size else (sizes == 0).nonzero()[0]  # few, if any
        n_visited = _count_nonzero(visits) - (0 if empty is None else _count_nonzero(visits[empty]))
        if n_visited == n_active and self.config.rule == "softmax":  # the steady state, every step of a run
            return self._softmax(np.asarray(state["estimate"], dtype=np.float64), sizes, empty, n_active)
        return self._warm_or_power(state, sizes > 0, n_active)

    def _softmax(self, m: np.ndarray, sizes: np.ndarray, empty: np.ndarray | None, n_active: int) -> np.ndarray:
        """softmax(m / mean(m) / temperature) over the active regions, mixed with the floor eps.

        ``empty``: the indices of the empty regions (None: there are none).
        """
        cfg = self.config
        total, top = _sum(m), _max(m)
        if empty is not None:
            m_empty = m[empty]
            if top > 0 and not _count_nonzero(m_empty):  # the usual case: empty regions were never observed
                total -= _sum(m_empty)
            else:  # work on the active regions only
                active = sizes > 0
                p = np.zeros(m.size)
                p[active] = self._softmax(m[active], sizes[active], None, n_active)
                return p
        scale = total / n_active
        if scale > 0:
            x = m - top  # <= 0, and 0 at the max: exp cannot overflow, the sum is >= 1
            c = 1.0 / (scale * cfg.temperature)
            if c < np.inf:
                x *= c
            else:  # scale * temperature underflows
                x /= scale
                x /= cfg.temperature  # a gap that overflows gives exp(-inf) = 0, the right limit
            q = np.exp(x, out=x)
            if empty is not None:
                q[empty] = 0.0
            total = _sum(q)
        if not (scale > 0 and 1.0 <= total < np.inf):  # no scale, or a NaN or infinite estimate: uniform
            q = np.ones(m.size)
            if empty is not None:
                q[empty] = 0.0
            total = n_active
        q *= (1.0 - cfg.eps) / total
        q += cfg.eps / n_active
        if empty is not None:
            q[empty] = 0.0
        return q

    def _warm_or_power(self, state: State, active: np.ndarray, n_active: int) -> np.ndarray:
        """Warm start (unvisited regions first), or the power rule."""
        cfg = self.config
        visited = np.asarray(state["visits"]) > 0
        visited &= active
        n_visited = int(_count_nonzero(visited))
        if n_visited == 0:
            return _mix_floor(active.astype(np.float64), 0.0, active, n_active, owned=True)
        if n_visited < n_active and cfg.warm_start:  # unvisited regions first, floor kept
            return _mix_floor((active & ~visited).astype(np.float64), cfg.eps, active, n_active, owned=True)
        m = np.asarray(state["estimate"], dtype=np.float64)
        if n_visited < n_active:
            m = np.where(visited, m, m[visited].max())  # optimism for regions never observed
        everywhere = n_active == active.size
        if cfg.rule == "softmax":
            sizes = np.asarray(state["sizes"])
            return self._softmax(m, sizes, None if everywhere else (sizes == 0).nonzero()[0], n_active)
        top = (m if everywhere else np.where(active, m, 0.0)).max()  # normalise by the max: m^power cannot overflow
        q = (m / top) ** cfg.power if top > 0 else np.ones_like(m)
        return _mix_floor(q, cfg.eps, active, n_active, owned=everywhere)

    def weights(self, state, p, regions):
        beta = self.config.importance_exponent
        if beta == 0:
            return None
        share = np.asarray(state["sizes"]) / np.sum(state["sizes"])
        ratio = np.divide(share, p, out=np.ones_like(p), where=p > 0)
        return ratio[regions] ** beta

    def apply_feedback(self, state, sums, counts, step) -> State:
        # a step touches few of the K * bins entries: work on those (flat indices, increasing)
        idx, values, weights = feedback_entries(sums, counts)
        if idx.size == 0:
            return {}
        num_bins = sums.shape[1]
        rows = idx // num_bins if num_bins > 1 else idx
        new: State = {}
        if self.config.timestep_norm:
            bins = idx % num_bins if num_bins > 1 else np.zeros(idx.size, dtype=np.intp)
            bin_mean, new["bin_seen"] = self._bin_means(state, bins, values, weights, num_bins)
            new["bin_mean"] = bin_mean
            if _count_nonzero(bin_mean) < num_bins:
                bin_mean = np.where(bin_mean > 0, bin_mean, 1.0)
            values = values / bin_mean[bins]
        estimate, visits = np.asarray(state["estimate"], dtype=np.float64), np.asarray(state["visits"], dtype=np.int64)
        if estimate.size <= 4 * idx.size:  # few regions for the entries: a few dense vector operations
            new["estimate"], new["visits"] = self._track_dense(estimate, visits, rows, values, weights)
        else:  # many regions: work on the observed ones only
            new["estimate"], new["visits"] = self._track_sparse(estimate, visits, rows, values, weights)
        return new

    def _track_dense(self, m, visits, rows, values, weights):
        """EMA step of the observed regions (``rows`` of the entries, increasing), over all K."""
        y = np.bincount(rows, values, minlength=m.size)
        n_obs = np.bincount(rows, weights, minlength=m.size)
        observed = n_obs > 0
        np.divide(y, n_obs, out=y, where=observed)  # mean observation of each observed region
        alpha = self.config.alpha
        new_visits = visits + observed
        tracked = m * (1 - alpha)
        tracked += alpha * y
        if _count_nonzero(new_visits) != _count_nonzero(visits):  # first observations set the estimate
            tracked = np.where(visits > 0, tracked, y)
        return np.where(observed, tracked, m), new_visits

    def _track_sparse(self, m, visits, rows, values, weights):
        """``_track_dense`` on the observed regions only (the same numbers)."""
        first = np.empty(rows.size, dtype=bool)  # each observed region is a run of entries: sum the runs
        first[0] = True
        np.not_equal(rows[1:], rows[:-1], out=first[1:])
        starts = first.nonzero()[0]
        if starts.size == rows.size:  # one entry per region
            seen, y = rows, values / weights
        else:
            seen = rows[starts]
            y = np.add.reduceat(values, starts)
            y /= np.add.reduceat(weights, starts)
        alpha = self.config.alpha
        m, visits = m.copy(), visits.copy()
        old, seen_visits = m[seen], visits[seen]
        tracked = old * (1 - alpha)
        tracked += alpha * y
        m[seen] = tracked if _count_nonzero(seen_visits) == seen.size else np.where(seen_visits > 0, tracked, y)
        seen_visits += 1
        visits[seen] = seen_visits
        return m, visits

    def _bin_means(self, state, bins, values, weights, num_bins) -> tuple[np.ndarray, np.ndarray]:
        """Running mean of the observations of every timestep bin (over all regions), and visits."""
        a = self.config.norm_alpha
        mean = np.asarray(state["bin_mean"], dtype=np.float64)
        seen = np.asarray(state["bin_seen"], dtype=np.int64)
        if mean.size != num_bins:
            mean, seen = np.zeros(num_bins), np.zeros(num_bins, dtype=np.int64)
        bin_sum = np.bincount(bins, values, minlength=num_bins)
        bin_count = np.bincount(bins, weights, minlength=num_bins)
        if _count_nonzero(bin_count) == num_bins and _count_nonzero(seen) == num_bins:  # the usual case
            bin_sum /= bin_count
            bin_sum *= a
            bin_sum += (1 - a) * mean
            return bin_sum, seen + 1
        has = bin_count > 0
        obs = np.divide(bin_sum, bin_count, out=np.zeros(num_bins), where=has)
        tracked = np.where(seen > 0, (1 - a) * mean + a * obs, obs)
        return np.where(has, tracked, mean), seen + has
