"""Statistics of an experiment over seeds: means with t-intervals and paired ratios."""

from __future__ import annotations

import numpy as np


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean and t-interval of the finite values (interval None with fewer than two)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": int(x.size)}


def paired_ratios(num: list, den: list) -> list:
    """Per-seed ratios num/den (None where either is missing or den is 0)."""
    return [None if a is None or b is None or b == 0 else a / b for a, b in zip(num, den)]
