"""The strategy registry: ``@register_strategy("name")``, entry-point plugins, validated creation.

Third-party packages register through the entry-point group ``aria.strategies``: each entry
point names a module (importing it runs its ``@register_strategy``) or an
``AllocationStrategy`` subclass. Plugins are found on first lookup, with no import by the user.
"""

from __future__ import annotations

from importlib import metadata
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError

from aria.errors import UserError, format_validation_error

from .base import AllocationStrategy

ENTRY_POINT_GROUP = "aria.strategies"
_REGISTRY: dict[str, type[AllocationStrategy]] = {}
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
        cls.name = name
        cls.origin = _loading_origin or ("built-in" if cls.__module__.startswith("aria.strategies") else cls.__module__)
        _REGISTRY[name] = cls
        return cls

    return decorate


def load_plugins() -> None:
    """Import every ``aria.strategies`` entry point once."""
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
        except Exception as err:  # a broken plugin is the user's environment: name it in one line
            raise UserError(
                f"strategy plugin {ep.name!r} ({_loading_origin}, {ep.value}) failed to load: "
                f"{type(err).__name__}: {err}"
            ) from err
        finally:
            _loading_origin = None


def list_strategies() -> dict[str, type[AllocationStrategy]]:
    load_plugins()
    return dict(sorted(_REGISTRY.items()))


def get_strategy(name: str) -> type[AllocationStrategy]:
    strategies = list_strategies()
    if name not in strategies:
        import difflib

        close = difflib.get_close_matches(name, strategies, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(strategies)}"
        raise UserError(f"unknown strategy {name!r}{hint}")
    return strategies[name]


def create_strategy(name: str, params: dict[str, Any] | None = None) -> AllocationStrategy:
    """The strategy ``name`` with validated hyperparameters (a UserError names a bad one)."""
    cls = get_strategy(name)
    try:
        return cls(cls.Config(**(params or {})))
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=f"strategy {name} params")) from err


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
