"""Pilot 3's checks C2 and C3 from the runs' closing probe (the ``end`` record of metrics.jsonl).

The ``none`` runs' evaluations were cut by the call's time limit, so ``aria checks`` finds no ``none``
runs; every run still measured its student on the same 256 probes when it ended (the evaluation's probe
set). On the runs that have both, the closing probe reads 0.2-0.8% higher in D_c and 0.3-1.3% higher in
probe discrepancy. Both sides of every ratio here come from it, so that offset nearly cancels: it
differs by regime (D_c: seen +0.5-0.8%, unseen +0.2-0.3%), so unseen/seen reads about 0.5% low.
Thresholds: configs/concepts-gpu.yaml.
Run from the repository root: python docs/results/concepts-pilot3/closing_probe.py
"""

from pathlib import Path

from aria.training.metrics import read_log

HERE = Path(__file__).resolve().parent
GROUPS = ("seen", "under", "unseen", "compositional")


def closing_probe(run: Path) -> dict:
    for record in read_log(run / "metrics.jsonl") or []:
        if record.get("event") == "end":
            return record["regimes"]
    raise SystemExit(f"{run}: no closing probe (the run did not finish)")


def main() -> None:
    none = {s: closing_probe(HERE / "runs" / "none" / f"seed{s}") for s in (0, 1)}
    arms = {"rc (lambda 2, frozen)": HERE / "runs" / "rc",
            "rc (lambda 5, superseded)": HERE / "superseded" / "rc-lambda5"}
    rows = []
    for s in (0, 1):
        n = none[s]
        for metric, what, threshold in (("cond_discrepancy", "condition-specific", ">= 3"),
                                        ("discrepancy", "probe", ">= 2")):
            rows.append((f"C2 none seed {s}: unseen/seen {what}", n["unseen"][metric] / n["seen"][metric], threshold))
    for name, folder in arms.items():
        for group, threshold in (("unseen", "<= 0.7"), ("seen", "<= 1.05"), ("under", ""), ("compositional", "")):
            ratios = [closing_probe(folder / f"seed{s}")[group]["cond_discrepancy"] / none[s][group]["cond_discrepancy"]
                      for s in (0, 1)]
            rows.append((f"C3 {name}: {group} condition-specific / none, seeds 0, 1", sum(ratios) / 2, threshold))
    oracle = closing_probe(HERE / "runs" / "oracle" / "seed0")
    for group in ("seen", "under", "unseen"):
        ratio = oracle[group]["cond_discrepancy"] / none[0][group]["cond_discrepancy"]
        rows.append((f"oracle seed 0 / none seed 0: {group} condition-specific", ratio, ""))
    print("| quantity | value | threshold |\n|---|---|---|")
    for name, value, threshold in rows:
        print(f"| {name} | {value:.3f} | {threshold} |")


if __name__ == "__main__":
    main()
