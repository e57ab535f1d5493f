"""The container types of processor outputs that are stored with their type (no pickle).

Beside plain dicts, sets and lists, processors return ``collections.Counter``,
``defaultdict``, ``OrderedDict`` and coffea's accumulators (``dict_accumulator``,
``defaultdict_accumulator``, ``value_accumulator``, ``set_accumulator``,
``list_accumulator``). A result file names their type and, for the types with a
default, the default's factory, by name from the fixed tables below: loading
one builds the same type from that name and never runs code from the file.
coffea is imported only to load a file that holds coffea's types.
"""

from __future__ import annotations

import collections
import importlib
from collections.abc import Callable
from typing import Any

_COFFEA = "coffea.processor.accumulator"

CONTAINERS = (
    "collections.Counter",
    "collections.OrderedDict",
    "collections.defaultdict",
    f"{_COFFEA}.dict_accumulator",
    f"{_COFFEA}.defaultdict_accumulator",
    f"{_COFFEA}.value_accumulator",
    f"{_COFFEA}.set_accumulator",
    f"{_COFFEA}.list_accumulator",
)
"""The container types stored with their type, by their full name."""

WITH_DEFAULT = (
    "collections.defaultdict",
    f"{_COFFEA}.defaultdict_accumulator",
    f"{_COFFEA}.value_accumulator",
)
"""Those whose default factory is stored too."""

FACTORIES = (
    *(f"builtins.{n}" for n in ("int", "float", "complex", "bool", "str", "list", "tuple", "set", "dict")),
    # numpy 2 names its bool scalar type numpy.bool, numpy 1 numpy.bool_
    *(f"numpy.{n}" for n in ("float64", "float32", "int64", "int32", "uint64", "uint32", "bool", "bool_")),
    "collections.Counter",
    "collections.OrderedDict",
    "collections.defaultdict",
    *(
        f"{_COFFEA}.{n}"
        for n in (
            "dict_accumulator",
            "defaultdict_accumulator",
            "value_accumulator",
            "set_accumulator",
            "list_accumulator",
        )
    ),
)
"""The default factories that can be stored by name: these types (nested accumulators
included; ``functools.partial`` of one, and an accumulator's ``identity``, are stored too)."""


def full_name(obj: Any) -> str:
    """``module.qualname`` of a type (or of an object's type)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def container_name(obj: Any) -> str | None:
    """The stored name of ``obj``'s type when it is one of :data:`CONTAINERS` (exactly)."""
    name = full_name(obj)
    return name if name in CONTAINERS else None


def is_coffea(obj: Any) -> bool:
    """``obj`` is one of coffea's accumulators of :data:`CONTAINERS` (exactly that type)."""
    return (container_name(obj) or "").startswith(f"{_COFFEA}.")


def factory_name(factory: Any) -> str | None:
    """The stored name of a default factory, or None when it is not one of :data:`FACTORIES`."""
    if not isinstance(factory, type):
        return None
    name = full_name(factory)
    return name if name in FACTORIES else None


def resolve(name: str, allowed: tuple[str, ...]) -> Callable[..., Any]:
    """The type stored under ``name`` (one of ``allowed``).

    Raises:
        ValueError: Not an allowed name (the file was not written by coffea_smk).
        ImportError: A coffea type, and coffea is not installed: the message says how to install it.
    """
    if name not in allowed:
        raise ValueError(f"unknown stored type {name!r}")
    module, _, attr = name.rpartition(".")
    try:
        found: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    except ImportError as err:
        raise ImportError(
            f"the result holds a {name}, which needs coffea: pip install 'coffea_smk[coffea]' ({err})",
            name=err.name,
        ) from err
    return found


def rebuild(name: str, default: Callable[[], Any] | None, payload: Any) -> Any:
    """A container of type ``name`` holding ``payload`` (a dict, set or list; a value for
    ``value_accumulator``), with ``default`` as its default factory where it has one."""
    cls = resolve(name, CONTAINERS)
    if cls is collections.defaultdict or name.endswith(".defaultdict_accumulator"):
        return cls(default, payload)
    if name.endswith(".value_accumulator"):
        if payload is None:  # coffea's constructor would call the factory for it
            acc: Any = object.__new__(cls)  # type: ignore[arg-type]  # cls is a class here
            acc.default_factory, acc.value = default, None
            return acc
        return cls(default, payload)
    return cls(payload)


def payload(obj: Any) -> Any:
    """What a container holds, as a plain dict, set or list (the value for ``value_accumulator``)."""
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, set):
        return set(obj)
    if isinstance(obj, list):
        return list(obj)
    return obj.value
