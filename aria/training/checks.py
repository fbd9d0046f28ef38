"""The checks of a run made before any heavy work (one owner: ``DistillationRun.setup`` calls them)."""

from __future__ import annotations

import os
from pathlib import Path

from aria.errors import UserError


def check_output_dir(path: Path, field: str = "output_dir") -> None:
    """``path`` is, or can be created as, a writable folder (nothing is created)."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:  # exists() is False under a regular file
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == path else f" ({probe} is a file)"
        raise UserError(f"{field} {path} cannot be a folder{where}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{field} {path} is not writable ({probe} is read-only)")


def check_run(config, resume: bool, data: bool = True, teacher: bool = True) -> None:
    """The checks of a run that need no models or data work, made first by ``DistillationRun.setup``:
    output_dir, data files (the pool cache is filled for the rest of setup to reuse), teacher folder,
    student variant against the teacher, checkpoints against ``resume``, and a resume against the
    newest checkpoint's config. A check that needs the loaded data or models (unexpected file
    contents, shapes that must fit together) is made where those are loaded. ``data``/``teacher``
    False: those were handed to the run in memory (tests, comparisons) and are not checked here."""
    from aria.data import bundle

    check_output_dir(config.output_dir)
    if data and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 fills the caches (see aria.data.bundle)
        bundle.check_inputs(config)
    from aria.training import checkpoint as ckpt
    from aria.models.students import student_unet_config
    from aria.models.teacher import check_teacher

    if teacher:
        unet_config = check_teacher(config.teacher)
        try:
            student_unet_config(unet_config, config.student.variant, config.student.channel_scale)
        except (KeyError, TypeError, ValueError, IndexError):
            pass  # a config.json diffusers completes with defaults: the engine builds the student
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
            return  # damaged: the engine reports it and tries an older one
        ckpt.check_resume_config(saved, config_to_dict(config), state["strategy"]["config"],
                                 config.strategy_config().model_dump(mode="json"))
        ckpt.check_resume_steps(found[0], state, config.distillation.steps)
