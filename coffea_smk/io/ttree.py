"""A fast reader of a TTree's branches and basket positions, for NanoAOD-shaped trees.

uproot builds a Python object for every branch, leaf and array of a tree
(0.4-0.9 s for a 1500-branch NanoAOD file). Preprocessing needs much less:
each branch's name, its leaf's type and counter, and its basket positions.
This module walks ROOT's serialization of the ``TTree`` object directly,
skipping every sub-object it does not need by its byte count, and reads just
those fields (about 20x faster).

It understands ``TTree`` versions 19-20, ``TBranch`` version 13 and the
``TLeaf`` family; anything else raises :class:`Unsupported` and the caller
uses uproot instead. Tests check the result against uproot's on every file
of ``../shared/data/nanoaod``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coffea_smk.io.basket import decompress

_BYTECOUNT = 0x40000000
_NEWCLASS = 0xFFFFFFFF
_CLASSMASK = 0x80000000
_MAPOFFSET = 2
_REFERENCED = 1 << 4
_VERSION_BYTECOUNT = 0x4000

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_ID_BITS = struct.Struct(">II")
_TTREE = struct.Struct(">qqqqqdiiiiIqqqqqq")
_TBRANCH1 = struct.Struct(">iiiiq")
_TBRANCH2 = struct.Struct(">iIiqqqq")
_TLEAF = struct.Struct(">iii??")
_OBJARRAY = struct.Struct(">ii")


class Unsupported(Exception):
    """The tree uses a layout this reader does not handle (uproot will)."""


@dataclass
class Leaf:
    classname: str
    name: str
    length: int
    unsigned: bool
    count: Leaf | None
    len_type: int = 0
    offset: int = 0


@dataclass
class Branch:
    classname: str
    name: str
    entries: int = 0
    write_basket: int = 0
    branches: list[Branch] = field(default_factory=list)
    leaves: list[Leaf] = field(default_factory=list)
    embedded: int = 0
    basket_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    basket_entry: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    basket_seek: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    filename: str = ""
    """``fFileName``: the file holding the baskets when not this one."""
    title: str = ""


@dataclass
class Tree:
    entries: int
    branches: list[Branch]
    title: str = ""


class _Reader:
    def __init__(self, data: bytes | memoryview, origin: int) -> None:
        self.data = data
        self.pos = 0
        self.origin = origin  # positions in object references count from the key's start
        self.refs: dict[int, Any] = {}

    def u32(self) -> int:
        (v,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(v)

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        out = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return out

    def header(self) -> tuple[int, int]:
        """A versioned object's byte count and version: (end position, version)."""
        start = self.pos
        bcnt = self.u32()
        if not bcnt & _BYTECOUNT:
            raise Unsupported("an object without a byte count")
        (version,) = self.unpack(_U16)
        return start + 4 + (bcnt & ~_BYTECOUNT), int(version)

    def skip(self) -> None:
        end, _ = self.header()
        self.pos = end

    def tobject(self) -> None:
        (version,) = self.unpack(_U16)
        if version & _VERSION_BYTECOUNT:
            self.pos += 4
        _, bits = self.unpack(_ID_BITS)
        if bits & _REFERENCED:
            self.pos += 2

    def string(self) -> str:
        n = self.data[self.pos]
        self.pos += 1
        if n == 255:
            n = self.u32()
        out = bytes(self.data[self.pos : self.pos + n]).decode("utf-8", "replace")
        self.pos += n
        return out

    def tnamed(self) -> tuple[str, str]:
        end, _ = self.header()
        self.tobject()
        name, title = self.string(), self.string()
        self.pos = end
        return name, title

    def cstring(self) -> str:
        data = bytes(self.data[self.pos : self.pos + 256])
        n = data.find(b"\0")
        if n < 0:
            raise Unsupported("an unterminated class name")
        self.pos += n + 1
        return data[:n].decode()

    def any_object(self, read: Any) -> Any:
        """ROOT's ReadObjectAny: a null, a reference to an earlier object, or a new one."""
        beg = self.pos + self.origin
        bcnt = self.u32()
        if bcnt == 0:
            return None
        if not bcnt & _BYTECOUNT and not bcnt & _CLASSMASK:  # a reference to an earlier object
            if bcnt in self.refs and not isinstance(self.refs[bcnt], str):
                return self.refs[bcnt]
            raise Unsupported(f"an unresolved object reference {bcnt}")
        if not bcnt & _BYTECOUNT:
            raise Unsupported("an object without a byte count")
        start = self.pos + self.origin
        tag = self.u32()
        if not tag & _CLASSMASK:
            if tag == 0:
                return None
            if tag in self.refs and not isinstance(self.refs[tag], str):
                return self.refs[tag]
            raise Unsupported(f"an unresolved object reference {tag}")
        if tag == _NEWCLASS:
            classname = self.cstring()
            self.refs[start + _MAPOFFSET] = classname
        else:
            known = self.refs.get(tag & ~_CLASSMASK)
            if not isinstance(known, str):
                raise Unsupported(f"an unresolved class reference {tag & ~_CLASSMASK}")
            classname = known
        obj = read(classname)
        self.refs[beg + _MAPOFFSET] = obj
        self.pos = beg - self.origin + 4 + (bcnt & ~_BYTECOUNT)
        return obj

    def objarray(self, read: Any) -> list[Any]:
        end, _ = self.header()
        self.tobject()
        self.string()
        size, _ = self.unpack(_OBJARRAY)
        items = [self.any_object(read) for _ in range(size)]
        self.pos = end
        return items

    def array(self, n: int, dtype: str) -> np.ndarray:
        self.pos += 1  # ROOT's "speed bump" before a counted array
        size = np.dtype(dtype).itemsize * n
        out = np.frombuffer(self.data, dtype=dtype, count=n, offset=self.pos).astype(np.int64)
        self.pos += size
        return out

    # ---- the classes ------------------------------------------------------------------
    def leaf(self, classname: str) -> Leaf:
        if not classname.startswith("TLeaf"):
            raise Unsupported(f"a leaf of class {classname}")
        end, _ = self.header()
        self.header()  # the TLeaf base
        name, _ = self.tnamed()
        length, len_type, offset, _, unsigned = self.unpack(_TLEAF)
        count = self.any_object(self.leaf)
        self.pos = end
        return Leaf(classname, name, int(length), bool(unsigned), count, int(len_type), int(offset))

    def branch(self, classname: str) -> Branch:
        end, version = self.header()
        if classname != "TBranch" or version != 13:
            if classname != "TBranch":
                self.header()  # e.g. TBranchElement: its TBranch base comes first
            name, _ = self.tnamed()
            self.pos = end
            return Branch(classname if classname != "TBranch" else f"TBranch v{version}", name)
        name, title = self.tnamed()
        self.skip()  # TAttFill
        _, _, _, write_basket, _ = self.unpack(_TBRANCH1)
        self.skip()  # ROOT::TIOFeatures
        _, max_baskets, _, entries, _, _, _ = self.unpack(_TBRANCH2)
        out = Branch(classname, name, int(entries), int(write_basket), title=title)
        out.branches = self.objarray(self.branch)
        out.leaves = self.objarray(self.leaf)
        out.embedded = sum(x is not None for x in self.objarray(lambda _: True))
        out.basket_bytes = self.array(max_baskets, ">i4")
        out.basket_entry = self.array(max_baskets, ">i8")
        out.basket_seek = self.array(max_baskets, ">i8")
        out.filename = self.string()
        self.pos = end
        return out

    def tree(self) -> Tree:
        _, version = self.header()
        if version not in (19, 20):
            raise Unsupported(f"TTree version {version}")
        _, title = self.tnamed()
        for _ in range(3):  # TAttLine, TAttFill, TAttMarker
            self.skip()
        fields = self.unpack(_TTREE)
        entries, nclusters = int(fields[0]), int(fields[10])
        self.array(nclusters, ">i8")  # fClusterRangeEnd
        self.array(nclusters, ">i8")  # fClusterSize
        if version >= 20:
            self.skip()  # ROOT::TIOFeatures
        return Tree(entries, self.objarray(self.branch), title)


def read_tree(rootfile: Any, treename: str) -> Tree:
    """The branches of ``treename`` in an open uproot file, without uproot's tree model.

    Raises:
        Unsupported: Not a tree this reader handles (the caller falls back to uproot).
        KeyError: No such object.
    """
    key = rootfile.key(treename)
    if key.fClassName != "TTree":
        raise Unsupported(f"{treename} is a {key.fClassName}")
    seek, nbytes, keylen, objlen = int(key.fSeekKey), int(key.fNbytes), int(key.fKeylen), int(key.fObjlen)
    source = getattr(rootfile, "source", None) or rootfile.file.source
    raw = memoryview(source.chunk(seek, seek + nbytes).raw_data).cast("B")
    payload = raw[keylen:nbytes]
    data = payload if len(payload) == objlen else memoryview(decompress(payload, objlen))
    try:
        return _Reader(data, keylen).tree()
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as err:
        raise Unsupported(f"unexpected layout: {type(err).__name__}: {err}") from err
