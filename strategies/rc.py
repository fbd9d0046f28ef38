"""``rc``: Random Conditioning (Kim et al., CVPR 2025).

A switched condition is drawn uniformly from the whole pool, so a region is chosen in
proportion to its size; no feedback is used.
"""

from __future__ import annotations

from .base import AllocationStrategy, mix_floor
from .registry import register_strategy


@register_strategy("rc")
class RandomConditioning(AllocationStrategy):
    """Switched conditions uniform over the pool (regions in proportion to their size)."""

    description = "Random Conditioning: switched prompts uniform over the whole pool"

    def probabilities(self, state):
        return mix_floor(state["sizes"], 0.0, self.active(state))  # sizes / sum(sizes)
