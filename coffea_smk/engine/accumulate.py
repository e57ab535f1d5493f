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

from coffea_smk.util import containers


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
    if containers.full_name(a) in _COFFEA_MAPPINGS:
        if not isinstance(b, Mapping):
            raise AccumulateError(_mismatch(path, a, b))
        return _add_coffea_mapping(a, b, path)
    if containers.full_name(a) == _VALUE:
        _lift(a)
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
        hint = ""
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape != b.shape:
            hint = (
                f" (arrays of shapes {a.shape} and {b.shape}: values per event? Return them as "
                "coffea_smk.Skim(array) to write them to files, or as coffea's column_accumulator)"
            )
        raise AccumulateError(f"{path}: cannot add {_describe(a)} and {_describe(b)}: {err}{hint}") from err


def accumulate(items: Iterable[Any], start: Any = None) -> Any:
    """Fold ``items`` into ``start`` with :func:`add`."""
    out = start
    for item in items:
        out = add(out, item)
    return out


_COFFEA = "coffea.processor.accumulator"
_DICT = f"{_COFFEA}.dict_accumulator"
_DEFAULTDICT = f"{_COFFEA}.defaultdict_accumulator"
_VALUE = f"{_COFFEA}.value_accumulator"
_COFFEA_MAPPINGS = (_DICT, _DEFAULTDICT)


def _add_coffea_mapping(a: Any, b: Mapping[Any, Any], path: str) -> Any:
    """``a + b`` for coffea's ``dict_accumulator`` and ``defaultdict_accumulator``, in place, their
    values added with :func:`add`.

    As coffea's ``add``: a new key of a ``defaultdict_accumulator`` starts from its default, one
    of a ``dict_accumulator`` from the value's ``identity()``. Where coffea's would raise (a new
    key whose value is no accumulator, such as a histogram; values without ``+=``, such as
    sets), the values are added as in a plain dict instead.
    """
    _lift(a)
    factory = getattr(a, "default_factory", None)
    for key, value in b.items():
        where = f"{path}[{key!r}]"
        if key in a:
            a[key] = add(a[key], value, path=where)
        elif factory is not None:
            start = factory()
            a[key] = add(start if _is_number(start) == _is_number(value) else None, value, path=where)
        elif containers.is_coffea(value):
            # a dict_accumulator's identity() asks each value for its own, which a histogram has not
            empty = type(value)() if containers.full_name(value) == _DICT else value.identity()
            a[key] = add(empty, value, path=where)
        else:
            a[key] = add(None, value, path=where)
    return a


def _lift(x: Any) -> None:
    """Make the numbers in ``x`` what coffea's ``x.identity() + x`` makes them: a
    ``value_accumulator``'s value and a ``defaultdict_accumulator``'s values start from their
    default (``value_accumulator(float)`` holding ``1`` holds ``1.0`` once added).

    coffea's accumulate adds the first two outputs with ``+`` (through ``identity()``), the
    others in place; here every addition is in place, and this makes the types come out equal.
    """
    name = containers.full_name(x)
    if name == _VALUE:
        start = x.default_factory() if x.default_factory is not None else None
        if _is_number(start) and _is_number(x.value):
            x.value = start + x.value
        return
    if name not in _COFFEA_MAPPINGS:
        return
    start = x.default_factory() if name == _DEFAULTDICT and x.default_factory is not None else None
    for key, value in x.items():
        if _is_number(start) and _is_number(value):
            x[key] = start + value
        else:
            _lift(value)


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
