"""``none``: never switch conditions, i.e. plain BK-SDM distillation (Kim et al., 2023).

The engine skips the switch entirely; the allocation, if asked for, is proportional to size.
"""

from __future__ import annotations

from .base import AllocationStrategy, mix_floor
from .registry import register_strategy


@register_strategy("none")
class NoSwitch(AllocationStrategy):
    """Never switch conditions (plain BK-SDM distillation)."""

    description = "never switch conditions: plain BK-SDM distillation"
    switches = False

    def probabilities(self, state):
        return mix_floor(state["sizes"], 0.0, self.active(state))  # sizes / sum(sizes)
