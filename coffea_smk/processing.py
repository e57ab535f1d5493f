"""Processing one work unit: open each file once, call the processor per chunk, accumulate."""

from __future__ import annotations

import logging
import time
import traceback
from itertools import groupby
from typing import Any

from coffea_smk import storage
from coffea_smk.accumulate import AccumulateError, add
from coffea_smk.plan import unit_by_id
from coffea_smk.preprocess import InputFileError, open_tree
from coffea_smk.processor import Processor
from coffea_smk.reading import EventsOptions, FileReader, UnitReader

log = logging.getLogger("coffea_smk.process")


class ChunkError(RuntimeError):
    """The processor failed on a chunk; the message says which and shows its traceback."""


def coalesce(ranges: list[list[int]]) -> list[list[int]]:
    """Sorted, merged ``[start, stop)`` ranges.

    Raises:
        ValueError: Two ranges overlap (an event would be counted twice).
    """
    out: list[list[int]] = []
    for start, stop in sorted(ranges):
        if out and start < out[-1][1]:
            raise ValueError(f"entry ranges {out[-1]} and {[start, stop]} overlap")
        if out and start == out[-1][1]:
            out[-1][1] = stop
        else:
            out.append([start, stop])
    return out


def run_unit(
    plan: dict[str, Any], unit_id: str, processor: Processor, events: EventsOptions | None = None
) -> tuple[Any, dict[str, Any]]:
    """Process every chunk of a work unit; return the accumulated output and its meta record."""
    unit = unit_by_id(plan, unit_id)
    files = plan["files"]
    accumulator: Any = None
    ranges: dict[str, list[list[int]]] = {}
    chunk_metrics: list[dict[str, Any]] = []
    with UnitReader(events, processor.wants_coffea_events) as reader:
        for file_index, chunks in groupby(unit["chunks"], key=lambda c: c[0]):
            record = files[file_index]
            file_ranges = [(start, stop) for _, start, stop in chunks]
            rootfile, tree = open_tree(record["path"], record["treename"])
            with rootfile:
                uuid = str(rootfile.file.uuid)
                if uuid != record["uuid"]:
                    raise InputFileError(
                        f"{record['path']}: the file changed since it was preprocessed (UUID "
                        f"{record['uuid']} became {uuid}); re-run so that it is preprocessed again"
                    )
                with reader.open(rootfile, tree, record["treename"], file_ranges) as source:
                    for start, stop in file_ranges:
                        accumulator, metrics = _run_chunk(
                            plan, record, source, start, stop, processor, accumulator
                        )
                        ranges.setdefault(record["key"], []).append([start, stop])
                        chunk_metrics.append(metrics)
    meta = {
        "dataset": plan["dataset"],
        "unit": unit_id,
        "events": sum(m["events"] for m in chunk_metrics),
        "ranges": {key: coalesce(r) for key, r in ranges.items()},
        "chunks": chunk_metrics,
    }
    return accumulator, meta


def _run_chunk(
    plan: dict[str, Any],
    record: dict[str, Any],
    source: FileReader,
    start: int,
    stop: int,
    processor: Processor,
    accumulator: Any,
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
    try:
        accumulator = add(accumulator, output)
    except AccumulateError as err:
        raise ChunkError(
            f"dataset {plan['dataset']!r}, file {record['path']}, entries {start}-{stop}: "
            f"the processor's output cannot be accumulated: {err}"
        ) from err
    metrics = {
        "file": record["key"],
        "entrystart": start,
        "entrystop": stop,
        "events": stop - start,
        **chunk.metrics(t_process, time.perf_counter() - t0),
    }
    return accumulator, metrics


def process_unit_to_file(
    plan: dict[str, Any],
    unit_id: str,
    processor: Processor,
    out_path: str,
    *,
    allow_pickle: bool = False,
    events: EventsOptions | None = None,
) -> dict[str, Any]:
    """Run a unit and write its partial result atomically; return the meta record."""
    t0 = time.perf_counter()
    result, meta = run_unit(plan, unit_id, processor, events)
    meta["wall_s"] = round(time.perf_counter() - t0, 6)
    storage.save(out_path, result, meta, allow_pickle=allow_pickle)
    log.info("unit %s: %d events in %.2f s", unit_id, meta["events"], meta["wall_s"])
    return meta
