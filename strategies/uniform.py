"""``uniform``: every non-empty region equally likely, then a prompt uniformly inside it.

The stratified counterpart of RC (a baseline for ARIA: same coverage of regions, no tracking).
"""

from __future__ import annotations

import numpy as np

from .base import AllocationStrategy, mix_floor
from .registry import register_strategy


@register_strategy("uniform")
class RegionUniform(AllocationStrategy):
    """Switched conditions region-uniform (each region equally likely)."""

    description = "region-uniform: each non-empty region equally likely"

    def probabilities(self, state):
        active = self.active(state)
        return mix_floor(active.astype(np.float64), 0.0, active)
