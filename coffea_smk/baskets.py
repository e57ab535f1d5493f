"""Reading NanoAOD branches straight from their baskets, with the basket map kept in the cache.

Decoding a NanoAOD tree's metadata with uproot (1500 branch objects) costs
0.4-0.9 s per file, more than reading the few columns an analysis touches.
Preprocessing decodes it once anyway; it then keeps, beside the file's JSON
record, a :class:`TreeMap`: for every branch its type, its counter and where
its baskets are (seek, size, first entry). A processing job loads that map
(milliseconds), checks the file's UUID, and reads the baskets it needs with
plain positioned reads: the tree metadata is never decoded again.

The fast path never guesses. It reads only what is on its allow-list, decided
when the map is built:

- a plain ``TBranch`` (no sub-branches) with exactly one leaf of class
  ``TLeafO``, ``TLeafB``, ``TLeafS``, ``TLeafI``, ``TLeafL``, ``TLeafF`` or
  ``TLeafD`` (signed or unsigned), one value per entry (``fLen`` 1, ``fLenType``
  its size, ``fOffset`` 0): a *flat* branch;
- the same with a counter leaf (``Muon_pt[nMuon]``): a *jagged* branch, when
  its counter is a flat integer branch of that name that is itself on the fast
  path;
- whose name no other branch of the tree has, whose baskets are all
  free-standing records in this file (none kept inside the tree), and whose
  basket table covers exactly the tree's entries.

Each basket is then checked as it is read (:mod:`coffea_smk._basket`). Any
other branch, and any branch whose basket turns out not to be in a proven
layout, is read by uproot: logged at INFO with the reason, and counted in the
chunk's metrics (``fallback_branches``). A damaged basket (a checksum that does
not match, a block that does not decompress) is an error, never a fallback.

A map records the :data:`READER_VERSION` that built it; a map of another
version is treated as missing, so a fix to the reader is never undone by a map
built before it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coffea_smk import _basket
from coffea_smk._atomic import write_with
from coffea_smk._basket import Unproven
from coffea_smk._ttree import Leaf

log = logging.getLogger("coffea_smk.baskets")

MAP_VERSION = 3
"""Version of the map's file format."""
READER_VERSION = 2
"""Version of the reader's rules: bump it whenever what the fast path accepts changes.

1: the reader before version tagging (trusted branches it must not: issue 10).
2: the allow-list, basket invariants, offsets rebuilt from the counter, LZ4 checksums.
"""
FLAT, JAGGED, OTHER = "flat", "jagged", "other"


class BasketMapError(RuntimeError):
    """A basket map cannot be used for this file (missing, damaged, or for another file)."""


class BasketReadError(OSError):
    """A basket cannot be read or decompressed; the message names file, branch and basket."""


@dataclass(frozen=True)
class BranchMap:
    """One branch: its type and where its baskets are."""

    name: str
    kind: str
    """``flat`` (one value per entry), ``jagged`` (a list per entry) or ``other`` (read by uproot)."""
    dtype: str
    """The stored (big-endian) numpy dtype of a value, e.g. ``>f4``."""
    counter: str
    """For ``jagged``: the branch holding the list lengths (``nMuon``)."""
    seek: np.ndarray
    nbytes: np.ndarray
    entries: np.ndarray
    """First entry of each basket, then the number of entries: ``len(seek) + 1`` values."""
    readable: bool = True
    """On the fast path (see the module's allow-list); else read by uproot."""


class TreeMap:
    """The branches of one tree and where their baskets are.

    Loaded maps build a branch's basket arrays on first use: a job touches a
    few of a NanoAOD file's 1500 branches.
    """

    def __init__(
        self,
        entries: int,
        kinds: dict[str, tuple[str, str, str, bool]],
        uuid: str = "",
        baskets: Callable[[str], BranchMap] | None = None,
        slow: dict[str, str] | None = None,
    ) -> None:
        self.entries = entries
        self.kinds = kinds
        """Branch name -> (kind, stored dtype, counter, readable), in the tree's order."""
        self.uuid = uuid
        self.slow: dict[str, str] = dict(slow or {})
        """Branch name -> why it is not on the fast path (the branches uproot reads)."""
        self._built: dict[str, BranchMap] = {}
        self._baskets = baskets

    def branch(self, name: str) -> BranchMap:
        b = self._built.get(name)
        if b is None:
            if self._baskets is None:
                raise KeyError(name)
            b = self._built[name] = self._baskets(name)
        return b

    # ---- building ---------------------------------------------------------------------
    @classmethod
    def from_tree(cls, tree: Any, uuid: str = "", *, by_uproot: bool = False) -> TreeMap:
        """The map of an uproot ``TTree`` (whose metadata is already decoded).

        A branch on the allow-list takes its type from its leaf (all of
        NanoAOD: 10x cheaper than uproot's interpretation); any other branch,
        or every branch with ``by_uproot``, from uproot's interpretation. With
        ``by_uproot``, a branch whose leaf and interpretation disagree is taken
        off the fast path.
        """
        rows = []
        for branch in tree.branches:
            models = branch.member("fLeaves")
            leaves = [_leaf_of(x) for x in models]
            allowed = _allowed(branch.classname, len(branch.member("fBranches")), leaves)
            if isinstance(allowed, str):
                kind, reason = _from_uproot(branch), allowed
            elif by_uproot:
                kind = _from_uproot(branch)
                reason = "" if kind == allowed else f"uproot reads it as {kind}, its leaf as {allowed}"
            else:
                kind, reason = allowed, ""
            rows.append(
                _Row(
                    branch.name,
                    kind,
                    reason,
                    len(branch.embedded_baskets),
                    branch.member("fWriteBasket"),
                    branch.member("fBasketSeek"),
                    branch.member("fBasketBytes"),
                    branch.member("fBasketEntry"),
                    int(branch.num_entries),
                    leaf=models[0] if len(models) == 1 else None,
                    count=models[0].member("fLeafCount") if len(models) == 1 else None,
                )
            )
        return cls._assemble(int(tree.num_entries), rows, uuid)

    @classmethod
    def read(cls, rootfile: Any, path: str, treename: str, uuid: str = "") -> TreeMap:
        """The map of ``treename`` in an open uproot file, read by :mod:`coffea_smk._ttree`
        (no uproot tree model; about 10x faster) or, for trees it does not handle, by uproot.

        Raises:
            InputFileError: No such tree, not a TTree, or it cannot be read.
        """
        from coffea_smk._ttree import Unsupported, read_tree
        from coffea_smk.preprocess import tree_of

        try:
            tree = read_tree(rootfile, treename)
        except Exception as err:  # unsupported layout, or missing/not a tree/damaged: uproot says which
            reason = err if isinstance(err, Unsupported) else f"{type(err).__name__}: {err}"
            log.debug("%s: %s; decoding %s with uproot", path, reason, treename)
            return cls.from_tree(tree_of(rootfile, path, treename), uuid)
        rows = []
        for b in tree.branches:
            allowed = _allowed(b.classname, len(b.branches), b.leaves)
            if isinstance(allowed, str):  # not NanoAOD-like: uproot's interpretations give the types
                return cls.from_tree(tree_of(rootfile, path, treename), uuid)
            rows.append(
                _Row(
                    b.name,
                    allowed,
                    "",
                    b.embedded,
                    b.write_basket,
                    b.basket_seek,
                    b.basket_bytes,
                    b.basket_entry,
                    b.entries,
                    b.filename,
                    b.leaves[0],
                    b.leaves[0].count,
                )
            )
        return cls._assemble(tree.entries, rows, uuid)

    @classmethod
    def _assemble(cls, entries: int, rows: list[_Row], uuid: str) -> TreeMap:
        """The map of a tree's branches; the tree-wide rules of the allow-list applied here."""
        count: dict[str, int] = {}
        for row in rows:
            count[row.name] = count.get(row.name, 0) + 1
        built: dict[str, BranchMap] = {}
        first: dict[str, _Row] = {}
        slow: dict[str, str] = {}
        for row in rows:
            if row.name in built:
                continue  # uproot, like ROOT, gives the first branch of a name
            first[row.name] = row
            reason = row.reason
            if not reason and count[row.name] > 1:
                reason = f"{count[row.name]} branches of the tree are named {row.name!r}"
            built[row.name], reason = _branch_map(row, entries, reason)
            if reason:
                slow[row.name] = reason
        for name, b in built.items():
            if b.kind != JAGGED or not b.readable:
                continue
            c = built.get(b.counter)
            if c is None or c.kind != FLAT or not c.readable or np.dtype(c.dtype).kind not in "iu":
                why = slow.get(b.counter, "not a branch of one integer per entry")
                slow[name] = f"its counter {b.counter!r} is not on the fast path ({why})"
                built[name] = _slow(b)
            elif first[b.counter].leaf is not first[name].count:
                slow[name] = f"its counter leaf is not the leaf of branch {b.counter!r}"
                built[name] = _slow(b)
        out = cls(entries, {n: (b.kind, b.dtype, b.counter, b.readable) for n, b in built.items()}, uuid)
        out._built = built
        out.slow = slow
        return out

    def clusters(self) -> list[int]:
        """Entries where every branch starts a basket (chunks cut there decompress whole baskets)."""
        common: set[int] | None = None
        for name, (_, _, _, readable) in self.kinds.items():
            entries = self.branch(name).entries
            if readable and len(entries):
                common = set(entries.tolist()) if common is None else common & set(entries.tolist())
        return sorted(common) if common and len(common) > 1 else [0, self.entries]

    def branches_hash(self) -> str:
        from coffea_smk._hashing import key_of

        return key_of(sorted((n, k[0], k[1], k[2]) for n, k in self.kinds.items()))

    # ---- storing ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], key: str) -> None:
        """Write the map (an npz, atomically), tagged with the file's cache ``key`` and
        the :data:`READER_VERSION` that built it.

        Positions are stored as differences (small numbers that compress well)
        and deflated at level 1: a few times faster to write than
        ``numpy.savez_compressed`` for a few % more bytes.
        """
        bs = [self.branch(name) for name in self.kinds]
        header = {
            "version": MAP_VERSION,
            "reader": READER_VERSION,
            "key": key,
            "uuid": self.uuid,
            "entries": self.entries,
            "branches": [[b.name, b.kind, b.dtype, b.counter, b.readable] for b in bs],
            "slow": self.slow,
        }
        empty = np.zeros(0, dtype=np.int64)
        arrays = {
            "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            "counts": np.array([len(b.seek) for b in bs], dtype=np.int64),
            "seek": np.diff(np.concatenate([empty, *[b.seek for b in bs]]), prepend=0),
            "nbytes": np.concatenate([empty, *[b.nbytes for b in bs]]).astype(np.int32),
            "entries": np.diff(
                np.concatenate([empty, *[b.entries[:-1] for b in bs if len(b.entries)]]), prepend=0
            ),
            "ends": np.array([b.entries[-1] if len(b.entries) else 0 for b in bs], dtype=np.int64),
        }
        write_with(path, lambda handle: _write_npz(handle, arrays))

    @classmethod
    def load(cls, path: str | os.PathLike[str], key: str, uuid: str) -> TreeMap:
        """Read a map written by :meth:`save`.

        Raises:
            BasketMapError: Missing, damaged, of another format or reader version,
                or not of this file.
        """
        try:
            with np.load(io.BytesIO(Path(path).read_bytes()), allow_pickle=False) as npz:
                header = json.loads(npz["header"].tobytes())
                counts, nbytes = npz["counts"], npz["nbytes"]
                seek, first = np.cumsum(npz["seek"]), np.cumsum(npz["entries"])
                ends = npz["ends"]
            names = [b[0] for b in header["branches"]]
            kinds = {b[0]: (b[1], b[2], b[3], bool(b[4])) for b in header["branches"]}
            entries = int(header["entries"])
            if len(counts) != len(names) or counts.sum() != len(seek):
                raise ValueError("inconsistent basket counts")
        except FileNotFoundError:
            raise BasketMapError(f"no basket map at {path}") from None
        except Exception as err:
            raise BasketMapError(f"damaged basket map {path}: {type(err).__name__}: {err}") from None
        if header.get("version") != MAP_VERSION or header.get("reader") != READER_VERSION:
            raise BasketMapError(
                f"basket map {path} was built by another reader (format {header.get('version')}, "
                f"reader {header.get('reader')}; this is format {MAP_VERSION}, reader {READER_VERSION})"
            )
        if header.get("key") != key or header.get("uuid") != uuid:
            raise BasketMapError(f"basket map {path} is not for this file")
        bounds = np.concatenate([[0], np.cumsum(counts)])
        index = {name: i for i, name in enumerate(names)}

        def baskets(name: str) -> BranchMap:
            i = index[name]
            a, b = int(bounds[i]), int(bounds[i + 1])
            kind, dtype, counter, readable = kinds[name]
            starts = np.append(first[a:b], ends[i]) if b > a else first[:0]
            return BranchMap(
                name, kind, dtype, counter, seek[a:b], nbytes[a:b].astype(np.int64), starts, readable
            )

        return cls(entries, kinds, header["uuid"], baskets, header.get("slow"))


# ---- the allow-list ---------------------------------------------------------------------
_LEAF_TYPES = {
    "TLeafO": "?",
    "TLeafB": "i1",
    "TLeafS": "i2",
    "TLeafI": "i4",
    "TLeafL": "i8",
    "TLeafF": "f4",
    "TLeafD": "f8",
}
"""Leaf classes of one numeric value, and their numpy type (``u`` when ``fIsUnsigned``)."""
_COUNTER_LEAVES = ("TLeafB", "TLeafS", "TLeafI", "TLeafL")


@dataclass(frozen=True)
class _Row:
    """One branch as the tree describes it, before the tree-wide rules."""

    name: str
    kind: tuple[str, str, str]
    reason: str
    """Why it is not on the fast path ("" if it may be)."""
    embedded: int
    write_basket: int
    seek: Any
    nbytes: Any
    entry: Any
    num_entries: int
    filename: str = ""
    leaf: Any = None
    """The leaf object (its identity tells a counter branch)."""
    count: Any = None
    """The leaf object its ``fLeafCount`` points at."""


def _leaf_of(leaf: Any) -> Leaf:
    """An uproot ``TLeaf`` model as :mod:`coffea_smk._ttree` reads it."""
    count = leaf.member("fLeafCount")
    return Leaf(
        leaf.classname,
        leaf.member("fName"),
        int(leaf.member("fLen")),
        bool(leaf.member("fIsUnsigned")),
        None if count is None else _leaf_of(count),
        int(leaf.member("fLenType")),
        int(leaf.member("fOffset")),
    )


def _leaf_dtype(leaf: Leaf) -> np.dtype[Any] | None:
    code = _LEAF_TYPES.get(leaf.classname)
    if code is None:
        return None
    if leaf.unsigned and code[0] == "i":
        code = "u" + code[1:]
    return np.dtype(np.bool_) if code == "?" else np.dtype(">" + code)


def _allowed(classname: str, nsub: int, leaves: list[Leaf]) -> tuple[str, str, str] | str:
    """Kind, stored dtype and counter of a branch on the allow-list; else why it is not on it."""
    if classname != "TBranch":
        return f"a {classname}"
    if nsub:
        return "a branch with sub-branches"
    if len(leaves) != 1:
        return f"a branch of {len(leaves)} leaves"
    leaf = leaves[0]
    dtype = _leaf_dtype(leaf)
    if dtype is None:
        return f"a {leaf.classname} leaf"
    if leaf.length != 1:
        return f"a fixed-size array of {leaf.length} per entry"
    if leaf.len_type != dtype.itemsize or leaf.offset != 0:
        return f"a leaf of fLenType {leaf.len_type} and fOffset {leaf.offset} for {dtype}"
    count = leaf.count
    if count is None:
        return FLAT, dtype.str, ""
    if count.classname not in _COUNTER_LEAVES or count.length != 1 or count.count is not None:
        return f"a {count.classname} counter"
    return JAGGED, dtype.str, count.name


def _branch_map(row: _Row, tree_entries: int, reason: str) -> tuple[BranchMap, str]:
    """A branch's map from its basket table (as uproot counts its free baskets), and
    why it is not on the fast path ("" if it is)."""
    seek = np.asarray(row.seek, dtype=np.int64)
    n = 0
    while n < len(seek) and seek[n] != 0 and n != row.write_basket:
        n += 1
    entries = np.asarray(row.entry, dtype=np.int64)[: n + 1]
    if reason:
        pass
    elif row.num_entries == 0 and tree_entries == 0:
        entries = np.zeros(1, dtype=np.int64)  # nothing to read (an empty basket may be kept inside)
        n = 0
    elif row.embedded or n == 0:
        reason = "baskets kept inside the tree"
    elif row.filename:
        reason = f"baskets in another file ({row.filename})"
    elif (
        len(entries) != n + 1
        or entries[0] != 0
        or (np.diff(entries) < 0).any()
        or entries[-1] != row.num_entries
    ):
        reason = "a basket table that does not cover its entries"
    elif row.num_entries != tree_entries:
        reason = f"{row.num_entries} entries in a tree of {tree_entries}"
    out = BranchMap(row.name, *row.kind, seek[:n], np.asarray(row.nbytes, dtype=np.int64)[:n], entries)
    return (_slow(out) if reason else out), reason


def _slow(b: BranchMap) -> BranchMap:
    empty = np.zeros(0, dtype=np.int64)
    return dataclasses.replace(b, seek=empty, nbytes=empty, entries=empty, readable=False)


def _from_uproot(branch: Any) -> tuple[str, str, str]:
    """Kind, stored dtype and counter from uproot's interpretation of the branch."""
    import uproot

    try:
        interp = branch.interpretation
    except Exception:  # an unknown class: uproot says so when it is read
        return OTHER, "", ""
    if isinstance(interp, uproot.AsDtype) and interp.from_dtype.shape == ():
        return FLAT, interp.from_dtype.str, ""
    if (
        isinstance(interp, uproot.AsJagged)
        and isinstance(interp.content, uproot.AsDtype)
        and interp.content.from_dtype.shape == ()
        and interp.header_bytes == 0
        and branch.count_branch is not None
    ):
        return JAGGED, interp.content.from_dtype.str, branch.count_branch.name
    return OTHER, "", ""


def _write_npz(handle: Any, arrays: dict[str, np.ndarray]) -> None:
    """``numpy.savez_compressed`` with deflate level 1."""
    import zipfile

    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def map_path(record_path: str | os.PathLike[str]) -> Path:
    """Where the basket map of a preprocessing record is kept."""
    p = Path(record_path)
    return p.with_name(p.name.removesuffix(".json") + ".baskets.npz")


# ---- reading ----------------------------------------------------------------------------
Fetch = Callable[[int, int], Any]
"""``fetch(offset, size)``: ``size`` bytes of the file from ``offset``."""


def local_fetch(path: str) -> tuple[Fetch, Callable[[], None]]:
    """Positioned reads of a local file (thread-safe) and a function that closes it."""
    fd = os.open(path, os.O_RDONLY)

    def fetch(offset: int, size: int) -> bytes:
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise BasketReadError(f"{path}: short read at byte {offset} ({len(data)} of {size} bytes)")
        return data

    return fetch, lambda: os.close(fd)


FetchMany = Callable[[list[tuple[int, int]]], list[Any]]
"""``fetch_many([(start, stop), ...])``: those byte ranges of the file, in one request."""


def source_fetch_many(rootfile: Any) -> FetchMany:
    """Vector reads through an open uproot file's source: one round trip for many baskets."""
    import queue

    source = getattr(rootfile, "source", None) or rootfile.file.source

    def fetch_many(ranges: list[tuple[int, int]]) -> list[Any]:
        try:
            return [chunk.raw_data for chunk in source.chunks(ranges, notifications=queue.Queue())]
        except TypeError:
            # uproot's fsspec source hands a failed request on as data (fsspec's
            # on_error="return", uproot5#1450) and slicing it raises TypeError: the storage's own
            # error (a reset, a timeout), which the error policy needs, is lost. One by
            # one, the ranges raise it (or are read, when the storage is back).
            return [source.chunk(start, stop).raw_data for start, stop in ranges]

    return fetch_many


def source_fetch(rootfile: Any) -> Fetch:
    """Reads through an open uproot file's source (``root://``, ``https://``, ...).

    ``rootfile`` is what :func:`uproot.open` returns, or its ``.file``.
    """
    source = getattr(rootfile, "source", None) or rootfile.file.source

    def fetch(offset: int, size: int) -> Any:
        return source.chunk(offset, offset + size).raw_data

    return fetch


Fallback = Callable[[str, int, int], np.ndarray]
"""``fallback(branch, start, stop)``: read a branch the map cannot (e.g. by uproot)."""


def uproot_fallback(tree_getter: Callable[[], Any]) -> Fallback:
    """Reads through uproot's tree, decoded by ``tree_getter`` on first use."""
    trees: list[Any] = []

    def read(name: str, start: int, stop: int) -> np.ndarray:
        if not trees:
            trees.append(tree_getter())
        array = trees[0][name].array(entry_start=start, entry_stop=stop, library="ak", array_cache=None)
        layout = array.layout
        if hasattr(layout, "offsets"):
            offsets = np.asarray(layout.offsets)
            return np.asarray(layout.content.data[offsets[0] : offsets[-1]])
        return np.asarray(layout.data)

    return read


class BasketReader:
    """Reads entry ranges of mapped branches; keeps the last basket of each branch for the next range.

    A branch off the fast path, or one whose basket is not in a proven layout,
    is read by ``fallback`` (uproot): logged once at INFO with the reason, and
    listed by :meth:`fallbacks` for the entry ranges it was read for.
    """

    def __init__(
        self,
        tmap: TreeMap,
        fetch: Fetch,
        where: str,
        fallback: Fallback | None = None,
        fetch_many: FetchMany | None = None,
    ) -> None:
        self.map = tmap
        self.fetch = fetch
        self.fetch_many = fetch_many
        self.where = where
        self.fallback = fallback
        # the last basket read of each branch: a chunk that ends inside a basket
        # leaves the rest of it for the next chunk
        self._last: dict[str, tuple[int, np.ndarray, np.ndarray | None]] = {}
        self._objlen: dict[tuple[str, int], int] = {}
        self.slow: dict[str, str] = {}
        """Branches found off the fast path while reading, and why (beside the map's own)."""
        self._fell_back: dict[tuple[int, int], set[str]] = {}
        self._lock = threading.Lock()

    def baskets(self, name: str, start: int, stop: int) -> range:
        """Indices of the baskets of ``name`` that hold entries of ``[start, stop)``."""
        entries = self.map.branch(name).entries
        first = int(np.searchsorted(entries, start, side="right")) - 1
        last = int(np.searchsorted(entries, stop, side="left"))
        return range(max(first, 0), min(last, len(entries) - 1))

    def basket_bytes(self, name: str, start: int, stop: int) -> tuple[int, int]:
        """Compressed and uncompressed bytes of the baskets that hold ``[start, stop)``
        (a basket not read yet counts its compressed size as uncompressed)."""
        b = self.map.branch(name)
        compressed = uncompressed = 0
        for i in self.baskets(name, start, stop):
            n = int(b.nbytes[i])
            compressed += n
            uncompressed += self._objlen.get((name, i), n)
        return compressed, uncompressed

    def fallbacks(self, start: int, stop: int) -> list[str]:
        """Branches read by the fallback (uproot) for the entry range ``[start, stop)``."""
        with self._lock:
            return sorted(self._fell_back.get((start, stop), ()))

    def read(self, name: str, start: int, stop: int) -> tuple[np.ndarray, int, int]:
        """Values of ``name`` for entries ``[start, stop)`` (native byte order; a jagged
        branch gives its flat content), with the compressed and uncompressed bytes read."""
        b = self.map.branch(name)
        reason = self.slow.get(name)
        if reason is None and (b.kind == OTHER or not b.readable):
            reason = self.map.slow.get(name, "not on the fast path")
        if reason is None:
            try:
                return self._read_baskets(b, start, stop)
            except Unproven as err:
                reason = self.slow[name] = str(err)
        return self._read_fallback(b, start, stop, reason)

    def _read_fallback(self, b: BranchMap, start: int, stop: int, reason: str) -> tuple[np.ndarray, int, int]:
        if self.fallback is None:
            raise BasketMapError(f"{self.where}: branch {b.name} cannot be read from its baskets: {reason}")
        with self._lock:
            first = not any(b.name in names for names in self._fell_back.values())
            self._fell_back.setdefault((start, stop), set()).add(b.name)
        if first:
            log.info("%s: branch %s is read by uproot: %s", self.where, b.name, reason)
        values = self.fallback(b.name, start, stop)
        return values.astype(np.dtype(b.dtype).newbyteorder("="), copy=False), 0, 0

    def _read_baskets(self, b: BranchMap, start: int, stop: int) -> tuple[np.ndarray, int, int]:
        stored = np.dtype(b.dtype)
        pieces, comp, uncomp = [], 0, 0
        indices = self.baskets(b.name, start, stop)
        fetched = self._prefetch_raw(b, indices)
        for i in indices:
            e0, e1 = int(b.entries[i]), int(b.entries[i + 1])
            data, offsets, c, u = self._basket(b, i, stored, fetched.get(i))
            comp, uncomp = comp + c, uncomp + u
            lo, hi = max(start, e0) - e0, min(stop, e1) - e0
            if lo >= hi:
                continue
            if b.kind == FLAT:
                pieces.append(data[lo:hi])
            else:
                assert offsets is not None
                pieces.append(data[offsets[lo] : offsets[hi]])
        out = np.empty(sum(len(p) for p in pieces), dtype=stored.newbyteorder("="))
        pos = 0
        for p in pieces:
            out[pos : pos + len(p)] = p
            pos += len(p)
        if b.kind == FLAT:
            end = int(b.entries[-1]) if len(b.entries) else 0
            expected = max(0, min(stop, end) - max(start, 0))
            if len(out) != expected:
                raise Unproven(f"{len(out)} values read for {expected} entries")
        return out, comp, uncomp

    def _prefetch_raw(self, b: BranchMap, indices: range) -> dict[int, Any]:
        """With a batching source (remote files), the compressed baskets in one request."""
        cached = self._last.get(b.name)
        todo = [i for i in indices if cached is None or cached[0] != i]
        if self.fetch_many is None or len(todo) < 2:
            return {}
        ranges = [(int(b.seek[i]), int(b.seek[i]) + int(b.nbytes[i])) for i in todo]
        try:
            return dict(zip(todo, self.fetch_many(ranges), strict=True))
        except Exception as err:
            raise BasketReadError(
                f"{self.where}: branch {b.name}, baskets {todo[0]}-{todo[-1]} cannot be read: "
                f"{type(err).__name__}: {err}"
            ) from err

    def _basket(
        self, b: BranchMap, i: int, stored: np.dtype[Any], fetched: Any = None
    ) -> tuple[np.ndarray, np.ndarray | None, int, int]:
        """Values and item offsets (jagged) of basket ``i``, and its compressed and
        uncompressed bytes (0, 0 when it is the one kept from the last read).

        Raises:
            Unproven: The basket is not in a layout proven here.
            BasketReadError: It cannot be read, or its bytes are damaged.
        """
        cached = self._last.get(b.name)
        if cached is not None and cached[0] == i:
            return cached[1], cached[2], 0, 0
        seek, nbytes = int(b.seek[i]), int(b.nbytes[i])
        e0, e1 = int(b.entries[i]), int(b.entries[i + 1])
        where = f"{self.where}: branch {b.name}, basket {i} (bytes {seek}-{seek + nbytes})"
        try:
            raw = memoryview(fetched if fetched is not None else self.fetch(seek, nbytes)).cast("B")
            header = _basket.read_header(raw, b.name, seek, nbytes, e1 - e0)
            content = _basket.payload(raw, header)
            data, offsets = _basket.entry_data(content, header, stored, b.kind == JAGGED)
        except (Unproven, BasketReadError):
            raise
        except Exception as err:
            raise BasketReadError(f"{where}: cannot be read: {type(err).__name__}: {err}") from err
        if b.kind == JAGGED and offsets is None:
            # written with kGenerateOffsetMap: the counter says where each entry starts
            counts, _, _ = self.read(b.counter, e0, e1)
            offsets = _basket.offsets_from_counts(counts, header, stored.itemsize)
        self._last[b.name] = (i, data, offsets)
        self._objlen[b.name, i] = header.keylen + header.objlen  # as uproot counts a basket
        return data, offsets, nbytes, header.objlen
