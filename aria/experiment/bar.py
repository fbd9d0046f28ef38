"""The project's bar for aria against rc, one owner for its arithmetic: the checks of one comparison
(``compare.summarise``) and of several pooled (``report.pooled_sections``, e.g. two splits of a world),
and the share of the oracle's headroom (``report.headroom_section`` and the pooled sections)."""

from __future__ import annotations

from typing import Callable

from aria.experiment.stats import mean_ci, paired_ratios

BARS = (  # (name, regime, metric, kind, bar): kind "ratio" -> aria/rc <= bar; "gap" -> aria - bar*rc <= 0;
    # "headroom" (with an oracle) -> aria - min(rc, rc - bar*(rc - oracle)) <= 0: aria takes >= bar of the
    # oracle's gain over rc, and is no worse than rc where the oracle gains nothing
    ("unseen discrepancy aria/rc", "unseen", "discrepancy", "ratio", 0.85),
    ("under discrepancy aria/rc", "under", "discrepancy", "ratio", 0.85),
    ("seen discrepancy aria/rc", "seen", "discrepancy", "ratio", 1.02),
    ("unseen accuracy gap: aria - 0.5 rc", "unseen", "accuracy_gap", "gap", 0.5),
    ("unseen discrepancy: aria - min(rc, rc - 0.5 (rc - oracle))", "unseen", "discrepancy", "headroom", 0.5),
    ("unseen cond_discrepancy: aria - min(rc, rc - 0.5 (rc - oracle))", "unseen", "cond_discrepancy", "headroom", 0.5),
)


def bar_checks(per_seed: Callable[[str, str, str], list], groups, metrics, strategies) -> list[dict]:
    """The bar's checks, from ``per_seed(strategy, group, metric)``: values paired by position across
    strategies (None = missing). Empty without aria and rc; the headroom checks need the oracle."""
    if "rc" not in strategies or "aria" not in strategies:
        return []
    checks = []
    for name, g, m, kind, bar in BARS:
        if g not in groups or m not in metrics or (kind == "headroom" and "oracle" not in strategies):
            continue
        a, r = per_seed("aria", g, m), per_seed("rc", g, m)
        if kind == "ratio":
            stat, target = mean_ci(paired_ratios(a, r)), bar
        elif kind == "gap":
            stat, target = mean_ci([None if x is None or y is None else x - bar * y for x, y in zip(a, r)]), 0.0
        else:  # headroom: aria at or below rc minus bar times the oracle's gain over rc (none: rc itself)
            o = per_seed("oracle", g, m)
            stat = mean_ci([None if None in (x, y, z) else x - min(y, y - bar * (y - z)) for x, y, z in zip(a, r, o)])
            target = 0.0
        ok = stat["mean"] is not None and stat["mean"] <= target
        clear = stat["high"] is not None and stat["high"] <= target
        checks.append({"name": name, **stat, "op": "<=", "bar": target, "pass": bool(ok), "ci_clear": bool(clear)})
    return checks


HEADROOM_METRICS = ("cond_discrepancy", "discrepancy")  # the headroom is read on the first one measured


def headroom_metric(metrics) -> str:
    """The metric of the oracle's headroom: the condition-specific discrepancy where measured, else the probe's."""
    return next(m for m in HEADROOM_METRICS if m in metrics)


def headroom_share(strategy: list, rc: list, oracle: list) -> dict:
    """A strategy's share of the oracle's gain over rc, from per-seed values paired by position, over the
    positions where all three were measured: {"strategy": mean_ci of strategy/rc, "oracle": mean_ci of
    oracle/rc, "share": (1 - strategy/rc) / (1 - oracle/rc) of the means}. The share is None where the
    oracle's gain is not established (its 95% interval reaches 1, or a single seed)."""
    both = [(s, r, o) for s, r, o in zip(strategy, rc, oracle) if None not in (s, r, o) and r != 0]
    mine, theirs = mean_ci([s / r for s, r, _ in both]), mean_ci([o / r for _, r, o in both])
    gain = established_gain(theirs)
    return {"strategy": mine, "oracle": theirs, "share": None if gain is None else (1 - mine["mean"]) / gain}


def established_gain(oracle_over_rc: dict) -> float | None:
    """The oracle's gain over rc, 1 - oracle/rc, from a ``mean_ci`` of the ratio; None where it is not
    established (the 95% interval reaches 1, or a single seed)."""
    high = oracle_over_rc["high"]
    return 1 - oracle_over_rc["mean"] if high is not None and high < 1 else None
