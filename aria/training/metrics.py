"""Run logging: JSONL, TensorBoard, progress bar and the closing tables.

``<output_dir>/metrics.jsonl`` holds one JSON object per line:

- every step: ``step`` (1-based count of steps done), ``loss``, ``task``, ``out``, ``feat`` (the
  terms as weighted in the loss), ``switched_fraction``, ``lr``, ``nonfinite`` (true when the
  step was skipped; the terms are then null), ``samples_per_s``;
- every ``logging.every`` steps, also ``grad_norm`` (the 2-norm of the step's gradient, averaged over
  ranks, before clipping; with both backends, every ZeRO stage and ``grad_clip`` 0 too; read only
  then: it waits for the step; absent on a non-finite step),
  ``probabilities`` (the allocation over regions, or null
  when nothing was switched), ``estimates`` (the strategy's per-region ``estimate`` state when it
  has one), ``region_discrepancy`` (mean observed discrepancy per region since the last such
  line, null where unobserved) and ``region_discrepancy_tnorm`` (the same with each observation
  divided by its timestep bin's mean: ``RegionWindow.take``), and ``feat_blocks`` (raw per-block
  feature MSE);
- a line with ``"event": "data"`` written at setup (``data_record``): region sizes, each region's
  share of every group (regime, concept family) and example prompts, which the end-of-run plots read;
- a final line with ``"event": "end"`` and the per-regime probe table.

TensorBoard (``<output_dir>/tensorboard``; ``logging.tensorboard``: on by default when the package
is installed) gets the loss terms, learning rate, gradient norm and throughput every step, and on the
log steps one curve per region of the allocation probability, the strategy's tracked estimate and
the observed discrepancy (``probability/region_007`` ...), the allocation histogram and the
per-block feature losses.

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
        writer = tensorboard_writer_class(logging_config.tensorboard)
        if writer is not None:
            self.tb = writer(log_dir=str(Path(output_dir) / "tensorboard"), purge_step=start_step + 1)
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
            self._region_scalars(record)
        if self.bar is not None:
            self.bar.update(1)
            loss = record.get("loss")
            self.bar.set_postfix(loss="skipped" if record.get("nonfinite") else f"{loss:.4f}",
                                 sw=f"{record.get('switched_fraction', 0):.2f}",
                                 img_s=f"{record['samples_per_s']:.0f}", refresh=False)

    def _region_scalars(self, record: dict) -> None:
        """Per-region curves (one tag per region under ``probability/``, ``estimate/`` and ``observed/``)
        and the allocation's histogram, on the lines that carry them (every ``logging.every`` steps)."""
        step = record["step"]
        for key, tag in (("probabilities", "probability"), ("estimates", "estimate"),
                         ("region_discrepancy", "observed")):
            values = record.get(key)
            if values is None:
                continue
            for k, v in enumerate(values):
                if v is not None and math.isfinite(v):
                    self.tb.add_scalar(f"{tag}/region_{k:03d}", v, step)
        if record.get("probabilities") is not None:
            self.tb.add_histogram("allocation/probabilities", np.asarray(record["probabilities"]), step)
        for i, v in enumerate(record.get("feat_blocks") or ()):
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(f"feat_blocks/{i}", v, step)

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


def tensorboard_writer_class(setting: bool | None):
    """The SummaryWriter class to log with, or None. ``setting`` is ``logging.tensorboard``: True
    requires the package (a UserError names it when missing), False turns logging off, None (the
    default) logs when the tensorboard package is installed and stays silent when it is not."""
    if setting is False:
        return None
    if setting is None:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # installed but unusable (e.g. a protobuf it cannot import)
            raise UserError(f"the tensorboard package is installed but cannot be used ({err}): repair it, "
                            f"or set logging.tensorboard=false") from err
        return SummaryWriter
    return summary_writer_class()


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


def read_log(path: Path) -> list[dict] | None:
    """The records of a metrics.jsonl that may still be written or was killed mid-line (unparsable
    lines skipped), or None if it cannot be read."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def setup_line(text: str) -> None:
    """One line on stdout as a stage of a run's setup starts (the minutes before the first step would
    be silent otherwise)."""
    print(f"[setup] {text}", flush=True)


def data_record(bundle, examples: int = 200) -> dict:
    """The ``"event": "data"`` line of metrics.jsonl: what the end-of-run plots need of the data.

    ``sizes`` (prompts per region); ``groups``: per grouping (``regime``; ``family`` in world v2;
    ``group``, a prompts file's groups) its ``names`` and ``fractions`` (regions x groups: the share
    of each group among a region's prompts);
    ``examples``: a short prompt of each regime present among the first prompts of the pool
    (``paired``: a caption of the paired set, i.e. a condition the student saw with an image)."""
    labels = np.asarray(bundle.region_of_prompt, dtype=np.int64)
    k = int(bundle.region_info.num_regions)
    sizes = np.bincount(labels, minlength=k)
    record = {"event": "data", "regions": k, "sizes": sizes.tolist(), "groups": {}, "examples": {}}
    world = getattr(bundle, "world", None)
    groupings = []
    if getattr(bundle, "regime_of_prompt", None) is not None:
        from aria.world.worlds import REGIME_NAMES

        groupings.append(("regime", bundle.regime_of_prompt, world.regime_names if world is not None else REGIME_NAMES))
    family_names = getattr(getattr(world, "generator", None), "FAMILY_NAMES", None) if world is not None else None
    if family_names and getattr(world, "family_key", None):
        groupings.append(("family", bundle.family_of_prompt, family_names))
    groups = getattr(bundle, "group_of_prompt", None)  # a prompts file's groups (-1: none)
    if groups is not None and len(getattr(bundle, "group_names", ())):
        groups = np.asarray(groups, dtype=np.int64)
        names = list(bundle.group_names)
        if (groups < 0).any():
            groups, names = np.where(groups < 0, len(names), groups), names + ["(no group)"]
        groupings.append(("group", groups, names))
    for key, of_prompt, names in groupings:
        of_prompt = np.asarray(of_prompt, dtype=np.int64)
        counts = np.bincount(labels * len(names) + of_prompt, minlength=k * len(names)).reshape(k, len(names))
        fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        record["groups"][key] = {"names": list(names), "fractions": np.round(fractions, 6).tolist()}
    pool = bundle.pool
    pick = lambda texts: min(texts, key=lambda t: (not t.startswith(("a ", "an ")), len(t)))  # noqa: E731 (a sentence)
    ids = np.asarray(bundle.paired_prompt_ids[:examples], dtype=np.int64)
    if len(ids):
        record["examples"]["paired"] = pick(list(pool.texts(ids)))
    if getattr(bundle, "regime_of_prompt", None) is not None and "regime" in record["groups"]:
        names = record["groups"]["regime"]["names"]
        regime = np.asarray(bundle.regime_of_prompt)
        for r, name in enumerate(names):
            found = np.flatnonzero(regime == r)[:examples]
            if len(found):
                record["examples"][name] = pick(list(pool.texts(found)))
    return record


class RegionWindow:
    """Per (region, timestep bin) sums and counts of observed discrepancy between two log lines."""

    def __init__(self, num_regions: int, num_bins: int = 1):
        self.sums = np.zeros((num_regions, num_bins))
        self.counts = np.zeros((num_regions, num_bins))

    def add(self, feedback) -> None:
        self.sums += feedback.sums
        self.counts += feedback.counts

    def take(self) -> tuple[list, list]:
        """Per region, over the window: the mean observed discrepancy, and the mean of each observation
        divided by the window's mean in its timestep bin (over all regions): the discrepancy by
        region with the timestep mix taken out, as a timestep-normalised tracker reads it (regions fed
        only at late timesteps, e.g. by switched samples, are not ranked low for that alone)."""
        counts = self.counts.sum(1)
        raw = np.where(counts > 0, self.sums.sum(1) / np.maximum(counts, 1), np.nan)
        bin_counts = self.counts.sum(0)
        bin_mean = np.where(bin_counts > 0, self.sums.sum(0) / np.maximum(bin_counts, 1), np.nan)
        usable = (bin_mean > 0) & np.isfinite(bin_mean)
        scaled = np.where(usable, self.sums / np.where(usable, bin_mean, 1.0), 0.0).sum(1)
        used = np.where(usable, self.counts, 0.0).sum(1)
        normalised = np.where(used > 0, scaled / np.maximum(used, 1), np.nan)
        self.sums[:], self.counts[:] = 0, 0
        as_list = lambda a: [None if not np.isfinite(m) else float(m) for m in a]  # noqa: E731
        return as_list(raw), as_list(normalised)


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
