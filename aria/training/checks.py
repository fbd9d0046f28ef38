"""The checks of a run made before any heavy work (one owner: ``DistillationRun.setup`` calls them,
and ``aria run --dry-run`` calls the same ``check_run`` with ``dry_run=True``, adding the memory estimate)."""

from __future__ import annotations

import os
from pathlib import Path

from aria.devices import check_config_devices
from aria.errors import UserError
from aria.files import check_output_folder

PLACEHOLDER = "/path/to/"  # the shipped configs' stand-in for a user's folder (configs/sd-bk-small.yaml)
GIB = 2**30


def check_output_dir(path: Path, field: str = "output_dir") -> None:
    """``path`` is, or can be created as, a writable folder (nothing is created; ``aria.files.check_output_folder``,
    the check every command's output folder gets)."""
    check_output_folder(Path(path).expanduser(), field)


def _path_problem(path: Path, kind: str) -> str | None:
    """Why ``path`` is not an existing ``kind`` ("file" or "folder"), or None."""
    if not path.exists():
        return "does not exist"
    if kind == "file" and not path.is_file():
        return "is not a file" + (" (a folder)" if path.is_dir() else "")
    if kind == "folder" and not path.is_dir():
        return "is not a folder"
    return None


def check_paths(config, data: bool = True, teacher: bool = True) -> None:
    """Every path the config names exists with the right kind, in the config's order, so that the
    first bad one is named: output_dir can be made a writable folder; data.prompts_file is a file
    and data.paired_dir a folder (files source); encoder.path a folder with what its kind reads;
    teacher.path a folder of a known layout (``check_teacher_layout``; the files in it:
    ``check_teacher``). A path still holding the shipped configs' ``/path/to/`` placeholder says so.
    Nothing is created (data.cache_dir is checked where it is written: ``bundle.cache_write_errors``)."""
    check_output_dir(config.output_dir)
    d, e = config.data, config.encoder
    entries = []  # (field, path, kind)
    if data and d.source == "files":
        entries += [("data.prompts_file", d.prompts_file, "file"), ("data.paired_dir", d.paired_dir, "folder")]
    if e.path is not None:
        entries.append(("encoder.path", e.path, "folder"))
    if teacher and config.teacher.path is not None:
        entries.append(("teacher.path", config.teacher.path, "folder"))
    if config.student.init_path is not None:
        entries.append(("student.init_path", config.student.init_path, "folder"))
    for field, path, kind in entries:
        path = Path(path).expanduser()
        problem = _path_problem(path, kind)
        if problem:
            hint = (f": the config's placeholder, edit it or pass --set {field}=..." if PLACEHOLDER in str(path)
                    else "")
            raise UserError(f"{field} {path} {problem}{hint}")
    if e.path is not None:
        needs = ("text_encoder", "tokenizer") if e.kind == "clip" else ("config.json",)
        missing = [n for n in needs if not (Path(e.path).expanduser() / n).exists()]
        if missing:
            what = "a Stable Diffusion folder (text_encoder/, tokenizer/)" if e.kind == "clip" else \
                "a sentence-transformers folder (config.json)"
            raise UserError(f"encoder.path {e.path} lacks {', '.join(missing)}: encoder.kind {e.kind} reads {what}")
    if teacher:
        check_teacher_layout(config.teacher)


def check_teacher_layout(teacher_config) -> None:
    """A diffusers pipeline folder (``model_index.json``, ``unet/config.json``) is read with
    ``teacher.subfolder: unet``; a UNet folder (``config.json``) without a subfolder. The files
    inside (classes, weights, vae, scheduler) are ``aria.models.teacher.check_teacher``'s."""
    if teacher_config.path is None:
        return
    root = Path(teacher_config.path).expanduser()
    sub = teacher_config.subfolder
    if sub is None and (root / "model_index.json").is_file() and not (root / "config.json").is_file():
        unet = " (its UNet is in unet/)" if (root / "unet" / "config.json").is_file() else ""
        raise UserError(f"teacher.path {root} is a diffusers pipeline folder (model_index.json){unet}: "
                        f"set teacher.subfolder: unet")
    if sub is not None and not (root / sub / "config.json").is_file():
        layout = "a pipeline folder" if (root / "model_index.json").is_file() else "a folder"
        raise UserError(f"teacher.path {root} is {layout} without {sub}/config.json (teacher.subfolder {sub!r}): "
                        f"expected a diffusers pipeline folder (model_index.json, {sub}/config.json, vae/, "
                        f"scheduler/) or, without teacher.subfolder, a UNet folder (config.json)")


def check_run(config, resume: bool, data: bool = True, teacher: bool = True, dry_run: bool = False) -> dict:
    """The checks of a run that need no models or data work, made first by ``DistillationRun.setup``:
    paths (``check_paths``: output_dir, data files, cache, encoder and teacher folders), the devices
    (``aria.devices.check_config_devices``: a CUDA device this machine lacks is named), data inputs
    (regions.k against the pool size; the pool cache is filled for the rest of setup to reuse),
    teacher folder, student variant against the teacher, checkpoints against ``resume``, and a
    resume against the newest checkpoint's config. A check that needs the loaded data or models
    (unexpected file contents, shapes that must fit together) is made where those are loaded.
    ``data``/``teacher`` False: those were handed to the run in memory (tests, comparisons) and are
    not checked here. ``dry_run`` (``aria run --dry-run``): also the memory estimate
    (``check_memory``). Returns what a dry run reports ({} otherwise)."""
    from aria.data import bundle

    check_paths(config, data=data, teacher=teacher)
    check_config_devices(config)  # encoder.device, backend.device: here, before any data or model work
    if data and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 fills the caches (see aria.data.bundle)
        bundle.check_inputs(config)
    from aria.training import checkpoint as ckpt
    from aria.models.students import student_unet_config
    from aria.models.teacher import check_teacher

    report: dict = {}
    if teacher:
        unet_config = check_teacher(config.teacher, config.data.source)
        student_config = None
        try:
            student_config = student_unet_config(unet_config, config.student.variant, config.student.channel_scale)
        except (KeyError, TypeError, ValueError, IndexError):
            pass  # a config.json diffusers completes with defaults: the engine builds the student
        if dry_run:
            report["memory"] = check_memory(config, unet_config, student_config)
    found = ckpt.list_checkpoints(ckpt.checkpoint_dir(config.output_dir))
    if found and not resume:
        raise UserError(f"output_dir {config.output_dir} already holds checkpoints: pass --resume, "
                        f"or choose another output_dir")
    if resume and found:
        from aria.config import config_to_dict

        try:
            state, saved = ckpt.read_state(found[0])  # the newest; the engine verifies checksums
            ckpt.check_state(found[0], state)
        except UserError:
            return report  # damaged: the engine reports it and tries an older one
        ckpt.check_resume_config(saved, config_to_dict(config), state["strategy"]["config"],
                                 config.strategy_config().model_dump(mode="json"))
        ckpt.check_resume_steps(found[0], state, config.distillation.steps)
    return report


def _device_memory(backend_config) -> tuple[str, int | None]:
    """(device name, its total memory in bytes, or None where unknown) of this rank."""
    import torch

    kind = backend_config.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            return "cuda (none visible here)", None
        index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name})", int(props.total_memory)
    try:
        return "cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without sysconf
        return "cpu", None


def check_memory(config, teacher_unet_config: dict, student_unet_config: dict | None) -> dict:
    """A lower bound of one rank's memory against its device's: the teacher's weights (in the compute
    dtype), the student's weights, gradients and AdamW's two moments in fp32 (DeepSpeed ZeRO shares
    the moments, and at stage 2 the gradients, over the ranks), the weight EMA. Activations, which
    grow with the per-rank batch, are not counted, so a run may still need more; a bound above the
    device's memory is a UserError. Models are built on the meta device (no memory, no weights read)."""
    import torch
    from diffusers import UNet2DConditionModel

    def parameters(unet_config: dict) -> int:
        cfg = {k: v for k, v in unet_config.items() if not k.startswith("_")}
        with torch.device("meta"):
            return sum(p.numel() for p in UNet2DConditionModel.from_config(cfg).parameters())

    try:
        teacher_n = parameters(teacher_unet_config)
        student_n = parameters(student_unet_config) if student_unet_config is not None else None
    except Exception as err:  # noqa: BLE001 - a config diffusers cannot build: the engine reports it with context
        return {"skipped": f"models not built on the meta device ({type(err).__name__})"}
    b, d = config.backend, config.distillation
    device, total = _device_memory(b)
    ranks = max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    half = b.precision == "bf16" and device.startswith("cuda")
    need = teacher_n * (2 if half else 4)
    if student_n is not None:
        zero = b.zero_stage if b.kind == "deepspeed" else 0
        moments = 8 / (ranks if zero >= 1 else 1)
        grads = 4 / (ranks if zero >= 2 else 1)
        need += student_n * (4 + grads + moments + (4 if d.ema_decay else 0))
    report = {"device": device, "teacher_parameters": teacher_n, "student_parameters": student_n,
              "lower_bound_gib": need / GIB, "device_gib": None if total is None else total / GIB}
    if total is not None and need > total:
        raise UserError(f"memory: the teacher ({teacher_n / 1e6:.0f}M parameters) and the student "
                        f"({(student_n or 0) / 1e6:.0f}M) need at least {need / GIB:.1f} GiB on {device} (weights, "
                        f"gradients and AdamW moments; activations for the batch of {d.batch_size} come on top) "
                        f"but it has {total / GIB:.1f} GiB: choose a smaller student.variant, backend.precision "
                        f"bf16, or DeepSpeed ZeRO (backend.kind deepspeed)")
    return report
