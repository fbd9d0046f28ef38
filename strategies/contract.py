"""The contract of ``AllocationStrategy.allocate``, checked by the engine at every step and by the
theory's simulations: a strategy that breaks it is stopped at the step it does, with the reason."""

from __future__ import annotations

import numpy as np

from .base import Allocation

# an allocation's probabilities sum to 1 within this (float64 sums of K terms are off by ~K ulp)
SUM_TOLERANCE = 1e-6


def check_allocation(allocation, num_regions: int, n: int, active: np.ndarray | None = None) -> None:
    """Raise ``ValueError`` naming the first way ``allocation`` breaks the contract of ``allocate``:
    an ``Allocation`` of ``n`` integer regions in ``[0, num_regions)`` (active ones only, when
    ``active`` is given), ``num_regions`` finite non-negative probabilities summing to 1 (within
    ``SUM_TOLERANCE``), and no weights or ``n`` finite non-negative ones."""
    if not isinstance(allocation, Allocation):
        raise ValueError(f"allocate returned {type(allocation).__name__}, not an Allocation")
    p = np.asarray(allocation.probabilities)
    if p.shape != (num_regions,) or not np.issubdtype(p.dtype, np.number) or np.iscomplexobj(p):
        raise ValueError(f"probabilities have shape {p.shape} and dtype {p.dtype}, expected ({num_regions},) numbers")
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        raise ValueError("probabilities are not finite "
                         f"({np.count_nonzero(~np.isfinite(p))} of {p.size} are nan or inf)")
    if (p < 0).any():
        raise ValueError(f"probabilities are negative (min {p.min():.3g})")
    if abs(p.sum() - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"probabilities sum to {p.sum():.6g}, not 1")
    r = np.asarray(allocation.regions)
    if r.shape != (n,) or not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"regions have shape {r.shape} and dtype {r.dtype}, expected ({n},) integers")
    if n and (r.min() < 0 or r.max() >= num_regions):
        raise ValueError(f"regions out of range: {int(r.min())}..{int(r.max())} for {num_regions} regions")
    if n and active is not None and not np.asarray(active)[r].all():
        raise ValueError(f"an empty region was drawn (region {int(r[~np.asarray(active)[r]][0])})")
    if allocation.weights is not None:
        w = np.asarray(allocation.weights)
        if w.shape != (n,) or not np.issubdtype(w.dtype, np.number):
            raise ValueError(f"weights have shape {w.shape} and dtype {w.dtype}, expected ({n},) numbers")
        w = w.astype(np.float64)
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights are not all finite and non-negative")
