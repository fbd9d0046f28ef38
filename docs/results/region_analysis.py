"""Why aria does not move the regime metrics here: prints, from a compare folder's per-run files,
how regions mix regimes, how stable the measured per-region discrepancy is, how concentrated aria's
allocation is, whether its tracked estimates follow the measured discrepancy, and which regime
shares its switched conditions got (time-averaged) against rc's (the pool's).

    python docs/results/region_analysis.py docs/results/shapes-gpu
"""

import json
import sys
from pathlib import Path

import numpy as np


def floats(values):
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def main(folder: Path) -> None:
    runs = folder / "runs"
    seeds = sorted(int(p.name[4:]) for p in (runs / "aria").glob("seed*"))
    ev = lambda s, k: json.loads((runs / s / f"seed{k}" / "eval" / "eval.json").read_text())["regions"]  # noqa: E731
    first = ev("aria", seeds[0])  # the regions (sizes, regime mix) are the same for every strategy of a folder
    fractions, sizes = np.array(first["regime_fractions"]), np.array(first["size"], dtype=float)
    pool = (fractions * sizes[:, None]).sum(0) / sizes.sum()
    print(f"{len(sizes)} regions; pool regime shares seen/under/unseen {np.round(pool, 3).tolist()}; "
          f"largest unseen share of a region {fractions[:, 2].max():.3f}, "
          f"smallest seen share {fractions[:, 0].min():.3f}")
    for s in ("none", "rc", "aria"):
        if not (runs / s).is_dir():
            continue
        d = np.array([floats(ev(s, k)["normalised"]) for k in seeds])
        m = np.nanmean(d, 0)
        c = np.corrcoef(np.nan_to_num(d[0]), np.nan_to_num(d[1]))[0, 1]
        print(f"{s}: measured per-region discrepancy, coefficient of variation {np.nanstd(m) / np.nanmean(m):.3f}, "
              f"correlation between seeds {seeds[0]} and {seeds[1]} {c:.3f}")
    for k in seeds:
        records = [json.loads(line) for line in (runs / "aria" / f"seed{k}" / "metrics.jsonl").open()]
        records = [r for r in records if r.get("probabilities")]
        p, est = np.array(records[-1]["probabilities"]), floats(records[-1]["estimates"])
        measured = floats(ev("aria", k)["normalised"])
        ok = ~np.isnan(est) & ~np.isnan(measured)
        share = (np.mean([r["probabilities"] for r in records], 0)[:, None] * fractions).sum(0)
        print(f"aria seed {k}: final allocation max/min {p.max() / p.min():.2f}, "
              f"effective regions {1 / (p ** 2).sum():.1f}; "
              f"corr(tracked estimate, measured) {np.corrcoef(est[ok], measured[ok])[0, 1]:.2f}; "
              f"switched regime shares {np.round(share, 3).tolist()} vs rc {np.round(pool, 3).tolist()}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/shapes-gpu"))
