"""Running statistics the built-in strategies share, as pure functions of numpy arrays."""

from __future__ import annotations

import numpy as np

from .state import State


def observed_cells(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(region, bin, sum, count) of every cell of sanitised (K, bins) feedback that holds samples.

    A step touches at most as many cells as it draws samples, a few of the K * bins; cells without
    a count hold no sum (``sanitize`` guarantees it), so these are all the feedback says.
    """
    regions, bins = np.nonzero(counts)
    return regions, bins, sums[regions, bins], counts[regions, bins]


def region_totals(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-region (sum, count) over the timestep bins of sanitised (K, bins) feedback."""
    regions, _, cell_sums, cell_counts = observed_cells(sums, counts)
    k = sums.shape[0]
    return np.bincount(regions, cell_sums, minlength=k), np.bincount(regions, cell_counts, minlength=k)


def ema_update(mean: np.ndarray, seen: np.ndarray, observation: np.ndarray, observed: np.ndarray,
               alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One exponential-moving-average step where ``observed``: mean * (1 - alpha) + alpha * observation,
    or the observation itself where nothing was seen before; returns (mean, seen + observed)."""
    tracked = np.where(seen > 0, mean * (1 - alpha) + alpha * observation, observation)
    return np.where(observed, tracked, mean), seen + observed


def discounted_state(num_regions: int) -> State:
    """Discounted per-region sums and sample counts, before any feedback (``dts``, ``ducb``)."""
    return {"discounted_sums": np.zeros(num_regions), "discounted_counts": np.zeros(num_regions)}


def discounted_update(state: State, sums: np.ndarray, counts: np.ndarray, decay: float) -> State:
    """The discounted statistics after one step: decay * old + the step's per-region totals."""
    region_sum, region_count = region_totals(sums, counts)
    return {
        "discounted_sums": decay * np.asarray(state["discounted_sums"]) + region_sum,
        "discounted_counts": decay * np.asarray(state["discounted_counts"]) + region_count,
    }
