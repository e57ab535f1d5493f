"""Reading a branch's entries straight from its baskets, through a :class:`~coffea_smk.io.basketmap.TreeMap`.

Each basket is checked as it is read (:mod:`coffea_smk.io.basket`); a basket not in a proven
layout is read by uproot instead (a fallback, logged and counted); a damaged one is an error.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import numpy as np

from coffea_smk.io import basket as _basket
from coffea_smk.io.allowlist import BranchMap
from coffea_smk.io.basket import Unproven
from coffea_smk.io.basketmap import FLAT, JAGGED, OTHER, BasketMapError, BasketReadError, TreeMap

log = logging.getLogger(__name__)


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
    source = getattr(rootfile, "source", None) or rootfile.file.source

    def fetch_many(ranges: list[tuple[int, int]]) -> list[Any]:
        try:
            return [chunk.raw_data for chunk in source.chunks(ranges, notifications=queue.Queue())]
        except TypeError:
            # uproot's fsspec source hands a failed request on as data (fsspec's
            # on_error="return", uproot5#1450) and slicing it raises TypeError: the storage's own
            # error (a reset, a timeout), which the error policy needs, is lost. One by
            # one, the ranges raise it (or are read, when the storage is back).
            log.warning(
                "%s: a vector read of %d ranges failed; reading them one by one",
                getattr(source, "file_path", "?"),
                len(ranges),
            )
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
        # compressed baskets fetched ahead by warm(), (branch, basket) -> the request bringing them
        self._warm: dict[tuple[str, int], Future[dict[tuple[str, int], Any]]] = {}

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
        fetched = self._prefetch_raw(b, indices, stop)
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

    def warm(self, names: Iterable[str], start: int, stop: int) -> Callable[[], None] | None:
        """With a batching source (remote files): the compressed baskets of the branches
        ``names`` for entries ``[start, stop)``, in *one* request for all of them.

        The baskets are claimed at once (a read of one of them from now on waits for the
        request rather than sending its own); the request is sent by calling what is
        returned (e.g. in a background thread). None when there is nothing to fetch.
        Exact whatever it fetches: a basket is read from these bytes exactly as from its
        own request, and a failed request (raised by the call) only makes each read send
        its own (whose error the error policy then sees).
        """
        fetch_many = self.fetch_many
        if fetch_many is None:
            return None
        todo: list[tuple[str, int]] = []
        ranges: list[tuple[int, int]] = []
        future: Future[dict[tuple[str, int], Any]] = Future()
        with self._lock:
            for name in dict.fromkeys(names):
                b = self.map.branch(name)
                if b.kind == OTHER or not b.readable or name in self.slow or name in self.map.slow:
                    continue
                cached = self._last.get(name)
                for i in self.baskets(name, start, stop):
                    if (name, i) in self._warm or (cached is not None and cached[0] == i):
                        continue
                    todo.append((name, i))
                    ranges.append((int(b.seek[i]), int(b.seek[i]) + int(b.nbytes[i])))
                    self._warm[name, i] = future
        if not todo:
            return None

        def send() -> None:
            try:
                future.set_result(dict(zip(todo, fetch_many(ranges), strict=True)))
            except BaseException:
                future.set_result({})  # the reads waiting for it send their own
                raise

        return send

    def forget(self, stop: int) -> None:
        """Drop baskets fetched ahead that end at or before entry ``stop`` and were not read."""
        with self._lock:
            for name, i in [k for k in self._warm if int(self.map.branch(k[0]).entries[k[1] + 1]) <= stop]:
                del self._warm[name, i]

    def _warmed(self, b: BranchMap, indices: Iterable[int], stop: int) -> dict[int, Any]:
        """The baskets of ``indices`` fetched ahead (waiting for their request). Those that end
        within ``stop`` are taken out; one that goes on is left for the next chunk's read (which
        may come first, from a prefetch thread, and would else fetch it again)."""
        with self._lock:
            futures = {i: self._warm.get((b.name, i)) for i in indices}
            for i in [i for i, f in futures.items() if f is not None and int(b.entries[i + 1]) <= stop]:
                del self._warm[b.name, i]
        out = {}
        for i, future in futures.items():
            data = future.result().get((b.name, i)) if future is not None else None
            if data is not None:
                out[i] = data
        return out

    def _prefetch_raw(self, b: BranchMap, indices: range, stop: int) -> dict[int, Any]:
        """With a batching source (remote files), the compressed baskets in one request
        (or from a request of :meth:`warm`)."""
        cached = self._last.get(b.name)
        todo = [i for i in indices if cached is None or cached[0] != i]
        if self.fetch_many is None:
            return {}
        warmed = self._warmed(b, todo, stop)
        todo = [i for i in todo if i not in warmed]
        if len(todo) < 2:
            return warmed
        ranges = [(int(b.seek[i]), int(b.seek[i]) + int(b.nbytes[i])) for i in todo]
        try:
            return warmed | dict(zip(todo, self.fetch_many(ranges), strict=True))
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
