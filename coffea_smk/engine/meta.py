"""What processing and reduction record in a result file's ``meta``, and in failure manifests.

Frozen models (see :mod:`coffea_smk.engine.records`) whose JSON is the
``meta`` of the result files: a work unit's partial (:class:`UnitMeta`), a
merge node (:class:`MergedMeta`), a dataset's result (:class:`DatasetMeta`)
and the global result (:class:`GlobalMeta`). A merge parses its inputs with
these models, so a file of another shape is damaged, never misread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import TypeAdapter

from coffea_smk.engine.records import BadFile, FileSummary, Record
from coffea_smk.spec.settings import PlanSettings

Range = tuple[int, int]
"""Entries ``[start, stop)`` of a file."""
Ranges = dict[str, tuple[Range, ...]]
"""Entry ranges by file key."""


def ranges_of(ranges: Iterable[Iterable[int]]) -> tuple[Range, ...]:
    """``[[a, b], ...]`` as a tuple of ranges."""
    out = []
    for start, stop in ranges:
        out.append((start, stop))
    return tuple(out)


class ChunkMetrics(Record):
    """What one chunk read and where its time went (:func:`coffea_smk.engine.metrics.chunk_metrics`)."""

    file: str
    """The file's key."""
    entrystart: int
    entrystop: int
    events: int
    columns: tuple[str, ...]
    """Branches read."""
    buffers: int
    rereads: int
    bytes_compressed: int
    bytes_uncompressed: int
    read_s: float
    read_wait_s: float
    read_background_s: float
    events_s: float
    process_s: float
    total_s: float
    peak_rss_mb: float
    prefetched: int
    prefetch_hits: int
    prefetch_waits: int
    prefetch_unused: int
    prefetch_errors: int
    retries: int
    """In-job retries after transient I/O errors."""
    fallbacks: int
    fallback_branches: tuple[str, ...]
    """Branches read by uproot instead of coffea_smk's basket reader."""
    gen_sumw: float | None = None
    """The chunk's sum of ``genWeight``, when the dataset's files have no ``Runs`` sum."""
    gen_weighted_events: int = 0
    """The events summed in :attr:`gen_sumw`."""


class ChunkFailure(Record):
    """A chunk that failed under ``continue_on``: left out of the result, retried by the next run."""

    dataset: str
    file: str
    """The file's path or URL."""
    file_key: str
    entrystart: int
    entrystop: int
    events: int
    exception: str
    """The error's type, ``module.QualifiedName``."""
    message: str
    cause: str | None
    """The root cause of the exception chain (``type: message``), if it is another exception."""
    traceback_file: str | None
    attempts: int
    """Tries in the job (retries after transient errors included)."""


class UnitMeta(Record):
    """The meta of a work unit's partial result."""

    dataset: str
    unit: str
    """The work unit's id."""
    attempt: int
    """0 for the first run of the unit; ``k`` for the ``k``-th retry of its failed chunks."""
    events: int
    ranges: Ranges
    """What the partial covers (the previous attempt's ranges included)."""
    chunks: tuple[ChunkMetrics, ...]
    failed: tuple[ChunkFailure, ...]
    wall_s: float = 0.0
    """Wall time of the job."""


class UnitFailures(Record):
    """A work unit's failure manifest: the chunks that a later attempt retries."""

    dataset: str
    unit: str
    failed: tuple[ChunkFailure, ...]


class MergedMeta(Record):
    """The meta of a merge node: the bookkeeping of its inputs, summed."""

    dataset: str | None
    events: int
    ranges: Ranges
    inputs: int
    totals: dict[str, float]
    """Metrics summed over chunks (:func:`coffea_smk.engine.metrics.add_totals`)."""
    columns: tuple[str, ...]
    failed: tuple[ChunkFailure, ...]


Partial = UnitMeta | MergedMeta
"""The meta of a merge input."""
_PARTIAL: TypeAdapter[Partial] = TypeAdapter(Partial)


def partial_meta(meta: Mapping[str, Any]) -> Partial:
    """Parse the meta of a merge input (``pydantic.ValidationError`` if it is neither kind)."""
    return _PARTIAL.validate_python(meta)


class TakenOnRecords(Record):
    """Remote input files of one storage host that did not answer when the run started: they
    were identified by what an earlier run's start found of them (``remote_identity: stat``)."""

    host: str
    """``scheme://host:port``."""
    error: str
    """Why the host was found unreachable."""
    files: int
    urls: tuple[str, ...] = ()
    """The files (per-dataset results; the global one counts them only)."""


class Provenance(Record):
    """Where a per-dataset or the global result comes from (``Layout.provenance``)."""

    analysis_key: str
    """The result's own key (its path's)."""
    processor_key: str
    coffea_smk_version: str
    configfile: str | None
    config: dict[str, Any]
    """The analysis config as validated (an inline fileset is left out)."""
    plan_key: str | None = None
    """The dataset's plan (per-dataset results only)."""
    taken_on_records: tuple[TakenOnRecords, ...] = ()
    """Input files whose storage did not answer when the run that made the result started."""


class DatasetMeta(Record):
    """The meta of a per-dataset result: its merged bookkeeping, provenance and completeness."""

    dataset: str
    events: int
    ranges: Ranges
    inputs: int
    totals: dict[str, float]
    columns: tuple[str, ...]
    failed: tuple[ChunkFailure, ...]
    analysis_key: str | None = None
    processor_key: str | None = None
    coffea_smk_version: str | None = None
    configfile: str | None = None
    config: dict[str, Any] | None = None
    plan_key: str | None = None
    taken_on_records: tuple[TakenOnRecords, ...] = ()
    metadata: dict[str, Any]
    events_expected: int
    files: int
    empty_files: int
    bad_files: tuple[BadFile, ...]
    complete: bool
    """All expected events processed, no chunk failed, no file unreadable."""
    incomplete_files: tuple[str, ...]
    rates: dict[str, float]
    settings: PlanSettings
    input_files: tuple[FileSummary, ...]
    sumw: float | None = None
    """The sum of generator weights (simulation), to normalise by (:attr:`sumw_source` says how)."""
    sumw_source: str | None = None
    """``Runs.genEventSumw`` (all files' Runs trees: every generated event) or ``genWeight``
    (summed over the processed events); None for data."""


class DatasetSummary(Record):
    """A dataset as the global result records it."""

    analysis_key: str | None
    metadata: dict[str, Any]
    events: int
    events_expected: int
    complete: bool
    files: int
    empty_files: int
    bad_files: tuple[BadFile, ...]
    failed_chunks: int
    totals: dict[str, float]
    rates: dict[str, float]
    columns: tuple[str, ...]
    path: str
    """The per-dataset result it was merged from."""
    sumw: float | None = None
    """The sum of generator weights (simulation), to normalise by (:attr:`sumw_source` says how)."""
    sumw_source: str | None = None
    """``Runs.genEventSumw`` (all files' Runs trees: every generated event) or ``genWeight``
    (summed over the processed events); None for data."""


class GlobalMeta(Record):
    """The meta of the global result."""

    analysis_key: str | None = None
    processor_key: str | None = None
    coffea_smk_version: str | None = None
    configfile: str | None = None
    config: dict[str, Any] | None = None
    taken_on_records: tuple[TakenOnRecords, ...] = ()
    """Input files whose storage did not answer when the run that made the result started."""
    dataset: None = None
    datasets: dict[str, DatasetSummary]
    events: int
    events_expected: int
    complete: bool
    failed_chunks: int
    bad_files: int
    """Unreadable files, over all datasets."""
    totals: dict[str, float]
    rates: dict[str, float]
    columns: tuple[str, ...]
