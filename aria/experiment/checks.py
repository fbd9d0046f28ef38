"""``aria checks``: the pre-registered checks of a world v2 comparison (``none``, ``rc``, ``oracle``).

Pure reading of an ``aria compare`` folder: ``results.json`` (every run's eval metrics per group), each
run's ``eval/eval.json`` (per-region probe discrepancy) and ``metrics.jsonl`` (the discrepancy the
strategy observed per region). The thresholds are ``experiment.checks`` of the run config. Each
sub-check is one row that passes, fails, or is missing (a strategy or file not in the folder; never a
pass). Ratios are means of per-seed ratios; correlations are Spearman's (ranks: robust to the heavy
tail of the region discrepancies and to the tracker's different scale).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aria.errors import UserError
from aria.experiment import report
from aria.experiment.compare import run_paths
from aria.files import read_tagged_json, write_json
from aria.training.metrics import read_log

FORMAT = "aria-checks/1"


class Missing(Exception):
    """What a check needs is not in the folder; the message says what."""


@dataclass
class Stat:
    value: float | None  # None: undefined (e.g. a correlation of constants), a fail
    n: int  # seeds, seed pairs or runs it is computed from
    detail: str = ""


@dataclass
class Folder:
    out: Path
    results: dict


# -- reading ---------------------------------------------------------------------------------------

def read_compare(out: Path) -> Folder:
    """The compare folder ``out``; a ``UserError`` if it is not one."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"--compare {out}: {'not a folder' if out.exists() else 'does not exist'}")
    if not (out / "results.json").is_file():
        raise UserError(f"--compare {out}: not an aria compare folder (no results.json in it)")
    return Folder(out, read_tagged_json(out / "results.json", "aria-compare/1", f"--compare {out}/results.json",
                                        "an aria compare results.json"))


def read_json(path: Path):
    """The JSON in ``path``, or None if it is not there or not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def per_seed(f: Folder, strategy: str, group: str, metric: str) -> dict[int, float]:
    """seed -> ``metric`` of ``group`` in the strategy's runs (results.json)."""
    runs = f.results.get("runs", {}).get(strategy)
    if not runs:
        raise Missing(f"no {strategy} runs")
    values = {int(s): m.get(group, {}).get(metric) for s, m in runs.items()}
    lacking = sorted(s for s, v in values.items() if v is None)
    if lacking:  # never a mean over the other seeds
        raise Missing(f"{strategy} seed {lacking[0]}: no {group} {metric}")
    return {s: float(v) for s, v in values.items()}


def regions(f: Folder, strategy: str, key: str = "discrepancy") -> dict[int, np.ndarray]:
    """seed -> per-region ``regions[key]`` of the run's eval.json (NaN where unprobed), for every seed
    of the strategy in results.json: one without it makes the check missing, not computed without it."""
    seeds = sorted(int(s) for s in f.results.get("runs", {}).get(strategy, {}))
    if not seeds:
        raise Missing(f"no {strategy} runs")
    found = {}
    for seed in seeds:
        ev = read_json(run_paths(f.out, strategy, seed)["eval_json"])
        if not (isinstance(ev, dict) and key in ev.get("regions", {})):
            raise Missing(f"runs/{strategy}/seed{seed}/eval/eval.json has no regions {key}")
        found[seed] = as_array(ev["regions"][key])
    return found


TRACKED_KEYS = ("region_discrepancy_tnorm", "region_discrepancy")  # preferred first


def tracked(f: Folder, strategy: str, seed: int) -> tuple[np.ndarray, str] | None:
    """Per-region mean of the logged observed discrepancy over the last half of training (NaN where
    never observed then) and the key it came from, or None without a log. The timestep-normalised
    record (``RegionWindow.take``) is preferred: the raw one ranks regions by their mix of
    timesteps as much as by their discrepancy (regions fed only by late-timestep switched samples
    look small); logs written before it existed have only the raw one."""
    log = read_log(run_paths(f.out, strategy, seed)["run"] / "metrics.jsonl")
    for key in TRACKED_KEYS:
        rows = [r for r in log or [] if r.get(key) is not None and "step" in r]
        if rows:
            break
    else:
        return None
    steps = f.results.get("steps") or max(r["step"] for r in rows)
    late = np.array([as_array(r[key]) for r in rows if r["step"] > steps / 2])
    if late.size == 0:
        return None
    seen = np.isfinite(late)
    return np.where(seen.any(0), np.where(seen, late, 0).sum(0) / np.maximum(seen.sum(0), 1), np.nan), key


def as_array(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


# -- statistics ------------------------------------------------------------------------------------

def mean_ratio(num: dict, den: dict) -> Stat:
    """Mean of the per-seed ratios num/den over the seeds holding both."""
    ratios = [num[s] / den[s] for s in sorted(num) if s in den and den[s] != 0]
    if not ratios:
        raise Missing("no seed with both values")
    return Stat(float(np.mean(ratios)), len(ratios))


def mean_over(values: list[float | None]) -> Stat:
    """Mean of the values; None (a fail) if any is undefined (None or NaN: a flat seed's correlation or
    spread), since a mean over the others would pass on fewer seeds than the folder holds."""
    undefined = sum(v is None or math.isnan(v) for v in values)
    if undefined or not values:
        return Stat(None, len(values), f"undefined for {undefined} of {len(values)}" if values else "no values")
    return Stat(float(np.mean(values)), len(values))


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho over the entries finite in both (None with fewer than 3, a constant side or
    different lengths)."""
    from scipy import stats

    if len(x) != len(y):
        return None
    both = np.isfinite(x) & np.isfinite(y)
    if both.sum() < 3 or np.ptp(x[both]) == 0 or np.ptp(y[both]) == 0:
        return None
    return float(stats.spearmanr(x[both], y[both]).statistic)


def spread(x: np.ndarray) -> tuple[float, float]:
    """Coefficient of variation (population std / mean) and max/median of the finite entries."""
    x = x[np.isfinite(x)]
    if x.size == 0 or x.mean() <= 0:
        return math.nan, math.nan
    median = float(np.median(x))
    return float(x.std() / x.mean()), float(x.max() / median) if median > 0 else math.inf


# -- the checks ------------------------------------------------------------------------------------

def row(check: str, name: str, op: str, threshold: float, compute) -> dict:
    """One sub-check: ``compute()`` gives a ``Stat`` or raises ``Missing``."""
    try:
        stat = compute()
    except Missing as err:
        return {"check": check, "name": name, "value": None, "op": op, "threshold": threshold, "n": 0,
                "status": "missing", "detail": str(err)}
    v = stat.value
    ok = v is not None and not math.isnan(v) and (v >= threshold if op == ">=" else v <= threshold)
    return {"check": check, "name": name, "value": v, "op": op, "threshold": threshold, "n": stat.n,
            "status": "pass" if ok else "fail", "detail": stat.detail}


def teacher_accuracy(f: Folder) -> Stat:
    """Lowest teacher judged accuracy over the regimes and families of every run."""
    groups = [(m.get("teacher_accuracy"), g, s, seed) for s, runs in f.results.get("runs", {}).items()
              for seed, metrics in runs.items() for g, m in metrics.items() if g != "all"]
    if not groups:
        raise Missing("no runs with regime or family groups in results.json")
    unjudged = [f"{g} ({s} seed {seed})" for v, g, s, seed in groups if v is None]
    if unjudged:  # a regime or family without judged samples would otherwise pass unseen
        raise Missing(f"no teacher_accuracy for {', '.join(unjudged[:3])}{', ...' if len(unjudged) > 3 else ''}")
    found = [(float(v), g, s, seed) for v, g, s, seed in groups]
    low, g, s, seed = min(found)
    return Stat(low, len({(s, seed) for _, _, s, seed in found}), f"lowest: {g} ({s} seed {seed})")


def c1(f: Folder, t) -> list[dict]:
    return [row("C1", "teacher accuracy, min over regimes/families/runs", ">=", t.teacher_accuracy_min,
                lambda: teacher_accuracy(f)),
            row("C1", "none seen accuracy", ">=", t.none_seen_accuracy_min,
                lambda: mean_over(list(per_seed(f, "none", "seen", "judge_accuracy").values())))]


def c2(f: Folder, t) -> list[dict]:
    def within(metric):
        return lambda: mean_ratio(per_seed(f, "none", "unseen", metric), per_seed(f, "none", "seen", metric))

    return [row("C2", "none unseen/seen cond_discrepancy", ">=", t.none_unseen_seen_cond_min,
                within("cond_discrepancy")),
            row("C2", "none unseen/seen discrepancy", ">=", t.none_unseen_seen_probe_min, within("discrepancy"))]


def c3(f: Folder, t) -> list[dict]:
    def rc_none(group):
        return lambda: mean_ratio(per_seed(f, "rc", group, "cond_discrepancy"),
                                  per_seed(f, "none", group, "cond_discrepancy"))

    return [row("C3", "unseen cond_discrepancy rc/none", "<=", t.rc_unseen_cond_ratio_max, rc_none("unseen")),
            row("C3", "seen cond_discrepancy rc/none", "<=", t.rc_seen_cond_ratio_max, rc_none("seen"))]


def seed_agreement(f: Folder) -> Stat:
    """Mean Spearman rho of rc's per-region probe discrepancy over the pairs of seeds."""
    disc = regions(f, "rc")
    if len(disc) < 2:
        raise Missing("needs two rc runs with eval/eval.json")
    return mean_over([spearman(disc[a], disc[b]) for a, b in itertools.combinations(sorted(disc), 2)])


def c4(f: Folder, t) -> list[dict]:
    def spread_stat(i):
        return lambda: mean_over([spread(x)[i] for x in regions(f, "rc").values()])

    return [row("C4", "rc region discrepancy CV", ">=", t.region_cv_min, spread_stat(0)),
            row("C4", "rc region discrepancy max/median", ">=", t.region_max_median_min, spread_stat(1)),
            row("C4", "rc region discrepancy Spearman between seeds", ">=", t.region_seed_spearman_min,
                lambda: seed_agreement(f))]


def tracker_agreement(f: Folder, feedback_from: str | None = None) -> Stat:
    """Mean over rc seeds of Spearman's rho between the tracker's input and the eval per region. The
    input is what the run's ``distillation.feedback_from`` feeds the tracker (``all``: paired and switched
    samples; ``switched``: switched only); the detail names it when known."""
    disc, rhos, keys = regions(f, "rc"), [], set()
    for seed, measured in disc.items():
        logged = tracked(f, "rc", seed)
        if logged is None:
            raise Missing(f"runs/rc/seed{seed}/metrics.jsonl has no region_discrepancy in the last half of training")
        if len(logged[0]) != len(measured):
            raise Missing(f"runs/rc/seed{seed}: {len(logged[0])} regions logged, {len(measured)} evaluated")
        rhos.append(spearman(logged[0], measured))
        keys.add(logged[1])
    stat = mean_over(rhos)
    kind = "timestep-normalised" if keys == {TRACKED_KEYS[0]} else "raw (the log has no timestep-normalised record)"
    source = f", from {feedback_from} samples (distillation.feedback_from)" if feedback_from else ""
    return Stat(stat.value, stat.n, f"tracker input: {kind}{source}" + (f"; {stat.detail}" if stat.detail else ""))


def c5(f: Folder, t, feedback_from: str | None = None) -> list[dict]:
    return [row("C5", "rc tracker input vs eval, Spearman per region", ">=", t.tracker_spearman_min,
                lambda: tracker_agreement(f, feedback_from)),
            row("C5", "unseen cond_discrepancy oracle/rc", "<=", t.oracle_unseen_cond_ratio_max,
                lambda: mean_ratio(per_seed(f, "oracle", "unseen", "cond_discrepancy"),
                                   per_seed(f, "rc", "unseen", "cond_discrepancy")))]


def compute_checks(out_dir: Path, thresholds, feedback_from: str | None = None) -> dict:
    """Every sub-check of the compare folder ``out_dir`` against ``thresholds`` (a ``ChecksConfig``);
    ``feedback_from`` (the runs' ``distillation.feedback_from``) is named in C5's detail."""
    f = read_compare(out_dir)
    rows = [r for check in (c1, c2, c3, c4) for r in check(f, thresholds)] + c5(f, thresholds, feedback_from)
    return {"format": FORMAT, "compare": str(out_dir), "thresholds": thresholds.model_dump(),
            "correlation": "spearman", "ratios": "mean of the per-seed ratios",
            "all_pass": all(r["status"] == "pass" for r in rows), "checks": rows}


def write_checks(result: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / "checks.json"
    write_json(path, result)
    return path


def recorded_config(f: Folder) -> tuple[Path, list[str]] | None:
    """The ``--config`` and ``--set`` values of the command that made the folder, if it names a config."""
    config, sets = report.command_options(f.results.get("command") or "")
    return None if config is None else (Path(config), sets)
