"""The allocation-strategy interface (in the style of optax: pure functions over explicit state).

A strategy decides, at every distillation step, from which *regions* of the prompt pool the
switched conditions are drawn. It never touches models or tensors:

    state = strategy.init(regions, seed)
    alloc = strategy.allocate(state, step, n)      # region per draw (+ optional weights)
    state = strategy.update(state, feedback)       # per-region (sum, count) of discrepancies

- ``state`` is a flat ``dict`` of numpy arrays and Python scalars (``strategies/state.py``): it
  round-trips through JSON or safetensors, never pickle. Every function here is pure: a new
  state is a new dict (it may share unchanged arrays with the old one, which nobody writes).
- all randomness comes from ``step_rng(seed, step, stream)`` (``strategies/draws.py``), a
  generator that is a pure function of those three integers, so two processes (ranks, or a run
  and its resume) draw the same allocation for the same step without any RNG state. Stream 0
  gives a step's 2n uniforms: the first n choose the regions (``draw_regions``), the next n the
  prompts inside them (``draw_members``); stream 1 is a strategy's own sample (``dts``).
- feedback arrives as per-region sums and counts, so that it can be all-reduced over ranks before
  the update; ``update`` drops non-finite, negative or absurdly large entries (and counts them in
  ``state["dropped"]``) before any strategy sees them. Feedback may arrive one step late: the
  allocation at step s depends only on the state and s.
- the engine checks every allocation it receives (``check_allocation`` in ``contract.py``: n regions in range,
  probabilities finite, non-negative and summing to 1, weights finite) and stops a strategy that
  breaks this contract at the step it does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import ConfigDict

from aria.errors import StrictModel

# re-exported: the per-step randomness and the state's serialisation are importable from here too
from .draws import STREAM_DRAWS, STREAM_STRATEGY, draw_members, draw_regions, step_key, step_rng, step_uniforms  # noqa: F401
from .state import State, state_from_arrays, state_from_json, state_hash, state_to_arrays, state_to_json  # noqa: F401

# Feedback above this (sqrt of the largest float, ~1.3e154) is not a measurement: dropping it lets
# strategies add, scale and multiply a few feedback values without ever overflowing.
FEEDBACK_LIMIT = float(np.sqrt(np.finfo(np.float64).max))


class StrategyConfig(StrictModel):
    """Base of every strategy's hyperparameters: typed, validated, unknown keys rejected, numbers
    finite, ``true`` no number (``aria.errors.StrictModel``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class RegionInfo:
    """The regions of a prompt pool: how many prompts each holds (``sizes[k]``; may be 0) and, where
    known, how many paired images have their caption in each (``paired[k]``; None: not known)."""

    sizes: np.ndarray
    paired: np.ndarray | None = None

    def __post_init__(self):
        sizes = np.asarray(self.sizes, dtype=np.int64).reshape(-1)
        if sizes.size == 0:
            raise ValueError("RegionInfo needs at least one region")
        if (sizes < 0).any():
            raise ValueError("region sizes must be non-negative")
        if sizes.sum() == 0:
            raise ValueError("every region is empty")
        object.__setattr__(self, "sizes", sizes)
        if self.paired is not None:
            paired = np.asarray(self.paired, dtype=np.int64).reshape(-1)
            if paired.shape != sizes.shape or (paired < 0).any():
                raise ValueError(f"paired counts must be {sizes.size} non-negative integers, one per region")
            object.__setattr__(self, "paired", paired)

    @property
    def num_regions(self) -> int:
        return int(self.sizes.size)

    @property
    def active(self) -> np.ndarray:
        """Regions that hold at least one prompt (only these can be drawn)."""
        return self.sizes > 0

    @property
    def shares(self) -> np.ndarray:
        """Each region's share of the pool."""
        return self.sizes / self.sizes.sum()


@dataclass(frozen=True)
class Feedback:
    """Discrepancy observed in one step, reduced per region (and optionally per timestep bin).

    ``sums[k, b]`` is the sum of per-sample discrepancies of region k in timestep bin b and
    ``counts[k, b]`` the number of samples; 1-D arrays mean a single bin. Both are additive over
    ranks, so the engine all-reduces them before calling ``update``.
    """

    sums: np.ndarray
    counts: np.ndarray
    step: int = 0

    def __post_init__(self):
        sums = np.asarray(self.sums, dtype=np.float64)
        counts = np.asarray(self.counts, dtype=np.float64)
        if sums.ndim == 1:
            sums, counts = sums[:, None], counts.reshape(-1, 1)
        if sums.shape != counts.shape or sums.ndim != 2:
            raise ValueError(f"feedback sums {sums.shape} and counts {counts.shape} differ")
        object.__setattr__(self, "sums", sums)
        object.__setattr__(self, "counts", counts)

    @staticmethod
    def from_samples(regions, values, num_regions: int, bins=None, num_bins: int = 1, step: int = 0) -> Feedback:
        """Per-region feedback from per-sample region indices, values and (optional) timestep bins."""
        regions = np.asarray(regions, dtype=np.int64)
        bins = np.zeros_like(regions) if bins is None else np.asarray(bins, dtype=np.int64)
        cells = regions * num_bins + bins
        size = num_regions * num_bins
        if cells.size and (cells.min() < 0 or cells.max() >= size):
            raise ValueError(f"feedback samples outside {num_regions} regions x {num_bins} bins")
        sums = np.bincount(cells, weights=np.asarray(values, dtype=np.float64), minlength=size)
        counts = np.bincount(cells, minlength=size).astype(np.float64)
        return Feedback(sums.reshape(num_regions, num_bins), counts.reshape(num_regions, num_bins), step)


@dataclass(frozen=True)
class Allocation:
    """One step's decision: a region per draw, optional importance weights, the probabilities used."""

    regions: np.ndarray
    probabilities: np.ndarray
    weights: np.ndarray | None = None


def sanitize(feedback: Feedback, num_regions: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(sums, counts, dropped): the feedback with every bad entry set to 0, and how many there were.

    An entry is bad if it is non-finite or negative, has a sum without a count, or exceeds
    ``FEEDBACK_LIMIT`` (as a sum or as a mean: sum <= limit * min(count, 1) bounds both).
    """
    sums, counts = feedback.sums, feedback.counts
    if sums.shape[0] != num_regions:
        raise ValueError(f"feedback has {sums.shape[0]} regions, the strategy {num_regions}")
    good = (counts <= FEEDBACK_LIMIT) & (sums >= 0) & (sums <= FEEDBACK_LIMIT * np.minimum(counts, 1.0))  # NaN fails
    dropped = int(good.size - np.count_nonzero(good))
    if dropped:
        sums, counts = np.where(good, sums, 0.0), np.where(good, counts, 0.0)
    return sums, counts, dropped


def mix_floor(q: np.ndarray, floor: float, active: np.ndarray) -> np.ndarray:
    """(1 - floor) * q / sum(q) + floor * uniform over the active regions; inactive regions get 0.

    q (>= 0) without a positive finite sum over the active regions counts as uniform.
    """
    q = np.where(active, q, 0.0)
    total = q.sum()
    if not 0 < total < np.inf:  # NaN fails too
        q, total = active.astype(np.float64), np.count_nonzero(active)
    p = q / total * (1.0 - floor)  # q / total <= 1: a subnormal total does not overflow, as (1 - floor) / total would
    p[active] += floor / np.count_nonzero(active)
    return p


def softmax_floor(scores: np.ndarray, temperature: float, floor: float, active: np.ndarray) -> np.ndarray:
    """softmax(scores / temperature) over the active regions (finite scores), mixed with ``floor``.

    A temperature so small that (score gap) / temperature overflows gives exp(-inf) = 0, the
    right limit (numpy warns).
    """
    z = np.where(active, scores, -np.inf)
    z -= z.max()
    z /= temperature
    return mix_floor(np.exp(z), floor, active)


class AllocationStrategy(ABC):
    """Decides the regions of switched conditions. Subclasses set ``Config`` and implement
    ``init_state``, ``probabilities`` and ``apply_feedback``; the base class handles seeding,
    sanitising feedback and drawing."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    origin: ClassVar[str] = "built-in"
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    switches: ClassVar[bool] = True  # False: never switch conditions (the ``none`` strategy)
    # "switched": only the samples drawn from the strategy's own allocation may feed it (an estimator weighted
    # by its own draw probabilities, ``exp3``), whatever ``distillation.feedback_from`` says; None: that setting
    learns_from: ClassVar[str | None] = None

    def __init__(self, config: StrategyConfig | dict | None = None, **params: Any):
        if config is None or isinstance(config, dict):
            config = self.Config(**{**(config or {}), **params})
        elif params:
            raise TypeError("pass either a config object or keyword parameters")
        self.config = config

    def init(self, regions: RegionInfo, seed: int) -> State:
        state: State = {"seed": int(seed), "sizes": regions.sizes.astype(np.int64), "updates": 0, "dropped": 0}
        state.update(self.init_state(regions))
        return state

    def allocate(self, state: State, step: int, n: int) -> Allocation:
        """Regions for the n switched draws of ``step`` (identical on every rank and resume)."""
        p = np.asarray(self.probabilities(state), dtype=np.float64)
        regions = draw_regions(p, int(state["seed"]), int(step), int(n))
        return Allocation(regions=regions, probabilities=p, weights=self.weights(state, p, regions))

    def update(self, state: State, feedback: Feedback) -> State:
        """A new state from one step's (all-reduced) feedback; bad entries are dropped and counted."""
        sums, counts, dropped = sanitize(feedback, np.asarray(state["sizes"]).size)
        new = {**state, "dropped": int(state["dropped"]) + dropped, "updates": int(state["updates"]) + 1}
        new.update(self.apply_feedback(state, sums, counts, int(feedback.step)))
        return new

    # -- what subclasses provide ---------------------------------------------------------
    def init_state(self, regions: RegionInfo) -> State:
        """Strategy-specific state entries (plain arrays and scalars)."""
        return {}

    @abstractmethod
    def probabilities(self, state: State) -> np.ndarray:
        """The distribution over regions used by the next allocation (sums to 1)."""

    def apply_feedback(self, state: State, sums: np.ndarray, counts: np.ndarray, step: int) -> State:
        """Entries of the state to replace, from sanitised (K, bins) sums and counts."""
        return {}

    def weights(self, state: State, p: np.ndarray, regions: np.ndarray) -> np.ndarray | None:
        """Optional per-draw importance weights (None: all 1)."""
        return None

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def active(state: State) -> np.ndarray:
        return np.asarray(state["sizes"]) > 0

    @classmethod
    def summary(cls) -> str:
        return cls.description or (cls.__doc__ or "").strip().splitlines()[0]
