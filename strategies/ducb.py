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

from .base import AllocationStrategy, State, StrategyConfig, mix_floor, softmax_floor
from .registry import register_strategy
from .stats import discounted_state, discounted_update


def ucb_probabilities(sums, counts, active, exploration: float, temperature: float, eps: float) -> np.ndarray:
    """Softmax-with-floor allocation over the scale-free UCB index of per-region (sum, count)."""
    unseen = active & (counts < 1.0)
    if unseen.any():  # infinite index: observe these first
        return mix_floor(unseen.astype(np.float64), eps, active)
    total_sum, total_count = np.where(active, sums, 0.0).sum(), np.where(active, counts, 0.0).sum()
    counts = np.where(active, counts, 1.0)  # any count >= 1 for the empty regions (masked below)
    index = exploration * np.sqrt(np.log(max(total_count, 1.0)) / counts)
    pooled_mean = total_sum / total_count
    if pooled_mean > 0:
        index += sums / counts / pooled_mean
    return softmax_floor(index, temperature, eps, active)  # mean / B + bonus


class DucbConfig(StrategyConfig):
    gamma: float = Field(0.95, gt=0, le=1, description="discount per step (0.95: the memory of aria's alpha=0.05)")
    exploration: float = Field(1.5, ge=0, le=1e6,
                               description="c in S/N/B + c*sqrt(log n / N) (G&M: c = 2*sqrt(xi), xi > 1/2)")
    temperature: float = Field(0.5, gt=0, description="softmax temperature on the scale-free index")
    eps: float = Field(0.2, ge=0, le=1, description="uniform floor mixed into the allocation")


@register_strategy("ducb")
class DiscountedUcb(AllocationStrategy):
    """Discounted UCB (Garivier & Moulines 2011), softmax over the index with a uniform floor."""

    description = "discounted UCB: softmax over a scale-free upper-confidence index, uniform floor"
    Config = DucbConfig

    def init_state(self, regions) -> State:
        return discounted_state(regions.num_regions)

    def probabilities(self, state: State) -> np.ndarray:
        cfg = self.config
        return ucb_probabilities(np.asarray(state["discounted_sums"]), np.asarray(state["discounted_counts"]),
                                 self.active(state), cfg.exploration, cfg.temperature, cfg.eps)

    def apply_feedback(self, state, sums, counts, step) -> State:
        return discounted_update(state, sums, counts, self.config.gamma)
