"""``invfreq``: a static allocation that up-weights regions where paired data is rare (a baseline for ARIA).

Region k's weight is (n_k + pseudo_count)^-power, where n_k counts the paired images whose caption
lies in region k (``RegionInfo.paired``; with ``frequency: pool``, the region's prompts in the pool),
mixed with the same uniform floor as aria. It never adapts: it measures how much of an adaptive
allocator's gain a fixed prior on where supervision is scarce already gives. A RegionInfo without
paired counts (one built from the pool alone) counts zero everywhere: region-uniform.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from .base import AllocationStrategy, State, StrategyConfig, mix_floor
from .registry import register_strategy


class InverseFrequencyConfig(StrategyConfig):
    frequency: Literal["paired", "pool"] = Field("paired", description="what is counted per region: paired "
                                                 "images with their caption in it, or pool prompts")
    power: float = Field(1.0, ge=0, le=4, description="weight = (count + pseudo_count)^-power; 0 = region-uniform")
    pseudo_count: float = Field(1.0, gt=0, description="added to every count, so that regions without any stay finite")
    eps: float = Field(0.2, ge=0, le=1, description="uniform floor mixed into the allocation (as aria's)")


@register_strategy("invfreq")
class InverseFrequency(AllocationStrategy):
    """Static: switched prompts go to regions in proportion to (count + pseudo_count)^-power, with a floor."""

    description = "static: regions rare in the paired data up-weighted (inverse frequency), with a floor"
    Config = InverseFrequencyConfig

    def init_state(self, regions) -> State:
        cfg = self.config
        if cfg.frequency == "pool":
            counts = regions.sizes
        else:
            counts = regions.paired if regions.paired is not None else np.zeros_like(regions.sizes)
        return {"weights": (np.asarray(counts, dtype=np.float64) + cfg.pseudo_count) ** -cfg.power}

    def probabilities(self, state: State) -> np.ndarray:
        return mix_floor(np.asarray(state["weights"]), self.config.eps, self.active(state))
