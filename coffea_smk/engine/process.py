"""Processing one work unit: open each file once, call the processor per chunk, accumulate.

The error policy decides what a failing file open or chunk does, from the
whole exception chain (the root cause counts, however wrapped): a transient
I/O error (a reset, a timeout) is retried in the job with back-off (flaky
storage); an exception of a ``continue_on`` type anywhere in the chain marks
the chunk failed, or every chunk of a file that cannot be opened (recorded in
the failure manifest, left out of the partial result, retried on the next
run), and the unit goes on; anything else stops the job with a message that
names the dataset, file and entry range.
"""

from __future__ import annotations

import logging
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
from pydantic import ValidationError

from coffea_smk import results as storage
from coffea_smk.engine.accumulate import AccumulateError, add
from coffea_smk.engine.damaged import describe, discard
from coffea_smk.engine.meta import ChunkFailure, ChunkMetrics, UnitFailures, UnitMeta, ranges_of
from coffea_smk.engine.policy import ChunkError, continues, retrying
from coffea_smk.engine.preprocess import StaleRecordError
from coffea_smk.engine.reading import ColumnHint, FileReader, UnitReader
from coffea_smk.engine.records import Plan, PlanFile
from coffea_smk.engine.skim import Rows, UnitSkims, chunk_skims
from coffea_smk.io.faults import causes
from coffea_smk.io.files import open_file
from coffea_smk.spec.processor import Processor
from coffea_smk.spec.settings import ErrorPolicy, EventsOptions
from coffea_smk.spec.skims import SkimSettings
from coffea_smk.util.atomic import write_json
from coffea_smk.util.ranges import coalesce, covered

__all__ = ["ChunkError", "process_unit_to_file", "run_unit"]

log = logging.getLogger("coffea_smk.process")


@dataclass
class _UnitState:
    plan: Plan
    policy: ErrorPolicy
    tracebacks: Path | None
    accumulator: Any = None
    ranges: dict[str, list[list[int]]] = field(default_factory=dict)
    metrics: list[ChunkMetrics] = field(default_factory=list)
    failed: list[ChunkFailure] = field(default_factory=list)
    skims: UnitSkims = field(default_factory=UnitSkims)


def run_unit(
    plan: Plan,
    unit_id: str,
    processor: Processor,
    policy: ErrorPolicy | None = None,
    previous: tuple[Any, UnitMeta] | None = None,
    tracebacks: Path | None = None,
    events: EventsOptions | None = None,
    *,
    attempt: int = 0,
    hint: ColumnHint | None = None,
    skims: UnitSkims | None = None,
) -> tuple[Any, UnitMeta]:
    """Process the chunks of a work unit that ``previous`` does not already cover.

    Args:
        plan: The dataset's plan.
        unit_id: The work unit's id.
        processor: The user's processor.
        policy: What a failing file open or chunk does.
        previous: The result and meta of the unit's previous attempt, if this is a retry.
        tracebacks: Where the tracebacks of failed chunks go: ``<tracebacks>-<file key>-<start>-<stop>.txt``.
        events: How to build and read events.
        attempt: Which attempt this is (0 for the first run of the unit).
        hint: The columns earlier units of the dataset read (prefetched from the first chunk on).
        skims: Where the rows of the chunks' skims go (a new one when not given).

    Returns:
        The accumulated output and the unit's meta record (events, entry ranges
        covered, per-chunk metrics, failed chunks).
    """
    unit = plan.unit(unit_id)
    files = plan.files
    state = _UnitState(plan, policy or ErrorPolicy(), tracebacks, skims=skims or UnitSkims())
    done: dict[str, list[list[int]]] = {}
    if previous is not None:
        state.accumulator, before = previous
        state.metrics = list(before.chunks)
        done = {k: [list(r) for r in v] for k, v in before.ranges.items()}
        state.ranges = {k: [list(r) for r in v] for k, v in done.items()}
    todo = [c for c in unit.chunks if not covered(done.get(files[c.file].key, []), c.start, c.stop)]
    log.info("unit %s attempt %d: %d of %d chunks to process", unit_id, attempt, len(todo), len(unit.chunks))
    groups = [(i, [(c.start, c.stop) for c in cs]) for i, cs in groupby(todo, key=lambda c: c.file)]
    with (
        UnitReader(events, processor.wants_coffea_events, hint) as reader,
        _OpenAhead(reader, files) as ahead,
    ):
        for n, (file_index, chunks) in enumerate(groups):
            record = files[file_index]
            opened = ahead.take(file_index)
            tries = 0
            if opened is None:
                opened, err, tries = retrying(
                    state.policy, f"opening {record.path}", partial(_open, reader, record, chunks)
                )
                if err is not None:
                    if not continues(state.policy, err):
                        raise err
                    # the file's chunks fail, the unit's other files go on
                    for start, stop in chunks:
                        _record_failure(state, record, start, stop, err, tries + 1)
                    continue
            assert opened is not None
            if n + 1 < len(groups):
                ahead.start(*groups[n + 1])
            rootfile, source = opened
            with rootfile, source:
                for start, stop in chunks:
                    _run_with_policy(state, record, source, start, stop, processor)
    meta = UnitMeta(
        dataset=plan.dataset,
        unit=unit_id,
        attempt=attempt,
        events=sum(b - a for rs in state.ranges.values() for a, b in rs),
        ranges={key: ranges_of(coalesce(r)) for key, r in state.ranges.items()},
        chunks=tuple(state.metrics),
        failed=tuple(state.failed),
    )
    return state.accumulator, meta


class _OpenAhead:
    """Opens a unit's next remote file in the background while the current one is processed:
    opening costs a few round trips to the storage, hidden this way.

    Only a head start: a background open that fails is forgotten, and the file is then
    opened (and retried) by the unit under its error policy as usual.
    """

    def __init__(self, reader: UnitReader, files: tuple[PlanFile, ...]) -> None:
        self.reader = reader
        self.files = files
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[int, Future[tuple[Any, FileReader]]] | None = None

    def __enter__(self) -> _OpenAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pending is not None:  # opened but not used (the unit stopped): close it
            opened = self._result(self._pending[1])
            if opened is not None:
                opened[1].close()
                opened[0].close()
        if self._pool is not None:
            self._pool.shutdown()

    def start(self, file_index: int, chunks: list[tuple[int, int]]) -> None:
        record = self.files[file_index]
        if "://" not in record.path:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="coffea_smk-open")
        self._pending = (file_index, self._pool.submit(_open_ahead, self.reader, record, chunks))

    def take(self, file_index: int) -> tuple[Any, FileReader] | None:
        """The file opened ahead, or None (not opened ahead, or it failed)."""
        if self._pending is None or self._pending[0] != file_index:
            return None
        future, self._pending = self._pending[1], None
        return self._result(future)

    def _result(self, future: Future[tuple[Any, FileReader]]) -> tuple[Any, FileReader] | None:
        try:
            return future.result()
        except Exception as err:
            log.debug("opening ahead failed (%s: %s): opening it in turn", type(err).__name__, err)
            return None


def _open_ahead(
    reader: UnitReader, record: PlanFile, chunks: list[tuple[int, int]]
) -> tuple[Any, FileReader]:
    """Open a file and start reading its first chunk's columns in the background (if prefetching)."""
    rootfile, source = _open(reader, record, chunks)
    source.read_ahead()
    return rootfile, source


def _open(reader: UnitReader, record: PlanFile, chunks: list[tuple[int, int]]) -> tuple[Any, FileReader]:
    """Open a file, check it is the one preprocessed, and make its reader.

    Raises:
        InputFileError: It cannot be opened (the cause says why).
        StaleRecordError: It changed since it was preprocessed.
    """
    rootfile = open_file(record.path)
    try:
        uuid = str(rootfile.file.uuid)
        if uuid != record.uuid:
            raise StaleRecordError(
                f"{record.path}: the file changed since it was preprocessed (UUID {record.uuid} "
                f"became {uuid}) although its size and modification time did not; its records were "
                "invalidated: run again to preprocess it anew",
                key=record.key,
                uuid=uuid,
            )
        # without a basket map (or for coffea's events) this reads the tree's metadata
        return rootfile, reader.open(rootfile, record, chunks)
    except BaseException:
        rootfile.close()
        raise


def _run_with_policy(
    state: _UnitState,
    record: PlanFile,
    source: FileReader,
    start: int,
    stop: int,
    processor: Processor,
) -> None:
    done, err, tries = retrying(
        state.policy,
        f"chunk {record.path} [{start}, {stop})",
        lambda: _run_chunk(state.plan, record, source, start, stop, processor),
    )
    if err is not None:
        if not continues(state.policy, err):
            raise err
        failure = err.__cause__ if isinstance(err, ChunkError) and err.__cause__ is not None else err
        _record_failure(state, record, start, stop, failure, tries + 1)
        return
    assert done is not None
    output, metrics, rows = done
    try:
        state.accumulator = add(state.accumulator, output)
    except AccumulateError as acc_err:
        raise ChunkError(
            f"dataset {state.plan.dataset!r}, file {record.path}, entries {start}-{stop}: "
            f"the processor's output cannot be accumulated: {acc_err}"
        ) from acc_err
    state.ranges.setdefault(record.key, []).append([start, stop])
    state.skims.add(rows, record.key, start, stop)
    state.metrics.append(metrics.model_copy(update={"retries": tries}))


def _record_failure(
    state: _UnitState, record: PlanFile, start: int, stop: int, err: BaseException, attempts: int
) -> None:
    text = "".join(traceback.format_exception(err))
    root = causes(err)[-1]
    tb_file = None
    if state.tracebacks is not None:
        tb_path = state.tracebacks.with_name(f"{state.tracebacks.name}-{record.key}-{start}-{stop}.txt")
        tb_path.parent.mkdir(parents=True, exist_ok=True)
        tb_path.write_text(text)
        tb_file = str(tb_path.resolve())
    log.error(
        "chunk %s [%d, %d) of dataset %r failed (%s: %s); continuing (continue_on)",
        record.path,
        start,
        stop,
        state.plan.dataset,
        type(err).__name__,
        err,
    )
    state.failed.append(
        ChunkFailure(
            dataset=state.plan.dataset,
            file=record.path,
            file_key=record.key,
            entrystart=start,
            entrystop=stop,
            events=stop - start,
            exception=_type_name(err),
            message=str(err),
            cause=f"{_type_name(root)}: {root}" if root is not err else None,
            traceback_file=tb_file,
            attempts=attempts,
        )
    )


def _type_name(err: BaseException) -> str:
    return f"{type(err).__module__}.{type(err).__qualname__}"


def _run_chunk(
    plan: Plan, record: PlanFile, source: FileReader, start: int, stop: int, processor: Processor
) -> tuple[Any, ChunkMetrics, dict[str, Rows]]:
    metadata = {
        **plan.metadata,
        "dataset": plan.dataset,
        "filename": record.path,
        "treename": record.treename,
        "entrystart": start,
        "entrystop": stop,
        "fileuuid": record.uuid,
    }
    t0 = time.perf_counter()
    with source.chunk(start, stop, metadata) as chunk:
        try:
            output = processor.process(chunk.events)
        except Exception as err:
            tb = "".join(traceback.format_exception(err))
            raise ChunkError(
                f"processor {processor.spec} failed on dataset {plan.dataset!r}, file {record.path}, "
                f"entries {start}-{stop}: {type(err).__name__}: {err}\n\nprocessor traceback:\n{tb}"
            ) from err
        where = f"dataset {plan.dataset!r}, file {record.path}, entries {start}-{stop}"
        output, rows = chunk_skims(output, chunk.events, where)
        gen_sumw = None if plan.runs_sumw is not None else _gen_sumw(chunk.events)
    t_process = time.perf_counter() - t0
    metrics = chunk.metrics(t_process, time.perf_counter() - t0)
    if gen_sumw is not None:
        metrics = metrics.model_copy(update={"gen_sumw": gen_sumw, "gen_weighted_events": stop - start})
    return output, metrics, rows


def _gen_sumw(events: Any) -> float | None:
    """The chunk's sum of generator weights (``genWeight``), or None without that branch (data)."""
    try:
        weights = events.genWeight
    except (AttributeError, KeyError):
        return None
    return float(np.sum(ak.to_numpy(weights), dtype=np.float64))


def load_previous(path: str, *, allow_pickle: bool = False) -> tuple[Any, UnitMeta]:
    """The result and meta of a unit's previous attempt; a damaged one is removed (then run again).

    So is one holding pickles when ``allow_pickle`` is off: this analysis writes none.
    """
    try:
        stored = storage.load_stored(path, allow_pickle=allow_pickle)
        return stored.result, UnitMeta.model_validate(stored.meta)
    except storage.ResultFileError as err:
        raise discard(path, str(err), storage.ResultFileError) from None
    except ValidationError as err:
        raise discard(
            path, f"{path} is not a partial result ({describe(err)})", storage.ResultFileError
        ) from None


def process_unit_to_file(
    plan: Plan,
    unit_id: str,
    processor: Processor,
    out_path: str,
    *,
    attempt: int = 0,
    policy: ErrorPolicy | None = None,
    previous_path: str | None = None,
    failures_path: str | None = None,
    allow_pickle: bool = False,
    events: EventsOptions | None = None,
    hint: ColumnHint | None = None,
    skim_settings: SkimSettings | None = None,
) -> UnitMeta:
    """Run a unit and write its partial result atomically; return the meta record.

    With failed chunks, the failure manifest is written first (at
    ``failures_path``), then the partial: the next run sees the manifest and
    schedules a retry of only those chunks. Tracebacks of failed chunks go to
    ``tracebacks/`` beside the manifest, named after it. The rows of the output's skims
    go to piece files beside ``out_path`` (see :mod:`coffea_smk.engine.skim`).
    """
    t0 = time.perf_counter()
    previous = load_previous(previous_path, allow_pickle=allow_pickle) if previous_path else None
    tracebacks = None
    if failures_path:
        manifest = Path(failures_path)
        tracebacks = manifest.parent / "tracebacks" / manifest.stem
    skims = UnitSkims()
    result, meta = run_unit(
        plan,
        unit_id,
        processor,
        policy,
        previous,
        tracebacks,
        events,
        attempt=attempt,
        hint=hint,
        skims=skims,
    )
    result = skims.write(result, out_path, skim_settings or SkimSettings())
    meta = meta.model_copy(update={"wall_s": round(time.perf_counter() - t0, 6)})
    if meta.failed and failures_path:
        failures = UnitFailures(dataset=plan.dataset, unit=unit_id, failed=meta.failed)
        write_json(failures_path, failures.model_dump(mode="json"))
    storage.save(out_path, result, meta.model_dump(mode="json"), allow_pickle=allow_pickle)
    log.info(
        "unit %s: %d events in %.2f s, %d chunks failed", unit_id, meta.events, meta.wall_s, len(meta.failed)
    )
    return meta
