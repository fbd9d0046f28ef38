"""Figures of ``aria theory-sim`` (matplotlib, Agg backend): alpha scan, trajectories, allocation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import bounds as Bd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_alpha(scan: list[dict], sigma: float, delta: float, start: int, stop: int, path: Path) -> Path:
    """Measured RMSE against alpha (log-log, one-sided limits as bars) with the bound curve and a*."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)  # fixed margins: layout engines cost 2x
    dense = np.geomspace(min(s["alphas"][0] for s in scan), max(s["alphas"][-1] for s in scan), 200)
    for s, color in zip(scan, ("C0", "C1", "C2", "C3")):
        a, r = np.array(s["alphas"]), np.array(s["rmse"])
        err = [r - np.array(s["lcl"]), np.array(s["ucl"]) - r]
        ax.errorbar(a, r, yerr=err, fmt="o", ms=4, color=color, label=f"measured, delay {s['delay']}")
        b = [Bd.window_bound(x, sigma, delta, 1.0, s["delay"], start, stop) for x in dense]
        ax.plot(dense, b, "-", color=color, lw=1, label=f"bound, delay {s['delay']}")
        ax.axvline(s["measured_minimiser"], color=color, ls=":", lw=1)
    ax.axvline(scan[0]["a_star"], color="k", ls="--", lw=1, label=f"a* = {scan[0]['a_star']:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="alpha (EMA step)", ylabel="RMS tracking error",
           title=f"linear trend, Gaussian noise: sigma={sigma:g}, delta={delta:g}")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_trajectories(traces: dict, path: Path, regions: int = 3) -> Path:
    """Estimate (in force) against truth for a few regions: every-step and sampled runs."""
    plt = _plt()
    panels = [k for k in ("every", "sampled") if k in traces]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 3.0 * len(panels)), squeeze=False)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.08, top=0.93, hspace=0.45)
    for ax, key in zip(axes[:, 0], panels):
        tr = traces[key]
        est, truth = np.asarray(tr["estimate"]), np.asarray(tr["truth"])
        for j in range(min(regions, est.shape[1])):
            ax.plot(truth[:, j], color=f"C{j}", lw=1.5, label=f"truth, region {j}")
            ax.plot(est[:, j], color=f"C{j}", lw=0.6, alpha=0.7, label=f"estimate, region {j}")
        extra = (f", K={tr['regions']} eps={tr['eps']:g} B={tr['draws']} delay={tr['delay']}"
                 if key == "sampled" else "")
        ax.set(title=f"{key}: {tr['process']} + {tr['noise']}, alpha={tr['alpha']:g}{extra}", xlabel="step",
               ylabel="discrepancy")
        ax.set_ylim(np.percentile(truth[:, :regions], 0.5) - 0.5, np.percentile(truth[:, :regions], 99.5) + 0.5)
        ax.legend(fontsize=6, ncol=2)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_allocation(allocation: list[dict], path: Path) -> Path:
    """aria's allocation over time in the coupled process, and the worst region's discrepancy per strategy."""
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.08, top=0.94, hspace=0.35)
    aria = next((a for a in allocation if a["strategy"] == "aria" and a.get("probabilities") is not None), None)
    if aria is not None:
        probs = np.asarray(aria["probabilities"])
        top.stackplot(np.arange(len(probs)), probs.T, labels=[f"region {k}" for k in range(probs.shape[1])])
        top.set(title="aria: allocation probability per region (coupled process, seed 0)", xlabel="step",
                ylabel="probability", ylim=(0, 1))
        top.legend(fontsize=6, ncol=4, loc="upper right")
    for a in allocation:
        if "worst_curve" in a:
            floor = f"eps={a['eps']:g}" if a.get("eps") is not None else "no floor"
            bottom.plot(a["worst_curve"], lw=1.2, label=f"{a['strategy']} ({floor})")
    bottom.set(title="max over regions of the true discrepancy (mean over seeds)", xlabel="step",
               ylabel="max discrepancy")
    bottom.legend(fontsize=7)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
