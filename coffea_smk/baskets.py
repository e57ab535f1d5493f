"""Reading NanoAOD branches straight from their baskets, with the basket map kept in the cache.

Decoding a NanoAOD tree's metadata with uproot (1500 branch objects) costs
0.4-0.9 s per file, more than reading the few columns an analysis touches.
Preprocessing decodes it once anyway; it then keeps, beside the file's JSON
record, a :class:`TreeMap`: for every branch its type, its counter and where
its baskets are (seek, size, first entry). A processing job loads that map
(milliseconds), checks the file's UUID, and reads the baskets it needs with
plain positioned reads: the tree metadata is never decoded again.

Only the branch shapes of NanoAOD are read this way: scalars of one numeric
type per entry, and jagged lists of one numeric type with a counter branch
(``Muon_pt[nMuon]``). Any other branch, a basket kept inside the tree
(``embedded``) or a map that cannot be used falls back to uproot.

ZLIB baskets are inflated with ``isal`` (Intel ISA-L, about twice as fast as
``zlib``) when it is installed; LZMA with the standard library; LZ4 and ZSTD
with ``cramjam`` (an uproot dependency).
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coffea_smk._atomic import write_with

log = logging.getLogger("coffea_smk.baskets")

MAP_VERSION = 2
FLAT, JAGGED, OTHER = "flat", "jagged", "other"

try:  # pragma: no cover - which one depends on the environment
    from isal.isal_zlib import decompress as _inflate
except ImportError:  # pragma: no cover
    _inflate = zlib.decompress

_KEY = struct.Struct(">ihiIhh")  # fNbytes, version, fObjlen, fDatime, fKeylen, fCycle
_BASKET = struct.Struct(">Hiiii")  # fVersion, fBufferSize, fNevBufSize, fNevBuf, fLast
_BLOCK = struct.Struct("<2sB3s3s")  # algorithm, method, compressed size, uncompressed size


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
    """All baskets are free-standing (none kept inside the tree): read here, else by uproot."""


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
    ) -> None:
        self.entries = entries
        self.kinds = kinds
        """Branch name -> (kind, stored dtype, counter, readable), in the tree's order."""
        self.uuid = uuid
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

        A branch's type is read from its leaf when it is a plain ``TBranch``
        with one numeric leaf (all of NanoAOD: 10x cheaper than uproot's
        interpretation); anything else, or every branch with ``by_uproot``,
        asks uproot.
        """
        built: dict[str, BranchMap] = {}
        for name, branch in tree.items(recursive=False):
            kind, dtype, counter = (None if by_uproot else _from_leaf(branch)) or _from_uproot(branch)
            embedded = len(branch.embedded_baskets)
            built[name] = _branch_map(
                name,
                (kind, dtype, counter),
                embedded,
                branch.member("fWriteBasket"),
                branch.member("fBasketSeek"),
                branch.member("fBasketBytes"),
                branch.member("fBasketEntry"),
                int(branch.num_entries),
            )
        return cls._of(int(tree.num_entries), built, uuid)

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
        built: dict[str, BranchMap] = {}
        for b in tree.branches:
            kind = _kind_of(b.classname, b.branches, b.leaves, lambda x: x.classname, _leaf_fields)
            if kind is None:  # not NanoAOD-like: uproot's interpretations decide
                return cls.from_tree(tree_of(rootfile, path, treename), uuid)
            built[b.name] = _branch_map(
                b.name,
                kind,
                b.embedded,
                b.write_basket,
                b.basket_seek,
                b.basket_bytes,
                b.basket_entry,
                b.entries,
            )
        return cls._of(tree.entries, built, uuid)

    @classmethod
    def _of(cls, entries: int, built: dict[str, BranchMap], uuid: str) -> TreeMap:
        out = cls(entries, {n: (b.kind, b.dtype, b.counter, b.readable) for n, b in built.items()}, uuid)
        out._built = built
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
        """Write the map (an npz, atomically), tagged with the file's cache ``key``.

        Positions are stored as differences (small numbers that compress well)
        and deflated at level 1: a few times faster to write than
        ``numpy.savez_compressed`` for a few % more bytes.
        """
        bs = [self.branch(name) for name in self.kinds]
        header = {
            "version": MAP_VERSION,
            "key": key,
            "uuid": self.uuid,
            "entries": self.entries,
            "branches": [[b.name, b.kind, b.dtype, b.counter, b.readable] for b in bs],
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
            BasketMapError: Missing, damaged, of another version, or not of this file.
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
        if header.get("version") != MAP_VERSION or header.get("key") != key or header.get("uuid") != uuid:
            raise BasketMapError(f"basket map {path} is not for this file (or of another version)")
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

        return cls(entries, kinds, header["uuid"], baskets)


_LEAF_TYPES = {"TLeafF": "f4", "TLeafD": "f8", "TLeafI": "i4", "TLeafL": "i8", "TLeafS": "i2", "TLeafB": "i1"}


def _from_leaf(branch: Any) -> tuple[str, str, str] | None:
    """Kind, stored dtype and counter of a plain one-leaf numeric uproot branch, or None."""
    return _kind_of(
        branch.classname,
        branch.member("fBranches"),
        branch.member("fLeaves"),
        lambda x: x.classname,
        lambda x: (x.member("fName"), x.member("fLen"), x.member("fIsUnsigned"), x.member("fLeafCount")),
    )


def _leaf_fields(leaf: Any) -> tuple[str, int, bool, Any]:
    return leaf.name, leaf.length, leaf.unsigned, leaf.count


def _kind_of(
    classname: str,
    subbranches: Any,
    leaves: Any,
    class_of: Callable[[Any], str],
    fields: Callable[[Any], tuple[str, int, bool, Any]],
) -> tuple[str, str, str] | None:
    """Kind, stored dtype and counter of a plain ``TBranch`` with one numeric leaf, or None."""
    if classname != "TBranch" or len(subbranches) or len(leaves) != 1:
        return None
    leaf = leaves[0]
    _, length, unsigned, count = fields(leaf)
    leafclass = class_of(leaf)
    if leafclass == "TLeafO":
        dtype = np.dtype(np.bool_).str
    elif leafclass in _LEAF_TYPES:
        code = _LEAF_TYPES[leafclass]
        dtype = np.dtype(">" + ("u" + code[1:] if unsigned else code)).str
    else:
        return None
    if length != 1:
        return None
    if count is None:
        return FLAT, dtype, ""
    if class_of(count) not in _LEAF_TYPES or fields(count)[3] is not None:
        return None
    return JAGGED, dtype, fields(count)[0]


def _branch_map(
    name: str,
    kind: tuple[str, str, str],
    embedded: int,
    write_basket: int,
    seek: Any,
    nbytes: Any,
    entry: Any,
    num_entries: int,
) -> BranchMap:
    """A branch's map from its streamed members (as uproot counts its free baskets)."""
    seek = np.asarray(seek, dtype=np.int64)
    n = 0
    while n < len(seek) and seek[n] != 0 and n != write_basket:
        n += 1
    entries = np.asarray(entry, dtype=np.int64)[: n + 1]
    readable = embedded == 0 and len(entries) == n + 1 and (n == 0 or int(entries[-1]) == num_entries)
    if n == 0 and num_entries > 0:
        readable = False
    if not readable:
        entries = np.zeros(0, dtype=np.int64)
        n = 0
    return BranchMap(name, *kind, seek[:n], np.asarray(nbytes, dtype=np.int64)[:n], entries, readable)


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
    """Reads entry ranges of mapped branches; keeps the last basket of each branch for the next range."""

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

    def read(self, name: str, start: int, stop: int) -> tuple[np.ndarray, int, int]:
        """Values of ``name`` for entries ``[start, stop)`` (native byte order; a jagged
        branch gives its flat content), with the compressed and uncompressed bytes read."""
        b = self.map.branch(name)
        if b.kind == OTHER or not b.readable:
            if self.fallback is None:
                raise BasketMapError(f"{self.where}: branch {name} has baskets kept inside the tree")
            values = self.fallback(name, start, stop)
            return values.astype(np.dtype(b.dtype).newbyteorder("="), copy=False), 0, 0
        stored = np.dtype(b.dtype)
        pieces, comp, uncomp = [], 0, 0
        indices = self.baskets(name, start, stop)
        fetched = self._prefetch_raw(b, indices)
        for i in indices:
            e0, e1 = int(b.entries[i]), int(b.entries[i + 1])
            data, offsets, c, u = self._basket(b, i, stored, fetched.get(i))
            comp, uncomp = comp + c, uncomp + u
            lo, hi = max(start, e0) - e0, min(stop, e1) - e0
            if b.kind == FLAT:
                pieces.append(data[lo:hi])
            elif lo == 0 and hi == e1 - e0:
                pieces.append(data)
            else:
                if offsets is None:
                    raise BasketReadError(f"{self.where}: basket {i} of {name} has no entry offsets")
                pieces.append(data[offsets[lo] : offsets[hi]])
        out = np.empty(sum(len(p) for p in pieces), dtype=stored.newbyteorder("="))
        pos = 0
        for p in pieces:
            out[pos : pos + len(p)] = p
            pos += len(p)
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
    ) -> tuple[np.ndarray, Any, int, int]:
        cached = self._last.get(b.name)
        if cached is not None and cached[0] == i:
            return cached[1], cached[2], 0, 0
        seek, nbytes = int(b.seek[i]), int(b.nbytes[i])
        where = f"{self.where}: branch {b.name}, basket {i} (bytes {seek}-{seek + nbytes})"
        try:
            raw = memoryview(fetched if fetched is not None else self.fetch(seek, nbytes)).cast("B")
            fnbytes, _, objlen, _, keylen, _ = _KEY.unpack_from(raw, 0)
            _, _, _, _, last = _BASKET.unpack_from(raw, keylen - _BASKET.size - 1)
            payload = raw[keylen:fnbytes]
            content = payload if len(payload) == objlen else _decompress(payload, objlen)
        except BasketReadError:
            raise
        except Exception as err:
            raise BasketReadError(f"{where}: cannot be read: {type(err).__name__}: {err}") from err
        border = last - keylen
        itemsize = stored.itemsize
        data = np.frombuffer(content, dtype=stored, count=border // itemsize)
        offsets = None
        if b.kind == JAGGED and border != objlen:
            raw_offsets = np.frombuffer(content, dtype=">i4", offset=border)
            offsets = (raw_offsets[1:].astype(np.int64) - keylen) // itemsize
            offsets[-1] = border // itemsize
        self._last[b.name] = (i, data, offsets)
        self._objlen[b.name, i] = keylen + objlen  # as uproot counts a basket
        return data, offsets, nbytes, objlen


def _decompress(payload: memoryview, objlen: int) -> bytes | bytearray:
    """Inflate ROOT compression blocks (9-byte headers) into ``objlen`` bytes."""
    out = bytearray()
    pos = 0
    while len(out) < objlen:
        algo, _, csize, usize = _BLOCK.unpack_from(payload, pos)
        c = int.from_bytes(csize, "little")
        u = int.from_bytes(usize, "little")
        block = payload[pos + _BLOCK.size : pos + _BLOCK.size + c]
        pos += _BLOCK.size + c
        if algo == b"ZL":
            data = _inflate(block, bufsize=u)
        elif algo == b"XZ":
            import lzma

            data = lzma.decompress(block)
        elif algo == b"L4":
            import cramjam

            data = bytes(cramjam.lz4.decompress_block(bytes(block[8:]), output_len=u))
        elif algo == b"ZS":
            import cramjam

            data = bytes(cramjam.zstd.decompress(bytes(block), output_len=u))
        else:
            raise ValueError(f"unknown ROOT compression algorithm {algo!r}")
        if len(data) != u:
            raise ValueError(f"a block decompressed to {len(data)} bytes instead of {u}")
        if not out and u == objlen:
            return data
        out += data
    if len(out) != objlen:
        raise ValueError(f"decompressed {len(out)} bytes instead of {objlen}")
    return out
