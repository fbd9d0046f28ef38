"""Gather world v2 runs that came back from `tools/world2_call.sh runs` calls into one results folder.

Each call's ``runs.tgz`` (its $OUT, fetched here) holds ``runs/runs/<strategy>/seed<s>``: the run logs and
evaluations, no weights. This copies every evaluated run into ``OUT/runs/`` (a run already there is kept,
with one line), then summarises the folder with ``aria compare --summary-only`` over every strategy it holds
and writes the pre-registered checks with ``aria checks``. The runs' settings are the call's: the encoder at
/tmp/enc and, for a split other than 0, its seed and (main arm) its stage-1 student, so the config digests
match.

    python tools/world2_gather.py --out docs/results/concepts-v2-split0 /work/.device/1 /work/.device/2
    python tools/world2_gather.py --out docs/results/concepts-v2-split1 --split 1 CALL_DIR ...
    python tools/world2_gather.py --out docs/results/concepts-v2-control --config configs/concepts-control.yaml CALL_DIR

Then regenerate docs/RESULTS.md with `aria results` (README, "GPU machine, benchmarks and results").
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CONFIGS = ("configs/concepts-gpu.yaml", "configs/concepts-control.yaml")
ORDER = ("none", "rc", "oracle", "aria", "uniform", "invfreq", "exp3", "ducb", "swucb", "dts")  # the tables' order


def call_sets(config: str, split: int) -> list[str]:
    """The --set values of tools/world2_call.sh's runs of ``config`` on ``split``."""
    sets = ["encoder.path=/tmp/enc"]
    if split != 0:
        sets.append(f"data.concepts.seed={split}")
        if config == CONFIGS[0]:
            sets.append(f"student.init_path=aria/world/assets/concepts-student-split{split}")
    return sets


def copy_runs(calls: list[Path], out: Path) -> list[str]:
    """Copy every evaluated run of the calls' runs.tgz into ``out/runs``; returns one line per run."""
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, call in enumerate(calls):
            with tarfile.open(call / "runs.tgz") as tar:
                tar.extractall(Path(tmp) / str(i), filter="data")
            for run in sorted((Path(tmp) / str(i) / "runs" / "runs").glob("*/seed*")):
                name = f"{run.parent.name}/{run.name}"
                dest = out / "runs" / name
                if not (run / "eval" / "eval.json").is_file():
                    lines.append(f"{name}: not evaluated in {call}, not copied")
                elif (dest / "eval" / "eval.json").is_file():
                    lines.append(f"{name}: already in {out}, kept")
                else:
                    shutil.copytree(run, dest, dirs_exist_ok=True)
                    lines.append(f"{name}: copied from {call}")
    return lines


def strategies_in(out: Path) -> list[str]:
    """The strategies with an evaluated run in ``out/runs``, in the tables' order."""
    found = {p.parents[2].name for p in (out / "runs").glob("*/seed*/eval/eval.json")}
    return [s for s in ORDER if s in found] + sorted(found - set(ORDER))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calls", nargs="+", type=Path, help="folders holding a call's runs.tgz")
    parser.add_argument("--out", type=Path, required=True, help="the results folder (docs/results/<name>)")
    parser.add_argument("--config", default=CONFIGS[0], choices=CONFIGS)
    parser.add_argument("--split", type=int, default=0, help="the split the runs were trained on")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    missing = [str(c) for c in args.calls if not (c / "runs.tgz").is_file()]
    if missing:
        print(f"no runs.tgz in {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.split < 0:
        print(f"--split {args.split}: a split is a non-negative number", file=sys.stderr)
        return 2
    for line in copy_runs(args.calls, args.out):
        print(line)
    strategies = strategies_in(args.out)
    if not strategies:
        print(f"{args.out}: no evaluated run to summarise", file=sys.stderr)
        return 2
    sets = [a for s in call_sets(args.config, args.split) for a in ("--set", s)]
    aria = [sys.executable, "-m", "aria.cli"]
    summary = subprocess.run([*aria, "compare", "--summary-only", "--config", args.config, "--strategies",
                              ",".join(strategies), "--seeds", args.seeds, *sets, "--out", str(args.out)])
    if summary.returncode:
        return summary.returncode
    checks = subprocess.run([*aria, "checks", "--compare", str(args.out), "--config", args.config]).returncode
    return 0 if checks in (0, 1) else checks  # 1: the checks ran and some fail, which the table says


if __name__ == "__main__":
    sys.exit(main())
