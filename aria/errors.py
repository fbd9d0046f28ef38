"""User-facing errors: one clear line, exit status 2, no traceback unless ``--debug``."""

from __future__ import annotations

import os
from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input (config, file, flag). The message is one line naming it."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def format_validation_error(err, source: str = "config") -> str:
    """One line from a pydantic ValidationError: the first problem with its dotted field path."""
    errors = err.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__") or "<root>"
    msg = first.get("msg", "invalid value")
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        msg = "unknown key"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    value = first.get("input")
    shown = "" if kind in ("missing", "extra_forbidden") or isinstance(value, dict) else f" (got {value!r:.60})"
    return f"{source}: {loc}: {msg}{shown}{more}"


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be, or be created as, a writable folder (None if it can); nothing is created.
    Checked before long work, so that a bad output path fails at once instead of at the end."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:  # exists() is False under a regular file
        probe = probe.parent
    if not probe.is_dir():
        return "is a file, not a folder" if probe == path else f"cannot be created ({probe} is a file)"
    if not os.access(probe, os.W_OK | os.X_OK):
        return "is not writable" if probe == path else f"cannot be created ({probe} is not writable)"
    return None
