"""``swucb``: sliding-window UCB (Garivier & Moulines, "On upper-confidence bound policies for
switching bandit problems", ALT 2011).

The state keeps the last ``window`` steps of per-region feedback (sums and sample counts pooled
over timestep bins, raw discrepancies) in a ring buffer of shape (window, K); the slot of an
update is ``updates % window``. Window totals are recomputed exactly from the buffer at every
update (no running subtraction, whose rounding would outlive a huge value leaving the window).
The index and the allocation are those of ``ducb`` (scale-free index, softmax with a uniform
floor) on the window totals; G&M's SW-UCB bonus is c = sqrt(xi), xi > 1/2 (default c = 0.75).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from .base import AllocationStrategy, State, StrategyConfig, region_totals
from .ducb import ucb_probabilities
from .registry import register_strategy


class SwucbConfig(StrategyConfig):
    window: int = Field(40, ge=1, le=100_000, description="steps in the window (40: same mean data age as aria's alpha=0.05)")
    exploration: float = Field(0.75, ge=0, description="c in S/N/B + c*sqrt(log n / N) (G&M: c = sqrt(xi), xi > 1/2)")
    temperature: float = Field(0.5, gt=0, description="softmax temperature on the scale-free index")
    eps: float = Field(0.2, ge=0, le=1, description="uniform floor mixed into the allocation")


@register_strategy("swucb")
class SlidingWindowUcb(AllocationStrategy):
    """Sliding-window UCB (Garivier & Moulines 2011), softmax over the index with a uniform floor."""

    description = "sliding-window UCB: softmax over a scale-free upper-confidence index, uniform floor"
    Config = SwucbConfig

    def init_state(self, regions) -> State:
        shape = (self.config.window, regions.num_regions)
        return {
            "ring_sums": np.zeros(shape),
            "ring_counts": np.zeros(shape),
            "window_sums": np.zeros(shape[1]),
            "window_counts": np.zeros(shape[1]),
        }

    def probabilities(self, state: State) -> np.ndarray:
        cfg = self.config
        return ucb_probabilities(
            np.asarray(state["window_sums"]), np.asarray(state["window_counts"]), self.active(state),
            cfg.exploration, cfg.temperature, cfg.eps,
        )

    def apply_feedback(self, state, sums, counts, step) -> State:
        ring_sums, ring_counts = np.array(state["ring_sums"]), np.array(state["ring_counts"])
        if ring_sums.shape[0] != self.config.window:
            raise ValueError(f"swucb state has a window of {ring_sums.shape[0]} steps, the config {self.config.window}")
        slot = int(state["updates"]) % self.config.window
        ring_sums[slot], ring_counts[slot] = region_totals(sums, counts)
        return {
            "ring_sums": ring_sums,
            "ring_counts": ring_counts,
            "window_sums": ring_sums.sum(axis=0),
            "window_counts": ring_counts.sum(axis=0),
        }
