"""Allocation strategies: which regions of the conditioning space receive the switched conditions.

numpy only (no torch): the same objects run inside the engine and inside ``aria.theory``.
Importing this package registers every built-in strategy.
"""

from .base import (
    Allocation,
    AllocationStrategy,
    Feedback,
    RegionInfo,
    State,
    StrategyConfig,
    mix_floor,
    softmax_floor,
    state_from_arrays,
    state_from_json,
    state_hash,
    state_to_arrays,
    state_to_json,
)
from .contract import check_allocation
from .registry import create_strategy, get_strategy, list_strategies, register_strategy

from . import none, rc, uniform, invfreq, bandits, aria, oracle  # noqa: E402,F401  (register built-ins)

__all__ = [
    "Allocation", "AllocationStrategy", "Feedback", "RegionInfo", "State", "StrategyConfig", "check_allocation",
    "create_strategy", "mix_floor", "softmax_floor", "get_strategy", "list_strategies", "register_strategy",
    "state_from_arrays", "state_from_json", "state_hash", "state_to_arrays", "state_to_json",
]
