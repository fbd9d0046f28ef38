"""``oracle``: allocation by the measured per-region probe discrepancy. An upper bound, not a method.

Every ``every`` steps the training loop measures the student against the teacher on a fixed probe
set with prompts of every region (``aria.training.probe.RegionProbe``): evaluation data, which no
real strategy sees. ``observe`` stores the measurement; switched conditions then go to regions in
proportion to it, mixed with the same uniform floor as aria, at the same switched fraction. It
says how much any allocator could gain over rc: it is labelled ORACLE wherever it is reported.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from .base import AllocationStrategy, State, StrategyConfig, mix_floor
from .registry import register_strategy


class OracleConfig(StrategyConfig):
    every: int = Field(100, ge=1, le=1_000_000, description="steps between two probe measurements")
    eps: float = Field(0.2, ge=0, le=1, description="uniform floor mixed into the allocation (as aria's)")
    metric: Literal["discrepancy", "cond_discrepancy"] = Field(
        "discrepancy", description="probe discrepancy, or its condition-specific part, per region")


@register_strategy("oracle")
class Oracle(AllocationStrategy):
    """ORACLE (uses evaluation data): switched prompts in proportion to the measured per-region discrepancy."""

    description = "ORACLE (evaluation data): in proportion to the measured per-region probe discrepancy, with a floor"
    Config = OracleConfig

    @property
    def probe_every(self) -> int:
        """The loop measures the regions at every step divisible by this, before planning it."""
        return self.config.every

    def init_state(self, regions) -> State:
        return {"measured": np.zeros(regions.num_regions), "measurements": 0}

    def observe(self, state: State, measured: np.ndarray) -> State:
        """A new state holding the per-region measurement (regions measured as NaN keep their last)."""
        measured = np.asarray(measured, dtype=np.float64)
        if measured.shape != np.shape(state["measured"]):
            raise ValueError(f"oracle: {measured.shape} measurements for {np.shape(state['measured'])} regions")
        valid = np.isfinite(measured) & (measured >= 0)
        return {**state, "measured": np.where(valid, measured, state["measured"]),
                "measurements": int(state["measurements"]) + 1}

    def probabilities(self, state: State) -> np.ndarray:
        return mix_floor(np.asarray(state["measured"]), self.config.eps, self.active(state))
