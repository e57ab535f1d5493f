"""Reduction: merge partial results into per-dataset results, then into the global result."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

from pydantic import ValidationError

from coffea_smk import results as storage
from coffea_smk.engine import metrics
from coffea_smk.engine.accumulate import AccumulateError, add
from coffea_smk.engine.damaged import describe, discard
from coffea_smk.engine.meta import (
    ChunkFailure,
    DatasetMeta,
    DatasetSummary,
    GlobalMeta,
    MergedMeta,
    Partial,
    Provenance,
    partial_meta,
    ranges_of,
)
from coffea_smk.engine.records import Plan
from coffea_smk.engine.skim import Skims, compact_skims
from coffea_smk.engine.skim_manifest import SkimManifests
from coffea_smk.skim import skim_name, skims_in
from coffea_smk.util.ranges import coalesce

log = logging.getLogger("coffea_smk.engine.reduce")

M = TypeVar("M")


class MergeError(RuntimeError):
    """Inputs of a merge cannot be combined (type clash, or events counted twice)."""


class Merged(NamedTuple):
    """Results accumulated, and their bookkeeping."""

    result: Any
    meta: MergedMeta


def _load_input(path: str, allow_pickle: bool) -> storage.Stored:
    """Load a merge input; a damaged one is removed so that the next run redoes it.

    A partial holding pickles is removed too when the analysis does not allow them: it writes
    none, so the file is not its own (planted, or left by a run that allowed pickle).
    """
    try:
        return storage.load_stored(path, allow_pickle=allow_pickle)
    except storage.ResultFileError as err:
        raise discard(path, f"{err} (nothing was merged)", MergeError) from None


def _add_input(result: Any, path: str, allow_pickle: bool) -> tuple[Any, storage.Stored]:
    """Load one merge input and add its result to ``result``."""
    stored = _load_input(path, allow_pickle)
    try:
        return add(result, stored.result), stored
    except AccumulateError as err:
        raise MergeError(f"cannot merge {path}: {err}") from err


def _parsed(path: str, meta: dict[str, Any], parse: Callable[[dict[str, Any]], M]) -> M:
    """``parse(meta)``; an input whose meta is of another shape is damaged."""
    try:
        return parse(meta)
    except ValidationError as err:
        raise discard(
            path, f"{path} holds no result of this step ({describe(err)}) (nothing was merged)", MergeError
        ) from None


def merge_stored(paths: Iterable[str], *, allow_pickle: bool = False) -> Merged:
    """Accumulate results and their bookkeeping; each input is read exactly once."""
    result: Any = None
    events = 0
    ranges: dict[str, list[list[int]]] = {}
    totals: dict[str, float] = {}
    columns: set[str] = set()
    datasets: set[str | None] = set()
    failed: list[ChunkFailure] = []
    n_inputs = 0
    for path in paths:
        n_inputs += 1
        result, stored = _add_input(result, path, allow_pickle)
        meta = _parsed(path, stored.meta, partial_meta)
        datasets.add(meta.dataset)
        events += meta.events
        for key, rs in meta.ranges.items():
            ranges.setdefault(key, []).extend([list(r) for r in rs])
        totals = metrics.add_totals(totals, metrics.unit_totals(meta))
        columns.update(_columns(meta))
        failed.extend(meta.failed)
    merged: dict[str, tuple[tuple[int, int], ...]] = {}
    for key, found in ranges.items():
        try:
            merged[key] = ranges_of(coalesce(found))
        except ValueError as err:
            raise MergeError(
                f"file record {key}: {err}: the same events appear in two inputs; "
                "delete the merge outputs of this dataset and re-run"
            ) from None
    meta_out = MergedMeta(
        dataset=datasets.pop() if len(datasets) == 1 else None,
        events=events,
        ranges=merged,
        inputs=n_inputs,
        totals=totals,
        columns=tuple(sorted(columns)),
        failed=tuple(failed),
    )
    return Merged(result, meta_out)


def _columns(meta: Partial) -> set[str]:
    if isinstance(meta, MergedMeta):
        return set(meta.columns)
    return {c for chunk in meta.chunks for c in chunk.columns}


def merge_to_file(paths: list[str], out: str, *, allow_pickle: bool = False) -> None:
    """An intermediate node of a dataset's merge tree."""
    result, meta = merge_stored(paths, allow_pickle=allow_pickle)
    storage.save(out, result, meta.model_dump(mode="json"), allow_pickle=allow_pickle)


def finish_dataset(
    paths: list[str],
    plan: Plan,
    out: str,
    provenance: Provenance | None = None,
    *,
    allow_pickle: bool = False,
    skims: Skims | None = None,
) -> DatasetMeta:
    """The per-dataset result: merged partials plus events processed versus expected.

    ``provenance`` (``Layout.provenance``: the analysis key, the config) goes
    into the result's meta, with the plan's files and their identities.
    """
    result, merged = merge_stored(paths, allow_pickle=allow_pickle)
    if skims_in(result):
        if skims is None or skims.folder is None:
            raise MergeError(
                f"dataset {plan.dataset!r}: the result holds skims, and no folder was given for them"
            )
        sources = [f.path for f in plan.files if f.entries > 0]
        result = compact_skims(result, skims.folder, skims.settings, f"dataset {plan.dataset!r}", sources)
    expected = {f.key: f.ranges() for f in plan.files if f.events > 0}
    covered = dict(merged.ranges)
    missing = [f.path for f in plan.files if f.events > 0 and covered.get(f.key) != expected[f.key]]
    unexpected = sorted(set(covered) - set(expected))
    bad = plan.bad_files
    meta = DatasetMeta(
        **merged.model_dump(exclude={"dataset"}),
        **(provenance.model_dump() if provenance is not None else {}),
        dataset=plan.dataset,
        metadata=plan.metadata,
        events_expected=plan.expected_events,
        files=len(plan.files) + len(bad),
        empty_files=len(plan.empty_files),
        bad_files=bad,
        complete=not missing and not unexpected and not bad and merged.events == plan.expected_events,
        incomplete_files=tuple(missing),
        rates=metrics.rates(merged.totals),
        settings=plan.settings,
        input_files=tuple(f.summary() for f in plan.files),
        **_sum_of_weights(plan, merged.events, merged.totals),
    )
    if unexpected:
        raise MergeError(
            f"dataset {plan.dataset!r}: partial results cover files that are not in the plan "
            f"({', '.join(unexpected)}); delete {out} and its merge inputs and re-run"
        )
    if not meta.complete:
        log.warning(
            "dataset %r is INCOMPLETE: %d of %d events processed, %d chunks failed, %d files unreadable",
            plan.dataset,
            meta.events,
            plan.expected_events,
            len(meta.failed),
            len(bad),
        )
    storage.save(out, result, meta.model_dump(mode="json"), allow_pickle=allow_pickle)
    return meta


def _sum_of_weights(plan: Plan, events: int, totals: dict[str, float]) -> dict[str, Any]:
    """The dataset's sum of generator weights: its files' Runs trees, else ``genWeight``."""
    runs = plan.runs_sumw
    if runs is not None:
        return {"sumw": runs, "sumw_source": "Runs.genEventSumw"}
    if events and totals.get("gen_weighted_events", 0.0) == events:
        return {"sumw": totals.get("gen_sumw", 0.0), "sumw_source": "genWeight"}
    return {}


def finish_global(
    paths: list[str],
    out: str,
    provenance: Provenance | None = None,
    postprocess: Callable[[Any], Any] | None = None,
    *,
    allow_pickle: bool = False,
    skims: Skims | None = None,
) -> GlobalMeta:
    """The global result: all datasets accumulated, then the processor's ``postprocess``.

    ``provenance`` (``Layout.provenance``: the analysis key, the config) goes
    into the result's meta; each dataset's entry keeps its own key and metadata.
    """
    result: Any = None
    per_dataset: dict[str, DatasetSummary] = {}
    manifests = SkimManifests()
    for path in paths:
        result, stored = _add_input(result, path, allow_pickle)
        m = _parsed(path, stored.meta, DatasetMeta.model_validate)
        manifests.add(m, {skim_name(at): s for at, s in skims_in(stored.result).items()})
        per_dataset[m.dataset] = DatasetSummary(
            analysis_key=m.analysis_key,
            metadata=m.metadata,
            events=m.events,
            events_expected=m.events_expected,
            complete=m.complete,
            files=m.files,
            empty_files=m.empty_files,
            bad_files=m.bad_files,
            failed_chunks=len(m.failed),
            totals=m.totals,
            rates=metrics.rates(m.totals),
            columns=m.columns,
            path=path,
            sumw=m.sumw,
            sumw_source=m.sumw_source,
        )
    if manifests and skims is not None and skims.folder is not None:
        manifests.write(skims.folder, skims.settings, provenance)
    if postprocess is not None:
        post = postprocess(result)
        if post is not None:
            result = post
    totals: dict[str, float] = {}
    for d in per_dataset.values():
        totals = metrics.add_totals(totals, d.totals)
    meta = GlobalMeta(
        **(provenance.model_dump(exclude={"plan_key"}) if provenance is not None else {}),
        datasets=per_dataset,
        events=sum(d.events for d in per_dataset.values()),
        events_expected=sum(d.events_expected for d in per_dataset.values()),
        complete=all(d.complete for d in per_dataset.values()),
        failed_chunks=sum(d.failed_chunks for d in per_dataset.values()),
        bad_files=sum(len(d.bad_files) for d in per_dataset.values()),
        totals=totals,
        rates=metrics.rates(totals),
        columns=tuple(sorted({c for d in per_dataset.values() for c in d.columns})),
    )
    storage.save(out, result, meta.model_dump(mode="json"), allow_pickle=allow_pickle)
    return meta
