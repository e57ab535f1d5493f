"""Running coffea processors unchanged: events from coffea's own ``NanoEventsFactory``.

A processor that subclasses ``coffea.processor.ProcessorABC`` (with the
default ``schema: auto``), or any processor when the config says ``schema:
coffea`` or names a coffea schema class (``coffea.nanoevents.NanoAODSchema``,
``coffea.nanoevents.PHYSLITESchema``, ``mypackage.schemas:MySchema``), gets
coffea's NanoEvents in virtual mode: cross-references
(``events.Muon.matched_jet``), coffea's behaviours and methods work as under
coffea's own Runner.

Differences from coffea's Runner, all on the reading side: the file is opened
once per work unit and its handle passed to ``NanoEventsFactory.from_root``
(coffea's Runner opens it again for every chunk); read buffers go to
coffea_smk's buffer store (the factory's ``buffer_cache``), so
:mod:`coffea_smk.buffers` (``clear``, ``prefetch``, automatic prefetch) and the
per-chunk metrics work for coffea events too. coffea is imported only here,
only when needed.
"""

from __future__ import annotations

import importlib
from typing import Any

from coffea_smk.events.nanoevents import basket_bytes

DEFAULT_COFFEA_SCHEMA = "coffea.nanoevents.NanoAODSchema"


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


class CoffeaSource:
    """coffea NanoEvents over one open file, with coffea_smk's store as their buffer cache.

    Implements the key protocol of :mod:`coffea_smk.buffers` on coffea's
    buffer keys (``<uuid>/<tree>/<start>-<stop>/<attribute>/<form key>``).
    """

    def __init__(self, rootfile: Any, tree: Any, treename: str, schemaclass: type) -> None:
        # made only after schema_class() has found coffea
        from coffea.nanoevents import NanoEventsFactory  # noqa: PLC0415 (coffea is optional)
        from coffea.nanoevents.util import tuple_to_key, unquote  # noqa: PLC0415 (coffea is optional)

        self._factory = NanoEventsFactory
        self._tuple_to_key = tuple_to_key
        self._unquote = unquote
        self.rootfile = rootfile
        self.tree = tree
        self.treename = treename
        self.schemaclass = schemaclass
        self.file = tree.file
        self.where = str(getattr(self.file, "file_path", "") or tree.object_path)
        self._uuid = str(self.file.uuid)
        self._branches = set(tree.keys(recursive=False))
        self._mapping: Any = None
        # uproot's own array cache would keep what coffea_smk's store frees
        self.file.array_cache = None

    def events(
        self, start: int, stop: int, metadata: dict[str, Any], store: Any, attrs: dict[str, Any]
    ) -> Any:
        """coffea's virtual NanoEvents for ``[start, stop)`` of the open file."""
        factory = self._factory.from_root(
            self.rootfile,
            treepath=self.treename,
            entry_start=start,
            entry_stop=stop,
            schemaclass=self.schemaclass,
            metadata=dict(metadata),
            mode="virtual",
            buffer_cache=store,
        )
        # coffea's private key -> buffer mapping: read_key reads through it what a prefetch
        # thread asks for before the events touch it (None: read_key says no events yet)
        self._mapping = getattr(factory, "_mapping", None)
        events = factory.events()
        for key, value in attrs.items():
            events.attrs[key] = value
        return events

    # ---- the KeySource protocol of coffea_smk.buffers -------------------------------
    def _split(self, key: str) -> tuple[int, int, str, str]:
        _, _, rng, attribute, form_key = key.split("/", 4)
        start, _, stop = self._unquote(rng).partition("-")
        return int(start), int(stop), attribute, self._unquote(form_key)

    def read_key(self, key: str) -> Any:
        if self._mapping is None:
            raise RuntimeError("no coffea events were built for this file yet")
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
            if name in self._branches:
                c, u = basket_bytes(self.tree[name], start, stop)
                compressed += c
                uncompressed += u
        return compressed, uncompressed

    def suffix(self, key: str) -> str:
        return key.split("/", 3)[3]

    def key_for(self, suffix: str, start: int, stop: int) -> str | None:
        key = f"{self._tuple_to_key((self._uuid, self.tree.object_path, f'{start}-{stop}'))}/{suffix}"
        if not all(b in self._branches for b in self.key_branches(key)):
            return None
        return key
