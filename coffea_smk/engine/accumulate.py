"""Merging processor outputs, with coffea's accumulate semantics.

``hist.Hist`` and numpy arrays add, numbers sum, dicts merge recursively by
key, sets unite, lists and tuples concatenate, and any other object is combined
with ``+``. ``None`` is the identity. As in coffea, a mapping that defines its own
addition (``collections.Counter``) and coffea's accumulators
(``dict_accumulator``, ``defaultdict_accumulator``, ``value_accumulator``,
``set_accumulator``, ``list_accumulator``) are added with their own ``+=``: a
``defaultdict_accumulator`` adds a new key's value to its default, a ``Counter``
keeps only positive counts, and every one keeps its type.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import numpy as np


class AccumulateError(TypeError):
    """Two results cannot be added."""


def add(a: Any, b: Any, *, path: str = "result") -> Any:
    """Return ``a + b`` under accumulate semantics; ``a`` may be modified in place.

    Args:
        a: The running accumulator (owned by the caller, may be updated in place).
        b: The value to add; it is never modified.
        path: Where in the result tree the values sit, for error messages.

    Raises:
        AccumulateError: The types differ or cannot be added.
    """
    if a is None:
        # The accumulator must own its value: later additions happen in place.
        return copy.deepcopy(b)
    if b is None:
        return a
    if _adds_itself(a):
        try:
            a += b
        except Exception as err:
            raise AccumulateError(f"{path}: cannot add {_describe(a)} and {_describe(b)}: {err}") from err
        return a
    if isinstance(a, Mapping):
        if not isinstance(b, Mapping):
            raise AccumulateError(_mismatch(path, a, b))
        out = a if isinstance(a, MutableMapping) else dict(a)
        for key, value in b.items():
            out[key] = add(out.get(key), value, path=f"{path}[{key!r}]")
        return out
    if isinstance(a, (set, frozenset)):
        if not isinstance(b, (set, frozenset)):
            raise AccumulateError(_mismatch(path, a, b))
        return a | b
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    if isinstance(a, tuple) and isinstance(b, tuple):
        return a + b
    if isinstance(a, (str, bytes)) or isinstance(b, (str, bytes)):
        raise AccumulateError(
            f"{path}: cannot accumulate {type(a).__name__} values; "
            "return numbers, dicts, sets, lists, numpy arrays or hist.Hist objects"
        )
    if _is_number(a) != _is_number(b):
        raise AccumulateError(_mismatch(path, a, b))
    try:
        if hasattr(a, "_hist"):
            a += b  # histograms: in place, no copy per chunk
            return a
        if isinstance(a, np.ndarray) and np.result_type(a, b) == a.dtype and a.shape == np.shape(b):
            np.add(a, b, out=a)
            return a
        return a + b
    except Exception as err:  # user types define their own __add__
        raise AccumulateError(f"{path}: cannot add {_describe(a)} and {_describe(b)}: {err}") from err


def accumulate(items: Iterable[Any], start: Any = None) -> Any:
    """Fold ``items`` into ``start`` with :func:`add`."""
    out = start
    for item in items:
        out = add(out, item)
    return out


def _adds_itself(x: Any) -> bool:
    """A coffea accumulator, or a mapping with its own addition (coffea adds both with ``+=``)."""
    if isinstance(x, Mapping) and hasattr(type(x), "__add__"):
        return True
    return any(c.__module__ == "coffea.processor.accumulator" for c in type(x).__mro__)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Number) or (isinstance(x, np.generic) and x.ndim == 0)


def _describe(x: Any) -> str:
    return f"{type(x).__module__}.{type(x).__qualname__}"


def _mismatch(path: str, a: Any, b: Any) -> str:
    return (
        f"{path}: the result changed type between chunks ({_describe(a)} then {_describe(b)}); "
        "process() must return the same structure for every chunk"
    )
