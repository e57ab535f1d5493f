"""The run's timeline: from Snakemake's log records to where the wall time went."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from coffea_smk.smk.timeline import (
    AFTER,
    ANALYSIS,
    BEFORE_JOBS,
    BETWEEN,
    SNAKEFILE,
    STARTS,
    Timeline,
    TimelineRecorder,
    breakdown,
    format_breakdown,
)


def _record(created: float, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("snakemake", logging.INFO, "", 0, "", None, None)
    record.created = created
    record.__dict__.update(fields)
    return record


def test_breakdown_splits_shared_time_and_counts_gaps(tmp_path: Path) -> None:
    recorder = TimelineRecorder()
    records = [
        _record(100.0, event=""),  # the first record
        _record(100.5, event="job_info", jobid=1, rule_name="preprocess"),
        _record(101.0, event="job_info", jobid=2, rule_name="process"),
        _record(102.0, event="job_finished", job_id=1),  # preprocess and process share 101-102
        _record(103.0, event="job_finished", job_id=2),
        # 103-104: no job runs
        _record(104.0, event="job_info", jobid=3, rule_name="process"),
        _record(105.0, event="job_error", jobid=3),  # a failed job ends too
    ]
    for r in records:
        recorder.handle(r)
    assert recorder.timeline is not None
    recorder.timeline.process_start = 98.0
    recorder.timeline.marks = {SNAKEFILE: 99.0, ANALYSIS: 99.5}
    recorder.timeline.end = 105.25
    path = tmp_path / "t.timeline.json"
    recorder.timeline.write(path)
    phases = {p.name: p for p in breakdown(Timeline.read(path))}
    assert phases[STARTS[SNAKEFILE]].wall_s == pytest.approx(1.0)
    assert phases[STARTS[ANALYSIS]].wall_s == pytest.approx(0.5)
    assert phases[BEFORE_JOBS].wall_s == pytest.approx(0.5)
    # preprocess alone 100.5-101, shared 101-102 (half each)
    assert phases["rule preprocess"].wall_s == pytest.approx(1.0)
    assert (phases["rule preprocess"].jobs, phases["rule preprocess"].job_s) == (1, pytest.approx(1.5))
    assert phases["rule process"].wall_s == pytest.approx(0.5 + 1.0 + 1.0)
    assert (phases["rule process"].jobs, phases["rule process"].job_s) == (2, pytest.approx(3.0))
    assert phases[BETWEEN].wall_s == pytest.approx(1.0)
    assert phases[AFTER].wall_s == pytest.approx(0.25)
    # the phases are the whole run, each second once
    assert sum(p.wall_s for p in phases.values()) == pytest.approx(105.25 - 98.0)
    table = format_breakdown(list(phases.values()))
    assert table.splitlines()[-1].split()[-1] == "7.25"
