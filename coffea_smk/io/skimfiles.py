"""Skim files: a work unit's piece, and a dataset's pieces compacted into files near a target size.

The branches (from :func:`coffea_smk.io.skimtable.skim_branches`) are written in one of
two layouts, chosen by ``SkimSettings.format``:

* **parquet** (pyarrow): one column per branch, a jagged branch as a list column
  (``Muon_pt``), no counters; option types kept; row groups of ``row_group_rows``.
* **root** (uproot): a TTree ``Events`` in NanoAOD's layout, readable by coffea's
  ``NanoEventsFactory`` with ``NanoAODSchema`` unchanged: the jagged branches of one
  prefix (``Muon_*``) share one counter ``nMuon``, a jagged branch without a prefix
  (``LHEPdfWeight``) has its own (``nLHEPdfWeight``). ROOT has no missing values: an
  option-typed branch is written only if it holds none. One ``extend`` (a basket of
  every branch) per ``row_group_rows``.

Every file is written under a temporary name beside its target and renamed over it when
complete (``.part-0000.root.tmp-*``), so a reader never sees a half-written one.
:func:`compact` first reads every piece's schema and unifies it (int32 + int64 -> int64,
float32 + float64 -> float64, option wins, a missing Parquet branch becomes nulls), so a
:class:`SkimSchemaError` comes before any output is complete; it then streams the pieces
row group by row group, holding about one row group in memory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import uproot

from coffea_smk.io.skimtable import BranchType as _Type
from coffea_smk.io.skimtable import (
    SkimSchemaError,
    arrow_type,
    branch_types,
    nanoaod_layout,
    row_count,
    unify,
)
from coffea_smk.spec.skims import SkimSettings
from coffea_smk.util.atomic import atomic_path

__all__ = ["SkimFile", "SkimSchemaError", "compact", "read_branches", "write_piece"]

_PARQUET_CODECS = {"zstd": ("zstd", 22), "lz4": ("lz4", 12), "zlib": ("gzip", 9)}
_ROOT_CODECS = {"zstd": (uproot.ZSTD, 5, 22), "lz4": (uproot.LZ4, 4, 12), "zlib": (uproot.ZLIB, 1, 9)}


@dataclass(frozen=True)
class SkimFile:
    """A complete skim file."""

    path: str
    rows: int
    bytes: int
    """Its size on disk."""


# ---- writers ----------------------------------------------------------------------------------
class _ParquetWriter:
    """A table's blocks are pyarrow tables in the file's schema (nulls where a piece lacks a branch)."""

    def __init__(self, path: str, schema: dict[str, _Type], settings: SkimSettings) -> None:
        self.types = schema
        fields = []
        for name, t in schema.items():
            value = pa.from_numpy_dtype(t.dtype)
            if t.jagged:
                value = pa.large_list(pa.field("item", value, nullable=t.inner_option))
            fields.append(pa.field(name, value, nullable=t.option))
        self.schema = pa.schema(fields)
        codec, top = _PARQUET_CODECS[settings.compression]
        level = None if settings.compression_level is None else min(settings.compression_level, top)
        self.rows = 0
        self.writer = pq.ParquetWriter(path, self.schema, compression=codec, compression_level=level)

    def prepare(self, branches: Mapping[str, ak.Array], rows: int) -> Any:
        columns = []
        for field in self.schema:
            array = branches.get(field.name)
            if array is None:  # a piece without this branch (the field is nullable)
                columns.append(pa.nulls(rows, field.type))
                continue
            if not isinstance(array, pa.Array):
                array = ak.to_arrow(
                    ak.values_astype(array, self.types[field.name].dtype), extensionarray=False
                )
            columns.append(array.cast(field.type))
        return pa.Table.from_arrays(columns, schema=self.schema)

    @staticmethod
    def slice(block: Any, start: int, stop: int) -> Any:
        return block.slice(start, stop - start)

    @staticmethod
    def concat(blocks: list[Any]) -> Any:
        return pa.concat_tables(blocks)

    def write(self, block: Any, rows: int) -> None:
        self.writer.write_table(block, row_group_size=max(rows, 1))
        self.rows += rows

    def close(self) -> None:
        if not self.rows:  # one empty row group: readers (ak.from_parquet) expect at least one
            self.writer.write_table(self.schema.empty_table())
        self.writer.close()


def _root_codec(settings: SkimSettings) -> Any:
    codec, default, top = _ROOT_CODECS[settings.compression]
    return codec(default if settings.compression_level is None else min(settings.compression_level, top))


def _root_primitive(dtype: np.dtype[Any]) -> Any:
    return ak.types.NumpyType(ak.types.numpytype.dtype_to_primitive(dtype))


class _RootTree:
    """A TTree in NanoAOD's layout: the jagged branches of a prefix share its counter.

    Blocks are dicts of branch -> awkward array in the tree's types.
    """

    def __init__(self, file: Any, name: str, schema: dict[str, _Type]) -> None:
        self.types = schema
        layout = nanoaod_layout(schema)
        self.flat, self.groups, self.implied = layout.flat, layout.groups, layout.implied
        types: dict[str, Any] = {}
        for key in layout.order:
            members = self.groups.get(key)
            if members is None:
                types[key] = schema[key].dtype
                continue
            contents = [_root_primitive(schema[b].dtype) for b in members.values()]
            one = "" in members  # LHEPdfWeight: a list of its own
            types[key] = ak.types.ListType(
                contents[0] if one else ak.types.RecordType(contents, list(members))
            )
        self.tree = file.mktree(name, types)
        self.rows = 0

    def prepare(self, branches: Mapping[str, ak.Array], rows: int) -> Any:
        out = {}
        for branch, t in self.types.items():
            array = branches.get(branch)
            if array is None:
                raise SkimSchemaError(f"branch {branch!r} is missing: ROOT has no missing values")
            if isinstance(array, pa.Array):  # a Parquet piece
                array = ak.from_arrow(array)
            if t.jagged:
                array = ak.from_regular(array, axis=1)
            out[branch] = ak.values_astype(array, t.dtype)
        return out

    @staticmethod
    def slice(block: Any, start: int, stop: int) -> Any:
        return {name: array[start:stop] for name, array in block.items()}

    @staticmethod
    def concat(blocks: list[Any]) -> Any:
        return {name: ak.concatenate([b[name] for b in blocks]) for name in blocks[0]}

    def write(self, block: Any, rows: int) -> None:
        data: dict[str, Any] = {b: ak.to_numpy(block[b]) for b in self.flat}
        counts: dict[str, np.ndarray] = {}
        for key, members in self.groups.items():
            arrays = {field: block[branch] for field, branch in members.items()}
            (first_field, first), *others = members.items()
            counts[key] = ak.to_numpy(ak.num(arrays[first_field], axis=1))
            for field, other in others:
                if not np.array_equal(ak.to_numpy(ak.num(arrays[field], axis=1)), counts[key]):
                    raise SkimSchemaError(
                        f"jagged branches {first!r} and {other!r} differ in their lengths: in NanoAOD's "
                        f"layout the branches {key}_* share one counter n{key} (rename one)"
                    )
            data[key] = arrays[""] if "" in arrays else ak.zip(arrays)
        for counter in self.implied:
            if not np.array_equal(ak.to_numpy(block[counter]), counts[counter[1:]]):
                raise SkimSchemaError(f"branch {counter!r} is not the counter of the {counter[1:]} lists")
        if rows:
            self.tree.extend(data)
        self.rows += rows


def _as_arrays(branches: Mapping[str, Any]) -> dict[str, ak.Array]:
    out = {}
    for name, values in branches.items():
        ragged = isinstance(values, np.ndarray) and values.dtype == object  # one array per row
        out[name] = ak.from_iter(list(values)) if ragged else ak.Array(values)
    return out


class _Output:
    """One skim file written under a temporary name: its Events tree or table (and a Runs tree)."""

    def __init__(self, path: str, schema: dict[str, _Type], settings: SkimSettings, runs: Any) -> None:
        self.path = path
        self._stack = contextlib.ExitStack()
        try:
            tmp = self._stack.enter_context(atomic_path(path))
            self.writer: _ParquetWriter | _RootTree
            if settings.format == "parquet":
                self.writer = _ParquetWriter(tmp, schema, settings)
                self._stack.callback(self.writer.close)
            else:
                file = self._stack.enter_context(uproot.recreate(tmp, compression=_root_codec(settings)))
                self.writer = _RootTree(file, "Events", schema)
                if runs:
                    arrays = _as_arrays(runs)
                    tree = _RootTree(file, "Runs", branch_types(arrays))
                    n = row_count(arrays)
                    tree.write(tree.prepare(arrays, n), n)
        except BaseException as err:
            self.abort(err)
            raise

    def close(self) -> SkimFile:
        self._stack.close()
        return SkimFile(self.path, self.writer.rows, os.path.getsize(self.path))

    def abort(self, error: BaseException) -> None:
        """Remove the temporary file (the target is left as it was)."""
        self._stack.__exit__(type(error), error, error.__traceback__)


def write_piece(path: str, branches: dict[str, ak.Array], settings: SkimSettings) -> SkimFile:
    """Write one skim piece atomically, in ``settings.format`` (zero rows are fine).

    Raises:
        SkimSchemaError: The branches differ in length, hold something else than numbers or
            lists of numbers, or (ROOT) hold missing values or cannot share NanoAOD counters.
    """
    rows = row_count(branches)
    output = _Output(path, branch_types(branches), settings, None)
    try:
        writer = output.writer
        block = writer.prepare(branches, rows)
        for start in range(0, rows, settings.row_group_rows):
            stop = min(start + settings.row_group_rows, rows)
            writer.write(writer.slice(block, start, stop), stop - start)
    except BaseException as err:
        output.abort(err)
        raise
    return output.close()


# ---- readers ----------------------------------------------------------------------------------
def _is_root(path: str) -> bool:
    return path.endswith(".root")


def _root_branches(tree: Any) -> dict[str, _Type]:
    """The branches of a tree written by :func:`write_piece`, without the counters."""
    counters = {b.count_leaf.member("fName") for b in tree.branches if b.count_leaf is not None}
    out = {}
    for branch in tree.branches:
        if branch.name in counters:
            continue
        interp = branch.interpretation
        jagged = isinstance(interp, uproot.AsJagged)
        dtype = (interp.content if jagged else interp).to_dtype
        out[branch.name] = _Type(np.dtype(dtype).newbyteorder("="), jagged)
    return out


def _piece_schema(path: str) -> tuple[int, dict[str, _Type]]:
    if _is_root(path):
        with uproot.open(path) as file:
            tree = file["Events"]
            return int(tree.num_entries), _root_branches(tree)
    parquet = pq.ParquetFile(path)
    return parquet.metadata.num_rows, {f.name: arrow_type(f) for f in parquet.schema_arrow}


def _iter_piece(path: str, step: int) -> Iterator[tuple[dict[str, ak.Array], int]]:
    if _is_root(path):
        with uproot.open(path) as file:
            tree = file["Events"]
            names = list(_root_branches(tree))
            for chunk in tree.iterate(names, step_size=step, library="ak"):
                yield {name: chunk[name] for name in names}, len(chunk)
        return
    for batch in pq.ParquetFile(path).iter_batches(batch_size=step):  # kept in arrow: cast, not converted
        yield dict(zip(batch.schema.names, batch.columns, strict=True)), batch.num_rows


def read_branches(path: str) -> dict[str, ak.Array]:
    """Every branch of a skim file (without ROOT's counters), whole: for tests and small reads."""
    if _is_root(path):
        with uproot.open(path) as file:
            tree = file["Events"]
            arrays = tree.arrays(list(_root_branches(tree)), library="ak")
    else:
        arrays = ak.from_parquet(path)
    return {name: ak.without_parameters(arrays[name]) for name in arrays.fields}


# ---- compaction -------------------------------------------------------------------------------
def _unified(pieces: Sequence[str], root: bool) -> tuple[list[int], dict[str, _Type]]:
    """Each piece's rows, and one schema for all (branches in order of first appearance)."""
    rows: list[int] = []
    schema: dict[str, _Type] = {}
    seen: dict[str, str] = {}  # branch -> the first piece that has it
    for i, piece in enumerate(pieces):
        n, types = _piece_schema(piece)
        rows.append(n)
        missing = [(name, seen[name], piece) for name in schema if name not in types]
        missing += [(name, piece, pieces[0]) for name in types if i and name not in schema]
        if missing and root:
            name, has, lacks = missing[0]
            raise SkimSchemaError(
                f"branch {name!r} is in {has} but not in {lacks}: ROOT has no missing values"
            )
        for name, t in types.items():
            if name in schema:
                schema[name] = unify(name, schema[name], seen[name], t, piece, root)
            else:
                schema[name], seen[name] = t, piece
        for name, _, _ in missing:  # Parquet: nulls where a piece lacks the branch
            t = schema[name]
            schema[name] = _Type(t.dtype, t.jagged, True, t.inner_option)
    return rows, schema


class _RowGroups:
    """Blocks of rows in input order, handed on ``size`` rows at a time."""

    def __init__(self, writer: _ParquetWriter | _RootTree, size: int) -> None:
        self.writer = writer
        self.size = size
        self.blocks: list[tuple[Any, int]] = []
        self.rows = 0

    def add(self, block: Any, rows: int) -> None:
        if rows:
            self.blocks.append((block, rows))
            self.rows += rows
        while self.rows >= self.size:
            self._write(self.size)

    def flush(self) -> None:
        while self.rows:
            self._write(min(self.size, self.rows))

    def _write(self, n: int) -> None:
        taken, need = [], n
        while need:
            block, rows = self.blocks.pop(0)
            if rows > need:  # the rest stays first in line
                self.blocks.insert(0, (self.writer.slice(block, need, rows), rows - need))
                block, rows = self.writer.slice(block, 0, need), need
            taken.append(block)
            need -= rows
        self.rows -= n
        self.writer.write(taken[0] if len(taken) == 1 else self.writer.concat(taken), n)


def compact(
    pieces: Sequence[str],
    out_dir: str,
    settings: SkimSettings,
    *,
    runs: Mapping[str, Any] | None = None,
) -> list[SkimFile]:
    """Merge skim pieces, in order, into ``part-0000<suffix>``, ... of about ``target_size_mb``.

    A part is closed when the pieces written to it reach the target size (their sizes on
    disk count: the parts have the pieces' settings); a piece is never split, and rows keep
    the pieces' order. At most about one row group is held in memory.

    Args:
        pieces: The piece files (``.root`` read as ROOT, others as Parquet), in row order.
        out_dir: Where the parts are written (created if missing).
        settings: Format, compression, target size and row group size of the parts.
        runs: The ``Runs`` tree's branches, for the first ROOT part (ignored for Parquet).

    Returns:
        The parts in order: one of zero rows if every piece is empty, none without pieces.

    Raises:
        SkimSchemaError: The pieces' branches do not unify (raised before any part is written).
    """
    root = settings.format == "root"
    rows, schema = _unified(pieces, root)
    target = settings.target_size_mb * 1024 * 1024
    done: list[SkimFile] = []
    output: _Output | None = None
    groups: _RowGroups | None = None
    filled = 0
    try:
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            if output is None and (rows[i] or (last and not done)):
                name = os.path.join(out_dir, f"part-{len(done):04d}{settings.suffix}")
                output = _Output(name, schema, settings, runs if root and not done else None)
                groups = _RowGroups(output.writer, settings.row_group_rows)
            if output is None or groups is None:
                continue  # an empty piece after a closed part: nothing to write
            if rows[i]:
                for chunk, n in _iter_piece(piece, settings.row_group_rows):
                    groups.add(output.writer.prepare(chunk, n), n)
            filled += os.path.getsize(piece) if rows[i] else 0  # an empty piece adds no rows
            if filled >= target or last:
                groups.flush()
                done.append(output.close())
                output, groups, filled = None, None, 0
    except BaseException as err:
        if output is not None:
            output.abort(err)
        for part in done:  # no half output: parts without their successors are removed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part.path)
        raise
    return done
