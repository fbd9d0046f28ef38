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
    python tools/world2_gather.py --out docs/results/concepts-v2-split1-fp8 --split 1 --set backend.fp8=both CALL_DIR

``--set KEY=VALUE`` (repeatable) names a call's own further values (`world2_call.sh runs ... CONFIG KEY=VALUE`),
which come after the split's.

An evaluation made elsewhere replaces a run's own with ``--evals DIR``: ``DIR/<strategy>-seed<s>/`` is an
``aria eval --out`` folder (eval.json, eval.md, the plot, and eval.log if kept there), for instance from the
call's fp16 students on a CPU when the call's evaluation was cut or used another probe set:

    aria eval --student STUDENTS/swucb-seed0 --config configs/concepts-gpu.yaml --set encoder.path=/tmp/enc \
        --set backend.device=cpu --out EVALS/swucb-seed0
    python tools/world2_gather.py --out docs/results/concepts-v2-split0 --evals EVALS CALL_DIR

Then regenerate docs/RESULTS.md with `aria results` (README, "GPU machine, benchmarks and results").
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CONFIGS = ("configs/concepts-gpu.yaml", "configs/concepts-control.yaml")
ORDER = ("none", "rc", "oracle", "aria", "uniform", "invfreq", "exp3", "ducb", "swucb", "dts")  # the tables' order


def call_sets(config: str, split: int, own: list[str] = ()) -> list[str]:
    """The --set values of tools/world2_call.sh's runs of ``config`` on ``split``, then the call's ``own``."""
    sets = ["encoder.path=/tmp/enc"]
    if split != 0:
        sets.append(f"data.concepts.seed={split}")
        if config == CONFIGS[0]:
            sets.append(f"student.init_path=aria/world/assets/concepts-student-split{split}")
    return sets + list(own)


class GatherError(Exception):
    """A call folder, archive or run that cannot be gathered; the message is one line."""


def extract(calls: list[Path], into: Path) -> list[tuple[Path, Path]]:
    """(call, run folder) of every run in the calls' runs.tgz, extracted under ``into``. A run without
    ``evaluated_at`` in its compare.json (evaluated by hand) gets its eval.json's time, kept by the archive."""
    if not hasattr(tarfile, "data_filter"):
        raise GatherError("this Python's tarfile has no safe extraction filter (needs 3.10.12+ or 3.11.4+)")
    runs = []
    for i, call in enumerate(calls):
        try:
            with tarfile.open(call / "runs.tgz") as tar:
                tar.extractall(into / str(i), filter="data")
        except (tarfile.TarError, OSError) as err:
            raise GatherError(f"{call}/runs.tgz: not a readable runs archive ({type(err).__name__}: {err})") from err
        for run in sorted((into / str(i) / "runs" / "runs").glob("*/seed*")):
            stamp_evaluation_time(run)
            runs.append((call, run))
    return runs


def stamp_evaluation_time(run: Path, replace: bool = False) -> None:
    """Give the run's compare.json its eval.json's time as ``evaluated_at``, where it has none (or ``replace``)."""
    record, evaluation = run / "compare.json", run / "eval" / "eval.json"
    if record.is_file() and evaluation.is_file():
        data = json.loads(record.read_text())
        if replace or "evaluated_at" not in data:
            record.write_text(json.dumps({**data, "evaluated_at": evaluation.stat().st_mtime}))


def replace_evaluations(runs: list[tuple[Path, Path]], evals: Path) -> list[str]:
    """Put ``evals/<strategy>-seed<s>/`` in place of each such run's ``eval/`` (and its eval.log), with that
    evaluation's time as the run's ``evaluated_at``; one line per run. Every folder there must name a run."""
    found: dict[str, list[Path]] = {}
    for _, run in runs:  # a run can come in several calls (one cut, one evaluated): each copy is replaced
        found.setdefault(f"{run.parent.name}-{run.name}", []).append(run)
    folders = sorted(p for p in evals.iterdir() if p.is_dir()) if evals.is_dir() else None
    if not folders:
        raise GatherError(f"--evals {evals}: no evaluation folders (<strategy>-seed<s>/eval.json) in it")
    lines = []
    for folder in folders:
        if folder.name not in found:
            raise GatherError(f"--evals {evals}: {folder.name} is not a run in the calls")
        if not (folder / "eval.json").is_file():
            raise GatherError(f"--evals {evals}: {folder.name} has no eval.json")
    for folder in folders:
        for run in found[folder.name]:
            shutil.rmtree(run / "eval", ignore_errors=True)
            (run / "eval.log").unlink(missing_ok=True)
            shutil.copytree(folder, run / "eval", ignore=shutil.ignore_patterns("eval.log"))
            if (folder / "eval.log").is_file():
                shutil.copy2(folder / "eval.log", run / "eval.log")
            stamp_evaluation_time(run, replace=True)  # copytree keeps eval.json's time
        run = found[folder.name][0]
        lines.append(f"{run.parent.name}/{run.name}: evaluation from {folder}")
    return lines


def check_config(runs: list[tuple[Path, Path]], digest: str) -> None:
    """Every run was trained with this config and these --set values (its compare.json's digest)."""
    for call, run in runs:
        record = run / "compare.json"
        if not (run / "eval" / "eval.json").is_file():
            continue  # not gathered
        recorded = json.loads(record.read_text()).get("config") if record.is_file() else None
        if recorded != digest:
            raise GatherError(f"{call}: {run.parent.name}/{run.name} was trained with another config (digest "
                              f"{recorded}, these settings {digest}); check --config, --split and --set")


def copy_runs(runs: list[tuple[Path, Path]], out: Path, seeds: set[int]) -> list[str]:
    """Copy every evaluated run into ``out/runs``; returns one line per run. A run already evaluated there is
    kept (an identical evaluation) or refused (another one)."""
    lines, source = [], {}
    for call, run in runs:
        name = f"{run.parent.name}/{run.name}"
        dest, evaluation = out / "runs" / name, run / "eval" / "eval.json"
        if not evaluation.is_file():
            lines.append(f"{name}: not evaluated in {call}, not copied")
            continue
        if (dest / "eval" / "eval.json").is_file():
            if (dest / "eval" / "eval.json").read_bytes() != evaluation.read_bytes():
                raise GatherError(f"{name}: {call} holds another evaluation than the one in "
                                  f"{source.get(name, out)}; keep one of them")
            lines.append(f"{name}: already in {source.get(name, out)}, kept")
            continue
        shutil.rmtree(dest, ignore_errors=True)  # an unevaluated leftover
        shutil.copytree(run, dest)
        source[name] = call
        seed = int(run.name.removeprefix("seed"))
        lines.append(f"{name}: copied from {call}" + ("" if seed in seeds else f" (seed {seed} is not in --seeds)"))
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
    parser.add_argument("--seeds", default="0,1,2", help="the seeds to summarise, read as `aria compare --seeds` "
                        "reads them: a count N (seeds 0 to N-1) or a comma-separated list")
    parser.add_argument("--evals", type=Path, help="evaluations made elsewhere, DIR/<strategy>-seed<s>/ each, "
                        "that replace the runs' own")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a further --set value of the calls (world2_call.sh's KEY=VALUE arguments); repeatable")
    args = parser.parse_args(argv)
    from aria.cli.experiment import parse_seeds  # `aria compare --seeds`'s reading, which the summary gets
    from aria.errors import UserError

    try:
        seeds = set(parse_seeds(args.seeds))  # a count N (seeds 0 to N-1) or a comma-separated list
        if args.split < 0:
            raise GatherError(f"--split {args.split}: a split is a non-negative number")
        missing = [str(c) for c in args.calls if not (c / "runs.tgz").is_file()]
        if missing:
            raise GatherError(f"no runs.tgz in {', '.join(missing)}")
        if not Path(args.config).is_file():
            raise GatherError(f"--config {args.config}: not found (run from the repository root)")
        from aria.config import load_config
        from aria.experiment.compare import config_digest

        sets = call_sets(args.config, args.split, args.sets)
        with tempfile.TemporaryDirectory() as tmp:
            runs = extract(args.calls, Path(tmp))
            if args.evals is not None:
                for line in replace_evaluations(runs, args.evals):
                    print(line)
            check_config(runs, config_digest(load_config(args.config, sets)))
            for line in copy_runs(runs, args.out, seeds):
                print(line)
    except (GatherError, UserError) as err:
        print(err, file=sys.stderr)
        return 2
    strategies = strategies_in(args.out)
    if not strategies:
        print(f"{args.out}: no evaluated run to summarise", file=sys.stderr)
        return 2
    aria = [sys.executable, "-m", "aria.cli"]
    summary = subprocess.run([*aria, "compare", "--summary-only", "--config", args.config, "--strategies",
                              ",".join(strategies), "--seeds", args.seeds,
                              *[a for s in sets for a in ("--set", s)], "--out", str(args.out)])
    if summary.returncode:
        return summary.returncode
    checks = subprocess.run([*aria, "checks", "--compare", str(args.out)]).returncode  # config and --set: the compare's
    return 0 if checks in (0, 1) else checks  # 1: the checks ran and some fail, which the table says


if __name__ == "__main__":
    sys.exit(main())
