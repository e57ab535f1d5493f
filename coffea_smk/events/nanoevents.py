"""Lazy NanoAOD events: awkward arrays whose columns are read on first touch.

A :class:`TreeLayout` decodes a tree's branch list once (the costly part of
opening a NanoAOD file) and builds the awkward form: flat branches, counters
``nX`` with their jagged ``X_*`` branches grouped into collections
(``events.Muon.pt``), and flat ``X_*`` groups (``events.MET.pt``). Each chunk
then gets :func:`awkward.from_buffers` with callables, so a column is read from
the file only when the processor touches it, and once per chunk.

The read buffers live in a :class:`~coffea_smk.buffers.FileBuffers` store, not
inside awkward's arrays (their caching is off), so that
:func:`coffea_smk.buffers.clear` can free them and prefetch threads can fill
them. A buffer key is ``"<start>-<stop>/<column>/<attribute>"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import awkward as ak
import numpy as np

from coffea_smk.buffers import FileBuffers, reader_for
from coffea_smk.buffers._awkward import UNKNOWN_LENGTH, primitive, virtual_buffer
from coffea_smk.events import behaviors
from coffea_smk.events.nanoaod_ids import NanoEventsAttributes
from coffea_smk.io.basketmap import FLAT, JAGGED, TreeMap
from coffea_smk.io.reader import BasketReader, source_fetch, uproot_fallback

__all__ = ["NanoEventsArray", "TreeLayout", "basket_bytes"]

EVENTS_RECORD = "NanoEvents"


class NanoEventsArray(NanoEventsAttributes, ak.Array):  # type: ignore[misc]
    """The events of one chunk; ``events.metadata`` holds where they come from.

    A missing attribute is an ``AttributeError`` that says whether coffea's NanoEvents
    have it (``schema: coffea``), or lists the closest collection names.
    """

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.attrs.get("@metadata", {}))


behavior: dict[Any, Any] = dict(behaviors.behavior)
behavior["*", EVENTS_RECORD] = NanoEventsArray


class ColumnKind(Enum):
    """What one buffer of the events holds."""

    FLAT = "flat"
    """A branch with one value per event."""
    OFFSETS = "offsets"
    """A collection's offsets, summed from its counter branch ``nX``."""
    JAGGED = "jagged"
    """The content of a jagged branch ``X_y``, as long as its counter's offsets say."""


@dataclass(frozen=True)
class _Column:
    branch: str
    kind: ColumnKind
    dtype: np.dtype[Any]
    counter: str = ""  # for JAGGED: the counter whose offsets give its length


class TreeLayout:
    """The NanoAOD form of one tree, built once and reused for every chunk.

    Built from a :class:`~coffea_smk.io.basketmap.TreeMap` (kept by preprocessing,
    so the tree's metadata is not decoded again) and read through a
    :class:`~coffea_smk.io.basketmap.BasketReader`; ``TreeLayout(tree)`` builds both
    from an open uproot tree.
    """

    def __init__(self, tree: Any = None, reader: BasketReader | None = None) -> None:
        self._tree = tree  # keeps an uproot file open while its events live
        if reader is None:
            tmap = TreeMap.from_tree(tree)
            where = str(getattr(tree.file, "file_path", ""))
            reader = BasketReader(tmap, source_fetch(tree.file), where, uproot_fallback(lambda: tree))
        self.reader = reader
        self.columns: dict[str, _Column] = {}
        self.skipped: list[str] = []
        flat: dict[str, np.dtype[Any]] = {}
        jagged: dict[str, tuple[str, np.dtype[Any]]] = {}
        own_counters: set[str] = set()
        pending: list[tuple[str, str, str]] = []
        for name, t in reader.map.types.items():
            if t.kind == FLAT:
                flat[name] = np.dtype(t.dtype).newbyteorder("=")
            elif t.kind == JAGGED:
                pending.append((name, t.dtype, t.counter))
            else:
                self.skipped.append(name)
        for name, dtype, own in pending:
            # NanoAOD's counter for X_y is nX; some writers also give every
            # jagged branch a private counter (nX_y): prefer the shared one.
            prefix = name.partition("_")[0]
            shared = f"n{prefix}" if f"n{prefix}" in flat else own if own in flat else None
            if shared is None:
                self.skipped.append(name)
                continue
            if own != shared:
                own_counters.add(own)
            jagged[name] = (shared, np.dtype(dtype).newbyteorder("="))
        for name in own_counters:
            flat.pop(name, None)
        self.form = ak.forms.from_dict(self._form_dict(flat, jagged))

    def _form_dict(
        self, flat: dict[str, np.dtype[Any]], jagged: dict[str, tuple[str, np.dtype[Any]]]
    ) -> dict[str, Any]:
        collections: dict[str, dict[str, str]] = {}  # counter -> {field: branch}
        loose: list[str] = []
        for name, (counter, _) in jagged.items():
            coll = counter[1:] if counter.startswith("n") else counter
            if name.startswith(coll + "_"):
                collections.setdefault(counter, {})[name[len(coll) + 1 :]] = name
            else:
                loose.append(name)
        groups: dict[str, dict[str, str]] = {}
        top: dict[str, dict[str, Any]] = {}
        for name, dtype in flat.items():
            prefix, _, rest = name.partition("_")
            if rest and prefix and f"n{prefix}" not in collections:
                groups.setdefault(prefix, {})[rest] = name
            else:
                top[name] = self._numpy(name, ColumnKind.FLAT, dtype)
        for prefix, members in groups.items():
            if len(members) == 1 and prefix in top:
                ((rest, name),) = members.items()
                top[name] = self._numpy(name, ColumnKind.FLAT, flat[name])
                continue
            top[prefix] = _record(
                {f: self._numpy(b, ColumnKind.FLAT, flat[b]) for f, b in members.items()},
                behaviors.record_name(prefix, set(members)),
                prefix,
            )
        for counter, members in collections.items():
            coll = counter[1:]
            self.columns[f"{counter}.offsets"] = _Column(counter, ColumnKind.OFFSETS, np.dtype(np.int64))
            content = _record(
                {f: self._numpy(b, ColumnKind.JAGGED, jagged[b][1], counter) for f, b in members.items()},
                behaviors.record_name(coll, set(members)),
                coll,
            )
            top[coll] = {
                "class": "ListOffsetArray",
                "offsets": "i64",
                "content": content,
                "form_key": f"{counter}.offsets",
            }
        for name in loose:
            counter, dtype = jagged[name]
            self.columns.setdefault(
                f"{counter}.offsets", _Column(counter, ColumnKind.OFFSETS, np.dtype(np.int64))
            )
            top[name] = {
                "class": "ListOffsetArray",
                "offsets": "i64",
                "content": self._numpy(name, ColumnKind.JAGGED, dtype, counter),
                "form_key": f"{counter}.offsets",
            }
        return _record(top, EVENTS_RECORD, "events")

    def _numpy(
        self, branch: str, kind: ColumnKind, dtype: np.dtype[Any], counter: str = ""
    ) -> dict[str, Any]:
        self.columns[branch] = _Column(branch, kind, dtype, counter)
        return {
            "class": "NumpyArray",
            "primitive": primitive(dtype),
            "form_key": branch,
        }

    def events(
        self,
        entry_start: int,
        entry_stop: int,
        metadata: dict[str, Any],
        store: FileBuffers | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> NanoEventsArray:
        """Lazy events for entries ``[entry_start, entry_stop)``.

        Args:
            entry_start: First entry of the chunk.
            entry_stop: One past the last entry.
            metadata: Exposed as ``events.metadata``.
            store: Where read buffers are kept (shared with prefetch threads), and
                what each chunk read (``store.stats(entry_start, entry_stop)``); a
                private one when not given.
            attrs: More ``attrs`` for the events (e.g. their buffer manager).
        """
        store = store if store is not None else FileBuffers(self)
        prefix = f"{entry_start}-{entry_stop}/"
        n = entry_stop - entry_start
        container = {}
        # The virtual buffers are made here rather than by from_buffers: much
        # cheaper per buffer, and a jagged content learns its length from its
        # counter's offsets without being read.
        for key, col in self.columns.items():
            offsets = col.kind is ColumnKind.OFFSETS
            full = f"{prefix}{key}/{'offsets' if offsets else 'data'}"
            if col.kind is ColumnKind.JAGGED:
                shape: tuple[Any, ...] = (UNKNOWN_LENGTH,)
                shape_of = _content_shape(store, f"{prefix}{col.counter}.offsets/offsets")
            else:
                shape, shape_of = ((n + 1,) if offsets else (n,)), None
            container[full] = virtual_buffer(shape, col.dtype, reader_for(store, full), shape_of, full)
        events = ak.from_buffers(
            self.form,
            entry_stop - entry_start,
            container,
            buffer_key=prefix + "{form_key}/{attribute}",
            behavior=behavior,
            attrs={"@metadata": metadata, **(attrs or {})},
            enable_virtualarray_caching=False,
        )
        assert isinstance(events, NanoEventsArray)
        return events

    def read(self, key: str, entry_start: int, entry_stop: int) -> np.ndarray:
        """Read one buffer (a flat column, a counter's offsets or a jagged content)."""
        col = self.columns[key]
        values, _, _ = self.reader.read(col.branch, entry_start, entry_stop)
        if col.kind is ColumnKind.OFFSETS:
            out = np.zeros(len(values) + 1, dtype=np.int64)
            np.cumsum(values, out=out[1:])
            return out
        return values

    def fallbacks(self, entry_start: int, entry_stop: int) -> list[str]:
        """Branches read by uproot instead of from their baskets for this entry range."""
        return self.reader.fallbacks(entry_start, entry_stop)

    # ---- the KeySource protocol of coffea_smk.buffers ---------------------------------
    @property
    def where(self) -> str:
        return self.reader.where

    @staticmethod
    def _parse(key: str) -> tuple[int, int, str]:
        rng, _, rest = key.partition("/")
        start, _, stop = rng.partition("-")
        return int(start), int(stop), rest.rpartition("/")[0]

    def read_key(self, key: str) -> np.ndarray:
        start, stop, column = self._parse(key)
        return self.read(column, start, stop)

    def key_range(self, key: str) -> tuple[int, int]:
        start, stop, _ = self._parse(key)
        return start, stop

    def key_branches(self, key: str) -> tuple[str, ...]:
        col = self.columns.get(self._parse(key)[2])
        return (col.branch,) if col is not None else ()

    def key_bytes(self, key: str) -> tuple[int, int]:
        start, stop, column = self._parse(key)
        col = self.columns.get(column)
        if col is None:
            return 0, 0
        return self.reader.basket_bytes(col.branch, start, stop)

    def suffix(self, key: str) -> str:
        return key.partition("/")[2]

    def key_for(self, suffix: str, start: int, stop: int) -> str | None:
        column = suffix.rpartition("/")[0]
        return f"{start}-{stop}/{suffix}" if column in self.columns else None

    def warm(self, suffixes: Iterable[str], start: int, stop: int) -> Callable[[], None] | None:
        """One request for the compressed baskets of the columns ``suffixes`` (as from
        :meth:`suffix`) in ``[start, stop)``: see :meth:`BasketReader.warm`."""
        columns = (self.columns.get(s.rpartition("/")[0]) for s in suffixes)
        return self.reader.warm([c.branch for c in columns if c is not None], start, stop)

    def forget(self, stop: int) -> None:
        """Drop baskets fetched ahead that end at or before ``stop`` (a chunk is done)."""
        self.reader.forget(stop)


def _content_shape(store: FileBuffers, offsets_key: str) -> Callable[[], tuple[int]]:
    def shape() -> tuple[int]:
        return (int(store.load(offsets_key)[-1]),)

    return shape


def _record(contents: dict[str, dict[str, Any]], name: str, collection: str) -> dict[str, Any]:
    # collection_name (as coffea calls it) names the collection in error messages.
    return {
        "class": "RecordArray",
        "fields": list(contents),
        "contents": list(contents.values()),
        "parameters": {"__record__": name, "collection_name": collection},
    }


def basket_bytes(branch: Any, start: int, stop: int) -> tuple[int, int]:
    """Compressed and uncompressed bytes of the baskets that cover ``[start, stop)``.

    The uncompressed size is in each basket's key, which uproot reads from the file: for a
    remote file that is a request per basket (and the XRootD bindings reject the numpy
    offsets uproot passes), so there the compressed size counts, as for a basket not read yet.
    """
    offsets = branch.entry_offsets
    remote = "://" in str(getattr(branch.file, "file_path", ""))
    compressed = uncompressed = 0
    for i in range(branch.num_baskets):
        if offsets[i + 1] <= start or offsets[i] >= stop:
            continue
        nbytes = int(branch.basket_compressed_bytes(i))
        compressed += nbytes
        uncompressed += nbytes if remote else int(branch.basket_uncompressed_bytes(i))
    return compressed, uncompressed
