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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Any, TypeVar

from coffea_smk import results as storage
from coffea_smk.engine.accumulate import AccumulateError, add
from coffea_smk.engine.plan import unit_by_id
from coffea_smk.engine.preprocess import StaleRecordError
from coffea_smk.engine.reading import EventsOptions, FileReader, UnitReader
from coffea_smk.io.faults import causes, matches, transient
from coffea_smk.io.files import open_file
from coffea_smk.spec.processor import Processor
from coffea_smk.util.atomic import write_json
from coffea_smk.util.ranges import coalesce, covered

log = logging.getLogger("coffea_smk.process")

T = TypeVar("T")


class ChunkError(RuntimeError):
    """The processor failed on a chunk; the message says which and shows its traceback."""


@dataclass(frozen=True)
class ErrorPolicy:
    """What a failing file open or chunk does.

    Both decisions read the whole exception chain (:func:`coffea_smk.io.faults.causes`):
    a storage error arrives wrapped (in ``InputFileError``, ``BufferReadError``,
    by awkward, coffea or the processor), and its root cause is what counts.
    """

    continue_on: tuple[str, ...] = ()
    """Exception type names (``OSError``, ``mymod.MyError``) that fail only the chunk."""
    retries: int = 2
    """In-job retries of a file open or a chunk after a transient I/O error."""
    backoff: float = 1.0
    """Seconds before the first retry, doubled for each further one."""

    def continues(self, err: BaseException) -> bool:
        """Whether an exception of ``err``'s chain is of a ``continue_on`` type.

        ``ChunkError`` (coffea_smk's wrapper around every failure of ``process()``)
        is not looked at, so ``continue_on: [RuntimeError]`` does not catch all.
        Never on an ``AccumulateError`` (the accumulator may be half-updated) or
        a ``StaleRecordError`` (the job must stop so that the file is preprocessed again).
        """
        chain = causes(err)
        if any(isinstance(e, (AccumulateError, StaleRecordError)) for e in chain):
            return False
        return matches(err, self.continue_on, skip=(ChunkError,))

    def retryable(self, err: BaseException) -> bool:
        """Whether the root cause is a transient I/O error (a reset, a timeout; not a missing file)."""
        return transient(err)


@dataclass
class _UnitState:
    accumulator: Any = None
    ranges: dict[str, list[list[int]]] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


def run_unit(
    plan: dict[str, Any],
    unit_name: str,
    processor: Processor,
    policy: ErrorPolicy | None = None,
    previous: storage.Stored | None = None,
    traceback_dir: Path | None = None,
    events: EventsOptions | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Process the chunks of a work unit that ``previous`` does not already cover.

    Returns:
        The accumulated output and the unit's meta record (events, entry ranges
        covered, per-chunk metrics, failed chunks).
    """
    from coffea_smk.smk.layout import split_attempt

    policy = policy or ErrorPolicy()
    unit_id, attempt = split_attempt(unit_name)
    unit = unit_by_id(plan, unit_id)
    files = plan["files"]
    state = _UnitState()
    done: dict[str, list[list[int]]] = {}
    if previous is not None:
        state.accumulator = previous.result
        state.metrics = list(previous.meta.get("chunks", []))
        done = {k: [list(r) for r in v] for k, v in previous.meta.get("ranges", {}).items()}
        state.ranges = {k: [list(r) for r in v] for k, v in done.items()}
    todo = [c for c in unit["chunks"] if not covered(done.get(files[c[0]]["key"], []), c[1], c[2])]
    log.info(
        "unit %s attempt %d: %d of %d chunks to process", unit_id, attempt, len(todo), len(unit["chunks"])
    )
    with UnitReader(events, processor.wants_coffea_events) as reader:
        for file_index, chunks_iter in groupby(todo, key=lambda c: c[0]):
            chunks = [(start, stop) for _, start, stop in chunks_iter]
            record = files[file_index]
            opened, err, tries = _retrying(
                policy, f"opening {record['path']}", partial(_open, reader, record, chunks)
            )
            if err is not None:
                if not policy.continues(err):
                    raise err
                # the file's chunks fail, the unit's other files go on
                for start, stop in chunks:
                    _record_failure(
                        state, plan, record, start, stop, err, tries + 1, traceback_dir, unit_name
                    )
                continue
            assert opened is not None
            rootfile, source = opened
            with rootfile, source:
                for start, stop in chunks:
                    _run_with_policy(
                        state, plan, record, source, start, stop, processor, policy, traceback_dir, unit_name
                    )
    meta = {
        "dataset": plan["dataset"],
        "unit": unit_name,
        "attempt": attempt,
        "events": sum(b - a for rs in state.ranges.values() for a, b in rs),
        "ranges": {key: coalesce(r) for key, r in state.ranges.items()},
        "chunks": state.metrics,
        "failed": state.failed,
    }
    return state.accumulator, meta


def _open(
    reader: UnitReader, record: dict[str, Any], chunks: list[tuple[int, int]]
) -> tuple[Any, FileReader]:
    """Open a file, check it is the one preprocessed, and make its reader.

    Raises:
        InputFileError: It cannot be opened (the cause says why).
        StaleRecordError: It changed since it was preprocessed.
    """
    rootfile = open_file(record["path"])
    try:
        uuid = str(rootfile.file.uuid)
        if uuid != record["uuid"]:
            raise StaleRecordError(
                f"{record['path']}: the file changed since it was preprocessed (UUID {record['uuid']} "
                f"became {uuid}) although its size and modification time did not; its records were "
                "invalidated: run again to preprocess it anew",
                key=record["key"],
                uuid=uuid,
            )
        # without a basket map (or for coffea's events) this reads the tree's metadata
        return rootfile, reader.open(rootfile, record, chunks)
    except BaseException:
        rootfile.close()
        raise


def _retrying(
    policy: ErrorPolicy, what: str, call: Callable[[], T]
) -> tuple[T | None, Exception | None, int]:
    """``call()``, tried again after transient I/O errors (``policy.retries`` times, with back-off).

    Returns:
        Its result (or None), the error it failed with for good (or None), and
        the retries it took.
    """
    tries = 0
    while True:
        try:
            return call(), None, tries
        except Exception as err:
            if tries >= policy.retries or not policy.retryable(err):
                return None, err, tries
            _sleep(policy, tries, what, err)
            tries += 1


def _sleep(policy: ErrorPolicy, tries: int, what: str, err: BaseException) -> None:
    delay = policy.backoff * (2**tries)
    root = causes(err)[-1]
    log.warning(
        "%s failed (%s: %s); retry %d of %d in %.2f s",
        what,
        type(root).__name__,
        root,
        tries + 1,
        policy.retries,
        delay,
    )
    time.sleep(delay)


def _run_with_policy(
    state: _UnitState,
    plan: dict[str, Any],
    record: dict[str, Any],
    source: FileReader,
    start: int,
    stop: int,
    processor: Processor,
    policy: ErrorPolicy,
    traceback_dir: Path | None,
    unit_name: str,
) -> None:
    done, err, tries = _retrying(
        policy,
        f"chunk {record['path']} [{start}, {stop})",
        lambda: _run_chunk(plan, record, source, start, stop, processor),
    )
    if err is not None:
        if not policy.continues(err):
            raise err
        failure = err.__cause__ if isinstance(err, ChunkError) and err.__cause__ is not None else err
        _record_failure(state, plan, record, start, stop, failure, tries + 1, traceback_dir, unit_name)
        return
    assert done is not None
    output, metrics = done
    try:
        state.accumulator = add(state.accumulator, output)
    except AccumulateError as acc_err:
        raise ChunkError(
            f"dataset {plan['dataset']!r}, file {record['path']}, entries {start}-{stop}: "
            f"the processor's output cannot be accumulated: {acc_err}"
        ) from acc_err
    metrics["retries"] = tries
    state.ranges.setdefault(record["key"], []).append([start, stop])
    state.metrics.append(metrics)


def _record_failure(
    state: _UnitState,
    plan: dict[str, Any],
    record: dict[str, Any],
    start: int,
    stop: int,
    err: BaseException,
    attempts: int,
    traceback_dir: Path | None,
    unit_name: str,
) -> None:
    text = "".join(traceback.format_exception(err))
    root = causes(err)[-1]
    tb_file = None
    if traceback_dir is not None:
        tb_path = traceback_dir / f"{unit_name}-{record['key']}-{start}-{stop}.txt"
        tb_path.parent.mkdir(parents=True, exist_ok=True)
        tb_path.write_text(text)
        tb_file = str(tb_path.resolve())
    log.error(
        "chunk %s [%d, %d) of dataset %r failed (%s: %s); continuing (continue_on)",
        record["path"],
        start,
        stop,
        plan["dataset"],
        type(err).__name__,
        err,
    )
    state.failed.append(
        {
            "dataset": plan["dataset"],
            "file": record["path"],
            "file_key": record["key"],
            "entrystart": start,
            "entrystop": stop,
            "events": stop - start,
            "exception": _type_name(err),
            "message": str(err),
            "cause": f"{_type_name(root)}: {root}" if root is not err else None,
            "traceback_file": tb_file,
            "attempts": attempts,
        }
    )


def _type_name(err: BaseException) -> str:
    return f"{type(err).__module__}.{type(err).__qualname__}"


def _run_chunk(
    plan: dict[str, Any],
    record: dict[str, Any],
    source: FileReader,
    start: int,
    stop: int,
    processor: Processor,
) -> tuple[Any, dict[str, Any]]:
    metadata = {
        **plan["metadata"],
        "dataset": plan["dataset"],
        "filename": record["path"],
        "treename": record["treename"],
        "entrystart": start,
        "entrystop": stop,
        "fileuuid": record["uuid"],
    }
    t0 = time.perf_counter()
    with source.chunk(start, stop, metadata) as chunk:
        try:
            output = processor.process(chunk.events)
        except Exception as err:
            tb = "".join(traceback.format_exception(err))
            raise ChunkError(
                f"processor {processor.spec} failed on dataset {plan['dataset']!r}, file {record['path']}, "
                f"entries {start}-{stop}: {type(err).__name__}: {err}\n\nprocessor traceback:\n{tb}"
            ) from err
    t_process = time.perf_counter() - t0
    metrics = {
        "file": record["key"],
        "entrystart": start,
        "entrystop": stop,
        "events": stop - start,
        **chunk.metrics(t_process, time.perf_counter() - t0),
    }
    return output, metrics


def process_unit_to_file(
    plan: dict[str, Any],
    unit_name: str,
    processor: Processor,
    out_path: str,
    *,
    policy: ErrorPolicy | None = None,
    previous_path: str | None = None,
    failures_path: str | None = None,
    allow_pickle: bool = False,
    events: EventsOptions | None = None,
) -> dict[str, Any]:
    """Run a unit and write its partial result atomically; return the meta record.

    With failed chunks, the failure manifest is written first (at
    ``failures_path``), then the partial: the next run sees the manifest and
    schedules a retry of only those chunks.
    """
    t0 = time.perf_counter()
    previous = None
    if previous_path:
        try:
            previous = storage.load_stored(previous_path, allow_pickle=allow_pickle)
        except storage.ResultFileError as err:
            Path(previous_path).unlink(missing_ok=True)
            raise storage.ResultFileError(f"{err}\nRemoved it: run again and it is redone.") from None
    tb_dir = Path(failures_path).parent / "tracebacks" if failures_path else None
    result, meta = run_unit(plan, unit_name, processor, policy, previous, tb_dir, events)
    meta["wall_s"] = round(time.perf_counter() - t0, 6)
    if meta["failed"] and failures_path:
        write_json(failures_path, {"dataset": plan["dataset"], "unit": unit_name, "failed": meta["failed"]})
    storage.save(out_path, result, meta, allow_pickle=allow_pickle)
    log.info(
        "unit %s: %d events in %.2f s, %d chunks failed",
        unit_name,
        meta["events"],
        meta["wall_s"],
        len(meta["failed"]),
    )
    return meta
