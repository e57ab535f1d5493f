"""Parquet files as analysis inputs: identity, row groups and lazy column reads.

A Parquet input holds NanoAOD-flat columns, as coffea_smk's own skims write them:
one value per row (``run``, ``MET_pt``) or an Arrow list per row (``Muon_pt``),
with or without the counters (``nMuon``) of NanoAOD. It plays the part of a
TTree: its row groups are the clusters (chunks are put on their boundaries), its
footer is its metadata, and a hash of the footer stands for the ROOT UUID (a file
rewritten with the same size and mtime has another footer).

:class:`ParquetReader` reads a column for an entry range from the row groups that
hold it (``ParquetFile.read_row_groups(..., columns=[name])``), one column at a
time, only when asked, with the interface of the basket reader
(:class:`coffea_smk.io.reader.BasketReader`): ``map`` (a :class:`ColumnMap`),
``read``, ``basket_bytes``, ``fallbacks``, ``warm``, ``forget``, so that the events
built over a TTree (coffea_smk's and coffea's) are built over it unchanged. A
collection without a counter column gets one made from the list lengths of one of
its columns (the smallest).

pyarrow is imported only when a Parquet file is opened.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

import numpy as np

from coffea_smk.io.allowlist import BranchMap, BranchType, Kind

__all__ = [
    "PARQUET_READER_VERSION",
    "ColumnMap",
    "ParquetError",
    "ParquetInput",
    "ParquetReader",
    "has_parquet_suffix",
    "is_parquet",
    "open_parquet",
]

PARQUET_READER_VERSION = 1
"""Version of this reader's rules (part of a Parquet file's cache key)."""
MAGIC = b"PAR1"
SUFFIXES = (".parquet", ".parq")


class ParquetError(OSError):
    """A Parquet input cannot be opened or read; the message names the file (and column)."""

    def __init__(self, message: str, *, transient: bool | None = False) -> None:
        super().__init__(message)
        self.transient = transient
        """Whether trying again may help (a damaged file: no; an I/O error: the chain says)."""


def has_parquet_suffix(path: str) -> bool:
    """Whether ``path`` is named as a Parquet file (``.parquet``, ``.parq``)."""
    return path.split("?", 1)[0].lower().endswith(SUFFIXES)


def _local(path: str) -> str | None:
    if path.startswith("file://"):
        return path[len("file://") :]
    return None if "://" in path else path


def is_parquet(path: str) -> bool:
    """Whether ``path`` is a Parquet file: by its suffix, or (a local file) by its ``PAR1`` magic."""
    if has_parquet_suffix(path):
        return True
    local = _local(path)
    if local is None:
        return False
    try:
        with open(local, "rb") as handle:
            return handle.read(4) == MAGIC
    except OSError:
        return False  # the ROOT opener says what is wrong with it


def _footer(handle: BinaryIO, path: str) -> bytes:
    """The footer's bytes (its Thrift metadata), after checking both magics.

    Raises:
        ParquetError: The file is too short, or a magic is missing (truncated, or no Parquet).
    """
    size = handle.seek(0, os.SEEK_END)
    if size < 12:
        raise ParquetError(f"{path}: {size} bytes, too short for a Parquet file")
    handle.seek(0)
    head = handle.read(4)
    handle.seek(size - 8)
    tail = handle.read(8)
    if head != MAGIC or tail[4:] != MAGIC:
        where = "at its start" if head != MAGIC else "at its end (a truncated file?)"
        raise ParquetError(f"{path}: no Parquet magic PAR1 {where}")
    length = int.from_bytes(tail[:4], "little")
    if length <= 0 or length > size - 12:
        raise ParquetError(f"{path}: footer of {length} bytes in a file of {size}")
    handle.seek(size - 8 - length)
    return handle.read(length)


class ParquetInput:
    """An open Parquet file (a context manager): identity, row groups, columns.

    ``file`` is the object itself, so that ``opened.file.uuid`` identifies it as for a
    ROOT file opened by uproot.
    """

    object_path = "/parquet"
    """What stands for the tree's path in coffea's buffer keys."""

    def __init__(self, path: str, handle: BinaryIO, pqfile: Any, footer: bytes) -> None:
        self.path = path
        self.file = self
        self._handle = handle
        self.pqfile = pqfile
        """The :class:`pyarrow.parquet.ParquetFile`."""
        self.uuid = hashlib.sha256(footer).hexdigest()[:32]
        """The footer's hash: the file's content identity (checked by processing jobs)."""
        meta = pqfile.metadata
        self.entries = int(meta.num_rows)
        rows = [int(meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
        self.boundaries = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]).astype(np.int64)
        """Row group boundaries ``[0, ..., entries]``."""
        self.schema = pqfile.schema_arrow
        self._lock = threading.Lock()

    def __enter__(self) -> ParquetInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    @property
    def clusters(self) -> tuple[int, ...]:
        """The row group boundaries, as a record's ``clusters``."""
        return tuple(int(b) for b in self.boundaries) if self.entries else (0,)

    def schema_hash(self) -> str:
        """A hash of the column names and types (a record's ``branches_hash``)."""
        text = "\n".join(f"{f.name}:{f.type}" for f in self.schema)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def row_groups(self, start: int, stop: int) -> range:
        """The row groups holding entries ``[start, stop)``."""
        first = int(np.searchsorted(self.boundaries, start, side="right")) - 1
        last = int(np.searchsorted(self.boundaries, stop, side="left"))
        return range(max(first, 0), min(max(last, first + 1), len(self.boundaries) - 1))

    def read(self, column: str, groups: range) -> Any:
        """The column's values in row groups ``groups``, as one Arrow array.

        Raises:
            ParquetError: The row groups cannot be read or decoded (the file is damaged).
        """
        try:
            with self._lock:  # one ParquetFile: reads of prefetch threads one after another
                table = self.pqfile.read_row_groups(list(groups), columns=[column], use_threads=False)
            return table.column(0).combine_chunks()
        except OSError as err:
            raise ParquetError(
                f"{self.path}: column {column} of row groups {groups.start}-{groups.stop - 1} cannot be "
                f"read ({type(err).__name__}: {err})",
                transient=None,
            ) from err
        except Exception as err:
            raise ParquetError(
                f"{self.path}: column {column} of row groups {groups.start}-{groups.stop - 1} cannot be "
                f"decoded ({type(err).__name__}: {err}); the file may be damaged: replace it"
            ) from err


def open_parquet(path: str) -> ParquetInput:
    """Open a Parquet file and read its footer (cheap: no column is read).

    Raises:
        ParquetError: Not a Parquet file, truncated, or its footer does not decode.
    """
    import pyarrow.parquet as pq  # noqa: PLC0415  only when a Parquet file is opened

    local = _local(path)
    if local is not None:
        handle: BinaryIO = open(local, "rb")  # closed with the ParquetInput
    else:
        import fsspec  # noqa: PLC0415  remote files: an extra (files.missing_backend names it)

        handle = fsspec.open(path, "rb").open()
    try:
        footer = _footer(handle, path)
        handle.seek(0)
        pqfile = pq.ParquetFile(handle)
        return ParquetInput(path, handle, pqfile, footer)
    except ParquetError:
        handle.close()
        raise
    except Exception as err:
        handle.close()
        if isinstance(err, OSError) and err.errno is not None:
            raise
        raise ParquetError(f"{path}: its footer does not decode ({type(err).__name__}: {err})") from err


def _storage(arrow_type: Any) -> Any:
    """The storage type of an extension type (awkward's), else the type itself."""
    import pyarrow as pa  # noqa: PLC0415

    return arrow_type.storage_type if isinstance(arrow_type, pa.ExtensionType) else arrow_type


def _numeric(arrow_type: Any) -> str | None:
    """The numpy dtype of a number or boolean type, else None."""
    import pyarrow as pa  # noqa: PLC0415

    t = _storage(arrow_type)
    if pa.types.is_boolean(t):
        return "|b1"
    if pa.types.is_integer(t) or pa.types.is_float32(t) or pa.types.is_float64(t):
        return str(np.dtype(t.to_pandas_dtype()).str)
    return None


def _branch_type(name: str, arrow_type: Any, flat: dict[str, str]) -> BranchType:
    import pyarrow as pa  # noqa: PLC0415

    t = _storage(arrow_type)
    dtype = _numeric(t)
    if dtype is not None:
        return BranchType(Kind.FLAT, dtype)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _numeric(t.value_type)
        counter = f"n{name.partition('_')[0]}"
        if inner is not None and (counter not in flat or flat[counter][1] in "iu"):
            return BranchType(Kind.JAGGED, inner, counter)
    return BranchType(Kind.OTHER, readable=False)


class ColumnMap:
    """The columns of a Parquet file as a basket map shows a tree's branches.

    ``types`` lists every column (lists as jagged branches with their counter ``nX``)
    and the counters made from list lengths; a column's "baskets" are its row groups.
    """

    def __init__(self, pinput: ParquetInput) -> None:
        self.entries = pinput.entries
        self.uuid = pinput.uuid
        self.title = ""
        meta = pinput.pqfile.metadata
        fields = list(pinput.schema)
        flat = {f.name: d for f in fields if (d := _numeric(f.type)) is not None}
        self.types: dict[str, BranchType] = {f.name: _branch_type(f.name, f.type, flat) for f in fields}
        self.slow: dict[str, str] = {
            n: "not a number or a list of numbers" for n, t in self.types.items() if t.kind == Kind.OTHER
        }
        # coffea takes a branch's title for its __doc__: a column's "title" metadata, if any
        self.titles = {f.name: (f.metadata or {}).get(b"title", b"").decode() for f in fields}
        compressed = np.zeros((max(meta.num_row_groups, 1), len(fields)), np.int64)
        uncompressed = np.zeros_like(compressed)
        index = {f.name: i for i, f in enumerate(fields)}  # a list column's leaf is "X_y.list.element"
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                chunk = group.column(c)
                i = index[chunk.path_in_schema.split(".", 1)[0]]
                compressed[g, i] += chunk.total_compressed_size
                uncompressed[g, i] += chunk.total_uncompressed_size
        self._sizes = {f.name: (compressed[:, i], uncompressed[:, i]) for i, f in enumerate(fields)}
        self.made: dict[str, str] = {}
        """Counters made from list lengths: counter -> the list column it reads."""
        for name, t in list(self.types.items()):
            if t.kind == Kind.JAGGED and t.counter not in self.types:
                best = self.made.get(t.counter)
                if best is None or self._sizes[name][0].sum() < self._sizes[best][0].sum():
                    self.made[t.counter] = name
        for counter, source in self.made.items():
            self.types[counter] = BranchType(Kind.FLAT, "<u4")
            self.titles[counter] = ""
            self._sizes[counter] = self._sizes[source]
        self._boundaries = pinput.boundaries
        self._built: dict[str, BranchMap] = {}

    def branch(self, name: str) -> BranchMap:
        """The column's row groups as a branch's baskets (seek: the row group's number)."""
        b = self._built.get(name)
        if b is None:
            groups = len(self._boundaries) - 1
            nbytes = self._sizes[name][0][:groups]
            b = self._built[name] = BranchMap(
                name, self.types[name], np.arange(groups, dtype=np.int64), nbytes, self._boundaries
            )
        return b

    def nbytes(self, name: str, groups: range) -> tuple[int, int]:
        compressed, uncompressed = self._sizes[name]
        return int(compressed[groups.start : groups.stop].sum()), int(
            uncompressed[groups.start : groups.stop].sum()
        )


class ParquetReader:
    """Reads entry ranges of a Parquet file's columns, with the basket reader's interface.

    Keeps the last row groups read of each column: a chunk that ends inside a row group
    leaves the rest of it for the next chunk.
    """

    def __init__(self, pinput: ParquetInput) -> None:
        self.input = pinput
        self.map = ColumnMap(pinput)
        self.where = pinput.path
        self.slow: dict[str, str] = {}
        """Columns found unreadable while reading (none: kept for the basket reader's interface)."""
        self._last: dict[str, tuple[range, Any]] = {}
        self._lock = threading.Lock()

    def _column(self, name: str, start: int, stop: int) -> Any:
        """The Arrow array of column ``name`` for entries ``[start, stop)``."""
        groups = self.input.row_groups(start, stop)
        with self._lock:
            last = self._last.get(name)
        if last is None or not (last[0].start <= groups.start and groups.stop <= last[0].stop):
            last = (groups, self.input.read(name, groups))
            with self._lock:
                self._last[name] = last
        offset = start - int(self.input.boundaries[last[0].start])
        array = last[1].slice(offset, stop - start)
        if getattr(array, "storage", None) is not None:  # awkward's extension array
            array = array.storage
        if array.null_count:
            raise ParquetError(f"{self.where}: column {name} has missing values in entries {start}-{stop}")
        return array

    def read(self, name: str, start: int, stop: int) -> tuple[np.ndarray, int, int]:
        """Values of ``name`` for entries ``[start, stop)`` (a list column gives its flat
        content, a made counter the list lengths), with the bytes of the row groups read."""
        import pyarrow.compute as pc  # noqa: PLC0415

        t = self.map.types[name]
        if t.kind == Kind.OTHER:
            raise ParquetError(f"{self.where}: column {name} is {self.map.slow[name]}: it cannot be read")
        source = self.map.made.get(name, name)
        array = self._column(source, start, stop)
        if name in self.map.made:
            values = pc.list_value_length(array).to_numpy(zero_copy_only=False).astype(np.uint32)
        elif t.kind == Kind.JAGGED:
            content = array.flatten()
            if content.null_count:
                raise ParquetError(
                    f"{self.where}: column {name} has missing values in entries {start}-{stop}"
                )
            values = content.to_numpy(zero_copy_only=False)
        else:
            values = array.to_numpy(zero_copy_only=False)
        compressed, uncompressed = self.map.nbytes(source, self.input.row_groups(start, stop))
        return np.asarray(values, dtype=np.dtype(t.dtype)), compressed, uncompressed

    def basket_bytes(self, name: str, start: int, stop: int) -> tuple[int, int]:
        """Compressed and uncompressed bytes of the row groups of ``name`` that hold ``[start, stop)``."""
        return self.map.nbytes(self.map.made.get(name, name), self.input.row_groups(start, stop))

    def fallbacks(self, start: int, stop: int) -> list[str]:
        """Columns read by another reader (none: kept for the basket reader's interface)."""
        return []

    def warm(self, names: Iterable[str], start: int, stop: int) -> Callable[[], None] | None:
        """No batched request ahead (each column is one read of its row groups)."""
        return None

    def forget(self, stop: int) -> None:
        """Drop the row groups kept that end at or before ``stop`` (a chunk is done)."""
        with self._lock:
            for name, (groups, _) in list(self._last.items()):
                if int(self.input.boundaries[groups.stop]) <= stop:
                    del self._last[name]
