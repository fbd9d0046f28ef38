"""Run logging: JSONL, TensorBoard, progress bar and the closing tables.

``<output_dir>/metrics.jsonl`` holds one JSON object per line:

- every step: ``step`` (1-based count of steps done), ``loss``, ``task``, ``out``, ``feat`` (the
  terms as weighted in the loss), ``switched_fraction``, ``lr``, ``nonfinite`` (true when the
  step was skipped; the terms are then null), ``samples_per_s``;
- every ``logging.every`` steps, also ``grad_norm`` (read only then: it waits for the step),
  ``probabilities`` (the allocation over regions, or null
  when nothing was switched), ``estimates`` (the strategy's per-region ``estimate`` state when it
  has one) and ``region_discrepancy`` (mean observed discrepancy per region since the last such
  line, null where unobserved), and ``feat_blocks`` (raw per-block feature MSE);
- a final line with ``"event": "end"`` and the per-regime probe table.

Only rank 0 writes. A resumed run appends; lines of steps after the checkpoint are dropped first.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from aria.errors import UserError
from aria.files import json_text


class RunLogger:
    """JSONL + optional TensorBoard + tqdm progress bar, on rank 0 only."""

    def __init__(self, output_dir: Path, logging_config, total_steps: int, start_step: int, batch_size: int,
                 enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.batch_size = batch_size
        self.tb = self.bar = None
        self._last = time.perf_counter()
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(self.path, start_step)
        self.file = open(self.path, "a", encoding="utf-8")
        if logging_config.tensorboard:
            self.tb = summary_writer_class()(log_dir=str(Path(output_dir) / "tensorboard"), purge_step=start_step + 1)
        if logging_config.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr,
                            desc="distil")

    def step(self, record: dict) -> None:
        now = time.perf_counter()
        record["samples_per_s"] = self.batch_size / max(now - self._last, 1e-9)
        record["batch"] = self.batch_size
        self._last = now
        if not self.enabled:
            return
        self.file.write(json_text(record, indent=None) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key in ("loss", "task", "out", "feat", "switched_fraction", "lr", "grad_norm", "samples_per_s"):
                if isinstance(record.get(key), (int, float)) and math.isfinite(record[key]):
                    self.tb.add_scalar(f"train/{key}", record[key], record["step"])
            if record.get("probabilities") is not None:
                self.tb.add_histogram("allocation/probabilities", np.asarray(record["probabilities"]), record["step"])
        if self.bar is not None:
            self.bar.update(1)
            loss = record.get("loss")
            self.bar.set_postfix(loss="skipped" if record.get("nonfinite") else f"{loss:.4f}",
                                 sw=f"{record.get('switched_fraction', 0):.2f}",
                                 img_s=f"{record['samples_per_s']:.0f}", refresh=False)

    def event(self, record: dict) -> None:
        if self.enabled:
            self.file.write(json_text(record, indent=None) + "\n")
            self.file.flush()

    def write(self, text: str) -> None:
        """An information line on stdout (stderr is for the progress bar and errors) that does not
        break the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled or self.file.closed:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.file.close()


def summary_writer_class():
    """TensorBoard's SummaryWriter, or a UserError naming the missing package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise UserError("logging.tensorboard is on but the tensorboard package is not installed "
                        "(pip install tensorboard, or set logging.tensorboard=false)") from err
    return SummaryWriter


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop lines of steps after ``last_step`` (and any partial last line), for a resumed run.

    The kept lines go to a temporary file in the same folder, fsynced, then renamed over ``path``: a
    process killed (or a disk filling) mid-rewrite leaves the old file whole."""
    path = Path(path)
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    keep = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= last_step and rec.get("event") != "end":
            keep.append(line)
    new = "".join(f"{line}\n" for line in keep)
    if new == text:
        return
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a rewrite killed before its rename
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"output_dir {path.parent}: cannot rewrite {path.name} for the resume "
                        f"({err.strerror or err}); it is unchanged") from err
    finally:
        tmp.unlink(missing_ok=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class RegionWindow:
    """Per-region sums and counts of observed discrepancy between two log lines."""

    def __init__(self, num_regions: int):
        self.sums = np.zeros(num_regions)
        self.counts = np.zeros(num_regions)

    def add(self, feedback) -> None:
        self.sums += feedback.sums.sum(1)
        self.counts += feedback.counts.sum(1)

    def take(self) -> list:
        means = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)
        self.sums[:], self.counts[:] = 0, 0
        return [None if not np.isfinite(m) else float(m) for m in means]


def format_table(header: list[str], rows: list[list], title: str | None = None) -> str:
    """A plain aligned text table for the console."""
    cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [title] if title else []
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells[0], widths))), line]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells[1:]]
    return "\n".join(out)


def _cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "n/a"
    return str(v)


def run_summary(records: list[dict], wall_s: float, skipped: int) -> list[list]:
    """Rows (quantity, value) of the closing summary from the JSONL records of this process."""
    steps = [r for r in records if "step" in r and "loss" in r]
    good = [r for r in steps if not r.get("nonfinite")]
    last = good[-10:]
    mean = lambda key: float(np.mean([r[key] for r in last])) if last else None  # noqa: E731
    first = steps[0] if steps else {}  # its time includes compilation (backend.compile) and warm-up
    rows = [["steps run", len(steps)], ["skipped (non-finite)", skipped], ["wall time (s)", wall_s],
            ["first step (s), compilation included",
             first["batch"] / first["samples_per_s"] if first.get("batch") and first.get("samples_per_s") else None],
            ["samples / s after the first step",
             float(np.mean([r["samples_per_s"] for r in steps[1:]])) if len(steps) > 1 else None]]
    rows += [[f"{k} (last 10 steps)", mean(k)] for k in ("loss", "task", "out", "feat")]
    rows += [["switched fraction (mean)", float(np.mean([r["switched_fraction"] for r in steps])) if steps else None]]
    return rows


def regime_table(result: dict) -> str:
    rows = [[name, v["discrepancy"], v["cond_discrepancy"], v["probes"]] for name, v in result.items()]
    return format_table(["regime", "probe discrepancy", "condition-specific", "probes"], rows,
                        title="Student vs teacher on the probe set (mean over pixels of (eps_S - eps_T)^2; "
                              "condition-specific: of the differences to the empty prompt)")
