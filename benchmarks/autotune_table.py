"""Issue #20's ``autotune_matmuls`` / ``max_autotune`` levers, read from what inductor printed while it tuned:
for each matmul shape, the kernel it chose, its time, cuBLAS's time at the same shape (the extern ``mm``,
``addmm`` or ``bias_addmm`` choice) and the seconds the tuning took.

A compilation that a call's limit cuts still prints the shapes it finished, so this says where Triton's
templates beat cuBLAS (and by how much) even when the lever's step was never timed:

    python benchmarks/autotune_table.py levers-call6a.log levers-call6b.log

inductor prints the ten fastest choices of a shape; when cuBLAS is not among them, its time is only known to
be above the tenth's, and the table says "> t". A shape tuned again in a later log (a cache miss) keeps its
first entry.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

EXTERN = ("mm", "addmm", "bias_addmm", "bmm", "baddbmm")  # inductor's names of the cuBLAS choices
CHOICE = re.compile(r"^\s+(\S+) ([\d.]+) ms ")
TOOK = re.compile(r"AUTOTUNE benchmarking takes ([\d.]+) seconds")


def parse(text: str) -> dict[str, dict]:
    """Each tuned shape (``mm(MxK, KxN)`` as inductor writes it) of an inductor log: ``best`` (kernel name),
    ``best_ms``, ``cublas_ms`` (None when not among the printed choices), ``cublas_above_ms`` (then: the slowest
    printed time), ``tuning_s``."""
    lines = text.splitlines()
    shapes: dict[str, dict] = {}
    for i, line in enumerate(lines):
        if not line.startswith('{"num_choices"') or i + 1 >= len(lines) or not lines[i + 1].startswith("AUTOTUNE "):
            continue
        stats = json.loads(line)
        shape = lines[i + 1].removeprefix("AUTOTUNE ").strip()
        times, tuning_s = {}, None
        for follow in lines[i + 2:]:
            took = TOOK.search(follow)
            if took:
                tuning_s = float(took.group(1))
                break
            choice = CHOICE.match(follow)
            if choice:
                times.setdefault(choice.group(1), float(choice.group(2)))
        cublas = next((t for name, t in times.items() if name in EXTERN), None)
        shapes.setdefault(shape, {
            "best": stats["best_kernel"], "best_ms": stats["best_time"], "cublas_ms": cublas,
            "cublas_above_ms": None if cublas is not None or not times else max(times.values()),
            "tuning_s": tuning_s})
    return shapes


def table(shapes: dict[str, dict]) -> str:
    """Markdown: one row per shape, then the total tuning time and where Triton won."""
    rows = ["| shape | chosen | chosen ms | cuBLAS ms | cuBLAS / chosen | tuning s |", "|---|---|---|---|---|---|"]
    for shape, s in shapes.items():
        if s["cublas_ms"] is not None:
            cublas, ratio = f"{s['cublas_ms']:.4f}", f"{s['cublas_ms'] / s['best_ms']:.2f}"
        else:
            cublas, ratio = f"> {s['cublas_above_ms']:.4f}", f"> {s['cublas_above_ms'] / s['best_ms']:.2f}"
        tuning = "-" if s["tuning_s"] is None else f"{s['tuning_s']:.1f}"
        rows.append(f"| `{shape}` | {s['best']} | {s['best_ms']:.4f} | {cublas} | {ratio} | {tuning} |")
    triton = [k for k, s in shapes.items() if s["best"] not in EXTERN]
    tuned = sum(s["tuning_s"] or 0.0 for s in shapes.values())
    rows += ["", f"{len(shapes)} shapes, {tuned:.0f} s of tuning benchmarks; Triton chosen at {len(triton)}, "
                 f"cuBLAS at {len(shapes) - len(triton)}."]
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path, help="logs of inductor's autotuning (levers.sh's levers.log)")
    args = parser.parse_args(argv)
    shapes: dict[str, dict] = {}
    for log in args.logs:
        if not log.is_file():
            print(f"error: {log}: no such file", file=sys.stderr)
            return 2
        for shape, row in parse(log.read_text(errors="replace")).items():
            shapes.setdefault(shape, row)
    if not shapes:
        print("error: no autotuning tables in " + ", ".join(map(str, args.logs)), file=sys.stderr)
        return 2
    print(table(shapes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
