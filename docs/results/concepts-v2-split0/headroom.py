"""World v2, split 0: why the oracle's headroom over rc on unseen is 12.5% and not the 15% check C5 asks.

1. Where each run's switched prompts went: per regime, summed over the 500 steps from the logged
   allocation and each step's switched fraction (``aria.experiment.allocation``; the oracle re-measures
   every 100 steps, rc's allocation is the pool's and constant).
2. The learning curve of the unseen families: unseen condition-specific discrepancy D_c against the
   switched samples that carried an unseen prompt, n. Three points: ``none`` (n = 0; pilot 3's
   closing-probe ratio rc/none, 0.652, as its closing_probe.py reads it, as written before the experiment's
   own ``none`` runs were in; part 4 refits through those), ``rc`` and the oracle. The curve
   D(n) = c (n + n0)^-beta goes through all three (three parameters, so it is a description, not a test).
3. What that curve says about the check: the share of unseen samples an allocator needs for 0.85x rc at
   this budget, and a model-based projection of checks C3 (rc/none <= 0.7) and C5 (oracle/rc <= 0.85) if
   the unseen families held a smaller share of the pool, the one change of the world that widens the
   oracle's lead. Labelled as a projection wherever it is quoted.
4. Written after the other strategies ran: the same curve refitted through the experiment's own ``none``
   runs, and both curves tested on the seven strategies that were not used to fit them (aria, uniform,
   invfreq, exp3, ducb, swucb, dts): each one's measured unseen share and unseen D_c / rc against the curve's
   prediction at that share. Parts 1-3 are unchanged, so the reading written before the aria runs still
   reproduces.
5. Where each strategy's samples went inside the regimes: the unseen share of the allocation logged at
   the first and last logged steps, the switched samples and D_c of each unseen family, and the Spearman
   correlation of the run's mean allocation per region with rc's measured per-region D_c (eval, mean
   over rc's seeds).
6. Paired comparisons the reading quotes beyond results.json's ratios to rc: per seed, strategy A against B
   (a ratio for discrepancies, a difference for judged accuracy), mean and 95% t-interval over the seeds.

Run from the repository root: python docs/results/concepts-v2-split0/headroom.py
"""

import functools
import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import brentq
from scipy.stats import spearmanr

from aria.config import load_config
from aria.experiment.stats import mean_ci
from aria.experiment.allocation import group_mix, switched_by_group
from aria.experiment.plots import history
from aria.training.metrics import read_log
from aria.world.splits import FAMILY_NAMES, held_out_families

HERE = Path(__file__).resolve().parent
PILOT3 = HERE.parent / "concepts-pilot3"
CONFIG = HERE.parents[2] / "configs" / "concepts-gpu.yaml"
REGIMES = ("seen", "under", "unseen", "compositional")
SEEDS = (0, 1, 2)

sys.path.insert(0, str(PILOT3))
from aria_prediction import aria_rule  # noqa: E402  (pilot 3's scripts own these readings)
from closing_probe import closing_probe  # noqa: E402


def pilot3_readings() -> tuple[float, list[float]]:
    """Pilot 3's unseen D_c rc/none from the closing probes (seeds 0-1), and the unseen share that aria's
    rule gives on rc's tracker record per seed."""
    runs = PILOT3 / "runs"
    ratios = [closing_probe(runs / "rc" / f"seed{s}")["unseen"]["cond_discrepancy"]
              / closing_probe(runs / "none" / f"seed{s}")["unseen"]["cond_discrepancy"] for s in (0, 1)]
    aria = load_config(CONFIG, strategy="aria").make_strategy().config
    shares = []
    for s in (0, 1):
        recs = read_log(runs / "rc" / f"seed{s}" / "metrics.jsonl")
        shares.append(float(aria_rule(recs, aria) @ regime_fractions(recs)[:, REGIMES.index("unseen")]))
    return float(np.mean(ratios)), shares


def ran(folder: Path, names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` whose runs are all in ``folder``, in order."""
    return [n for n in names if all((folder / "runs" / n / f"seed{s}" / "eval" / "eval.json").is_file() for s in SEEDS)]


def regime_fractions(recs: list[dict]) -> np.ndarray:
    """(regions, regimes): each region's share of prompts per regime, from the run's data line."""
    regime = next(r for r in recs if r.get("event") == "data")["groups"]["regime"]
    assert tuple(regime["names"]) == REGIMES
    return np.asarray(regime["fractions"], dtype=np.float64)


def switched_by_regime(run: Path) -> np.ndarray:
    """Switched samples per regime over the run (aria.experiment.allocation, as `aria results` shows them)."""
    shares = switched_by_group(read_log(run / "metrics.jsonl"))
    return shares["samples"] * np.array([shares["regime"][g] for g in REGIMES])


def unseen_dc(run: Path) -> float:
    return json.loads((run / "eval" / "eval.json").read_text())["metrics"]["unseen"]["cond_discrepancy"]


def strategy_rows(name: str, show: bool = False, folder: Path = HERE) -> list[tuple]:
    """Per seed: (switched samples, share per regime, unseen samples, unseen D_c)."""
    rows = []
    for s in SEEDS:
        run = folder / "runs" / name / f"seed{s}"
        by_regime = switched_by_regime(run)
        share = by_regime / by_regime.sum()
        rows.append((by_regime.sum(), share, by_regime[2], unseen_dc(run)))
        if show:
            print(f"| {name} seed {s} | {by_regime.sum():,.0f} | " + " | ".join(f"{v:.3f}" for v in share)
                  + f" | {by_regime[2]:,.0f} | {unseen_dc(run):.5f} |")
    return rows


def fit_curve(d_none: float, n_rc: float, d_rc: float, n_or: float, d_or: float) -> tuple[float, float, float]:
    """(c, n0, beta) of D(n) = c (n + n0)^-beta through (0, d_none), (n_rc, d_rc), (n_or, d_or)."""
    def beta_for(n0):
        return np.log(d_none / d_rc) / np.log((n_rc + n0) / n0)

    n0 = brentq(lambda n0: beta_for(n0) * np.log((n_or + n0) / (n_rc + n0)) - np.log(d_rc / d_or), 1.0, 1e7)
    beta = beta_for(n0)
    return d_rc * (n_rc + n0) ** beta, n0, beta


def out_of_sample(n_rc: float, d_rc: float, n_or: float, d_or: float, d_none_pilot3: float | None,
                  folder: Path = HERE) -> None:
    """Part 4: the curves (through pilot 3's none where given, and the experiment's) against the strategies
    that were not used to fit them, those of ``folder`` that ran."""
    d_none = float(np.mean([unseen_dc(folder / "runs" / "none" / f"seed{s}") for s in SEEDS]))
    curves = {"the experiment's none": fit_curve(d_none, n_rc, d_rc, n_or, d_or)}
    if d_none_pilot3 is not None:
        curves = {"pilot 3's none": fit_curve(d_none_pilot3, n_rc, d_rc, n_or, d_or), **curves}
        print(f"\nthe experiment's none runs: unseen D_c rc/none {d_rc / d_none:.3f} (pilot 3's closing probes: "
              f"{d_rc / d_none_pilot3:.3f})")
    else:
        print(f"\nthe experiment's none runs: unseen D_c rc/none {d_rc / d_none:.3f}")
    for label, (c, n0, beta) in curves.items():
        print(f"curve through {label}, rc, oracle: D(n) = {c:.4g} (n + {n0:,.0f})^-{beta:.3f}")
    print("\nout of sample: strategies not used to fit the curves (unseen D_c / rc: the ratio of the means over "
          "seeds, as the curve is fitted; results.json's mean of per-seed ratios differs by <= 0.0001 here)")
    print("| strategy | unseen share | unseen samples | measured | "
          + " | ".join(f"curve ({label.removeprefix('the ')})" for label in curves) + " |")
    print("|---|---|---|---|" + "---|" * len(curves))
    for name in ran(folder, ("aria", "uniform", "invfreq", "exp3", "ducb", "swucb", "dts")):
        rows = strategy_rows(name, folder=folder)
        n = float(np.mean([r[2] for r in rows]))
        measured = float(np.mean([r[3] for r in rows])) / d_rc
        predicted = [c * (n + n0) ** -beta / d_rc for c, n0, beta in curves.values()]
        print(f"| {name} | {np.mean([r[1][2] for r in rows]):.3f} | {n:,.0f} | {measured:.3f} | "
              + " | ".join(f"{v:.3f}" for v in predicted) + " |")


def inside_regimes(folder: Path = HERE, split: int = 0) -> None:
    """Part 5: unseen share early and late, per unseen family, and alignment with rc's per-region D_c."""
    runs = folder / "runs"

    @functools.cache
    def evals(name):
        return [json.loads((runs / name / f"seed{s}" / "eval" / "eval.json").read_text()) for s in SEEDS]

    rc_regions = np.nanmean([np.asarray(e["regions"]["cond_discrepancy"], dtype=np.float64) for e in evals("rc")], 0)
    known = ~np.isnan(rc_regions)
    concepts = load_config(CONFIG, overrides=[f"data.concepts.seed={split}"]).data.concepts
    unseen_families = [FAMILY_NAMES[f] for f in held_out_families(concepts.seed, concepts.unseen_families)]
    print("\ninside the regimes (means over seeds)")
    print("| strategy | unseen share, first log | last log | Spearman(mean allocation, rc's region D_c) | "
          + " | ".join(f"{f}: samples, D_c" for f in unseen_families) + " |")
    print("|---|---|---|---|" + "---|" * len(unseen_families))
    for name in ran(folder, ("rc", "oracle", "aria", "invfreq", "ducb", "uniform", "exp3", "swucb", "dts")):
        logs = [read_log(runs / name / f"seed{s}" / "metrics.jsonl") for s in SEEDS]
        mixes = [group_mix(recs) for recs in logs]
        unseen = np.mean([m[2][:, m[1].index("unseen")] for m in mixes], 0)
        allocation = np.mean([np.nan_to_num(history(recs)["probabilities"][1]).mean(0) for recs in logs], 0)
        varies = np.ptp(allocation[known]) > 1e-9 * allocation.max()  # uniform's is constant: no correlation
        rho = spearmanr(allocation[known], rc_regions[known]).statistic if varies else float("nan")
        cells = []
        for f in unseen_families:
            samples = np.mean([g["samples"] * g["family"][f] for g in (switched_by_group(recs) for recs in logs)])
            dc = np.mean([e["metrics"][f"family:{f}"]["cond_discrepancy"] for e in evals(name)])
            cells.append(f"{samples:,.0f}, {dc:.5f}")
        print(f"| {name} | {unseen[0]:.2f} | {unseen[-1]:.2f} | {rho:+.2f} | " + " | ".join(cells) + " |")


PAIRS = (  # (A, B, regime, metric): the comparisons the reading quotes
    ("aria", "rc", "under", "judge_accuracy"), ("oracle", "rc", "under", "judge_accuracy"),
    ("aria", "oracle", "unseen", "judge_accuracy"), ("invfreq", "oracle", "unseen", "judge_accuracy"),
    ("aria", "ducb", "unseen", "cond_discrepancy"), ("invfreq", "oracle", "unseen", "cond_discrepancy"),
    ("invfreq", "oracle", "unseen", "discrepancy"),
    ("aria", "swucb", "unseen", "cond_discrepancy"), ("aria", "dts", "unseen", "cond_discrepancy"),
)


def eval_metric(folder: Path, name: str, seed: int, regime: str, metric: str) -> float:
    """One metric of one run's evaluation, in one regime."""
    return json.loads((folder / "runs" / name / f"seed{seed}" / "eval" / "eval.json").read_text())[
        "metrics"][regime][metric]


def paired_comparisons(folder: Path = HERE, pairs: tuple = PAIRS) -> None:
    """Part 6: A against B per seed (ratio of discrepancies, difference of accuracies), mean and 95% CI."""
    print("\npaired per seed (mean [95% CI] over seeds 0-2)")
    print("| A vs B | regime | metric | A / B or A - B |")
    print("|---|---|---|---|")
    for a, b, regime, metric in pairs:
        if ran(folder, (a, b)) != [a, b]:
            continue
        values = [(eval_metric(folder, a, s, regime, metric), eval_metric(folder, b, s, regime, metric)) for s in SEEDS]
        accuracy = metric == "judge_accuracy"
        stat = mean_ci([x - y if accuracy else x / y for x, y in values])
        form = "+.3f" if accuracy else ".3f"
        print(f"| {a} vs {b} | {regime} | {metric} | {'A - B' if accuracy else 'A / B'} {stat['mean']:{form}} "
              f"[{stat['low']:{form}}, {stat['high']:{form}}] |")


def main() -> None:
    print("| run | switched samples | share: seen | under | unseen | compositional | unseen samples | unseen D_c |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {name: strategy_rows(name, show=True) for name in ("rc", "oracle")}

    budget = np.mean([r[0] for r in rows["rc"]])  # switched samples a run (the same schedule for all)
    p_rc = np.mean([r[1][2] for r in rows["rc"]])
    q_or = np.mean([r[1][2] for r in rows["oracle"]])
    n_rc, d_rc = np.mean([r[2] for r in rows["rc"]]), np.mean([r[3] for r in rows["rc"]])
    n_or, d_or = np.mean([r[2] for r in rows["oracle"]]), np.mean([r[3] for r in rows["oracle"]])
    rc_over_none, aria_predicted = pilot3_readings()
    d_none = d_rc / rc_over_none
    floor = load_config(CONFIG, strategy="oracle").make_strategy().config.eps  # the oracle's uniform floor

    c, n0, beta = fit_curve(d_none, n_rc, d_rc, n_or, d_or)

    def curve(n):
        return c * (n + n0) ** -beta

    print(f"\nunseen share of switched samples: rc {p_rc:.3f}, oracle {q_or:.3f} ({q_or / p_rc:.2f}x); "
          f"oracle/rc unseen D_c {d_or / d_rc:.3f}")
    print(f"learning curve through none, rc, oracle: D(n) = {c:.4g} (n + {n0:,.0f})^-{beta:.3f}")
    n_needed = (0.85 * d_rc / c) ** (-1 / beta) - n0
    print(f"0.85x rc at this budget needs {n_needed:,.0f} unseen samples: an unseen share of "
          f"{n_needed / budget:.2f} (rc {p_rc:.2f}, oracle {q_or:.2f}); the oracle's ratio in the limit of a long "
          f"run, at its shares: {(q_or / p_rc) ** -beta:.3f}")

    for share in aria_predicted:
        print(f"aria, if it sent {share:.3f} of its switched samples to unseen over the whole run (pilot 3's "
              f"prediction): unseen D_c {curve(budget * share) / d_rc:.3f}x rc on this curve")

    # Projection: the unseen families' pool share r. rc sends r of its switched samples there; the oracle
    # sends floor * u + (1 - floor) * rho u / (rho u + 1 - u), u = the unseen share of a uniform draw over
    # regions (k-means regions follow the pool, u ~ r * u_now / r_now), rho = the unseen/other ratio of the
    # measured discrepancy that reproduces the oracle's share here.
    fractions = regime_fractions(read_log(HERE / "runs" / "rc" / "seed0" / "metrics.jsonl"))
    u_now = float(fractions[:, REGIMES.index("unseen")].mean())  # unseen share of a uniform draw over the regions
    rho = brentq(lambda rho: floor * u_now + (1 - floor) * rho * u_now / (rho * u_now + 1 - u_now) - q_or, 1e-3, 1e3)
    print(f"\nprojection (model, not measured): unseen/other discrepancy ratio seen by the oracle rho = {rho:.2f}")
    print("| unseen pool share | rc share | oracle share | C3 rc/none (<= 0.7) | C5 oracle/rc (<= 0.85) |")
    print("|---|---|---|---|---|")
    for r in (0.10, 0.15, 0.20, p_rc, 0.35):
        u = r * u_now / p_rc
        q = floor * u + (1 - floor) * rho * u / (rho * u + 1 - u)
        c3, c5 = curve(budget * r) / d_none, curve(budget * q) / curve(budget * r)
        print(f"| {r:.3f} | {r:.3f} | {q:.3f} | {c3:.3f} {'pass' if c3 <= 0.7 else 'fail'} | "
              f"{c5:.3f} {'pass' if c5 <= 0.85 else 'fail'} |")
    out_of_sample(n_rc, d_rc, n_or, d_or, d_none)
    inside_regimes()
    paired_comparisons()


if __name__ == "__main__":
    main()
