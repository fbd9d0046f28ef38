"""The plots of one run, drawn from its ``metrics.jsonl`` alone (``aria run`` makes them when it ends).

- ``training.png``: the loss and its terms, and the switched fraction, over the steps;
- ``allocation.png``: where the strategy sent the switched prompts: the share of each group (regime;
  concept family in world v2) over the steps against the pool's share (dashed: what ``rc`` draws),
  and every region's probability over the steps (regions sorted by their main regime);
- ``tracking.png``: the strategy's tracked estimate per region against the latest discrepancy the
  run observed in that region (timestep-normalised, as the tracker reads it, where the log has it),
  and the estimates over the steps.

A plot whose data the run does not have is left out (``none`` switches nothing; only strategies
with an ``estimate`` state track). Groups come from the ``"event": "data"`` line the engine writes
at setup (``aria.training.metrics.data_record``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aria.experiment.report import REGIME_COLORS, _plt, _save
from aria.training.metrics import read_log

PLOTS_DIR = "plots"


def _matrix(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values (T, K)) of the records carrying a list under ``key`` (None entries as nan)."""
    rows = [r for r in rows if isinstance(r.get(key), list) and "step" in r]
    if not rows:
        return None
    k = max(len(r[key]) for r in rows)
    values = np.full((len(rows), k), np.nan)
    for i, r in enumerate(rows):
        values[i, :len(r[key])] = [np.nan if v is None else v for v in r[key]]
    return np.array([r["step"] for r in rows]), values


def history(records: list[dict]) -> dict:
    """What the plots read: step lines, per-region matrices and the data line (the last of each)."""
    steps = [r for r in records if "step" in r and "loss" in r and r.get("event") is None]
    last = {}
    for r in steps:  # a resumed run appends: the last line of a step wins
        last[r["step"]] = r
    steps = [last[s] for s in sorted(last)]
    data = next((r for r in reversed(records) if r.get("event") == "data"), None)
    return {"steps": steps, "probabilities": _matrix(steps, "probabilities"), "estimates": _matrix(steps, "estimates"),
            "observed": _matrix(steps, "region_discrepancy_tnorm") or _matrix(steps, "region_discrepancy"),
            "data": data}


def run_plots(run_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """Write the plots of the run in ``run_dir`` (into ``run_dir/plots`` unless ``out_dir``); returns
    {what: path} of those written (none when the run logged no step)."""
    run_dir = Path(run_dir)
    records = read_log(run_dir / "metrics.jsonl")
    if records is None:
        return {}
    h = history(records)
    folder = Path(out_dir) if out_dir is not None else run_dir / PLOTS_DIR
    plots = {}
    if h["steps"]:
        plots["loss terms and switched fraction over steps"] = plot_training(h["steps"], folder / "training.png")
    probs = h["probabilities"]
    if probs is not None and np.isfinite(probs[1]).any():
        plots["allocation over steps per group and per region"] = plot_allocation(probs[0], probs[1], h["data"],
                                                                                  folder / "allocation.png")
    if h["estimates"] is not None and h["observed"] is not None:
        plots["tracked estimate vs latest observed discrepancy per region"] = plot_tracking(
            h["estimates"][0], h["estimates"][1], h["observed"][1], h["data"], folder / "tracking.png")
    return plots


def example_prompts(run_dir: Path) -> list[str]:
    """Prompts to sample a run's student with, from its data line: a seen one (else a paired caption)
    and an unseen one where the data has regimes."""
    data = history(read_log(Path(run_dir) / "metrics.jsonl") or [])["data"]
    examples = (data or {}).get("examples") or {}
    first = examples.get("seen") or examples.get("paired")
    return [p for p in (first, examples.get("unseen")) if isinstance(p, str) and p]


def plot_training(steps: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, (ax, sw) = plt.subplots(1, 2, figsize=(10, 3.4))
    x = np.array([r["step"] for r in steps])
    for key, color in (("loss", "black"), ("task", "#4477aa"), ("out", "#ee7733"), ("feat", "#228833")):
        y = np.array([np.nan if r.get(key) is None else r[key] for r in steps], dtype=float)
        if np.isfinite(y).any():
            ax.plot(x, y, color=color, lw=1.6 if key == "loss" else 1.0, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("weighted term")
    ax.set_title("loss = task + out (output KD) + feat (feature KD)", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    sw.plot(x, [r.get("switched_fraction", np.nan) for r in steps], color="#777777")
    sw.set_xlabel("step")
    sw.set_ylabel("fraction of the batch")
    sw.set_ylim(-0.02, 1.02)
    sw.set_title("switched prompts (drawn by the strategy)", fontsize=10)
    return _save(fig, path)


def _groupings(data: dict | None, k: int) -> list[tuple[str, list[str], np.ndarray]]:
    """(grouping, group names, fractions (K, G)) of the data line whose region count matches."""
    if not data or data.get("regions") != k:
        return []
    return [(key, list(g["names"]), np.asarray(g["fractions"], dtype=float))
            for key, g in data.get("groups", {}).items()]


def _group_colors(key: str, names: list[str]) -> list:
    if key == "regime":
        return [REGIME_COLORS.get(n, "#777777") for n in names]
    cmap = _plt().get_cmap("tab10")
    return [cmap(i % 10) for i in range(len(names))]


def _main_group(fractions: np.ndarray) -> np.ndarray:
    """Each region's largest group (-1 for an empty region)."""
    main = fractions.argmax(1)
    return np.where(fractions.sum(1) > 0, main, -1)


def plot_allocation(steps: np.ndarray, probs: np.ndarray, data: dict | None, path: Path) -> Path:
    """One panel per grouping (share of switched prompts per group over steps; dashed: the pool's
    share), then a heatmap of every region's probability over the steps. Steps where nothing was
    switched (a null allocation) are gaps."""
    plt = _plt()
    k = probs.shape[1]
    groupings = _groupings(data, k)
    sizes = np.asarray(data["sizes"], dtype=float) if groupings else None
    fig, axes = plt.subplots(1, len(groupings) + 1, figsize=(5.2 * (len(groupings) + 1), 3.8), squeeze=False)
    for ax, (key, names, fractions) in zip(axes[0], groupings):
        share = probs @ fractions  # prompts are drawn uniformly inside a region
        pool = sizes @ fractions / max(sizes.sum(), 1)
        for g, (name, color) in enumerate(zip(names, _group_colors(key, names))):
            if pool[g] == 0 and not np.nan_to_num(share[:, g]).any():
                continue
            ax.plot(steps, share[:, g], color=color, label=name, marker="." if len(steps) < 20 else None)
            ax.axhline(pool[g], color=color, ls="--", lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("share of switched prompts")
        ax.set_title(f"allocation per {key} (dashed: pool share)", fontsize=10)
        ax.legend(frameon=False, fontsize=7, ncol=2 if len(names) > 4 else 1)
    hm = axes[0][-1]
    if groupings:
        fractions = groupings[0][2]
        main = _main_group(fractions)
        order = np.lexsort((-fractions.max(1), main))
        label = f"region (sorted by main {groupings[0][0]})"
    else:
        order, label = np.arange(k), "region"
    half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
    im = hm.imshow(probs[:, order].T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                   extent=(steps[0] - half, steps[-1] + half, -0.5, k - 0.5))
    hm.set_xlabel("step")
    hm.set_ylabel(label)
    hm.set_title(f"probability of each of the {k} regions", fontsize=10)
    fig.colorbar(im, ax=hm, label="p")
    return _save(fig, path)


def plot_tracking(steps: np.ndarray, estimates: np.ndarray, observed: np.ndarray, data: dict | None,
                  path: Path) -> Path:
    """Left: the final tracked estimate of every region against the latest discrepancy observed in
    it (the mean over the last log interval that saw it), with their rank correlation. Right: the
    estimates over the steps. Colours: each region's main regime."""
    plt = _plt()
    k = estimates.shape[1]
    latest = np.full(k, np.nan)
    for row in observed:  # rows in step order: the last finite value per region
        latest = np.where(np.isfinite(row[:k]), row[:k], latest)
    final = estimates[-1]
    groupings = [g for g in _groupings(data, k) if g[0] == "regime"]
    if groupings:
        names, fractions = groupings[0][1], groupings[0][2]
        main = _main_group(fractions)
        colors = np.array(_group_colors("regime", names) + ["#bbbbbb"], dtype=object)[main]
    else:
        names, main, colors = [], np.zeros(k, int), np.array(["#4477aa"] * k, dtype=object)
    fig, (sc, ln) = plt.subplots(1, 2, figsize=(10.5, 4))
    ok = np.isfinite(final) & np.isfinite(latest)
    sc.scatter(latest[ok], final[ok], s=16, c=list(colors[ok]))
    title = "tracked estimate vs latest observed, per region"
    if ok.sum() >= 3 and np.ptp(latest[ok]) > 0 and np.ptp(final[ok]) > 0:  # else rho is undefined
        from scipy.stats import spearmanr

        rho = spearmanr(latest[ok], final[ok]).statistic
        title += f"\nSpearman rho {rho:.2f} over {int(ok.sum())} regions"
    seen = latest[ok]
    if len(seen) and seen.min() > 0 and seen.max() > 20 * seen.min():  # discrepancies span decades over timesteps
        sc.set_xscale("log")
    sc.set_xlabel("latest observed discrepancy (mean over its last log interval)")
    sc.set_ylabel("tracked estimate at the end (strategy's scale)")
    sc.set_title(title, fontsize=10)
    for r in range(k):
        if np.isfinite(estimates[:, r]).any():
            ln.plot(steps, estimates[:, r], color=colors[r], lw=0.8, alpha=0.8)
    ln.set_xlabel("step")
    ln.set_ylabel("tracked estimate")
    ln.set_title("estimates over steps (one line per region)", fontsize=10)
    if names:
        from matplotlib.patches import Patch

        present = sorted({int(m) for m in main if m >= 0})
        ln.legend(handles=[Patch(color=REGIME_COLORS.get(names[m], "#777777"), label=names[m]) for m in present],
                  frameon=False, fontsize=8, title="main regime", title_fontsize=8)
    return _save(fig, path)
