"""``coffea-smk status``: what is done, failed and pending, read from the output files alone."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coffea_smk.layout import Layout, attempt_name
from coffea_smk.preprocess import record_path


@dataclass
class DatasetStatus:
    """Progress of one dataset."""

    name: str
    files: int
    preprocessed: int
    bad_files: list[dict[str, Any]] = field(default_factory=list)
    planned: bool = False
    chunks_done: int = 0
    chunks_failed: int = 0
    chunks_pending: int = 0
    events_done: int = 0
    events_expected: int | None = None
    failed_chunks: list[dict[str, Any]] = field(default_factory=list)
    failed_jobs: list[str] = field(default_factory=list)
    result: str = "missing"


def _manifest(path: str) -> list[dict[str, Any]]:
    try:
        return list(json.loads(Path(path).read_text()).get("failed", []))
    except (OSError, ValueError):
        return []


def _job_failed(log: str) -> bool:
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return False
    return " failed:" in text or "Traceback" in text


def dataset_status(layout: Layout, slug: str) -> DatasetStatus:
    d = layout.datasets[slug]
    ids = layout.identities[slug]
    st = DatasetStatus(d.name, len(ids), sum(record_path(layout.cache_dir, i).is_file() for i in ids))
    for batch in layout.batch_names(slug):
        log = layout.log("preprocess", dataset=slug, batch=batch)
        if not Path(layout.path("preprocess", dataset=slug, batch=batch)).exists() and _job_failed(log):
            st.failed_jobs.append(log)
    plan = layout.read_plan(slug)
    if plan is None:
        return _from_result(layout, slug, st)
    st.planned = True
    st.bad_files = plan.get("bad_files", [])
    st.events_expected = plan["expected_events"]
    attempts = layout.unit_attempts(slug)
    tag = layout.keys[slug].tag
    for unit in plan["units"]:
        k = attempts.get(unit["id"], 0)
        name = attempt_name(unit["id"], k)
        n = len(unit["chunks"])
        if Path(layout.path("partial", dataset=slug, tag=tag, unit=name)).exists():
            failed = _manifest(layout.failure("partial", dataset=slug, tag=tag, unit=name))
        elif k > 0:
            # the previous attempt's failures: a re-run retries them
            previous = attempt_name(unit["id"], k - 1)
            failed = _manifest(layout.failure("partial", dataset=slug, tag=tag, unit=previous))
            st.chunks_failed += len(failed)
            st.chunks_done += n - len(failed)
            st.events_done += unit["events"] - sum(f["events"] for f in failed)
            st.failed_chunks.extend(failed)
            continue
        else:
            log = layout.log("partial", dataset=slug, tag=tag, unit=name)
            if _job_failed(log):
                st.failed_jobs.append(log)
                st.chunks_failed += n
            else:
                st.chunks_pending += n
            continue
        st.chunks_failed += len(failed)
        st.chunks_done += n - len(failed)
        st.events_done += unit["events"] - sum(f["events"] for f in failed)
        st.failed_chunks.extend(failed)
    st.result, _ = _result_state(layout.dataset_result(slug), layout.keys[slug].result)
    return st


def _result_state(path: str, key: str) -> tuple[str, dict[str, Any] | None]:
    """``missing``, ``corrupted``, ``complete`` or ``INCOMPLETE``, and the result's meta."""
    from coffea_smk.storage import ResultFileError, load_meta

    if not Path(path).exists():
        return "missing", None
    try:
        meta = load_meta(path)
    except ResultFileError:
        return "corrupted", None
    if meta.get("analysis_key") != key:
        return "corrupted", None  # not the result its key-named path promises
    return ("complete" if meta.get("complete") else "INCOMPLETE"), meta


def _from_result(layout: Layout, slug: str, st: DatasetStatus) -> DatasetStatus:
    """Without a plan (removed after damage), the dataset result still tells how far it got."""
    st.result, meta = _result_state(layout.dataset_result(slug), layout.keys[slug].result)
    if meta is not None:
        st.events_done, st.events_expected = meta["events"], meta["events_expected"]
        st.bad_files = meta.get("bad_files", [])
        st.failed_chunks = meta.get("failed", [])
    return st


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
            f"{f'{r.events_done}/{expected}':>22}  {r.result}"
        )
    failed = [c for r in rows for c in r.failed_chunks]
    if failed:
        lines.append("")
        lines.append(f"failed chunks ({len(failed)}; a re-run retries them):")
        for c in failed[:50]:
            tb = f"\n      traceback: {c['traceback_file']}" if c.get("traceback_file") else ""
            lines.append(
                f"  {c['dataset']}: {c['file']} entries {c['entrystart']}-{c['entrystop']}: "
                f"{c['exception']}: {c['message']}{tb}"
            )
        if len(failed) > 50:
            lines.append(f"  ... and {len(failed) - 50} more")
    bad = [(r.name, b) for r in rows for b in r.bad_files]
    if bad:
        lines.append("")
        lines.append("unreadable files (skipped; a re-run tries them again):")
        lines.extend(f"  {name}: {b['path']}: {b['error']}" for name, b in bad)
    logs = [log for r in rows for log in r.failed_jobs]
    if logs:
        lines.append("")
        lines.append("failed jobs (see their logs):")
        lines.extend(f"  {log}" for log in logs)
    state, _ = _result_state(layout.result, layout.analysis_key)
    ok = state == "complete" and all(r.result == "complete" for r in rows)
    published = "" if not layout.unpublished() else "; result.npz is not this analysis's yet: run to publish it"
    lines.append("")
    lines.append(f"global result: {layout.result} ({state}{published})")
    return "\n".join(lines), ok
