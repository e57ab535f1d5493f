"""Reading a work unit's events: one buffer store per file, automatic prefetch across chunks.

The processing loop opens each file once and asks a :class:`UnitReader` for
the file's :class:`FileReader`; each chunk is then a :class:`ChunkRun` (a
context manager) whose ``events`` the processor gets. Events are coffea_smk's
own lazy NanoAOD events, or coffea's NanoEvents (virtual mode) for coffea
processors and coffea schemas (:mod:`coffea_smk.events.coffea`).

A Parquet file (:class:`~coffea_smk.io.parquet.ParquetInput`) gets the same events, its
columns read per row group by a :class:`~coffea_smk.io.parquet.ParquetReader` in the
basket reader's place.

Automatic prefetch (config ``prefetch: true``): the buffers the processor
touched in a chunk are, for the next chunks of the unit, read by background
threads while the processor computes: those of the current chunk (last
touched first, since the processor takes the first ones itself at once), then
those of the next chunk of the same file. Prefetched bytes not yet used by the
processor are bounded by ``prefetch_max_mb``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast

from coffea_smk import buffers
from coffea_smk.buffers import ATTR, Budget, BufferManager, FileBuffers, Prefetcher, ReadStats
from coffea_smk.engine import metrics
from coffea_smk.engine.meta import ChunkMetrics
from coffea_smk.events.coffea import CoffeaSource, schema_class
from coffea_smk.events.nanoevents import TreeLayout
from coffea_smk.io.basketmap import BasketMapError, TreeMap, map_path
from coffea_smk.io.files import InputFileError, rntuple_of, tree_of
from coffea_smk.io.parquet import ParquetInput, ParquetReader
from coffea_smk.io.reader import BasketReader, local_fetch, source_fetch, source_fetch_many, uproot_fallback
from coffea_smk.io.rntuple import RNTupleInput, RNTupleReader
from coffea_smk.spec.settings import EventsOptions
from coffea_smk.util.atomic import write_json

__all__ = ["ChunkRun", "ColumnHint", "EventsError", "EventsOptions", "FileReader", "SourceFile", "UnitReader"]

log = logging.getLogger("coffea_smk.engine.reading")


class EventsError(RuntimeError):
    """The events of a chunk cannot be built (e.g. coffea's schema fails on the file)."""


class SourceFile(Protocol):
    """What reading needs of a file's record (a :class:`~coffea_smk.engine.records.PlanFile`)."""

    @property
    def path(self) -> str: ...
    @property
    def treename(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def uuid(self) -> str: ...
    @property
    def record_path(self) -> str | None:
        """The preprocessing record, beside which its basket map lies."""


class ColumnHint:
    """The columns the processor read in a dataset's units (``<outdir>/cache/columns/``).

    A unit learns them in its first chunk and writes them down once; a unit that
    starts later prefetches them from its first chunk on (in one request per
    chunk for a remote file) instead of reading them one by one as the processor
    asks. Only a hint: it never changes what is computed, and a wrong or unreadable
    one costs only bytes read in vain (the unit then goes by what it touches).
    """

    def __init__(self, path: Path, others: Iterable[Path] = ()) -> None:
        self.path = path
        self.others = others
        """Hints of other datasets of the analysis: the newest is used while this one has none."""
        self._written = False

    def load(self) -> list[str]:
        found = _read_hint(self.path)
        if found is None:
            newest = max((p for p in self.others if p.exists()), key=_mtime, default=None)
            found = _read_hint(newest) if newest is not None else None
        return found or []

    def save(self, columns: list[str]) -> None:
        if self._written:
            return
        self._written = True
        try:
            if _read_hint(self.path) != columns:
                write_json(self.path, columns)
        except OSError as err:
            log.debug("%s: cannot write the column hint (%s)", self.path, err)


def _read_hint(path: Path) -> list[str] | None:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return [c for c in found if isinstance(c, str)] if isinstance(found, list) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class UnitReader:
    """The reading side of one work unit (a context manager)."""

    def __init__(
        self,
        options: EventsOptions | None = None,
        wants_coffea_events: bool = False,
        hint: ColumnHint | None = None,
    ) -> None:
        self.options = options or EventsOptions()
        self.schemaclass = schema_class(self.options.schema_, wants_coffea_events)
        self.hint = hint
        self.learned: list[str] = hint.load() if hint is not None else []
        self.prefetcher: Prefetcher | None = None
        self._sender: ThreadPoolExecutor | None = None
        if self.options.prefetch:
            budget = Budget(self.options.prefetch_max_mb * 1024 * 1024)
            self.prefetcher = Prefetcher(self.options.prefetch_threads, budget, name="auto")

    def __enter__(self) -> UnitReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
        if self._sender is not None:
            self._sender.shutdown(wait=True, cancel_futures=True)

    def send(self, request: Callable[[], None]) -> None:
        """Send a batched read (of a remote file) in the background."""
        if self._sender is None:
            self._sender = ThreadPoolExecutor(2, thread_name_prefix="coffea_smk-warm")
        self._sender.submit(request)

    def open(self, rootfile: Any, file: SourceFile, ranges: list[tuple[int, int]]) -> FileReader:
        """The reader of one open file (its record in the plan); ``ranges`` are the unit's
        chunks in it, in order."""
        if isinstance(rootfile, ParquetInput):
            return self._open_columnar(rootfile, ParquetReader(rootfile), file, ranges)
        path, treename = file.path, file.treename
        rinput = rntuple_of(rootfile, path, treename)
        if rinput is not None:
            return self._open_columnar(rinput, RNTupleReader(rinput), file, ranges)
        closing: Callable[[], None] | None = None
        tmap = _basket_map(file)
        if tmap is None:  # no usable map: read the tree's metadata here
            tmap = TreeMap.read(rootfile, path, treename, file.uuid)
        trees: list[Any] = []

        def tree() -> Any:  # the uproot tree, decoded once, when first needed (fallbacks, coffea)
            if not trees:
                trees.append(tree_of(rootfile, path, treename))
            return trees[0]

        fetch_many = None
        if "://" in path:
            # remote: the baskets of a column range in one (vector) request
            fetch, fetch_many = source_fetch(rootfile), source_fetch_many(rootfile)
        else:
            # positioned reads into private buffers, freed once decompressed (reading
            # through the memory map would keep every page read in the job's RSS)
            fetch, closing = local_fetch(path)
        reader = BasketReader(tmap, fetch, path, uproot_fallback(tree), fetch_many)
        if self.schemaclass is None:
            source: Any = TreeLayout(tmap, reader)
        else:
            source = CoffeaSource(rootfile, tree, treename, self.schemaclass, reader)
        return FileReader(self, source, file.key, ranges, closing)

    def _open_columnar(
        self,
        opened: ParquetInput | RNTupleInput,
        columnar: ParquetReader | RNTupleReader,
        file: SourceFile,
        ranges: list[tuple[int, int]],
    ) -> FileReader:
        """A Parquet file's or an RNTuple's reader: it has the basket reader's interface (map,
        read, basket_bytes, ...), and every column it reads is in its map (no tree to ask)."""
        reader = cast(BasketReader, columnar)
        if self.schemaclass is None:
            source: Any = TreeLayout(opened, reader)
        else:
            no_tree = partial(_no_tree, opened.path)
            source = CoffeaSource(opened, no_tree, file.treename, self.schemaclass, reader)
        return FileReader(self, source, file.key, ranges)


def _no_tree(path: str) -> Any:
    """What coffea's mapping gets for a column not in a Parquet file's or an RNTuple's map."""
    raise InputFileError(
        f"{path}: coffea's NanoEvents ask for a column this file does not hold as numbers (it is "
        "a Parquet file or an RNTuple, with no TTree to read it from): write the file with that "
        "column, or use schema: nanoaod"
    )


def _basket_map(file: SourceFile) -> TreeMap | None:
    """The basket map that preprocessing kept for this file, or None (then say why)."""
    if not file.record_path:
        return None  # e.g. a file opened outside a planned analysis
    try:
        return TreeMap.load(map_path(file.record_path), file.key, file.uuid)
    except BasketMapError as err:
        log.warning("%s: %s; decoding the tree's metadata instead", file.path, err)
        return None


class FileReader:
    """The chunks of one file; a context manager that ends the file's background reads."""

    def __init__(
        self,
        unit: UnitReader,
        source: Any,
        key: str,
        ranges: list[tuple[int, int]],
        closing: Callable[[], None] | None = None,
    ) -> None:
        self.unit = unit
        self._closing = closing
        self.source = source
        self.key = key
        """The file's key (chunk metrics name the file by it)."""
        self.ranges = list(ranges)
        self.store = FileBuffers(source)

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancel queued reads of this file and wait for those in flight (before it is closed)."""
        if self.unit.prefetcher is not None:
            self.unit.prefetcher.cancel(self.store)
        self.store.close()
        if self._closing is not None:
            self._closing()
            self._closing = None

    def chunk(self, start: int, stop: int, metadata: dict[str, Any]) -> ChunkRun:
        return ChunkRun(self, start, stop, metadata)

    def _send(self, send: Callable[[], None], start: int, stop: int) -> None:
        """A batched read in the background; its failure is counted (the reads send their own)."""
        try:
            send()
        except Exception as err:
            log.warning(
                "%s: a batched read for entries %d-%d failed (%s: %s); its columns are read one by one",
                self.source.where,
                start,
                stop,
                type(err).__name__,
                err,
            )
            self.store.note_prefetch_error(start, stop)

    def read_ahead(self) -> None:
        """Start prefetching the file's first chunk (e.g. while the unit's previous file is processed)."""
        if self.ranges:
            self._prefetch(*self.ranges[0], ahead=False)

    def _prefetch(self, start: int, stop: int, ahead: bool = True) -> None:
        prefetcher, learned = self.unit.prefetcher, self.unit.learned
        if prefetcher is None or not learned:
            return
        todo = [(start, stop)]
        if ahead and (start, stop) in self.ranges:
            i = self.ranges.index((start, stop))
            todo += self.ranges[i + 1 : i + 2]  # read ahead into the next chunk of this file
        warm = getattr(self.source, "warm", None)  # remote files: one request per chunk
        for s, e in todo:
            # what the store holds or reads already (e.g. prefetched as the next chunk) is not fetched again
            wanted = [x for x in learned if not self.store.known(self.source.key_for(x, s, e) or "")]
            send = warm(wanted, s, e) if warm is not None else None
            if send is not None:
                self.unit.send(partial(self._send, send, s, e))
            # Last-touched first: the processor reads the first ones itself as soon
            # as it starts (taking them off the queue), the thread works from the
            # other end, and both read at once instead of one behind the other.
            keys = [k for k in (self.source.key_for(x, s, e) for x in reversed(learned)) if k is not None]
            prefetcher.submit(self.store, keys)


class ChunkRun:
    """One chunk: its lazy events, its buffer manager and, after it, its metrics."""

    def __init__(self, reader: FileReader, start: int, stop: int, metadata: dict[str, Any]) -> None:
        self.reader = reader
        self.start = start
        self.stop = stop
        self.metadata = metadata
        self.events: Any = None
        self.manager: BufferManager | None = None
        self.stats = ReadStats()
        self.events_s = 0.0
        self._token: Any = None

    def __enter__(self) -> ChunkRun:
        metrics.reset_peak_rss()
        t0 = time.perf_counter()
        reader = self.reader
        reader._prefetch(self.start, self.stop)
        self.manager = BufferManager(reader.store, self.start, self.stop)
        try:
            self.events = reader.source.events(
                self.start, self.stop, self.metadata, store=reader.store, attrs={ATTR: self.manager}
            )
        except Exception as err:
            raise EventsError(
                f"building the events of {reader.source.where}, entries {self.start}-{self.stop}, "
                f"failed: {type(err).__name__}: {err}"
            ) from err
        self.manager.events = self.events
        self._token = buffers.activate(self.manager)
        self.events_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        buffers.deactivate(self._token)
        assert self.manager is not None
        self.manager.close()
        self.stats = self.reader.store.end_chunk(self.start, self.stop)
        if self.stats.touched:
            unit = self.reader.unit
            unit.learned = [self.reader.source.suffix(k) for k in self.stats.touched]
            if unit.hint is not None:
                unit.hint.save(unit.learned)
        forget = getattr(self.reader.source, "forget", None)
        if forget is not None:
            forget(self.stop)
        self.manager.events = None
        self.events = None

    def metrics(self, process_s: float, total_s: float) -> ChunkMetrics:
        """The chunk's metrics record (after the ``with`` block)."""
        fallbacks = getattr(self.reader.source, "fallbacks", None)
        return metrics.chunk_metrics(
            self.stats,
            file=self.reader.key,
            start=self.start,
            stop=self.stop,
            events_s=self.events_s,
            process_s=process_s,
            total_s=total_s,
            fallback_branches=fallbacks(self.start, self.stop) if fallbacks is not None else [],
        )
