"""User-facing errors: one clear line, exit status 2, no traceback unless ``--debug``.

Also the input rules every stage shares (``StrictModel``: unknown keys, non-finite numbers, ``true``
for a number, an empty path are errors) and error text whose cost is bounded whatever the input
(``short_repr``): a message never costs more than its length, even for an alias bomb.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path, PurePath
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class UserError(Exception):
    """A mistake in the user's input (config, file, flag). The message is one line naming it."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class _Full(Exception):
    pass


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (``...`` marks the cut), built piece by piece so
    that the work is bounded by ``limit`` whatever the size, depth or sharing of ``value`` (a YAML
    alias bomb expands to 10^9 items; ``repr`` would build all of them before the cut)."""
    parts: list[str] = []
    size = 0

    def emit(text: str) -> None:
        nonlocal size
        parts.append(text)
        size += len(text)
        if size > limit:
            raise _Full

    def walk(v: Any) -> None:  # every level emits a character first: the depth is bounded by limit
        if isinstance(v, dict):
            emit("{")
            for i, (key, item) in enumerate(v.items()):
                emit(", " if i else "")
                walk(key)
                emit(": ")
                walk(item)
            emit("}")
        elif isinstance(v, (list, tuple, set, frozenset)):
            opening, closing = {list: "[]", tuple: "()"}.get(type(v), "{}")
            emit(opening)
            for i, item in enumerate(v):
                emit(", " if i else "")
                walk(item)
            emit("," if type(v) is tuple and len(v) == 1 else "")
            emit(closing)
        elif isinstance(v, (str, bytes)):
            emit(repr(v[:limit + 1]) if len(v) <= limit else repr(v[:limit + 1])[:-1])
        elif isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 192:
            emit(f"<an integer of {v.bit_length()} bits>")  # repr of a huge int is quadratic, or refused
        else:
            emit(repr(v)[:limit + 1])

    try:
        walk(value)
    except _Full:
        return "".join(parts)[:limit] + "..."
    return "".join(parts)


def format_validation_error(err, source: str = "config") -> str:
    """One line from a pydantic ValidationError: the first problem with its dotted field path
    (bounded: a huge input costs no more than a small one)."""
    first = err.errors(include_url=False, include_context=False)[0]
    count = err.error_count()
    loc = ".".join(short_repr(p, 40) if not isinstance(p, str) else (p if len(p) <= 40 else p[:40] + "...")
                   for p in first.get("loc", ()) if p != "__root__") or "<root>"
    msg = first.get("msg", "invalid value")
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "value_error" and msg.startswith("Value error, "):  # a validator's own sentence
        msg = msg[len("Value error, "):]
    more = f" (+{count - 1} more)" if count > 1 else ""
    value = first.get("input")
    shown = "" if kind in ("missing", "extra_forbidden") or isinstance(value, dict) else f" (got {short_repr(value)})"
    return f"{source}: {loc}: {msg}{shown}{more}"


# -- shared input rules ----------------------------------------------------------------------------

def scalar_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` does not fit the scalar kinds of ``annotation`` exactly, else None: an int field
    takes an integer (not ``true``, ``1.5`` or ``"3"``), a float field a number (not ``true`` or a
    string), a bool field ``true``/``false`` (not ``1`` or ``"yes"``), a path a non-blank string or
    path. Lists, tuples and Optional are looked into; anything else is left to pydantic."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return scalar_problem(value, get_args(annotation)[0])
    if origin in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if value is None and len(args) < len(get_args(annotation)):
            return None
        return scalar_problem(value, args[0]) if len(args) == 1 else None
    if annotation is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if annotation is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return None if ok else "expected an integer"
    if annotation is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return None if ok else "expected a number"
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "expected a path, not an empty string" if isinstance(value, str) and not value.strip() else None
    if origin in (list, tuple, set, frozenset) and isinstance(value, (list, tuple)):
        args = get_args(annotation)
        if origin is tuple and args and args[-1] is not Ellipsis:
            pairs = zip(value, args)
        else:
            pairs = ((item, args[0]) for item in value) if args else ()
        for item, arg in pairs:
            problem = scalar_problem(item, arg)
            if problem:
                return problem
    if origin is dict and isinstance(value, dict) and len(get_args(annotation)) == 2:
        for item in value.values():
            problem = scalar_problem(item, get_args(annotation)[1])
            if problem:
                return problem
    return None


class StrictModel(BaseModel):
    """Base of every model read from user input (run config sections, strategy hyperparameters,
    the theory sweep): unknown keys, non-finite numbers and loosely typed scalars are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _exact_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        problem = None if field is None else scalar_problem(value, field.annotation)
        if problem:
            raise ValueError(problem)  # shown without pydantic's "Value error, " (format_validation_error)
        return value


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
