"""``swucb``: sliding-window UCB (Garivier & Moulines, "On upper-confidence bound policies for
switching bandit problems", ALT 2011).

The state keeps the last ``window`` steps of per-region feedback (sums and sample counts pooled
over timestep bins, raw discrepancies): the update of step ``updates`` fills slot
``updates % window``. Window totals are never kept by running subtraction (whose rounding would
outlive a huge value leaving the window): the slots are the leaves of a binary sum tree (heap
order, node i = node 2i + node 2i+1, the root = the window totals), and an update replaces one
leaf and the log2(window) sums above it. Every node is a separate state entry, so an update
builds O(K log window) new numbers and shares the other nodes with the previous state, and the
totals stay an exact function of the window's contents (summed in a fixed order).

State entries: ``window`` (steps), ``window_sums`` / ``window_counts`` (the root, per region)
and ``tree_sums_<i>`` / ``tree_counts_<i>`` for the other nodes i whose subtree holds a slot
(leaves are nodes ``leaves + slot``, ``leaves`` the power of two >= window). A state in the
former layout (one ``(window, K)`` ring of each) is converted at its next update.

The index and the allocation are those of ``ducb`` (scale-free index, softmax with a uniform
floor) on the window totals; G&M's SW-UCB bonus is c = sqrt(xi), xi > 1/2 (default c = 0.75).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from .base import AllocationStrategy, State, StrategyConfig
from .ducb import ucb_probabilities
from .registry import register_strategy
from .stats import region_totals

ROOT = ("window_sums", "window_counts")


class SwucbConfig(StrategyConfig):
    window: int = Field(40, ge=1, le=100_000,
                        description="steps in the window (40: same mean data age as aria's alpha=0.05)")
    exploration: float = Field(0.75, ge=0, le=1e6,
                               description="c in S/N/B + c*sqrt(log n / N) (G&M: c = sqrt(xi), xi > 1/2)")
    temperature: float = Field(0.5, gt=0, description="softmax temperature on the scale-free index")
    eps: float = Field(0.2, ge=0, le=1, description="uniform floor mixed into the allocation")


def _leaves(window: int) -> int:
    return 1 << max(window - 1, 0).bit_length()  # the power of two >= window


def _keys(node: int) -> tuple[str, str]:
    return ROOT if node == 1 else (f"tree_sums_{node}", f"tree_counts_{node}")


def _build(ring_sums: np.ndarray, ring_counts: np.ndarray) -> State:
    """Every node of the tree over the slots (rows) of two (window, K) rings."""
    window = ring_sums.shape[0]
    leaves = _leaves(window)
    nodes = {leaves + slot: (np.array(ring_sums[slot], dtype=np.float64), np.array(ring_counts[slot], dtype=np.float64))
             for slot in range(window)}
    for node in range(leaves - 1, 0, -1):
        if 2 * node in nodes:
            left, right = nodes[2 * node], nodes.get(2 * node + 1)
            nodes[node] = left if right is None else (left[0] + right[0], left[1] + right[1])
    out: State = {"window": window}
    for node, (sums, counts) in nodes.items():
        out.update(zip(_keys(node), (sums, counts)))
    return out


@register_strategy("swucb")
class SlidingWindowUcb(AllocationStrategy):
    """Sliding-window UCB (Garivier & Moulines 2011), softmax over the index with a uniform floor."""

    description = "sliding-window UCB: softmax over a scale-free upper-confidence index, uniform floor"
    Config = SwucbConfig

    def init_state(self, regions) -> State:
        zeros = np.zeros((self.config.window, regions.num_regions))
        return _build(zeros, zeros)

    def probabilities(self, state: State) -> np.ndarray:
        cfg = self.config
        return ucb_probabilities(
            np.asarray(state["window_sums"]), np.asarray(state["window_counts"]), self.active(state),
            cfg.exploration, cfg.temperature, cfg.eps,
        )

    def apply_feedback(self, state, sums, counts, step) -> State:
        new: State = {}
        if "ring_sums" in state:  # the former layout: build the tree from the rings (``update`` drops them)
            new = _build(np.asarray(state["ring_sums"]), np.asarray(state["ring_counts"]))
            state = {**state, **new}
        window = int(state["window"])
        if window != self.config.window:
            raise ValueError(f"swucb state has a window of {window} steps, the config {self.config.window}")
        node = _leaves(window) + int(state["updates"]) % window
        values = region_totals(sums, counts)
        new.update(zip(_keys(node), values))
        while node > 1:  # the sums above the leaf, each from its two children (one, at the right edge)
            sibling_keys = _keys(node ^ 1)
            if sibling_keys[0] in state:
                other = (state[sibling_keys[0]], state[sibling_keys[1]])
                left, right = (values, other) if node & 1 == 0 else (other, values)
                values = (left[0] + right[0], left[1] + right[1])
            node //= 2
            new.update(zip(_keys(node), values))
        return new

    def update(self, state: State, feedback) -> State:
        new = super().update(state, feedback)
        for key in ("ring_sums", "ring_counts"):  # the former layout, converted by apply_feedback
            new.pop(key, None)
        return new
