"""The CPU paths a user meets first, timed at several ``backend.cpu_threads`` settings.

For each setting (``default`` = torch's own choice), in one process tree on this machine: the quickstart
run (``aria run --strategy aria --config configs/concepts-quick.yaml``, data and regions from a cache
warmed once before timing), ``aria eval`` of that run and ``aria sample`` of two prompts (which takes the
run's recorded setting). The settings alternate within each repeat, so a change in the machine's load
falls on all of them; the table gives the median wall time of each command and its ratio to the first
setting's.

    python benchmarks/cpu_threads.py [--threads default,1,2] [--repeats 1] [--config configs/concepts-quick.yaml]
                                     [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aria.files import write_json

PROMPTS = ("a large blue fish on the left", "a small red apple in the center")


def commands(config: str, out: Path, threads: str) -> dict[str, list[str]]:
    """The three timed commands of one setting, each a fresh process (as a user runs them)."""
    setting = ["--set", f"backend.cpu_threads={'null' if threads == 'default' else threads}"]
    aria = [sys.executable, "-m", "aria.cli"]
    prompts = [arg for prompt in PROMPTS for arg in ("--prompt", prompt)]
    return {
        "run": [*aria, "run", "--strategy", "aria", "--config", config, *setting, "--set", f"output_dir={out}",
                "--set", "logging.progress=false"],
        "eval": [*aria, "eval", "--student", str(out), "--config", config, *setting, "--out", str(out / "eval-timed")],
        "sample": [*aria, "sample", "--model", str(out), *prompts, "--out", str(out / "sample.png")],
    }


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="default,1,2", help="comma-separated settings; 'default' is torch's own")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--config", default="configs/concepts-quick.yaml")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args()
    settings = args.threads.split(",")
    if args.repeats < 1 or not all(s == "default" or (s.isdigit() and int(s) >= 1) for s in settings):
        p.error("--repeats is at least 1 and --threads lists 'default' or positive integers")
    work = args.work or Path(tempfile.mkdtemp(prefix="aria-cpu-threads-"))
    # warm the data and region cache once, untimed: every timed run then reads the same cache
    timed(commands(args.config, work / "warmup", settings[0])["run"])
    load_before = os.getloadavg()[0]
    times: dict[str, dict[str, list[float]]] = {s: {"run": [], "eval": [], "sample": []} for s in settings}
    for repeat in range(args.repeats):
        for setting in settings:
            for name, argv in commands(args.config, work / f"{setting}-{repeat}", setting).items():
                times[setting][name].append(timed(argv))
                print(f"threads {setting:>7}  {name:<6} {times[setting][name][-1]:7.1f} s", flush=True)
    load_after = os.getloadavg()[0]
    medians = {s: {name: statistics.median(v) for name, v in by.items()} for s, by in times.items()}
    base = settings[0]
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1-min load {load_before:.2f} "
          f"before / {load_after:.2f} after, {args.repeats} repeat(s), median wall seconds (x {base})")
    print("| threads | run | eval | sample |\n|---|---|---|---|")
    for s in settings:
        cells = [f"{medians[s][n]:.1f} ({medians[s][n] / medians[base][n]:.2f}x)" for n in ("run", "eval", "sample")]
        print(f"| {s} | " + " | ".join(cells) + " |")
    if args.json:
        write_json(args.json, {"config": args.config, "repeats": args.repeats, "cores": os.cpu_count(),
                               "load": [load_before, load_after], "seconds": times})


if __name__ == "__main__":
    main()
