"""The fast path's allow-list: which branches coffea_smk reads from their baskets itself.

Decided once per branch when the basket map is built, from the branch's class and leaves
(see :mod:`coffea_smk.io.basketmap` for the rules); anything else is read by uproot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from coffea_smk.io.ttree import Leaf


class Kind(str, Enum):
    """How a branch's entries are laid out (its value is what the map files store)."""

    FLAT = "flat"
    """One value per entry."""
    JAGGED = "jagged"
    """A list of values per entry, its length in a counter branch."""
    OTHER = "other"
    """Anything else: read by uproot."""


@dataclass(frozen=True)
class BranchType:
    """What a reader needs to know of a branch besides where its baskets are."""

    kind: Kind
    dtype: str = ""
    """The stored (big-endian) numpy dtype of a value, e.g. ``>f4``."""
    counter: str = ""
    """For :attr:`Kind.JAGGED`: the branch holding the list lengths (``nMuon``)."""
    readable: bool = True
    """On the fast path; else read by uproot."""


@dataclass(frozen=True)
class BranchMap:
    """One branch: its type and where its baskets are."""

    name: str
    type: BranchType
    seek: np.ndarray
    nbytes: np.ndarray
    entries: np.ndarray
    """First entry of each basket, then the number of entries: ``len(seek) + 1`` values."""

    @property
    def kind(self) -> Kind:
        return self.type.kind

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def counter(self) -> str:
        return self.type.counter

    @property
    def readable(self) -> bool:
        return self.type.readable


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
class Row:
    """One branch as the tree describes it, before the tree-wide rules."""

    name: str
    type: BranchType
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
    title: str = ""


def leaf_of(leaf: Any) -> Leaf:
    """An uproot ``TLeaf`` model as :mod:`coffea_smk.io.ttree` reads it."""
    count = leaf.member("fLeafCount")
    return Leaf(
        leaf.classname,
        leaf.member("fName"),
        int(leaf.member("fLen")),
        bool(leaf.member("fIsUnsigned")),
        None if count is None else leaf_of(count),
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


def allowed(classname: str, nsub: int, leaves: list[Leaf]) -> BranchType | str:
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
        return BranchType(Kind.FLAT, dtype.str)
    if count.classname not in _COUNTER_LEAVES or count.length != 1 or count.count is not None:
        return f"a {count.classname} counter"
    return BranchType(Kind.JAGGED, dtype.str, count.name)


def branch_map(row: Row, tree_entries: int, reason: str) -> tuple[BranchMap, str]:
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
    out = BranchMap(row.name, row.type, seek[:n], np.asarray(row.nbytes, dtype=np.int64)[:n], entries)
    return (unreadable(out) if reason else out), reason


def unreadable(b: BranchMap) -> BranchMap:
    empty = np.zeros(0, dtype=np.int64)
    unread = dataclasses.replace(b.type, readable=False)
    return dataclasses.replace(b, type=unread, seek=empty, nbytes=empty, entries=empty)


def from_uproot(branch: Any) -> BranchType:
    """Kind, stored dtype and counter from uproot's interpretation of the branch."""
    import uproot  # noqa: PLC0415  only for branches uproot has opened: the workflow's side never imports it

    try:
        interp = branch.interpretation
    except Exception:  # an unknown class: uproot says so when it is read
        return BranchType(Kind.OTHER)
    if isinstance(interp, uproot.AsDtype) and interp.from_dtype.shape == ():
        return BranchType(Kind.FLAT, interp.from_dtype.str)
    if (
        isinstance(interp, uproot.AsJagged)
        and isinstance(interp.content, uproot.AsDtype)
        and interp.content.from_dtype.shape == ()
        and interp.header_bytes == 0
        and branch.count_branch is not None
    ):
        return BranchType(Kind.JAGGED, interp.content.from_dtype.str, branch.count_branch.name)
    return BranchType(Kind.OTHER)
