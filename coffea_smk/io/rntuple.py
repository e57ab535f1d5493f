"""RNTuple inputs: identity, clusters and lazy field reads, in NanoAOD's flat naming.

An RNTuple (ROOT's successor of TTree) plays the part of a TTree: its clusters are the
clusters chunks are put on, its header and footer are its metadata. Two NanoAOD layouts
are read as the same flat branches (``run``, ``nMuon``, ``Muon_pt``):

* files converted by ROOT's RNTupleImporter: collections ``_collectionN`` of records whose
  fields keep the TTree's names (``Muon_pt``), plus projected fields (``nMuon``, an
  ``RVec`` per branch) that only alias those columns and are left out here;
* CMSSW's native output: collections of records (``Muon`` with ``pt``; read as ``Muon_pt``),
  records of scalars (``MET`` with ``pt``: ``MET_pt``) and no counters.

A collection's counter (``nMuon``) is made from its offsets, as ``uint32`` like the
TTree's (an RNTuple cardinality is ``int64``), so results do not depend on the format.

The field map is built from the header and footer records alone (uproot's ``keys()`` on a
wide RNTuple costs seconds: it is never called). Columns are read per cluster range with
uproot's page reader (``read_cluster_range``), only when asked, behind the interface of
the basket reader (:class:`coffea_smk.io.reader.BasketReader`): ``map``, ``read``,
``basket_bytes``, ``fallbacks``, ``warm``, ``forget``. A field this reader cannot prove it
reads exactly (a string, a nested collection, a field added inside a collection after the
first clusters) is left out of the map and listed in ``skipped`` with the reason.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from coffea_smk.io.allowlist import BranchMap, BranchType, Kind

__all__ = [
    "RNTUPLE_READER_VERSION",
    "FieldMap",
    "RNTupleError",
    "RNTupleInput",
    "RNTupleReader",
    "is_rntuple",
]

RNTUPLE_READER_VERSION = 1
"""Version of this reader's rules (part of every file's cache key)."""
CLASSNAME = "ROOT::RNTuple"
COUNTER_DTYPE = "<u4"
"""NanoAOD's TTree counters are ``UInt_t``: made counters have the same type."""

# ROOT type names of the numbers a leaf field may hold, as numpy dtypes
_NUMBERS = {
    "bool": "|b1",
    "char": "|i1",
    "std::byte": "|u1",
    "std::int8_t": "|i1",
    "std::uint8_t": "|u1",
    "std::int16_t": "<i2",
    "std::uint16_t": "<u2",
    "std::int32_t": "<i4",
    "std::uint32_t": "<u4",
    "std::int64_t": "<i8",
    "std::uint64_t": "<u8",
    "float": "<f4",
    "double": "<f8",
}
_LEAF, _COLLECTION, _RECORD = 0, 1, 2  # ROOT's field structural roles


class RNTupleError(OSError):
    """An RNTuple cannot be opened or read; the message names the file (and field)."""


def is_rntuple(rootfile: Any, treename: str) -> bool:
    """Whether ``treename`` in an open uproot file is an RNTuple (from its directory key: cheap)."""
    try:
        return bool(rootfile.classname_of(treename) == CLASSNAME)
    except Exception:  # no such key: the tree reader says so
        return False


@dataclass(frozen=True)
class _Source:
    """Where a flat branch's values are: a data column, and the offsets of its collection."""

    data: int | None
    """The column of values (None for a counter made from offsets)."""
    offsets: int | None
    """The offsets column of the collection holding it (None: one value per entry)."""


class RNTupleInput:
    """An open RNTuple of an open uproot file (a context manager that closes the file).

    ``file`` is uproot's file, so that ``opened.file.uuid`` identifies it as for a TTree.
    """

    def __init__(self, rootfile: Any, path: str, treename: str) -> None:
        self.path = path
        self.rootfile = rootfile
        self.file = rootfile.file
        try:
            self.ntuple = rootfile[treename]
            self.entries = int(self.ntuple.num_entries)
            starts = [int(c.num_first_entry) for c in self.ntuple.cluster_summaries]
        except Exception as err:
            raise RNTupleError(
                f"{path}: RNTuple {treename!r} cannot be read ({type(err).__name__}: {err}); "
                "the file may be damaged: replace it"
            ) from err
        self.object_path = str(self.ntuple.object_path)
        """What stands for the tree's path in coffea's buffer keys (``/Events;1``)."""
        self.boundaries = np.array([*starts, self.entries] if starts else [0], np.int64)
        """Cluster boundaries ``[0, ..., entries]`` (``[0]``: no cluster, no entry)."""
        self.anchor = f"{int(getattr(self.ntuple, '_anchor_checksum', 0) or 0):016x}"
        """The anchor's checksum (it covers the header's and footer's locators and lengths)."""

    def __enter__(self) -> RNTupleInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.rootfile.close()

    @property
    def clusters(self) -> tuple[int, ...]:
        """The cluster boundaries, as a record's ``clusters``."""
        return tuple(int(b) for b in self.boundaries) if self.entries else (0,)

    def cluster_range(self, start: int, stop: int) -> range:
        """The clusters holding entries ``[start, stop)``."""
        first = int(np.searchsorted(self.boundaries, start, side="right")) - 1
        last = int(np.searchsorted(self.boundaries, stop, side="left"))
        return range(max(first, 0), min(max(last, first + 1), len(self.boundaries) - 1))

    def read_column(self, column: int, clusters: range) -> np.ndarray:
        """A column's values in ``clusters`` (offsets: from 0 at the range's first entry).

        Raises:
            RNTupleError: Its pages cannot be read or decompressed (the file is damaged).
        """
        first_element = int(self.ntuple.column_records[column].first_element_index)
        padding = max(first_element - int(self.boundaries[clusters.start]), 0)
        try:
            return np.asarray(
                self.ntuple.read_cluster_range(
                    column, clusters.start, clusters.stop, missing_element_padding=padding, array_cache=None
                )
            )
        except OSError:
            raise
        except Exception as err:
            field = self.ntuple.field_records[self.ntuple.column_records[column].field_id].field_name
            raise RNTupleError(
                f"{self.path}: field {field} of clusters {clusters.start}-{clusters.stop - 1} cannot be "
                f"read ({type(err).__name__}: {err}); the file may be damaged: replace it"
            ) from err


class FieldMap:
    """The fields of an RNTuple as a basket map shows a tree's branches (a "basket" is a cluster)."""

    def __init__(self, rinput: RNTupleInput) -> None:
        nt = rinput.ntuple
        self.entries = rinput.entries
        self.uuid = str(rinput.file.uuid)
        self.title = str(getattr(nt, "description", "") or "")
        self.types: dict[str, BranchType] = {}
        self.titles: dict[str, str] = {}
        self.slow: dict[str, str] = {}
        """Kept empty: unreadable fields are left out (``skipped``), not read another way."""
        self.skipped: dict[str, str] = {}
        """Fields left out, and why."""
        self.sources: dict[str, _Source] = {}
        self._fields = nt.field_records
        self._columns: dict[int, list[int]] = {}
        for c in nt.column_records:  # physical columns only: projected fields have aliases
            if int(c.repr_idx) == 0:
                self._columns.setdefault(int(c.field_id), []).append(int(c.idx))
        self._first = {int(c.idx): int(c.first_element_index) for c in nt.column_records}
        self._children: dict[int, list[int]] = {}
        top = []
        for i, f in enumerate(self._fields):
            if int(f.parent_field_id) == i:
                top.append(i)
            else:
                self._children.setdefault(int(f.parent_field_id), []).append(i)
        for i in top:
            if self._has_columns(i):
                self._add_top(i)
        self._boundaries = rinput.boundaries
        self._ntuple = nt
        self._sizes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._built: dict[str, BranchMap] = {}

    def _has_columns(self, i: int) -> bool:
        return i in self._columns or any(self._has_columns(c) for c in self._children.get(i, []))

    def _leaf(self, i: int) -> tuple[int, str] | None:
        """The single column and dtype of a leaf field holding numbers, else None."""
        f = self._fields[i]
        dtype = _NUMBERS.get(str(f.type_name))
        columns = self._columns.get(i, [])
        if int(f.struct_role) != _LEAF or dtype is None or len(columns) != 1 or int(f.repetition):
            return None
        return columns[0], dtype

    def _add(self, name: str, i: int, offsets: int | None, counter: str = "") -> None:
        leaf = self._leaf(i)
        if leaf is None:
            self.skipped[name] = f"{self._fields[i].type_name or 'a record'} is not a number"
        elif offsets is not None and self._first[leaf[0]] > 0:
            self.skipped[name] = "added inside its collection after the first clusters"
        elif name not in self.sources:
            kind = Kind.FLAT if offsets is None else Kind.JAGGED
            self.types[name] = BranchType(kind, leaf[1], counter)
            self.titles[name] = str(self._fields[i].field_desc or "")
            self.sources[name] = _Source(leaf[0], offsets)

    def _add_counter(self, name: str, offsets: int) -> None:
        self.types[name] = BranchType(Kind.FLAT, COUNTER_DTYPE)
        self.titles[name] = ""
        self.sources[name] = _Source(None, offsets)

    def _add_top(self, i: int) -> None:
        f = self._fields[i]
        name, role = str(f.field_name), int(f.struct_role)
        children = [c for c in self._children.get(i, []) if self._has_columns(c)]
        if role == _LEAF:
            self._add(name, i, None)
        elif role == _RECORD:  # a record of scalars (native MET): MET_pt
            for c in children:
                self._add(f"{name}_{self._fields[c].field_name}", c, None)
        elif role == _COLLECTION and len(self._columns.get(i, [])) == 1 and len(children) == 1:
            offsets, item = self._columns[i][0], children[0]
            if int(self._fields[item].struct_role) == _RECORD:
                leaves = [c for c in self._children.get(item, []) if self._has_columns(c)]
                imported = name.startswith("_collection")
                names = [
                    str(self._fields[c].field_name) if imported else f"{name}_{self._fields[c].field_name}"
                    for c in leaves
                ]
                prefix = names[0].partition("_")[0] if imported and names else name
                counter = f"n{prefix}"
                self._add_counter(counter, offsets)
                for leaf, leaf_name in zip(leaves, names, strict=True):
                    self._add(leaf_name, leaf, offsets, counter)
            else:  # a vector of numbers: its own counter
                counter = f"n{name}"
                self._add_counter(counter, offsets)
                self._add(name, item, offsets, counter)
        else:
            self.skipped[name] = f"{f.type_name or 'a nested collection'} is not read"

    def branch(self, name: str) -> BranchMap:
        """The field's clusters as a branch's baskets (seek: the cluster's number)."""
        b = self._built.get(name)
        if b is None:
            clusters = len(self._boundaries) - 1
            compressed = np.zeros(clusters, np.int64)
            for c in self._columns_of(name):
                compressed += self._size(c)[0][:clusters]
            b = self._built[name] = BranchMap(
                name, self.types[name], np.arange(clusters, dtype=np.int64), compressed, self._boundaries
            )
        return b

    def _size(self, column: int) -> tuple[np.ndarray, np.ndarray]:
        """Compressed and uncompressed page bytes of a column per cluster, from the page lists
        (on first use: preprocessing needs none, a job those of the columns it reads)."""
        found = self._sizes.get(column)
        if found is None:
            found = self._sizes[column] = _column_size(self._ntuple, column, len(self._boundaries) - 1)
        return found

    def _columns_of(self, name: str) -> list[int]:
        s = self.sources[name]
        return [c for c in (s.data, s.offsets) if c is not None]

    def nbytes(self, name: str, clusters: range) -> tuple[int, int]:
        """Compressed and uncompressed bytes of the pages of ``name`` in ``clusters``."""
        compressed = uncompressed = 0
        for c in self._columns_of(name):
            sizes = self._size(c)
            compressed += int(sizes[0][clusters.start : clusters.stop].sum())
            uncompressed += int(sizes[1][clusters.start : clusters.stop].sum())
        return compressed, uncompressed

    def fields_hash(self) -> str:
        """A hash of the flat branches and their types (a record's ``branches_hash``)."""
        text = "\n".join(f"{n}:{t.kind.value}:{t.dtype}:{t.counter}" for n, t in sorted(self.types.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _column_size(ntuple: Any, column: int, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """A column's (compressed, uncompressed) page bytes per cluster, from the page lists."""
    import uproot  # noqa: PLC0415

    bits = uproot.const.rntuple_col_num_to_size_dict.get(int(ntuple.column_records[column].type), 64)
    links = ntuple.page_link_list
    compressed, uncompressed = np.zeros(clusters, np.int64), np.zeros(clusters, np.int64)
    for k in range(min(clusters, len(links))):
        if column < len(links[k]):
            for page in links[k][column].pages:
                compressed[k] += abs(int(page.locator.num_bytes))
                uncompressed[k] += (int(page.num_elements) * bits + 7) // 8
    return compressed, uncompressed


class RNTupleReader:
    """Reads entry ranges of an RNTuple's flat branches, with the basket reader's interface.

    Reads and keeps each column cluster by cluster: a chunk that ends inside a cluster leaves
    the rest of it for the next chunk, so no cluster is decompressed twice.
    """

    def __init__(self, rinput: RNTupleInput, fmap: FieldMap | None = None) -> None:
        self.input = rinput
        self.map = fmap or FieldMap(rinput)
        self.where = rinput.path
        self.slow: dict[str, str] = {}
        """Fields found unreadable while reading (none: kept for the basket reader's interface)."""
        self._kept: dict[tuple[int, int], np.ndarray] = {}
        self._reading: dict[tuple[int, int], threading.Lock] = {}
        self._lock = threading.Lock()

    def _cluster(self, column: int, cluster: int) -> np.ndarray:
        """A column's values in one cluster (offsets from 0), read once and kept (a prefetch
        thread asking for a cluster being read waits for that read)."""
        key = (column, cluster)
        with self._lock:
            values = self._kept.get(key)
            if values is not None:
                return values
            reading = self._reading.setdefault(key, threading.Lock())
        with reading:
            with self._lock:
                values = self._kept.get(key)
            if values is None:
                values = self.input.read_column(column, range(cluster, cluster + 1))
                with self._lock:
                    self._kept[key] = values
        with self._lock:
            self._reading.pop(key, None)
        return values

    def read(self, name: str, start: int, stop: int) -> tuple[np.ndarray, int, int]:
        """Values of ``name`` for entries ``[start, stop)`` (a jagged branch gives its flat
        content, a counter the list lengths), with the bytes of the clusters read."""
        t, source = self.map.types[name], self.map.sources[name]
        if stop <= start:
            return np.zeros(0, np.dtype(t.dtype)), 0, 0
        clusters = self.input.cluster_range(start, stop)
        bounds = self.input.boundaries
        pieces = []
        for k in clusters:
            first = int(bounds[k])
            lo, hi = max(start, first) - first, min(stop, int(bounds[k + 1])) - first
            if source.offsets is None:
                assert source.data is not None
                pieces.append(self._cluster(source.data, k)[lo:hi])
                continue
            offsets = self._cluster(source.offsets, k)
            if source.data is None:
                pieces.append(np.diff(offsets[lo : hi + 1]))
            else:
                pieces.append(self._cluster(source.data, k)[int(offsets[lo]) : int(offsets[hi])])
        values = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        compressed, uncompressed = self.map.nbytes(name, clusters)
        return np.asarray(values, dtype=np.dtype(t.dtype)), compressed, uncompressed

    def basket_bytes(self, name: str, start: int, stop: int) -> tuple[int, int]:
        """Compressed and uncompressed bytes of the pages of ``name`` that hold ``[start, stop)``."""
        return self.map.nbytes(name, self.input.cluster_range(start, stop))

    def fallbacks(self, start: int, stop: int) -> list[str]:
        """Fields read by another reader (none: unreadable fields are left out of the map)."""
        return []

    def warm(self, names: Iterable[str], start: int, stop: int) -> Callable[[], None] | None:
        """No batched request ahead (each column is read cluster range by cluster range)."""
        return None

    def forget(self, stop: int) -> None:
        """Drop the clusters kept that end at or before ``stop`` (a chunk is done)."""
        bounds = self.input.boundaries
        with self._lock:
            for key in [k for k in self._kept if int(bounds[k[1] + 1]) <= stop]:
                del self._kept[key]
