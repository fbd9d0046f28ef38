"""World v2, split 1: the readings of split 0's headroom.py on the second split, with its own runs only.

Split 1 holds out tools and insects (split 0: fruit and buildings); it has its own stage-1 student and its
own shipped regions, and no pilot. So the learning curve goes through split 1's own `none`, rc and oracle:
1. where each run's switched samples went, per regime (rc and the oracle, then the others);
2. the unseen learning curve D(n) = c (n + n0)^-beta through none, rc and the oracle, and the strategies
   that were not used to fit it, against the curve at their unseen share (split 0's part 4);
3. inside the regimes: unseen share early and late, per unseen family, alignment with rc's region D_c;
4. the paired comparisons the reading quotes (those whose strategies have run);
5. both splits side by side: the unseen share of rc (the pool's), the oracle's and invfreq's, and unseen
   D_c / rc, because invfreq, level with the oracle on split 0, is worse than rc here;
6. aria against the discrepancy bandits and the oracle on unseen, paired per (split, seed) over both splits.

The functions are split 0's (docs/results/concepts-v2-split0/headroom.py), given this folder and split.
Run from the repository root: python docs/results/concepts-v2-split1/headroom.py
"""

import importlib.util
from pathlib import Path

import numpy as np

from aria.experiment.stats import mean_ci

HERE = Path(__file__).resolve().parent
SPLIT0 = HERE.parent / "concepts-v2-split0"
_spec = importlib.util.spec_from_file_location("split0_headroom", SPLIT0 / "headroom.py")
split0 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(split0)

PAIRS = (  # (A, B, regime, metric): the comparisons the reading quotes
    ("aria", "rc", "under", "judge_accuracy"), ("oracle", "rc", "under", "judge_accuracy"),
    ("aria", "oracle", "unseen", "judge_accuracy"), ("aria", "oracle", "unseen", "cond_discrepancy"),
    ("aria", "invfreq", "unseen", "cond_discrepancy"), ("aria", "invfreq", "unseen", "discrepancy"),
    ("aria", "invfreq", "unseen", "judge_accuracy"),
    ("invfreq", "oracle", "unseen", "cond_discrepancy"), ("invfreq", "oracle", "unseen", "discrepancy"),
    ("aria", "uniform", "unseen", "cond_discrepancy"),
    ("aria", "ducb", "unseen", "cond_discrepancy"), ("aria", "swucb", "unseen", "cond_discrepancy"),
    ("aria", "dts", "unseen", "cond_discrepancy"),
    ("aria", "ducb", "unseen", "discrepancy"), ("aria", "swucb", "unseen", "discrepancy"),
    ("aria", "dts", "unseen", "discrepancy"),
    ("aria", "ducb", "unseen", "judge_accuracy"), ("aria", "swucb", "unseen", "judge_accuracy"),
    ("aria", "dts", "unseen", "judge_accuracy"),
    ("aria", "dts", "under", "cond_discrepancy"), ("aria", "dts", "under", "discrepancy"),
    ("aria", "swucb", "under", "cond_discrepancy"), ("aria", "ducb", "under", "cond_discrepancy"),
)


def unseen_summary(folder: Path, name: str) -> tuple[float, float]:
    """(unseen share of the switched samples, unseen D_c), means over the seeds."""
    rows = split0.strategy_rows(name, folder=folder)
    return float(np.mean([r[1][2] for r in rows])), float(np.mean([r[3] for r in rows]))


def both_splits() -> None:
    """Part 5: the unseen share and unseen D_c / rc (ratio of the means) of rc, the oracle and invfreq."""
    print("\nboth splits: unseen share of switched samples, unseen D_c / rc (ratio of the means over seeds)")
    print("| split | rc share (the pool's) | oracle share | oracle D_c / rc | invfreq share | invfreq D_c / rc |")
    print("|---|---|---|---|---|---|")
    for split, folder in ((0, SPLIT0), (1, HERE)):
        (p_rc, d_rc), (p_or, d_or), (p_if, d_if) = (unseen_summary(folder, n) for n in ("rc", "oracle", "invfreq"))
        print(f"| {split} | {p_rc:.3f} | {p_or:.3f} | {d_or / d_rc:.3f} | {p_if:.3f} | {d_if / d_rc:.3f} |")


def pooled_pairs() -> None:
    """Part 6: aria / B on unseen D_c and probe discrepancy, one ratio per split and seed (6), mean and 95% CI."""
    print("\nboth splits, paired per split and seed (mean [95% CI] over 6 pairs, the two splits weighted alike)")
    print("| A vs B | unseen cond_discrepancy A / B | unseen discrepancy A / B |")
    print("|---|---|---|")
    for other in ("ducb", "swucb", "dts", "oracle"):
        if any(split0.ran(folder, ("aria", other)) != ["aria", other] for folder in (SPLIT0, HERE)):
            continue
        cells = []
        for metric in ("cond_discrepancy", "discrepancy"):
            ratios = [split0.eval_metric(folder, "aria", s, "unseen", metric)
                      / split0.eval_metric(folder, other, s, "unseen", metric)
                      for folder in (SPLIT0, HERE) for s in split0.SEEDS]
            stat = mean_ci(ratios)
            cells.append(f"{stat['mean']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}]")
        print(f"| aria vs {other} | {cells[0]} | {cells[1]} |")


def main() -> None:
    print("| run | switched samples | share: seen | under | unseen | compositional | unseen samples | unseen D_c |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {name: split0.strategy_rows(name, show=True, folder=HERE) for name in ("rc", "oracle")}
    n_rc, d_rc = np.mean([r[2] for r in rows["rc"]]), np.mean([r[3] for r in rows["rc"]])
    n_or, d_or = np.mean([r[2] for r in rows["oracle"]]), np.mean([r[3] for r in rows["oracle"]])
    p_rc, q_or = np.mean([r[1][2] for r in rows["rc"]]), np.mean([r[1][2] for r in rows["oracle"]])
    print(f"\nunseen share of switched samples: rc {p_rc:.3f}, oracle {q_or:.3f} ({q_or / p_rc:.2f}x); "
          f"oracle/rc unseen D_c {d_or / d_rc:.3f}")
    split0.out_of_sample(n_rc, d_rc, n_or, d_or, None, folder=HERE)
    split0.inside_regimes(folder=HERE, split=1)
    split0.paired_comparisons(folder=HERE, pairs=PAIRS)
    both_splits()
    pooled_pairs()


if __name__ == "__main__":
    main()
