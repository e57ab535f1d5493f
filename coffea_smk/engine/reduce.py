"""Reduction: merge partial results into per-dataset results, then into the global result."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from coffea_smk import results as storage
from coffea_smk.engine import metrics
from coffea_smk.engine.accumulate import AccumulateError, add
from coffea_smk.util.ranges import coalesce

log = logging.getLogger("coffea_smk.engine.reduce")

_SUMMED = ("events",)


class MergeError(RuntimeError):
    """Inputs of a merge cannot be combined (type clash, or events counted twice)."""


def _load_input(path: str, allow_pickle: bool) -> storage.Stored:
    """Load a merge input; a damaged one is removed so that the next run redoes it."""
    try:
        return storage.load_stored(path, allow_pickle=allow_pickle)
    except storage.ResultFileError as err:
        Path(path).unlink(missing_ok=True)
        raise MergeError(f"{err}\nRemoved {path}: run again and it is redone (nothing was merged).") from None


def _add_input(result: Any, path: str, allow_pickle: bool) -> tuple[Any, storage.Stored]:
    """Load one merge input and add its result to ``result``."""
    stored = _load_input(path, allow_pickle)
    try:
        return add(result, stored.result), stored
    except AccumulateError as err:
        raise MergeError(f"cannot merge {path}: {err}") from err


def merge_stored(paths: Iterable[str], *, allow_pickle: bool = False) -> storage.Stored:
    """Accumulate results and their bookkeeping; each input is read exactly once."""
    result: Any = None
    events = 0
    ranges: dict[str, list[list[int]]] = {}
    totals: dict[str, float] = {}
    columns: set[str] = set()
    datasets: set[str] = set()
    failed: list[dict[str, Any]] = []
    n_inputs = 0
    for path in paths:
        n_inputs += 1
        result, stored = _add_input(result, path, allow_pickle)
        meta = stored.meta
        datasets.add(meta.get("dataset", ""))
        events += int(meta.get("events", 0))
        for key, rs in meta.get("ranges", {}).items():
            ranges.setdefault(key, []).extend([list(r) for r in rs])
        totals = metrics.add_totals(totals, metrics.unit_totals(meta))
        columns.update(_columns(meta))
        failed.extend(meta.get("failed", []))
    for key, rs in ranges.items():
        try:
            ranges[key] = coalesce(rs)
        except ValueError as err:
            raise MergeError(
                f"file record {key}: {err}: the same events appear in two inputs; "
                "delete the merge outputs of this dataset and re-run"
            ) from None
    meta_out: dict[str, Any] = {
        "dataset": datasets.pop() if len(datasets) == 1 else None,
        "events": events,
        "ranges": ranges,
        "inputs": n_inputs,
        "totals": totals,
        "columns": sorted(columns),
        "failed": failed,
    }
    return storage.Stored(result, meta_out)


def _columns(meta: dict[str, Any]) -> set[str]:
    if "columns" in meta:
        return set(meta["columns"])
    return {c for chunk in meta.get("chunks", []) for c in chunk.get("columns", [])}


def merge_to_file(paths: list[str], out: str, *, allow_pickle: bool = False) -> None:
    """An intermediate node of a dataset's merge tree."""
    stored = merge_stored(paths, allow_pickle=allow_pickle)
    storage.save(out, stored.result, stored.meta, allow_pickle=allow_pickle)


def finish_dataset(
    paths: list[str],
    plan: dict[str, Any],
    out: str,
    provenance: dict[str, Any],
    *,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """The per-dataset result: merged partials plus events processed versus expected.

    ``provenance`` (``Layout.provenance``: the analysis key, the config) goes
    into the result's meta, with the plan's files and their identities.
    """
    stored = merge_stored(paths, allow_pickle=allow_pickle)
    meta = stored.meta
    expected = {f["key"]: f["entries"] for f in plan["files"] if f["entries"] > 0}
    covered = {k: r for k, r in meta["ranges"].items()}
    missing = [
        f["path"] for f in plan["files"] if f["entries"] > 0 and covered.get(f["key"]) != [[0, f["entries"]]]
    ]
    unexpected = sorted(set(covered) - set(expected))
    bad = plan.get("bad_files", [])
    meta.update(
        **provenance,
        dataset=plan["dataset"],
        metadata=plan["metadata"],
        events_expected=plan["expected_events"],
        files=len(plan["files"]) + len(bad),
        empty_files=len(plan["empty_files"]),
        bad_files=bad,
        complete=not missing and not unexpected and not bad and meta["events"] == plan["expected_events"],
        incomplete_files=missing,
        rates=metrics.rates(meta["totals"]),
        settings=plan["settings"],
        input_files=[
            {k: f.get(k) for k in ("path", "treename", "key", "uuid", "entries", "size", "mtime_ns")}
            for f in plan["files"]
        ],
    )
    if unexpected:
        raise MergeError(
            f"dataset {plan['dataset']!r}: partial results cover files that are not in the plan "
            f"({', '.join(unexpected)}); delete {out} and its merge inputs and re-run"
        )
    if not meta["complete"]:
        log.warning(
            "dataset %r is INCOMPLETE: %d of %d events processed, %d chunks failed, %d files unreadable",
            plan["dataset"],
            meta["events"],
            plan["expected_events"],
            len(meta["failed"]),
            len(bad),
        )
    storage.save(out, stored.result, meta, allow_pickle=allow_pickle)
    return meta


def finish_global(
    paths: list[str],
    out: str,
    provenance: dict[str, Any],
    postprocess: Any = None,
    *,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """The global result: all datasets accumulated, then the processor's ``postprocess``.

    ``provenance`` (``Layout.provenance``: the analysis key, the config) goes
    into the result's meta; each dataset's entry keeps its own key and metadata.
    """
    result: Any = None
    per_dataset: dict[str, Any] = {}
    for path in paths:
        result, stored = _add_input(result, path, allow_pickle)
        m = stored.meta
        per_dataset[m["dataset"]] = {
            "analysis_key": m.get("analysis_key"),
            "metadata": m.get("metadata", {}),
            "events": m["events"],
            "events_expected": m["events_expected"],
            "complete": m["complete"],
            "files": m["files"],
            "empty_files": m["empty_files"],
            "bad_files": m.get("bad_files", []),
            "failed_chunks": len(m.get("failed", [])),
            "totals": m.get("totals", {}),
            "rates": metrics.rates(m.get("totals", {})),
            "columns": m.get("columns", []),
            "path": path,
        }
    if postprocess is not None:
        post = postprocess(result)
        if post is not None:
            result = post
    totals: dict[str, float] = {}
    for d in per_dataset.values():
        totals = metrics.add_totals(totals, d["totals"])
    meta = {
        **provenance,
        "dataset": None,
        "datasets": per_dataset,
        "events": sum(d["events"] for d in per_dataset.values()),
        "events_expected": sum(d["events_expected"] for d in per_dataset.values()),
        "complete": all(d["complete"] for d in per_dataset.values()),
        "failed_chunks": sum(d["failed_chunks"] for d in per_dataset.values()),
        "bad_files": sum(len(d["bad_files"]) for d in per_dataset.values()),
        "totals": totals,
        "rates": metrics.rates(totals),
        "columns": sorted({c for d in per_dataset.values() for c in d["columns"]}),
    }
    storage.save(out, result, meta, allow_pickle=allow_pickle)
    return meta
