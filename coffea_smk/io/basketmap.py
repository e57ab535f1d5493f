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

Each basket is then checked as it is read (:mod:`coffea_smk.io.basket`). Any
other branch, and any branch whose basket turns out not to be in a proven
layout, is read by uproot: logged at INFO with the reason, and counted in the
chunk's metrics (``fallback_branches``). A damaged basket (a checksum that does
not match, a block that does not decompress) is an error, never a fallback.

A map records the :data:`READER_VERSION` that built it; a map of another
version is treated as missing, so a fix to the reader is never undone by a map
built before it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from coffea_smk.io.allowlist import (
    BranchMap,
    BranchType,
    Kind,
    Row,
    allowed,
    branch_map,
    from_uproot,
    leaf_of,
    unreadable,
)
from coffea_smk.io.files import tree_of
from coffea_smk.io.ttree import Unsupported, read_tree
from coffea_smk.util.atomic import write_with
from coffea_smk.util.hashing import key_of

log = logging.getLogger(__name__)

MAP_VERSION = 3
"""Version of the map's file format."""
READER_VERSION = 2
"""Version of the reader's rules: bump it whenever what the fast path accepts changes.

1: the reader before version tagging (trusted branches it must not: issue 10).
2: the allow-list, basket invariants, offsets rebuilt from the counter, LZ4 checksums.
"""
FLAT, JAGGED, OTHER = Kind.FLAT, Kind.JAGGED, Kind.OTHER


class BasketMapError(RuntimeError):
    """A basket map cannot be used for this file (missing, damaged, or for another file)."""


class BasketReadError(OSError):
    """A basket cannot be read or decompressed; the message names file, branch and basket."""


class TreeMap:
    """The branches of one tree and where their baskets are.

    Loaded maps build a branch's basket arrays on first use: a job touches a
    few of a NanoAOD file's 1500 branches.
    """

    def __init__(
        self,
        entries: int,
        types: dict[str, BranchType],
        uuid: str = "",
        baskets: Callable[[str], BranchMap] | None = None,
        slow: dict[str, str] | None = None,
        titles: dict[str, str] | None = None,
        title: str | None = None,
    ) -> None:
        self.entries = entries
        self.types = types
        """Branch name -> its type, in the tree's order."""
        self.uuid = uuid
        self.slow: dict[str, str] = dict(slow or {})
        """Branch name -> why it is not on the fast path (the branches uproot reads)."""
        self.titles = titles
        """Branch name -> its title (None in maps written before titles were kept)."""
        self.title = title
        """The tree's title (None in maps written before titles were kept)."""
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
            leaves = [leaf_of(x) for x in models]
            fast = allowed(branch.classname, len(branch.member("fBranches")), leaves)
            if isinstance(fast, str):
                kind, reason = from_uproot(branch), fast
            elif by_uproot:
                kind = from_uproot(branch)
                reason = (
                    "" if kind == fast else f"uproot reads it as {_text(kind)}, its leaf as {_text(fast)}"
                )
            else:
                kind, reason = fast, ""
            rows.append(
                Row(
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
                    title=branch.title,
                )
            )
        return cls._assemble(int(tree.num_entries), rows, uuid, tree.title)

    @classmethod
    def read(cls, rootfile: Any, path: str, treename: str, uuid: str = "") -> TreeMap:
        """The map of ``treename`` in an open uproot file, read by :mod:`coffea_smk.io.ttree`
        (no uproot tree model; about 10x faster) or, for trees it does not handle, by uproot.

        Raises:
            InputFileError: No such tree, not a TTree, or it cannot be read.
        """
        try:
            tree = read_tree(rootfile, treename)
        except Exception as err:  # unsupported layout, or missing/not a tree/damaged: uproot says which
            reason = err if isinstance(err, Unsupported) else f"{type(err).__name__}: {err}"
            log.debug("%s: %s; decoding %s with uproot", path, reason, treename)
            return cls.from_tree(tree_of(rootfile, path, treename), uuid)
        rows = []
        for b in tree.branches:
            fast = allowed(b.classname, len(b.branches), b.leaves)
            if isinstance(fast, str):  # not NanoAOD-like: uproot's interpretations give the types
                return cls.from_tree(tree_of(rootfile, path, treename), uuid)
            rows.append(
                Row(
                    b.name,
                    fast,
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
                    b.title,
                )
            )
        return cls._assemble(tree.entries, rows, uuid, tree.title)

    @classmethod
    def _assemble(cls, entries: int, rows: list[Row], uuid: str, title: str) -> TreeMap:
        """The map of a tree's branches; the tree-wide rules of the allow-list applied here."""
        count: dict[str, int] = {}
        for row in rows:
            count[row.name] = count.get(row.name, 0) + 1
        built: dict[str, BranchMap] = {}
        first: dict[str, Row] = {}
        slow: dict[str, str] = {}
        for row in rows:
            if row.name in built:
                continue  # uproot, like ROOT, gives the first branch of a name
            first[row.name] = row
            reason = row.reason
            if not reason and count[row.name] > 1:
                reason = f"{count[row.name]} branches of the tree are named {row.name!r}"
            built[row.name], reason = branch_map(row, entries, reason)
            if reason:
                slow[row.name] = reason
        for name, b in built.items():
            if b.kind != JAGGED or not b.readable:
                continue
            c = built.get(b.counter)
            if c is None or c.kind != FLAT or not c.readable or np.dtype(c.dtype).kind not in "iu":
                why = slow.get(b.counter, "not a branch of one integer per entry")
                slow[name] = f"its counter {b.counter!r} is not on the fast path ({why})"
                built[name] = unreadable(b)
            elif first[b.counter].leaf is not first[name].count:
                slow[name] = f"its counter leaf is not the leaf of branch {b.counter!r}"
                built[name] = unreadable(b)
        titles = {n: first[n].title for n in built}
        out = cls(entries, {n: b.type for n, b in built.items()}, uuid, titles=titles, title=title)
        out._built = built
        out.slow = slow
        return out

    def clusters(self) -> list[int]:
        """Entries where every branch starts a basket (chunks cut there decompress whole baskets)."""
        common: set[int] | None = None
        for name, t in self.types.items():
            entries = self.branch(name).entries
            if t.readable and len(entries):
                common = set(entries.tolist()) if common is None else common & set(entries.tolist())
        return sorted(common) if common and len(common) > 1 else [0, self.entries]

    def branches_hash(self) -> str:
        return key_of(sorted((n, t.kind.value, t.dtype, t.counter) for n, t in self.types.items()))

    # ---- storing ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], key: str) -> None:
        """Write the map (an npz, atomically), tagged with the file's cache ``key`` and
        the :data:`READER_VERSION` that built it.

        Positions are stored as differences (small numbers that compress well)
        and deflated at level 1: a few times faster to write than
        ``numpy.savez_compressed`` for a few % more bytes.
        """
        bs = [self.branch(name) for name in self.types]
        header = {
            "version": MAP_VERSION,
            "reader": READER_VERSION,
            "key": key,
            "uuid": self.uuid,
            "entries": self.entries,
            "branches": [[b.name, b.kind.value, b.dtype, b.counter, b.readable] for b in bs],
            "slow": self.slow,
        }
        if self.titles is not None:
            header["titles"] = [self.titles.get(b.name, "") for b in bs]
            header["title"] = self.title or ""
        empty = np.zeros(0, dtype=np.int64)
        arrays: dict[str, np.ndarray] = {
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
            types = {b[0]: BranchType(Kind(b[1]), b[2], b[3], bool(b[4])) for b in header["branches"]}
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
            starts = np.append(first[a:b], ends[i]) if b > a else first[:0]
            return BranchMap(name, types[name], seek[a:b], nbytes[a:b].astype(np.int64), starts)

        titles = header.get("titles")  # not in maps written before titles were kept
        return cls(
            entries,
            types,
            header["uuid"],
            baskets,
            header.get("slow"),
            dict(zip(names, titles, strict=True)) if isinstance(titles, list) else None,
            header.get("title"),
        )


def _write_npz(handle: Any, arrays: dict[str, np.ndarray]) -> None:
    """``numpy.savez_compressed`` with deflate level 1."""
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def map_path(record_path: str | os.PathLike[str]) -> Path:
    """Where the basket map of a preprocessing record is kept."""
    p = Path(record_path)
    return p.with_name(p.name.removesuffix(".json") + ".baskets.npz")


def _text(t: BranchType) -> str:
    return f"{t.kind.value} {t.dtype} {t.counter}".strip()
