"""Pilot 3: where aria's allocation rule would send switched prompts, read from rc's tracker record.

aria's rule (strategies/aria.py: softmax with temperature 0.5 on estimate / mean, uniform floor 0.2
over regions) is applied to rc's last logged window of the timestep-normalised per-region discrepancy
(``region_discrepancy_tnorm``, steps 451-500). The result is compared with the oracle's final
allocation, rc's, and a uniform draw over regions, as each regime's share of the switched prompts.
A first-step reading written before any aria run: aria's own tracker follows its own allocation.
Run from the repository root: python docs/results/concepts-pilot3/aria_prediction.py
"""

from pathlib import Path

import numpy as np

from aria.strategies.aria import AriaConfig
from aria.strategies.base import softmax_floor
from aria.training.metrics import read_log

RUNS = Path(__file__).resolve().parent / "runs"


def regime_fractions(recs: list[dict]) -> tuple[list[str], np.ndarray]:
    """(regime names, (K, regimes) fraction of each region's prompts in each regime)."""
    data = next(r for r in recs if r.get("event") == "data")["groups"]["regime"]
    return data["names"], np.asarray(data["fractions"], dtype=np.float64)


def aria_rule(recs: list[dict], cfg: AriaConfig) -> np.ndarray:
    """aria's allocation rule applied to the run's last logged timestep-normalised per-region record."""
    estimate = np.asarray([r for r in recs if "region_discrepancy_tnorm" in r][-1]["region_discrepancy_tnorm"],
                          dtype=np.float64)
    return softmax_floor(estimate / estimate.mean(), cfg.temperature, cfg.eps, np.ones(len(estimate), dtype=bool))


def main() -> None:
    cfg = AriaConfig(alpha=0.05, eps=0.2)  # configs/concepts-gpu.yaml's strategy.params.aria
    print("| allocation | " + " | ".join(["seen", "under", "unseen", "compositional"]) + " | max/min p |")
    print("|---|---|---|---|---|---|")

    def show(name: str, p: np.ndarray, names: list[str], fractions: np.ndarray) -> None:
        share = dict(zip(names, p @ fractions))
        cells = " | ".join(f"{share[g]:.3f}" for g in ("seen", "under", "unseen", "compositional"))
        print(f"| {name} | {cells} | {p.max() / p.min():.1f} |")

    for seed in (0, 1):
        recs = read_log(RUNS / "rc" / f"seed{seed}" / "metrics.jsonl")
        names, fractions = regime_fractions(recs)
        show(f"aria's rule on rc seed {seed}'s record", aria_rule(recs, cfg), names, fractions)
        if seed == 0:
            show("rc (the pool's shares)", np.asarray([r for r in recs if "probabilities" in r][-1]["probabilities"]),
                 names, fractions)
            show("uniform over regions", np.full(len(fractions), 1 / len(fractions)), names, fractions)
    recs = read_log(RUNS / "oracle" / "seed0" / "metrics.jsonl")
    names, fractions = regime_fractions(recs)
    show("oracle seed 0, final", np.asarray([r for r in recs if "probabilities" in r][-1]["probabilities"]),
         names, fractions)


if __name__ == "__main__":
    main()
