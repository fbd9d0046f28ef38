"""``ducb``: discounted UCB (Garivier & Moulines, "On upper-confidence bound policies for switching
bandit problems", ALT 2011).

Per region, discounted sums S_k and sample counts N_k (both multiplied by ``gamma`` every
update, then the step's feedback added; rewards are raw discrepancies pooled over timestep bins).
The index, in units of the pooled discounted mean ``B = sum S / sum N`` (their reward bound B,
estimated, so that the index is scale-free) is

    U_k = (S_k / N_k) / B + c * sqrt(log(n) / N_k),    n = sum_k N_k,

with G&M's c = 2 sqrt(xi), xi > 1/2 (default c = 1.5). Regions with less than one sample in
memory (N_k < 1: never observed, or discounted away) have an infinite index and get all the
non-floor mass; N_k >= 1 also bounds every index by n, so nothing overflows.

Allocation: softmax(U / temperature) mixed with the uniform floor ``eps``. We draw hundreds of
regions per step, and argmax-with-floor would send every non-floor draw to one region, starving
the others' estimates and flipping between regions from step to step; the softmax spreads draws
in proportion to the index gaps and tends to the argmax as the temperature goes to 0.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from .base import AllocationStrategy, State, StrategyConfig, _mix_floor, _softmax_floor, region_totals
from .registry import register_strategy


def ucb_probabilities(sums, counts, active, exploration: float, temperature: float, eps: float) -> np.ndarray:
    """Softmax-with-floor allocation over the scale-free UCB index of per-region (sum, count)."""
    n_active = int(np.count_nonzero(active))
    everywhere = n_active == active.size
    unseen = counts < 1.0
    if not everywhere:
        unseen &= active
    if unseen.any():  # infinite index: observe these first
        return _mix_floor(unseen.astype(np.float64), eps, active, n_active, owned=True)
    if everywhere:
        total_sum, total_count = sums.sum(), counts.sum()
    else:
        total_sum, total_count = np.where(active, sums, 0.0).sum(), np.where(active, counts, 0.0).sum()
        counts = np.where(active, counts, 1.0)
    pooled_mean = total_sum / total_count
    index = np.sqrt(np.log(max(total_count, 1.0)) / counts)
    index *= exploration
    if pooled_mean > 0:
        index += sums / counts / pooled_mean
    return _softmax_floor(index, temperature, eps, active, n_active, owned=True)  # mean / B + bonus


class DucbConfig(StrategyConfig):
    gamma: float = Field(0.95, gt=0, le=1, description="discount per step (0.95: the memory of aria's alpha=0.05)")
    exploration: float = Field(1.5, ge=0, description="c in S/N/B + c*sqrt(log n / N) (G&M: c = 2*sqrt(xi), xi > 1/2)")
    temperature: float = Field(0.5, gt=0, description="softmax temperature on the scale-free index")
    eps: float = Field(0.2, ge=0, le=1, description="uniform floor mixed into the allocation")


@register_strategy("ducb")
class DiscountedUcb(AllocationStrategy):
    """Discounted UCB (Garivier & Moulines 2011), softmax over the index with a uniform floor."""

    description = "discounted UCB: softmax over a scale-free upper-confidence index, uniform floor"
    Config = DucbConfig

    def init_state(self, regions) -> State:
        k = regions.num_regions
        return {"discounted_sums": np.zeros(k), "discounted_counts": np.zeros(k)}

    def probabilities(self, state: State) -> np.ndarray:
        cfg = self.config
        return ucb_probabilities(
            np.asarray(state["discounted_sums"]), np.asarray(state["discounted_counts"]), self.active(state),
            cfg.exploration, cfg.temperature, cfg.eps,
        )

    def apply_feedback(self, state, sums, counts, step) -> State:
        region_sum, region_count = region_totals(sums, counts)
        gamma = self.config.gamma
        return {
            "discounted_sums": gamma * np.asarray(state["discounted_sums"]) + region_sum,
            "discounted_counts": gamma * np.asarray(state["discounted_counts"]) + region_count,
        }
