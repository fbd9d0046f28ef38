"""Where a run's switched prompts went, read from its ``metrics.jsonl``: their share per group.

Each step's switched samples (batch x switched fraction; every step is logged) are spread over the
regions by the allocation in force, then over the groups (regime; concept family in world v2) by each
region's group fractions (the ``data`` line). The region probabilities are logged every
``logging.every`` steps; a step takes the first logged at or after it (the last one after the last
log). For an allocation that changes between two logs this is exact only to that resolution.
"""

from __future__ import annotations

import numpy as np

from aria.experiment.plots import history


def switched_by_group(records: list[dict]) -> dict | None:
    """{"samples": switched samples of the run, grouping: {group: share of them}} for every grouping of
    the data line; None for a run that switched nothing or logged no allocation or no data line."""
    h = history(records)
    if h["probabilities"] is None or h["data"] is None or any("batch" not in r for r in h["steps"]):
        return None
    logged, probs = h["probabilities"]
    probs = np.nan_to_num(probs)
    switched = np.array([r["batch"] * r.get("switched_fraction", 0.0) for r in h["steps"]])
    total = switched.sum()
    if not total > 0:
        return None
    in_force = np.minimum(np.searchsorted(logged, [r["step"] for r in h["steps"]]), len(logged) - 1)
    per_region = switched @ probs[in_force]
    out: dict = {"samples": float(total)}
    for key, group in h["data"].get("groups", {}).items():
        fractions = np.asarray(group["fractions"], dtype=np.float64)
        if fractions.shape[0] == per_region.shape[0]:
            out[key] = {name: float(v / total) for name, v in zip(group["names"], per_region @ fractions)}
    return out


def group_mix(records: list[dict], grouping: str = "regime") -> tuple[np.ndarray, list[str], np.ndarray] | None:
    """(logged steps, group names, (steps, groups) share of each group in the allocation logged at each
    step); None for a run that logged no allocation or not that grouping."""
    h = history(records)
    group = (h["data"] or {}).get("groups", {}).get(grouping)
    if h["probabilities"] is None or group is None:
        return None
    logged, probs = h["probabilities"]
    fractions = np.asarray(group["fractions"], dtype=np.float64)
    if fractions.shape[0] != probs.shape[1]:
        return None
    return logged, list(group["names"]), np.nan_to_num(probs) @ fractions
