"""``coffea-smk status``: what is done, failed and pending, read from the output files alone.

Failed chunks are named by file and entry ranges (from the failure manifests);
a job that failed as a whole (no manifest) by the files and entry ranges it
covers (from the plan), its log and the last line of the error in it.

It never waits for the storage: the layout asks each storage host once, with a
short timeout (:func:`coffea_smk.smk.remote.stat_remote_files`), and takes the
files of a host that does not answer on their records; the report then says
which files it could not check, and what the last run's start assumed
(``cache/remote/last-run.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pydantic import ValidationError

from coffea_smk.engine.meta import ChunkFailure, DatasetMeta, GlobalMeta, UnitFailures
from coffea_smk.engine.preprocess import record_path
from coffea_smk.engine.records import BadFile
from coffea_smk.results import ResultFileError, load_meta
from coffea_smk.smk.layout import Layout
from coffea_smk.smk.names import Step, attempt_name
from coffea_smk.smk.outputs import Kind
from coffea_smk.smk.remote import describe_down


class ResultState(str, Enum):
    """What a per-dataset or the global result file is."""

    MISSING = "missing"
    CORRUPTED = "corrupted"
    """Unreadable, or not the result its key-named path promises."""
    COMPLETE = "complete"
    INCOMPLETE = "INCOMPLETE"
    """Some events were not processed (failed chunks, unreadable files)."""


@dataclass
class FailedJob:
    """A job that failed as a whole: what it covered, its log, its error."""

    dataset: str
    step: Step
    log: str
    covers: list[tuple[str, list[list[int]]]] = field(default_factory=list)
    """The input files and (for processing) the entry ranges of each."""
    error: str | None = None
    """The last line of the error in the log."""


@dataclass
class DatasetStatus:
    """Progress of one dataset."""

    name: str
    files: int
    preprocessed: int
    bad_files: list[BadFile] = field(default_factory=list)
    planned: bool = False
    chunks_done: int = 0
    chunks_failed: int = 0
    chunks_pending: int = 0
    events_done: int = 0
    events_expected: int | None = None
    failed_chunks: list[ChunkFailure] = field(default_factory=list)
    failed_jobs: list[FailedJob] = field(default_factory=list)
    result: ResultState = ResultState.MISSING


def _manifest(path: str) -> list[ChunkFailure]:
    try:
        return list(UnitFailures.model_validate_json(Path(path).read_bytes()).failed)
    except (OSError, ValidationError):
        return []


def _job_failed(log: str) -> bool:
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return False
    return " failed:" in text or "Traceback" in text


def _last_error(log: str) -> str | None:
    """The last line of the error a job logged (its exception, ``Type: message``)."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return None
    start = max((i for i, line in enumerate(lines) if " failed:" in line), default=0)
    tail = [line.strip() for line in lines[start:] if line.strip()]
    return tail[-1] if tail else None


def _covers(chunks: list[tuple[str, int, int]]) -> list[tuple[str, list[list[int]]]]:
    """Chunks ``(file, start, stop)`` as files, each with its entry ranges."""
    ranges: dict[str, list[list[int]]] = {}
    for path, start, stop in chunks:
        ranges.setdefault(path, []).append([start, stop])
    return [(path, _merged(r)) for path, r in ranges.items()]


def _merged(ranges: list[list[int]]) -> list[list[int]]:
    """Sorted ranges, those that touch or overlap made one."""
    out: list[list[int]] = []
    for start, stop in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return out


def _entries(ranges: list[list[int]]) -> str:
    return ", ".join(f"{a}-{b}" for a, b in ranges)


def dataset_status(layout: Layout, slug: str) -> DatasetStatus:
    d = layout.datasets[slug]
    ids = layout.identities[slug]
    st = DatasetStatus(d.name, len(ids), sum(record_path(layout.cache_dir, i).is_file() for i in ids))
    batch_files = {b: [i.path for i in group] for b, group in layout.batches(slug).items()}
    for batch in layout.batch_names(slug):
        log = layout.log(Kind.PREPROCESS, dataset=slug, batch=batch)
        if not Path(layout.path(Kind.PREPROCESS, dataset=slug, batch=batch)).exists() and _job_failed(log):
            files = batch_files.get(batch.split("-")[0], [])
            covers: list[tuple[str, list[list[int]]]] = [(path, []) for path in files]
            st.failed_jobs.append(FailedJob(d.name, Step.PREPROCESS, log, covers, _last_error(log)))
    plan = layout.read_plan(slug)
    if plan is None:
        return _from_result(layout, slug, st)
    st.planned = True
    st.bad_files = list(plan.bad_files)
    st.events_expected = plan.expected_events
    attempts = layout.unit_attempts(slug)
    tag = layout.keys[slug].tag
    for unit in plan.units:
        k = attempts.get(unit.id, 0)
        name = attempt_name(unit.id, k)
        n = len(unit.chunks)
        log = layout.log(Kind.PARTIAL, dataset=slug, tag=tag, unit=name)
        if Path(layout.path(Kind.PARTIAL, dataset=slug, tag=tag, unit=name)).exists():
            failed = _manifest(layout.failure(Kind.PARTIAL, dataset=slug, tag=tag, unit=name))
        elif k > 0:
            # the previous attempt's failures: a re-run retries them
            previous = attempt_name(unit.id, k - 1)
            failed = _manifest(layout.failure(Kind.PARTIAL, dataset=slug, tag=tag, unit=previous))
            if _job_failed(log):  # the retry itself failed as a whole
                covers = _covers([(c.file, c.entrystart, c.entrystop) for c in failed])
                st.failed_jobs.append(FailedJob(d.name, Step.PROCESS, log, covers, _last_error(log)))
        else:
            if _job_failed(log):
                covers = _covers([(plan.files[c.file].path, c.start, c.stop) for c in unit.chunks])
                st.failed_jobs.append(FailedJob(d.name, Step.PROCESS, log, covers, _last_error(log)))
                st.chunks_failed += n
            else:
                st.chunks_pending += n
            continue
        st.chunks_failed += len(failed)
        st.chunks_done += n - len(failed)
        st.events_done += unit.events - sum(f.events for f in failed)
        st.failed_chunks.extend(failed)
    st.result, _ = _result_state(layout.dataset_result(slug), layout.keys[slug].result)
    return st


def _result_state(path: str, key: str) -> tuple[ResultState, DatasetMeta | GlobalMeta | None]:
    """The state of a per-dataset or the global result, and its meta."""
    if not Path(path).exists():
        return ResultState.MISSING, None
    try:
        raw = load_meta(path)
        meta = GlobalMeta.model_validate(raw) if "datasets" in raw else DatasetMeta.model_validate(raw)
    except (ResultFileError, ValidationError):
        return ResultState.CORRUPTED, None
    if meta.analysis_key != key:
        return ResultState.CORRUPTED, None  # not the result its key-named path promises
    return (ResultState.COMPLETE if meta.complete else ResultState.INCOMPLETE), meta


def _from_result(layout: Layout, slug: str, st: DatasetStatus) -> DatasetStatus:
    """Without a plan (removed after damage), the dataset result still tells how far it got."""
    st.result, meta = _result_state(layout.dataset_result(slug), layout.keys[slug].result)
    if isinstance(meta, DatasetMeta):
        st.events_done, st.events_expected = meta.events, meta.events_expected
        st.bad_files = list(meta.bad_files)
        st.failed_chunks = list(meta.failed)
    return st


def _failed_chunks(failed: list[ChunkFailure], limit: int = 50) -> list[str]:
    """Failed chunks by dataset, file and exception: the entry ranges, the error, its root cause."""
    groups: dict[tuple[str, str, str], list[ChunkFailure]] = {}
    for c in failed:
        groups.setdefault((c.dataset, c.file, c.exception), []).append(c)
    lines = []
    for (dataset, path, exception), chunks in list(groups.items())[:limit]:
        ranges = _merged([[c.entrystart, c.entrystop] for c in chunks])
        events = sum(c.entrystop - c.entrystart for c in chunks)
        first = chunks[0]
        lines.append(
            f"  {dataset}: {path} entries {_entries(ranges)} ({len(chunks)} chunks, {events} events)"
        )
        lines.append(f"      {exception}: {_shorten(first.message)}")
        if first.cause:
            lines.append(f"      root cause: {_shorten(first.cause)}")
        if first.traceback_file:
            lines.append(f"      traceback: {first.traceback_file}")
    if len(groups) > limit:
        lines.append(f"  ... and {len(groups) - limit} more files")
    return lines


def _shorten(text: str, width: int = 400) -> str:
    """The first line of ``text``, at most ``width`` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def _storage(layout: Layout) -> list[str]:
    """What could not be checked on the storage now, and what the last run's start assumed."""
    lines = []
    if layout.down:
        lines.append("")
        lines.append(f"storage unreachable, not checked now: {describe_down(layout.down, examples=3)}")
        lines.append(
            "  (taken on their records: the size and modification time an earlier run's start found; "
            "a file changed on the storage meanwhile is not seen)"
        )
        for d in layout.down:
            if d.unrecorded:
                shown = ", ".join(d.unrecorded[:3]) + (", ..." if len(d.unrecorded) > 3 else "")
                lines.append(f"  never stat-ed on {d.host}, cannot be identified: {shown}")
    last = layout.run_record()
    if last is not None and last.down and last.analysis_key == layout.analysis_key:
        lines.append("")
        lines.append(f"last run (started {last.started}): storage unreachable: {describe_down(last.down)}")
    return lines


def report(layout: Layout) -> tuple[str, bool]:
    """A human-readable status report, and whether everything is done and complete."""
    rows = [dataset_status(layout, slug) for slug in layout.datasets]
    head = (
        f"{'dataset':<28} {'files':>7} {'prep.':>7} {'bad':>4} "
        f"{'chunks done/failed/pending':>27} {'events done/expected':>22}  result"
    )
    lines = [
        f"analysis: {layout.outdir} (processor {layout.cfg.processor}, analysis key {layout.analysis_key})",
        head,
    ]
    for r in rows:
        expected = "?" if r.events_expected is None else str(r.events_expected)
        chunks = f"{r.chunks_done}/{r.chunks_failed}/{r.chunks_pending}" if r.planned else "not planned"
        lines.append(
            f"{r.name[:28]:<28} {r.files:>7} {r.preprocessed:>7} {len(r.bad_files):>4} {chunks:>27} "
            f"{f'{r.events_done}/{expected}':>22}  {r.result.value}"
        )
    failed = [c for r in rows for c in r.failed_chunks]
    if failed:
        lines.append("")
        lines.append(f"failed chunks ({len(failed)}; a re-run retries them):")
        lines.extend(_failed_chunks(failed))
    bad = [(r.name, b) for r in rows for b in r.bad_files]
    if bad:
        lines.append("")
        lines.append("unreadable files (skipped; a re-run tries them again):")
        lines.extend(f"  {name}: {b.path}: {b.error}" for name, b in bad)
    jobs = [job for r in rows for job in r.failed_jobs]
    if jobs:
        lines.append("")
        lines.append("failed jobs (see their logs):")
        for job in jobs:
            lines.append(f"  {job.dataset}: {job.step.value} job: {job.log}")
            for path, ranges in job.covers:
                lines.append(f"      covers {path}" + (f" entries {_entries(ranges)}" if ranges else ""))
            if job.error:
                lines.append(f"      error: {_shorten(job.error)}")
    lines.extend(_storage(layout))
    state, _ = _result_state(layout.result, layout.analysis_key)
    ok = state is ResultState.COMPLETE and all(r.result is ResultState.COMPLETE for r in rows)
    published = (
        "" if not layout.unpublished() else "; result.npz is not this analysis's yet: run to publish it"
    )
    lines.append("")
    lines.append(f"global result: {layout.result} ({state.value}{published})")
    return "\n".join(lines), ok
