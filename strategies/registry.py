"""The strategy registry: ``@register_strategy("name")``, entry-point plugins, validated creation.

Third-party packages register through the entry-point group ``aria.strategies``: each entry
point names a module (importing it runs its ``@register_strategy``) or an
``AllocationStrategy`` subclass. Plugins are found on first lookup, with no import by the user.
A plugin that fails to load is set aside (``broken_plugins``): every other strategy stays usable,
and asking for the broken one names it and why it failed.
"""

from __future__ import annotations

from importlib import metadata
from types import ModuleType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError

from aria.errors import UserError, format_validation_error, short_repr

from .base import AllocationStrategy

ENTRY_POINT_GROUP = "aria.strategies"
_REGISTRY: dict[str, type[AllocationStrategy]] = {}
_BROKEN: dict[str, str] = {}  # entry-point name -> one line: which plugin failed to load, and why
_plugins_loaded = False
_loading_origin: str | None = None


def register_strategy(name: str):
    """Class decorator adding a strategy under ``name``; a duplicate name is an error."""

    def decorate(cls: type[AllocationStrategy]) -> type[AllocationStrategy]:
        if not (isinstance(cls, type) and issubclass(cls, AllocationStrategy)):
            raise TypeError(f"@register_strategy({name!r}) needs an AllocationStrategy subclass")
        if not name or not name.replace("-", "_").replace("_", "a").isalnum():
            raise ValueError(f"invalid strategy name {name!r}")
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered (by {_REGISTRY[name].origin})")
        if cls.learns_from not in (None, "switched"):
            raise ValueError(f"strategy {name!r}: learns_from must be None or 'switched', not {cls.learns_from!r}")
        cls.name = name
        cls.origin = _loading_origin or ("built-in" if cls.__module__.startswith("aria.strategies") else cls.__module__)
        _REGISTRY[name] = cls
        return cls

    return decorate


def load_plugins() -> None:
    """Import every ``aria.strategies`` entry point once; one that fails is recorded in ``_BROKEN``."""
    global _plugins_loaded, _loading_origin
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        _loading_origin = f"package {dist.name}" if dist is not None else f"package {ep.module}"
        try:
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, AllocationStrategy) and obj not in _REGISTRY.values():
                register_strategy(ep.name)(obj)
            elif (not (isinstance(obj, type) and issubclass(obj, AllocationStrategy))
                  and not isinstance(obj, ModuleType)):
                raise TypeError(f"the entry point is a {type(obj).__name__}, not a module or an AllocationStrategy")
        except (Exception, SystemExit) as err:  # the user's environment: set aside, named when it matters
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            _BROKEN[ep.name] = (f"strategy plugin {ep.name!r} ({_loading_origin}, {ep.value}) failed to load: "
                                f"{reason if len(reason) <= 200 else reason[:200] + '...'}")
        finally:
            _loading_origin = None


def broken_plugins() -> dict[str, str]:
    """Entry-point name -> one line naming each plugin that failed to load, and why."""
    load_plugins()
    return dict(_BROKEN)


def list_strategies() -> dict[str, type[AllocationStrategy]]:
    load_plugins()
    return dict(sorted(_REGISTRY.items()))


def get_strategy(name: str) -> type[AllocationStrategy]:
    strategies = list_strategies()
    if name not in strategies:
        if name in _BROKEN:
            raise UserError(_BROKEN[name])
        import difflib

        close = difflib.get_close_matches(name, strategies, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(strategies)}"
        broken = f" (plugins that failed to load: {', '.join(map(repr, _BROKEN))})" if _BROKEN else ""
        raise UserError(f"unknown strategy {short_repr(name)}{hint}{broken}")
    return strategies[name]


def create_strategy(name: str, params: dict[str, Any] | None = None) -> AllocationStrategy:
    """The strategy ``name`` with validated hyperparameters (a UserError names a bad one)."""
    cls = get_strategy(name)
    try:
        config = cls.Config.model_validate(params or {})
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=f"strategy {name} params")) from err
    if cls.origin == "built-in":
        return cls(config)
    try:  # a plugin's own code: whatever it raises is named as the plugin's failure
        return cls(config)
    except Exception as err:
        raise UserError(f"strategy {name!r} ({cls.origin}) failed to start: {type(err).__name__}: "
                        f"{short_repr(str(err), 200)}") from err


def describe_parameters(cls: type[AllocationStrategy]) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, description) of every hyperparameter."""
    return [
        (field, type_name(info.annotation), info.default, info.description or "")
        for field, info in cls.Config.model_fields.items()
    ]


def type_name(annotation: Any) -> str:
    """A readable type: ``float``, ``'softmax' | 'power'``, ``int | None``, ``list[float]``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin is not None and args:
        return f"{type_name(origin)}[{', '.join(type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
