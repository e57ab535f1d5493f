"""Running coffea processors unchanged: events from coffea's own ``NanoEventsFactory``.

A processor that subclasses ``coffea.processor.ProcessorABC`` (with the
default ``schema: auto``), or any processor when the config says ``schema:
coffea`` or names a coffea schema class (``coffea.nanoevents.NanoAODSchema``,
``coffea.nanoevents.PHYSLITESchema``, ``mypackage.schemas:MySchema``), gets
coffea's NanoEvents in virtual mode: cross-references
(``events.Muon.matched_jet``), coffea's behaviours and methods work as under
coffea's own Runner.

The events are coffea's: its schema builds the form, its mapping evaluates
every buffer key (``!load``, ``!offsets``, ``!counts2offsets``, ...), its
factory makes the arrays. What differs from coffea's Runner is the work done
once per file instead of once per chunk, and who reads a branch:

- the file is opened once per work unit and its tree's form (the *base form*,
  coffea's ``_extract_base_form`` of 1500-2500 branches, about 0.3 s) is built
  once per file; so is the schema, for coffea's own schema classes, whose form
  does not depend on the metadata (a user's schema class is built per chunk, as
  coffea does);
- one mapping per file evaluates the keys of every chunk, so prefetch threads
  can read any chunk's buffers as soon as the file is open (before the chunk's
  events are built);
- a branch on the basket reader's fast path (:mod:`coffea_smk.io.basketmap`) is
  read from its baskets by coffea_smk's reader, proven against uproot; any other
  branch, and any branch that reader cannot prove, is read by uproot (counted in
  the chunk's ``fallback_branches``);
- read buffers go to coffea_smk's buffer store (the factory's ``buffer_cache``),
  so :mod:`coffea_smk.buffers` (``clear``, ``prefetch``, automatic prefetch) and
  the per-chunk metrics work for coffea events too.

coffea is imported only here, only when needed.
"""

from __future__ import annotations

import copy
import importlib
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from coffea_smk.events.nanoevents import basket_bytes
from coffea_smk.io.basketmap import FLAT, JAGGED
from coffea_smk.io.parquet import ParquetInput
from coffea_smk.io.reader import BasketReader
from coffea_smk.io.rntuple import RNTupleInput

DEFAULT_COFFEA_SCHEMA = "coffea.nanoevents.NanoAODSchema"

_METADATA_FREE_SCHEMAS = (
    "coffea.nanoevents.schemas.base.BaseSchema",
    "coffea.nanoevents.schemas.nanoaod.NanoAODSchema",
    "coffea.nanoevents.schemas.nanoaod.PFNanoAODSchema",
    "coffea.nanoevents.schemas.nanoaod.ScoutingNanoAODSchema",
    "coffea.nanoevents.schemas.physlite.PHYSLITESchema",
    "coffea.nanoevents.schemas.treemaker.TreeMakerSchema",
    "coffea.nanoevents.schemas.delphes.DelphesSchema",
)
"""coffea's schema classes whose form is the same whatever the metadata (read in their
``__init__``: they only add a ``version`` to it): built once per file, not per chunk."""


class SchemaError(ValueError):
    """The configured schema cannot be used; the message says how to fix it."""


def uses_coffea(schema: str, wants_coffea_events: bool) -> bool:
    """Whether events come from coffea for this schema and processor."""
    if schema == "nanoaod":
        return False
    if schema == "auto":
        return wants_coffea_events
    return True


def schema_class(schema: str, wants_coffea_events: bool = False) -> type | None:
    """The coffea schema class to use, or None for coffea_smk's own NanoAOD events.

    Raises:
        SchemaError: coffea is not installed, or the name is not a coffea schema class.
    """
    if not uses_coffea(schema, wants_coffea_events):
        return None
    name = DEFAULT_COFFEA_SCHEMA if schema in ("auto", "coffea") else schema
    module_name, sep, attr = name.partition(":")
    if not sep:
        module_name, _, attr = name.rpartition(".")
    try:
        from coffea.nanoevents.schemas.base import BaseSchema  # noqa: PLC0415 (coffea is optional)
    except ImportError as err:
        why = "the processor is a coffea ProcessorABC" if schema == "auto" else f"schema {schema!r}"
        raise SchemaError(
            f"{why} needs coffea's NanoEvents, but coffea cannot be imported ({err}); "
            "install it with: pip install 'coffea_smk[coffea]' (or set schema: nanoaod)"
        ) from err
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise SchemaError(f"schema {schema!r}: cannot import {name} ({type(err).__name__}: {err})") from err
    if not (isinstance(cls, type) and issubclass(cls, BaseSchema)):
        raise SchemaError(f"schema {schema!r}: {name} is not a coffea schema (a BaseSchema subclass)")
    return cls


class _ChunkSchema:
    """A file's schema with one chunk's metadata: the form's top-level parameters are the
    chunk's, everything else is the file's schema (its form shared, not copied)."""

    def __init__(self, schema: Any, metadata: dict[str, Any]) -> None:
        self._schema = schema
        form = schema.form
        params = form["parameters"]
        # coffea's order: the metadata given, then what the schema's __init__ added to it
        self.form = {**form, "parameters": {**params, "metadata": {**metadata, **params["metadata"]}}}

    def behavior(self) -> Any:
        return self._schema.behavior()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._schema, name)


class CoffeaSource:
    """coffea NanoEvents over one open file, with coffea_smk's store as their buffer cache.

    Implements the key protocol of :mod:`coffea_smk.buffers` on coffea's
    buffer keys (``<uuid>/<tree>/<start>-<stop>/<attribute>/<form key>``).
    """

    def __init__(
        self,
        rootfile: Any,
        tree_getter: Callable[[], Any],
        treename: str,
        schemaclass: type,
        reader: BasketReader,
    ) -> None:
        # made only after schema_class() has found coffea
        from coffea.nanoevents.util import tuple_to_key, unquote  # noqa: PLC0415 (coffea is optional)

        self._tuple_to_key = tuple_to_key
        self._unquote = unquote
        self.rootfile = rootfile
        self.treename = treename
        self.schemaclass = schemaclass
        self.reader = reader
        self.where = reader.where
        self._uuid = str(getattr(rootfile, "file", rootfile).uuid)
        self._tree_getter = tree_getter
        self._tree: Any = None
        self._tree_lock = threading.Lock()
        columnar = isinstance(rootfile, ParquetInput | RNTupleInput)
        self.object_path = rootfile.object_path if columnar else _object_path(rootfile, treename)
        """The tree's path as uproot names it (``/Events;1``), in coffea's partition keys (a
        Parquet input or an RNTuple names its own)."""
        self._mapping = _mapping(self)
        self._base_form: dict[str, Any] | None = None
        self._schema: Any = None
        cls = f"{schemaclass.__module__}.{schemaclass.__qualname__}"
        self._schema_per_file = cls in _METADATA_FREE_SCHEMAS

    @property
    def tree(self) -> Any:
        """The uproot tree (its metadata decoded on first use, once per file)."""
        with self._tree_lock:
            if self._tree is None:
                self._tree = self._tree_getter()
                # uproot's own array cache would keep what coffea_smk's store frees
                self._tree.file.array_cache = None
            return self._tree

    def base_form(self) -> dict[str, Any]:
        """coffea's base form of the tree (a fresh copy: coffea's schemas change what they get).

        Built by coffea's own ``_extract_base_form``, from the basket map when it describes every
        branch (types, titles: no tree metadata decoded), else from uproot's tree.
        """
        if self._base_form is None:
            tree = _MapTree.of(self.reader.map) or self.tree
            form = self._mapping._extract_base_form(tree)
            form["typenames"] = tree.typenames()
            self._base_form = form
        return copy.deepcopy(self._base_form)

    def _schema_for(self, metadata: dict[str, Any]) -> Any:
        if not self._schema_per_file:
            form = self.base_form()
            form["parameters"]["metadata"] = dict(metadata)
            return self.schemaclass(form)
        if self._schema is None:
            form = self.base_form()
            form["parameters"]["metadata"] = {}
            self._schema = self.schemaclass(form)
        return _ChunkSchema(self._schema, metadata)

    def events(
        self, start: int, stop: int, metadata: dict[str, Any], store: Any, attrs: dict[str, Any]
    ) -> Any:
        """coffea's virtual NanoEvents for ``[start, stop)`` of the open file."""
        from coffea.nanoevents import NanoEventsFactory  # noqa: PLC0415 (coffea is optional)

        self._mapping._buffer_cache = store
        partition = self._tuple_to_key((self._uuid, self.object_path, f"{start}-{stop}"))
        factory = NanoEventsFactory(self._schema_for(metadata), self._mapping, partition, mode="virtual")
        events = factory.events()
        for key, value in attrs.items():
            events.attrs[key] = value
        return events

    def fallbacks(self, start: int, stop: int) -> list[str]:
        """Branches read by uproot instead of from their baskets for this entry range."""
        return sorted({*self.reader.fallbacks(start, stop), *self._mapping.by_uproot(start, stop)})

    # ---- the KeySource protocol of coffea_smk.buffers -------------------------------
    def _split(self, key: str) -> tuple[int, int, str, str]:
        _, _, rng, attribute, form_key = key.split("/", 4)
        start, _, stop = self._unquote(rng).partition("-")
        return int(start), int(stop), attribute, self._unquote(form_key)

    def read_key(self, key: str) -> Any:
        out = self._mapping[key]
        return out() if callable(out) else out

    def key_range(self, key: str) -> tuple[int, int]:
        start, stop, _, _ = self._split(key)
        return start, stop

    def key_branches(self, key: str) -> tuple[str, ...]:
        nodes = self._split(key)[3].split(",")
        return tuple(n for n, after in zip(nodes, [*nodes[1:], ""], strict=True) if after.startswith("!load"))

    def key_bytes(self, key: str) -> tuple[int, int]:
        start, stop, _, _ = self._split(key)
        compressed = uncompressed = 0
        for name in self.key_branches(key):
            if self._mapping.fast(name):
                c, u = self.reader.basket_bytes(name, start, stop)
            elif name in self.reader.map.types:
                c, u = basket_bytes(self.tree[name], start, stop)
            else:
                continue
            compressed += c
            uncompressed += u
        return compressed, uncompressed

    def suffix(self, key: str) -> str:
        return key.split("/", 3)[3]

    def key_for(self, suffix: str, start: int, stop: int) -> str | None:
        key = f"{self._tuple_to_key((self._uuid, self.object_path, f'{start}-{stop}'))}/{suffix}"
        if not all(b in self.reader.map.types for b in self.key_branches(key)):
            return None
        return key

    def warm(self, suffixes: Iterable[str], start: int, stop: int) -> Callable[[], None] | None:
        """One request for the baskets of the branches behind ``suffixes`` (remote files)."""
        names: list[str] = []
        for suffix in suffixes:
            key = self.key_for(suffix, start, stop)
            for name in self.key_branches(key) if key is not None else ():
                if self._mapping.fast(name):
                    names += [name, *self._mapping.counter(name)]
        return self.reader.warm(names, start, stop)

    def forget(self, stop: int) -> None:
        """Drop baskets fetched ahead that end at or before ``stop`` (a chunk is done)."""
        self.reader.forget(stop)


def _object_path(rootfile: Any, treename: str) -> str:
    """uproot's ``object_path`` of a tree, from its key (without decoding the tree)."""
    name, _, cycle = treename.lstrip("/").partition(";")
    return f"/{name};{cycle or rootfile.key(name).fCycle}"


class _MapBranch:
    """What coffea's ``_extract_base_form`` asks of a branch, from a basket map: its uproot
    interpretation (made from the type in the map), title and typename."""

    def __init__(self, name: str, interpretation: Any, title: str) -> None:
        self.name = name
        self.interpretation = interpretation
        self.title = title
        self.typename = interpretation.typename


class _MapTree:
    """What coffea's ``_extract_base_form`` asks of a tree, from a basket map."""

    def __init__(self, branches: list[_MapBranch], title: str) -> None:
        self._branches = branches
        self.title = title

    @classmethod
    def of(cls, tmap: Any) -> _MapTree | None:
        """The view of a map in which every branch is a flat or jagged number on the fast path
        (else None: then uproot's tree is decoded); tests hold its base form equal to uproot's."""
        import uproot  # noqa: PLC0415

        if tmap.titles is None or tmap.title is None or tmap.slow:
            return None
        branches = []
        for name, t in tmap.types.items():
            if t.kind == FLAT:
                interpretation = uproot.AsDtype(t.dtype)
            elif t.kind == JAGGED:
                interpretation = uproot.AsJagged(uproot.AsDtype(t.dtype))
            else:
                return None
            branches.append(_MapBranch(name, interpretation, tmap.titles.get(name, "")))
        return cls(branches, tmap.title)

    def iteritems(self, **options: Any) -> Iterable[tuple[str, _MapBranch]]:
        if options:
            raise TypeError(f"unexpected options {options}")
        return ((b.name, b) for b in self._branches)

    def typenames(self) -> dict[str, str]:
        return {b.name: b.typename for b in self._branches}


def _mapping(source: CoffeaSource) -> Any:
    """A coffea source mapping for one file whose fast-path branches coffea_smk's reader reads."""
    import awkward as ak  # noqa: PLC0415
    from coffea.nanoevents.mapping.uproot import UprootSourceMapping  # noqa: PLC0415 (coffea is optional)

    class _Fast:
        """A column handle for a branch read from its baskets."""

        __slots__ = ("name",)

        def __init__(self, name: str) -> None:
            self.name = name

    reader = source.reader
    tmap = reader.map

    class BasketSourceMapping(UprootSourceMapping):  # type: ignore[misc]
        """coffea's uproot mapping (its key grammar and transforms), reading branches on the
        fast path through coffea_smk's basket reader and the others through uproot."""

        def __init__(self) -> None:
            super().__init__(
                fileopener=None,
                start=0,
                stop=tmap.entries,
                cache={},
                file_handle=source.rootfile,
                use_ak_forth=True,
                virtual=True,
            )
            self._by_uproot: dict[tuple[int, int], set[str]] = {}
            self._uproot_lock = threading.Lock()

        def fast(self, name: str) -> bool:
            t = tmap.types.get(name)
            return (
                t is not None
                and t.kind in (FLAT, JAGGED)
                and name not in tmap.slow
                and name not in reader.slow
                and tmap.branch(name).readable
            )

        def counter(self, name: str) -> tuple[str, ...]:
            t = tmap.types[name]
            return (t.counter,) if t.kind == JAGGED else ()

        def by_uproot(self, start: int, stop: int) -> set[str]:
            with self._uproot_lock:
                return set(self._by_uproot.get((start, stop), ()))

        def _column_source(self, uuid: str, path_in_source: str) -> Any:
            return None  # the file's own tree: see get_column_handle

        def get_column_handle(self, columnsource: Any, name: str, allow_missing: bool) -> Any:
            if not allow_missing and self.fast(name):
                return _Fast(name)
            return super().get_column_handle(source.tree, name, allow_missing)

        def extract_column(
            self, columnhandle: Any, start: int, stop: int, allow_missing: bool, use_ak_forth: bool = True
        ) -> Any:
            if isinstance(columnhandle, _Fast):
                out = _read_fast(columnhandle.name, start, stop)
                if out is not None:
                    return out
                columnhandle = source.tree[columnhandle.name]
            if columnhandle is not None:
                with self._uproot_lock:
                    self._by_uproot.setdefault((start, stop), set()).add(columnhandle.name)
            return super().extract_column(columnhandle, start, stop, allow_missing, use_ak_forth)

    def _read_fast(name: str, start: int, stop: int) -> Any:
        """The branch as uproot gives it, or None when its values and its counter disagree
        (then uproot reads it, from the offsets in its baskets)."""
        values, _, _ = reader.read(name, start, stop)
        t = tmap.types[name]
        if t.kind == FLAT:
            return ak.Array(ak.contents.NumpyArray(values))
        counts, _, _ = reader.read(t.counter, start, stop)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        if int(offsets[-1]) != len(values):
            reader.slow[name] = (
                f"{len(values)} values in entries {start}-{stop}, its counter {t.counter} says "
                f"{int(offsets[-1])}"
            )
            return None
        layout = ak.contents.ListOffsetArray(ak.index.Index64(offsets), ak.contents.NumpyArray(values))
        return ak.Array(layout)

    return BasketSourceMapping()
