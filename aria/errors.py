"""User-facing errors: one clear line, exit status 2, no traceback unless ``--debug``."""

from __future__ import annotations


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
