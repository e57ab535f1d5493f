"""What a processor gave to :class:`coffea_smk.Skim`, as NanoAOD-flat branches.

A skim file holds branches in NanoAOD's naming, one value or one list per row:

* a collection (a list of records per event) ``Muon`` gives jagged ``Muon_pt``, ``Muon_eta``...;
* a per-event record ``MET`` gives flat ``MET_pt``...;
* a number field (``run``, ``genWeight``, a computed ``mass``) or a list of numbers
  (``Jet_pt`` of a flat schema) keeps its name.

The branches are found from the array's *form* alone (:func:`_catalogue`), so that lazy
events read nothing to be listed; only the branches the ``columns`` select are then
projected and materialized (:func:`skim_branches`). What is not data is left out:
coffea's global indices (``jetIdxG``, ``genPartIdxMotherG``: a position in the chunk),
record-valued fields inside a collection (``matched_gen``), lists inside a collection,
and whatever a behaviour only computes (methods are not fields). A collection's counter
(``nMuon``, a field of coffea_smk's events, not of coffea's) is implied by the jagged
branches and is only given when asked for by its exact name.

This module reads forms, never a file: it works for coffea_smk's events, coffea's
NanoEvents (virtual or eager), selections of them, single collections and plain arrays.

Its second half describes branches for the files (:mod:`coffea_smk.io.skimfiles`): a
:class:`BranchType` (numbers or lists of numbers, maybe missing), how two pieces' types
unify (:func:`unify`), and how branches form NanoAOD collections in a ROOT tree
(:func:`nanoaod_layout`).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np
import pyarrow as pa

__all__ = [
    "BranchType",
    "NanoAODLayout",
    "SkimColumnError",
    "SkimSchemaError",
    "arrow_type",
    "branch_types",
    "nanoaod_layout",
    "row_count",
    "skim_branches",
    "unify",
]

_GLOBAL_INDEX = re.compile(r"Idx\w*G$")  # coffea's chunk-global indices: jetIdxG, genPartIdxMotherG
_EVENTS_RECORD = "NanoEvents"
_GLOB_CHARS = frozenset("*?[")
_LISTED_IN_FULL = 40  # an error lists every branch up to this many, else the groups


class SkimColumnError(ValueError):
    """A ``columns`` entry of a :class:`~coffea_smk.Skim` matches no branch of its array."""


@dataclass(frozen=True)
class _Entry:
    branch: str
    path: tuple[str, ...]
    """The fields from the array to the branch's values."""
    counts: bool = False
    """The branch is the counter of the collection at ``path``: its list lengths."""


_OPTIONS = (
    ak.forms.IndexedOptionForm,
    ak.forms.ByteMaskedForm,
    ak.forms.BitMaskedForm,
    ak.forms.UnmaskedForm,
)
_LISTS = (ak.forms.ListOffsetForm, ak.forms.ListForm, ak.forms.RegularForm)


def _strip(form: Any) -> tuple[Any, bool]:
    """The form inside indexed and option layers (a selection, a masked field); optional or not."""
    option = False
    while isinstance(form, (*_OPTIONS, ak.forms.IndexedForm)):
        option = option or isinstance(form, _OPTIONS)
        form = form.content
    return form, option


def _unwrap(form: Any) -> Any:
    return _strip(form)[0]


def _is_number(form: Any) -> bool:
    form = _unwrap(form)
    return isinstance(form, ak.forms.NumpyForm) and not form.inner_shape


def _list_content(form: Any) -> Any | None:
    """The content of a variable or fixed-length list, None for anything else."""
    form = _unwrap(form)
    if isinstance(form, _LISTS):
        return _unwrap(form.content)
    return None


def _is_data(field: str) -> bool:
    return not _GLOBAL_INDEX.search(field)


def _members(record: Any, prefix: str, path: tuple[str, ...], lists: bool) -> list[_Entry]:
    """The numeric fields of a record as ``<prefix>_<field>`` (and lists of numbers if ``lists``)."""
    out = []
    for field in record.fields:
        content = record.content(field)
        inner = _list_content(content)
        wanted = _is_number(content) or (lists and inner is not None and _is_number(inner))
        if wanted and _is_data(field):
            out.append(_Entry(f"{prefix}_{field}", (*path, field)))
    return out


def _field_entries(field: str, form: Any) -> tuple[list[_Entry], str | None]:
    """A top-level field's branches, and the collection it counts in if it is jagged."""
    inner = _list_content(form)
    if _is_number(form):
        return [_Entry(field, (field,))], None
    if inner is not None and _is_number(inner):  # LHEPdfWeight (counted by nLHEPdfWeight), Jet_pt
        return [_Entry(field, (field,))], field.partition("_")[0] if "_" in field else field
    if inner is not None and isinstance(inner, ak.forms.RecordForm):
        return _members(inner, field, (field,), lists=False), field
    unwrapped = _unwrap(form)
    if isinstance(unwrapped, ak.forms.RecordForm):
        return _members(unwrapped, field, (field,), lists=True), None
    return [], None


def _catalogue(form: Any, name: str) -> tuple[dict[str, _Entry], dict[str, _Entry]]:
    """Every branch of an array of this form, and the counters of its collections.

    The first of two entries of the same branch name is kept.
    """
    entries: list[_Entry] = []
    collections: list[tuple[str, tuple[str, ...]]] = []
    top = _unwrap(form)
    inner = _list_content(top)
    if isinstance(top, ak.forms.RecordForm):
        own = top.parameters.get("collection_name")
        if own and own != "events" and top.parameters.get("__record__") != _EVENTS_RECORD:
            entries = _members(top, str(own), (), lists=True)  # one record per event: MET
        else:  # events, or an ak.zip of per-event things
            for field in top.fields:
                found, coll = _field_entries(field, top.content(field))
                entries += found
                if coll is not None:
                    collections.append((coll, (field,)))
    elif isinstance(inner, ak.forms.RecordForm):  # one collection: events.Muon
        prefix = str(inner.parameters.get("collection_name") or name)
        entries = _members(inner, prefix, (), lists=False)
        collections.append((prefix, ()))
    elif _is_number(top) or (inner is not None and _is_number(inner)):
        entries = [_Entry(name, ())]
    branches: dict[str, _Entry] = {}
    for entry in entries:
        branches.setdefault(entry.branch, entry)
    counters: dict[str, _Entry] = {}
    for coll, path in collections:
        counters.setdefault(f"n{coll}", _Entry(f"n{coll}", path, counts=True))
    for counter in counters:
        branches.pop(counter, None)  # coffea_smk's events hold nMuon beside Muon
    return branches, counters


def _describe(branches: dict[str, _Entry]) -> str:
    if len(branches) <= _LISTED_IN_FULL:
        return ", ".join(branches) or "(none)"
    groups: dict[str, int] = {}
    for branch in branches:
        prefix, sep, _ = branch.partition("_")
        key = f"{prefix}_*" if sep else branch
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(k if n == 1 else f"{k} ({n})" for k, n in groups.items())


def _select(
    columns: tuple[str, ...] | None, branches: dict[str, _Entry], counters: dict[str, _Entry]
) -> list[_Entry]:
    if columns is None:
        return list(branches.values())
    chosen: dict[str, _Entry] = {}
    for column in columns:
        if column in branches or column in counters:
            found = [branches.get(column) or counters[column]]
        elif _GLOB_CHARS & set(column):
            found = [e for b, e in branches.items() if fnmatch.fnmatchcase(b, column)]
        else:  # a collection or record name: all its branches
            found = [e for b, e in branches.items() if b.startswith(column + "_")]
        if not found:
            close = difflib.get_close_matches(column, [*branches, *counters], n=5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise SkimColumnError(
                f"skim column {column!r} matches no branch (a branch name, a collection name "
                f"or a glob){hint}; the branches are: {_describe(branches)}"
            )
        for entry in found:
            chosen.setdefault(entry.branch, entry)
    return list(chosen.values())


def _values(plain: ak.Array, entry: _Entry) -> ak.Array:
    out = plain
    for field in entry.path:
        out = out[field]
    if entry.counts:
        out = ak.num(out, axis=1)
    layout = ak.to_packed(ak.without_parameters(out, highlevel=False), highlevel=False)
    return ak.Array(ak.materialize(layout, highlevel=False))


def skim_branches(array: Any, columns: tuple[str, ...] | None, name: str) -> dict[str, ak.Array]:
    """The NanoAOD-flat branches of what a processor gave to :class:`~coffea_smk.Skim`.

    Args:
        array: Events (coffea_smk's or coffea's, lazy or eager), a selection of them, a
            collection, a per-event record, an ``ak.zip`` of such, or plain per-event
            numbers or lists of numbers.
        columns: Branch names (``Jet_pt``), collection names (``Muon``: all its branches),
            fnmatch globs on branch names (``Jet_*``), or None for every branch.
        name: The skim's name: the branch name of plain values, and the collection name
            of a collection whose parameters do not say it.

    Returns:
        Branch name -> materialized, packed array without parameters or behaviours, in the
        order of ``columns`` (the array's own order for None). Only these are read.

    Raises:
        SkimColumnError: A ``columns`` entry matches no branch.
        ValueError: ``array`` has no field that can be a branch.
    """
    layout = ak.to_layout(array, allow_record=False)
    branches, counters = _catalogue(layout.form, name)
    if not branches:
        raise ValueError(
            f"skim {name!r}: {ak.Array(layout).type} has no numbers or lists of numbers to write"
        )
    plain = ak.Array(layout)  # no behaviour: a coffea or vector method cannot get in the way
    return {entry.branch: _values(plain, entry) for entry in _select(columns, branches, counters)}


# ---- the branches' types, for the files -------------------------------------------------------
class SkimSchemaError(ValueError):
    """Branches that cannot be written together: pieces of different types, or not NanoAOD-shaped."""


@dataclass(frozen=True)
class BranchType:
    """A branch's type: numbers or lists of numbers, either level maybe missing (None)."""

    dtype: np.dtype[Any]
    jagged: bool
    option: bool = False
    inner_option: bool = False

    def __str__(self) -> str:
        inner = ("?" if self.inner_option else "") + str(self.dtype)
        return ("?" if self.option else "") + (f"var * {inner}" if self.jagged else inner)


def _branch_type(name: str, array: ak.Array) -> BranchType:
    form, option = _strip(array.layout.form)
    jagged = isinstance(form, _LISTS)
    inner, inner_option = _strip(form.content) if jagged else (form, False)
    if not isinstance(inner, ak.forms.NumpyForm) or inner.inner_shape:
        raise SkimSchemaError(f"branch {name!r} is {array.type}: not numbers or lists of numbers")
    dtype = np.dtype(ak.types.numpytype.primitive_to_dtype(inner.primitive))
    if dtype.kind not in "biuf":
        raise SkimSchemaError(f"branch {name!r} holds {dtype}: only booleans and numbers are written")
    return BranchType(dtype, jagged, option, inner_option)


def branch_types(branches: Mapping[str, ak.Array]) -> dict[str, BranchType]:
    """The type of each branch (as :func:`skim_branches` gives them)."""
    return {name: _branch_type(name, array) for name, array in branches.items()}


def row_count(branches: Mapping[str, ak.Array]) -> int:
    """The rows of the branches, which must all have as many."""
    lengths = {name: len(array) for name, array in branches.items()}
    if len(set(lengths.values())) > 1:
        raise SkimSchemaError(f"the branches have different numbers of rows: {lengths}")
    return next(iter(lengths.values()), 0)


def _widest(a: np.dtype[Any], b: np.dtype[Any]) -> np.dtype[Any] | None:
    if a == b:
        return a
    if a.kind == b.kind and a.kind in "iuf":  # int32 + int64, float32 + float64: no value changes
        return a if a.itemsize >= b.itemsize else b
    return None


def unify(name: str, a: BranchType, a_piece: str, b: BranchType, b_piece: str, root: bool) -> BranchType:
    """One type for branch ``name`` of two pieces (``root``: without missing values).

    Raises:
        SkimSchemaError: Naming the branch and both pieces.
    """
    dtype = _widest(a.dtype, b.dtype)
    option = a.option or b.option or a.inner_option or b.inner_option
    if dtype is None or a.jagged != b.jagged or (root and option):
        raise SkimSchemaError(
            f"branch {name!r} is {a} in {a_piece} but {b} in {b_piece}: these do not unify"
            + ("; ROOT has no missing values" if root and option else "")
        )
    return BranchType(dtype, a.jagged, a.option or b.option, a.inner_option or b.inner_option)


def arrow_type(field: Any) -> BranchType:
    """The type of a Parquet column (a ``pyarrow.Field``) as :func:`branch_types` gives it."""
    value, jagged, inner_option = field.type, False, False
    if pa.types.is_list(value) or pa.types.is_large_list(value):
        value, jagged, inner_option = value.value_type, True, value.value_field.nullable
    if not (pa.types.is_integer(value) or pa.types.is_floating(value) or pa.types.is_boolean(value)):
        raise SkimSchemaError(f"column {field.name!r} is {field.type}: not numbers or lists of numbers")
    return BranchType(np.dtype(value.to_pandas_dtype()), jagged, field.nullable, inner_option)


@dataclass(frozen=True)
class NanoAODLayout:
    """How branches sit in a NanoAOD tree: jagged ``X_y`` share the counter ``nX``."""

    flat: list[str]
    groups: dict[str, dict[str, str]]
    """Collection ``X`` (or a lone jagged branch) -> field ``y`` (``""`` for a lone one) -> branch."""
    implied: list[str]
    """Flat branches that are a collection's counter (``nMuon`` beside ``Muon_*``)."""
    order: list[str]
    """Flat branches and collections in the order the branches first name them."""


def nanoaod_layout(schema: Mapping[str, BranchType]) -> NanoAODLayout:
    """Group branches into NanoAOD collections (for a ROOT tree, which has no missing values).

    Raises:
        SkimSchemaError: A branch is optional, or names clash with a collection or its counter.
    """
    groups: dict[str, dict[str, str]] = {}
    flat: list[str] = []
    order: dict[str, None] = {}
    for branch, t in schema.items():
        if t.option or t.inner_option:
            raise SkimSchemaError(f"branch {branch!r} is {t}: ROOT has no missing values")
        prefix, _, field = branch.partition("_")
        key = branch if not (t.jagged and prefix and field) else prefix
        if not t.jagged:
            flat.append(branch)
        else:  # a lone jagged branch (LHEPdfWeight) is counted by its own nLHEPdfWeight
            groups.setdefault(key, {})[field if key == prefix else ""] = branch
        order.setdefault(key)
    implied = [b for b in flat if b[:1] == "n" and b[1:] in groups]
    flat = [b for b in flat if b not in implied]
    clash = set(flat) & (set(groups) | {f"n{g}" for g in groups})
    clash |= {key for key, members in groups.items() if "" in members and len(members) > 1}
    if clash:
        raise SkimSchemaError(f"branches {sorted(clash)} clash with a collection or its counter")
    return NanoAODLayout(flat, groups, implied, [k for k in order if k not in implied])
