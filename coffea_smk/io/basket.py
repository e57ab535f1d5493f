"""One free-standing ``TBasket`` record, from its bytes: key, header, payload, entries.

This is the byte layer under :mod:`coffea_smk.io.basketmap`. It decodes only the
layouts it has been proven on (``tests/test_reader_differential.py`` holds it
against uproot), and checks every invariant that costs nothing to check:

- the key: ``fSeekKey`` and ``fNbytes`` as the branch says, class ``TBasket``,
  the basket named after its branch, and the header ending exactly at
  ``fKeylen`` (19 bytes, or 20 with ``fIOBits``); header version 3; no
  ``fIOBits`` but ``kGenerateOffsetMap``;
- the entries: ``fNevBuf`` as the branch's basket table says; a flat basket
  holds exactly ``fNevBuf`` values and no offsets; a jagged basket either has
  an entry-offset array of exactly ``fNevBuf + 1`` values (first at ``fKeylen``,
  non-decreasing, on item boundaries) or, written with ``kGenerateOffsetMap``
  (flag 80), none, and its offsets are rebuilt from the counter branch;
- the payload: stored raw when ``fNbytes - fKeylen == fObjlen``, else in
  compression blocks that decompress to exactly ``fObjlen`` bytes and use up
  the stored bytes exactly; LZ4 blocks' xxhash64 checksums match.

A layout outside that list raises :class:`Unproven` (the caller reads the
branch with uproot instead); damaged bytes (bad checksum, a block that does not
inflate) raise ``ValueError`` (the caller reports an error).

Layout facts from ROOT's ``TBasket::Streamer`` and ``TBasket::WriteBuffer``, as
written up in the ROOT I/O specification (ariostas/root-io-spec,
``spec/04-ttree/TBasket.md``).
"""

from __future__ import annotations

import lzma
import struct
import zlib
from typing import Any, NamedTuple

import cramjam
import numpy as np
import xxhash

try:  # pragma: no cover - which one depends on the environment
    from isal.isal_zlib import decompress as _inflate
except ImportError:  # pragma: no cover
    _inflate = zlib.decompress

_KEY = struct.Struct(">ihiIhh")  # fNbytes, fVersion, fObjlen, fDatime, fKeylen, fCycle
_SEEK_SMALL, _SEEK_LARGE = struct.Struct(">i"), struct.Struct(">q")  # fSeekKey (then fSeekPdir)
_HEAD = struct.Struct(">hii")  # version, fBufferSize, fNevBufSize (negative: fIOBits follows)
_TAIL = struct.Struct(">iib")  # fNevBuf, fLast, flag
_BLOCK = struct.Struct("<2sB3s3s")  # algorithm, method, compressed size, uncompressed size
_CHECKSUM = struct.Struct(">Q")

BASKET_VERSIONS = (3,)
"""``TBasket`` class versions proven here (ROOT 6 writes 3; uproot writes 3)."""
GENERATE_OFFSET_MAP = 1
"""The one ``fIOBits`` bit proven here: offsets not written, rebuilt from the counter."""
_FLAG_GENERATE = 80


class Unproven(Exception):
    """The bytes are not in a layout this reader is proven on; uproot reads the branch instead."""


class Header(NamedTuple):
    """The key and ``TBasket`` header of one basket record."""

    nbytes: int
    objlen: int
    keylen: int
    entries: int
    """``fNevBuf``: entries in this basket."""
    last: int
    """``fLast``: end of the entry data, counted from the start of the record."""
    iobits: int
    flag: int

    @property
    def border(self) -> int:
        """Bytes of entry data at the start of the payload (entry offsets follow)."""
        return self.last - self.keylen


def _counted(text: bytes) -> bytes:
    """A string as a key stores it: its length (1 byte, or 255 and 4 bytes), then its bytes."""
    n = len(text)
    return (bytes([n]) if n < 255 else b"\xff" + struct.pack(">I", n)) + text


_TBASKET = _counted(b"TBasket")


def _skip_string(raw: Any, pos: int) -> int:
    n = int(raw[pos])
    if n == 255:
        (n,) = struct.unpack_from(">I", raw, pos + 1)
        return pos + 5 + int(n)
    return pos + 1 + n


def read_header(raw: Any, branch: str, seek: int, nbytes: int, entries: int) -> Header:
    """The header of a basket of ``branch`` that its branch says is at byte ``seek``,
    ``nbytes`` long, and holds ``entries`` entries.

    Raises:
        Unproven: Not the layout of a free-standing basket of this branch as proven here.
    """
    try:
        fnbytes, kversion, objlen, _, keylen, _ = _KEY.unpack_from(raw, 0)
        seeks = _SEEK_LARGE if kversion > 1000 else _SEEK_SMALL
        (seekkey,) = seeks.unpack_from(raw, _KEY.size)
        pos = _KEY.size + 2 * seeks.size
        # class and name compared as stored (no decoding), then the tree's name skipped
        names = _TBASKET + _counted(branch.encode())
        ours = raw[pos : pos + len(names)] == names
        pos = _skip_string(raw, pos + len(names)) if ours else pos
        version, _, nevbufsize = _HEAD.unpack_from(raw, pos)
        pos += _HEAD.size
        iobits = 0
        if nevbufsize < 0:
            iobits = raw[pos]
            pos += 1
        nev, last, flag = _TAIL.unpack_from(raw, pos)
        pos += _TAIL.size
    except (struct.error, IndexError) as err:
        raise Unproven(f"a basket key that does not parse ({err})") from None
    if not ours:
        raise Unproven(f"the record at byte {seek} is not a TBasket named {branch!r}")
    if fnbytes != nbytes or seekkey != seek:
        raise Unproven(f"the basket's key says {fnbytes} bytes at {seekkey}, its branch {nbytes} at {seek}")
    if pos != keylen:
        raise Unproven(f"the basket header ends at byte {pos}, not at fKeylen {keylen}")
    if version not in BASKET_VERSIONS:
        raise Unproven(f"TBasket version {version}")
    if nevbufsize < 0 and iobits != GENERATE_OFFSET_MAP:
        raise Unproven(f"TBasket IO bits {iobits:#x}")
    if flag not in (0, _FLAG_GENERATE) or (flag == _FLAG_GENERATE and not iobits & GENERATE_OFFSET_MAP):
        raise Unproven(f"TBasket flag {flag} (IO bits {iobits:#x})")
    if nev != entries:
        raise Unproven(f"the basket holds {nev} entries, its branch says {entries}")
    if not keylen <= last <= keylen + objlen:
        raise Unproven(f"fLast {last} outside the payload (fKeylen {keylen}, fObjlen {objlen})")
    return Header(fnbytes, objlen, keylen, nev, last, iobits, flag)


def payload(raw: Any, header: Header) -> Any:
    """The basket's uncompressed payload (``fObjlen`` bytes).

    Raises:
        Unproven: The stored payload is longer than ``fObjlen``.
        ValueError: Damaged: short, a block that does not decompress, a bad checksum.
    """
    if len(raw) < header.nbytes:
        raise ValueError(f"{len(raw)} bytes read of a {header.nbytes}-byte basket")
    stored = raw[header.keylen : header.nbytes]
    if len(stored) == header.objlen:
        return stored
    if len(stored) > header.objlen:
        raise Unproven(f"{len(stored)} bytes stored for an fObjlen of {header.objlen}")
    return decompress(stored, header.objlen)


def entry_data(
    content: Any, header: Header, dtype: np.dtype[Any], jagged: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The values of a basket and, for a jagged one, the item offsets of its entries
    (``fNevBuf + 1`` of them); None when they must be rebuilt from the counter.

    Raises:
        Unproven: The entry layout is not one proven here.
    """
    border, nev, itemsize = header.border, header.entries, dtype.itemsize
    tail = header.objlen - border
    if border % itemsize:
        raise Unproven(f"{border} bytes of entry data are not whole {dtype} values")
    data = np.frombuffer(content, dtype=dtype, count=border // itemsize)
    if not jagged:
        if tail:
            raise Unproven(f"a basket of one value per entry carries {tail} bytes after its data")
        if border != nev * itemsize:
            raise Unproven(f"{border} bytes of data for {nev} entries of {dtype}")
        return data, None
    if tail == 0:
        if nev == 0 and border == 0:
            return data, np.zeros(1, dtype=np.int64)
        if header.flag != _FLAG_GENERATE:
            raise Unproven("a jagged basket without entry offsets, not written with kGenerateOffsetMap")
        return data, None
    if header.iobits:
        raise Unproven(f"entry offsets written with IO bits {header.iobits:#x} (as sizes)")
    if tail != 4 * (nev + 2):
        raise Unproven(f"{tail} bytes of entry offsets for {nev} entries")
    stored = np.frombuffer(content, dtype=">i4", count=nev + 2, offset=border)
    if stored[0] != nev + 1:
        raise Unproven(f"an entry-offset array of {int(stored[0])} values for {nev} entries")
    # record-relative; the array's last value is not an offset: the last entry ends at fLast
    offsets = np.empty(nev + 1, dtype=np.int64)
    offsets[:nev] = stored[1 : nev + 1]
    offsets[nev] = header.last
    offsets -= header.keylen
    if nev and offsets[0] != 0:
        raise Unproven(f"the first entry starts at byte {int(offsets[0])} of the data, not 0")
    if (offsets[1:] < offsets[:-1]).any() or (offsets % itemsize).any():
        raise Unproven("entry offsets that decrease or cut a value")
    offsets //= itemsize
    return data, offsets


def offsets_from_counts(counts: np.ndarray, header: Header, itemsize: int) -> np.ndarray:
    """Item offsets of a ``kGenerateOffsetMap`` basket, from its counter's values.

    Raises:
        Unproven: The counts do not add up to the basket's data.
    """
    counts = np.asarray(counts)
    if len(counts) != header.entries or (len(counts) and counts.min() < 0):
        raise Unproven(f"{len(counts)} counter values for {header.entries} entries")
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    if int(offsets[-1]) * itemsize != header.border:
        raise Unproven(f"the counter adds up to {int(offsets[-1])} values, the basket holds a different size")
    return offsets


def decompress(payload: Any, objlen: int) -> bytes | bytearray:
    """Inflate ROOT compression blocks into exactly ``objlen`` bytes.

    ZLIB with ``isal`` when installed (about twice as fast as ``zlib``), LZMA
    with the standard library, LZ4 and ZSTD with ``cramjam``; LZ4 blocks carry
    an xxhash64 of their compressed bytes, checked as uproot does.

    Raises:
        ValueError: The bytes are not a valid sequence of blocks of that size.
    """
    out = bytearray()
    pos, size = 0, len(payload)
    while len(out) < objlen:
        if pos + _BLOCK.size > size:
            raise ValueError(f"compressed data ends after {pos} of {size} bytes, {len(out)} of {objlen} made")
        algo, _, csize, usize = _BLOCK.unpack_from(payload, pos)
        c = int.from_bytes(csize, "little")
        u = int.from_bytes(usize, "little")
        start = pos + _BLOCK.size
        pos = start + c
        if pos > size:
            raise ValueError(f"a compression block of {c} bytes runs past the end of the basket")
        block = payload[start:pos]
        data: bytes | bytearray = _block(algo, block, u)
        if len(data) != u:
            raise ValueError(f"a block decompressed to {len(data)} bytes instead of {u}")
        if not out and u == objlen and pos == size:
            return data
        out += data
    if len(out) != objlen or pos != size:
        raise ValueError(
            f"decompressed {len(out)} bytes from {pos} of {size} stored bytes; expected {objlen} from all"
        )
    return out


def _block(algo: bytes, block: Any, usize: int) -> Any:
    if algo == b"ZL":
        return _inflate(block, bufsize=usize)
    if algo == b"XZ":
        return lzma.decompress(block)
    if algo == b"L4":
        if len(block) < _CHECKSUM.size:
            raise ValueError("an LZ4 block shorter than its checksum")
        (expected,) = _CHECKSUM.unpack_from(block, 0)
        body = bytes(block[_CHECKSUM.size :])
        computed = xxhash.xxh64(body).intdigest()
        if computed != expected:
            raise ValueError(f"LZ4 block checksum mismatch (computed {computed:#x}, stored {expected:#x})")
        return bytes(cramjam.lz4.decompress_block(body, output_len=usize))
    if algo == b"ZS":
        return bytes(cramjam.zstd.decompress(bytes(block), output_len=usize))
    raise ValueError(f"unknown ROOT compression algorithm {bytes(algo)!r}")
