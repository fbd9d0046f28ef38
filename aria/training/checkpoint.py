"""Atomic checkpoints with a manifest of sha256 checksums, and resume.

Layout of ``<output_dir>/checkpoints/step-00000200/``::

    student.safetensors   student weights            ema.safetensors   EMA weights (optional)
    training.pt           optimizer + LR schedule    deepspeed/        the DeepSpeed engine's own
                          (TorchBackend: tensors and                   checkpoint (every rank writes
                          primitives, weights_only)                    its shard)
    state.json            step, strategy name/config/state (``state_to_json``), feature-balance
                          scales, non-finite counters, world size, the teacher distilled from
                          (``aria.models.teacher.teacher_identity``; absent in older checkpoints)
    config.json           the resolved run config
    manifest.json         every other file with its size and sha256 (written last)

A checkpoint is written into ``step-XXXXXXXX.tmp``, every file fsynced, then renamed; only rank 0
writes (ranks share the filesystem), except DeepSpeed's shards. A write that fails (a full disk, a
quota) removes the temporary folder, leaves the earlier checkpoints as they were and is a
``CheckpointWriteError`` (a ``UserError``) naming the folder and the system's reason, on every rank.
On resume, checkpoints are tried newest first and the first whose manifest verifies is used; the
others are reported; ``--resume`` without one that verifies is a ``UserError`` naming the folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from aria.errors import UserError, short_repr
from aria.files import file_sha256

PREFIX = "step-"
MANIFEST = "manifest.json"
FORMAT = 1

# config fields that must not change on resume (dotted prefixes); everything else may, and applies from the
# resumed step on: distillation.lr / weight_decay replace the optimizer's and the LR schedule's saved values, and
# warmup_steps / lr_schedule / lr_final / steps reshape the schedule, a function of the step index
# (backends.resume_schedule); ema_decay turned on starts the EMA from the restored weights
RESUME_FIELDS = ("seed", "data", "encoder.kind", "encoder.path", "encoder.max_length", "regions", "teacher.path",
                 "teacher.subfolder", "student", "strategy.name", "distillation.batch_size",
                 "distillation.timestep_bins", "backend.kind")
# fields under RESUME_FIELDS that do not change what is trained (where caches live)
RESUME_IGNORED = ("data.cache_dir",)


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, quota, permissions): nothing of it was kept."""


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tensors(module_or_state) -> dict[str, torch.Tensor]:
    state = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _io_reason(err: BaseException) -> str | None:
    """The system's reason when ``err`` is, or was raised while handling, a failed read or write
    (torch.save reports 'unexpected pos' with the OSError as its context); None otherwise."""
    seen = set()
    e = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError):
            where = f" ({e.filename})" if e.filename else ""
            return f"{e.strerror or e}{where}" if e.errno is None else f"[Errno {e.errno}] {e.strerror}{where}"
        if type(e).__name__ == "SafetensorError" and "I/O error" in str(e):
            return str(e).split("I/O error:", 1)[1].strip()
        e = e.__cause__ or e.__context__
    return None


def _attempt(fn, *args) -> BaseException | None:
    try:
        fn(*args)
    except Exception as err:  # noqa: BLE001 -- settled by _settle on every rank
        return err
    return None


def _settle(backend, error: BaseException | None, root: Path, tmp: Path) -> None:
    """Every rank learns whether any rank failed (one all-reduce); on a failure the temporary folder
    is removed and every rank raises: a ``CheckpointWriteError`` for a failed write, else the error."""
    failed = error is not None
    if getattr(backend, "world_size", 1) > 1:
        flag = torch.tensor([int(failed)], dtype=torch.int64, device=backend.device)
        failed = int(backend.all_reduce(flag)[0]) > 0
    if not failed:
        return
    if backend.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            root.rmdir()  # when the first checkpoint failed: no checkpoints/ that looks resumable
        except OSError:
            pass
    if error is None:
        raise CheckpointWriteError(f"checkpoint {tmp}: another rank failed to write its part (see its error); "
                                   f"the partial checkpoint was removed")
    reason = _io_reason(error)
    if reason is None:
        raise error
    kept = list_checkpoints(root)
    before = (f"the previous checkpoint {kept[0].name} is intact" if kept else "there is no earlier checkpoint")
    raise CheckpointWriteError(f"output_dir {root.parent}: cannot write checkpoint {tmp}: {reason}; the partial "
                               f"checkpoint was removed, {before}") from error


def _start(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)


def _finish(root: Path, tmp: Path, final: Path, step: int, student, training_state: dict, config: dict,
            ema: dict | None) -> None:
    """Rank 0: weights, state, config and manifest into ``tmp``, everything fsynced, then the rename."""
    save_file(_tensors(student), tmp / "student.safetensors")
    if ema is not None:
        save_file(_tensors(ema), tmp / "ema.safetensors")
    (tmp / "state.json").write_text(json.dumps(training_state, sort_keys=True, allow_nan=False))
    (tmp / "config.json").write_text(json.dumps(config, sort_keys=True, indent=1))
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    for p in files:
        _fsync(p)
    manifest = {"format": FORMAT, "step": int(step), "files": {
        str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _fsync(tmp / MANIFEST)
    for d in {p.parent for p in files} | {tmp}:
        _fsync(d)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)


def save_checkpoint(root: Path, step: int, backend, *, student, training_state: dict, config: dict,
                    ema: dict | None = None, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically (collective: call on every rank)."""
    root = Path(root)
    final, tmp = root / f"{PREFIX}{step:08d}", root / f"{PREFIX}{step:08d}.tmp"
    _settle(backend, _attempt(_start, tmp) if backend.is_main else None, root, tmp)  # also the barrier
    _settle(backend, _attempt(backend.save, tmp), root, tmp)  # optimizer state (DeepSpeed: every rank's shard)
    error = None
    if backend.is_main:
        error = _attempt(_finish, root, tmp, final, step, student, training_state, config, ema)
    _settle(backend, error, root, tmp)
    if backend.is_main:
        prune(root, keep)
    backend.barrier()
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under ``root``, newest (highest step) first; temp folders excluded."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)


def prune(root: Path, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoints; remove older ones and stale temp folders."""
    kept = 0
    for folder in list_checkpoints(root):
        if kept < keep and (folder / MANIFEST).is_file():  # full verification happens on resume
            kept += 1
        elif kept >= keep:
            shutil.rmtree(folder, ignore_errors=True)
    for stale in Path(root).glob(f"{PREFIX}*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def verify(folder: Path) -> str | None:
    """None if every file of the manifest is present with its size and sha256, else the reason."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return "no manifest"
    except (ValueError, KeyError, TypeError) as err:
        return f"unreadable manifest ({err})"
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != meta["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {meta['bytes']}"
        if file_sha256(path) != meta["sha256"]:
            return f"{name} does not match its checksum"
    return None


def latest_good(root: Path, report: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint whose manifest verifies; each one skipped is reported."""
    for folder in list_checkpoints(root):
        reason = verify(folder)
        if reason is None:
            return folder
        report(f"checkpoint {folder.name} is damaged ({reason}); trying an older one")
    return None


def resume_checkpoint(root: Path, report: Callable[[str], None] = print) -> Path:
    """The checkpoint ``--resume`` continues from: the newest that verifies (the damaged ones skipped
    are reported). Without one, a ``UserError`` naming ``root`` and what it holds."""
    root = Path(root)
    damaged = []
    folder = latest_good(root, report=damaged.append)
    if folder is not None:
        for line in damaged:
            report(line)
        return folder
    found = list_checkpoints(root)
    if found:
        reasons = "; ".join(f"{f.name}: {verify(f)}" for f in found)
        raise UserError(f"--resume: no usable checkpoint in {root}: {len(found)} damaged ({reasons}); move "
                        f"them away to start again from step 0, or use another output_dir")
    if not root.is_dir():
        what = "the folder does not exist"
    else:
        partial = sorted(p.name for p in root.glob(f"{PREFIX}*.tmp"))
        what = (f"only an unfinished write: {', '.join(partial)}" if partial else
                "the folder holds no step-* checkpoint")
    raise UserError(f"--resume: no checkpoint in {root} ({what}); run without --resume to start from step 0")


# the entries of state.json and their kinds (what ``DistillationRun.save`` writes)
_STATE_SHAPE = {"step": int, "world_size": int, "backend": str, "strategy": dict, "distiller": dict,
                "nonfinite": dict, "window": dict}


def _state_problem(state) -> str | None:
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a mapping"
    for key, kind in _STATE_SHAPE.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{key} is {type(value).__name__ if key in state else 'missing'}, expected {kind.__name__}"
    if state["step"] < 0 or state["world_size"] < 1:
        return f"step {state['step']} / world_size {state['world_size']} out of range"
    strategy = state["strategy"]
    if not (isinstance(strategy.get("name"), str) and isinstance(strategy.get("config"), dict)
            and isinstance(strategy.get("state"), str)):
        return "strategy needs name (text), config (mapping) and state (JSON text)"
    counters = state["nonfinite"]
    if not all(isinstance(counters.get(k), int) and counters[k] >= 0 for k in ("consecutive", "total")):
        return "nonfinite needs consecutive and total counts"
    if not all(isinstance(state["window"].get(k), list) for k in ("sums", "counts")):
        return "window needs sums and counts lists"
    teacher = state.get("teacher", {"teacher": "", "weights": None})  # older checkpoints: none recorded
    if not (isinstance(teacher, dict) and isinstance(teacher.get("teacher"), str)
            and isinstance(teacher.get("weights"), (str, type(None)))):
        return "teacher needs teacher (text) and weights (text or null)"
    return None


def read_state(folder: Path) -> tuple[dict, dict]:
    """(training state, resolved config) of a checkpoint; a ``UserError`` names the checkpoint and the
    file when either is unreadable or not a mapping (``check_state`` checks the entries)."""
    folder = Path(folder)
    out = []
    for name in ("state.json", "config.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            reason = " ".join(str(err).split())
            raise UserError(f"checkpoint {folder}: {name} is unreadable ({type(err).__name__}: {reason[:160]}); "
                            f"move it away to resume from an older one, or use another output_dir") from err
        if not isinstance(data, dict):
            raise UserError(f"checkpoint {folder}: {name} holds a {type(data).__name__}, not a mapping; move it "
                            f"away to resume from an older one, or use another output_dir")
        out.append(data)
    return out[0], out[1]


def check_state(folder: Path, state: dict) -> None:
    """A ``UserError`` naming the checkpoint unless ``state`` has every entry ``save`` writes, of its kind."""
    problem = _state_problem(state)
    if problem:
        raise UserError(f"checkpoint {folder}: state.json is not a checkpoint state ({problem}); move it away "
                        f"to resume from an older one, or use another output_dir")


def check_resume_steps(folder: Path, state: dict, steps: int) -> None:
    """A resume continues up to ``distillation.steps``: a checkpoint past it cannot be continued (its
    next checkpoint would be named for an earlier step than the state it holds)."""
    if int(state["step"]) > steps:
        raise UserError(f"cannot resume: checkpoint {Path(folder).name} is at step {state['step']} but "
                        f"distillation.steps is {steps} (set distillation.steps to at least {state['step']}, "
                        f"or use another output_dir)")


def check_resume_teacher(folder: Path, state: dict, teacher: dict) -> str | None:
    """A resume distils from the teacher the checkpoint did (``teacher``: this run's ``teacher_identity``): a
    ``UserError`` naming both when the recorded teacher's weights differ; for a checkpoint that records none
    (written before checkpoints recorded it), the line to print, naming this run's teacher; else None."""
    recorded = state.get("teacher")
    now = f"{teacher['teacher']} (weights {teacher['weights']})"
    if recorded is None:
        return (f"resume: checkpoint {Path(folder).name} does not record its teacher (written before checkpoints "
                f"recorded it); this run distils from {now}")
    if recorded["weights"] != teacher["weights"]:
        raise UserError(f"cannot resume: checkpoint {Path(folder).name} distilled from {recorded['teacher']} "
                        f"(weights {recorded['weights']}) but this run's teacher is {now} (set teacher.path to "
                        f"the checkpoint's teacher, or use another output_dir)")
    return None


def load_weights(folder: Path, name: str = "student") -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / f"{name}.safetensors")


def _leaves(data, prefix=""):
    if isinstance(data, dict):
        for key in sorted(data):
            yield from _leaves(data[key], f"{prefix}{key}.")
    else:
        yield prefix[:-1], data


def check_resume_config(saved: dict, current: dict, saved_strategy: dict, current_strategy: dict) -> None:
    """Refuse a resume whose config differs in a field that matters; the message names the field.
    Strategy hyperparameters are compared resolved (defaults filled in)."""
    fields = RESUME_FIELDS + (("backend.zero_stage",) if current["backend"]["kind"] == "deepspeed" else ())
    old, new = dict(_leaves(saved)), dict(_leaves(current))
    name = current["strategy"]["name"]
    old.update((f"strategy.params.{name}.{k}", v) for k, v in _leaves(saved_strategy))
    new.update((f"strategy.params.{name}.{k}", v) for k, v in _leaves(current_strategy))
    fields += (f"strategy.params.{name}",)
    def checked(key: str) -> bool:
        under = lambda prefixes: any(key == f or key.startswith(f + ".") for f in prefixes)  # noqa: E731
        return under(fields) and not under(RESUME_IGNORED)

    for key in sorted(set(old) | set(new)):
        if checked(key) and old.get(key) != new.get(key):
            raise UserError(f"cannot resume: {key} is {short_repr(old.get(key))} in the checkpoint but "
                            f"{short_repr(new.get(key))} now "
                            f"(use a new output_dir, or restore the value)")
