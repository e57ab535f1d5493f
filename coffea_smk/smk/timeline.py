"""Where the wall time of a run went: Snakemake's start, its DAG, each rule's jobs, the gaps between them.

:class:`TimelineRecorder` takes Snakemake's log records (in the logger plugin,
beside the progress view) and keeps when each job was started and when
Snakemake saw it finish; at the end of the run the :class:`Timeline` is written
beside the run's full log (``<outdir>/logs/snakemake/<time>.timeline.json``).
:func:`breakdown` cuts the run's wall time into phases: before the first log
record (Python and Snakemake starting), up to the first job (parsing the
workflow, building the DAG), each rule's share of the time jobs ran (time that
two jobs share is split between them), the time no job ran (scheduling
rounds, DAG updates after checkpoints) and the end after the last job.
``coffea-smk metrics CONFIG`` prints the last run's; the benchmarks print it
beside their figures.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def process_start() -> float:
    """When this process started (epoch seconds, to 10 ms on Linux; now elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


SNAKEFILE = "snakefile"  # the Snakefile starts (Snakemake is imported, its command line read)
ANALYSIS = "analysis"  # the analysis is read: coffea_smk imported, the fileset keyed, the layout made
MARKS: dict[str, float] = {}  # moments of the run's start, set by the Snakefile and Analysis


def mark(name: str) -> None:
    """Note that the run got to ``name`` now (the timeline written at its end shows it)."""
    MARKS.setdefault(name, time.time())  # the first time: a workflow may be read twice


@dataclass
class JobSpan:
    """One job: its rule, Snakemake's id, when it was started and when Snakemake saw it end."""

    rule: str
    jobid: int
    start: float
    end: float | None = None


@dataclass
class Timeline:
    """One Snakemake run, in epoch seconds."""

    process_start: float
    first_record: float
    marks: dict[str, float] = field(default_factory=dict)
    jobs: list[JobSpan] = field(default_factory=list)
    end: float | None = None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)) + "\n")

    @classmethod
    def read(cls, path: Path) -> Timeline:
        data: dict[str, Any] = json.loads(path.read_text())
        jobs = [JobSpan(**j) for j in data.pop("jobs")]
        return cls(**data, jobs=jobs)


class TimelineRecorder:
    """Builds a :class:`Timeline` from Snakemake's log records (``job_info``, ``job_finished``,
    ``job_error``), by their ``created`` times."""

    def __init__(self) -> None:
        self.timeline: Timeline | None = None
        self._running: dict[int, JobSpan] = {}

    def handle(self, record: Any) -> None:
        created = float(getattr(record, "created", time.time()))
        if self.timeline is None:
            self.timeline = Timeline(process_start(), created)
        event = str(getattr(record, "event", "") or "")
        if event == "job_info":
            job = JobSpan(str(getattr(record, "rule_name", "?")), int(record.jobid), created)
            self._running[job.jobid] = job
            self.timeline.jobs.append(job)
        elif event in ("job_finished", "job_error"):
            jobid = getattr(record, "job_id", None)
            ended = self._running.pop(int(jobid if jobid is not None else record.jobid), None)
            if ended is not None:
                ended.end = created

    def write(self, path: Path) -> None:
        """The run is over: its timeline to ``path`` (nothing when no record came)."""
        if self.timeline is None:
            return
        self.timeline.end = time.time()
        self.timeline.marks = {k: v for k, v in MARKS.items() if v <= self.timeline.first_record}
        self.timeline.write(path)


@dataclass(frozen=True)
class Phase:
    """A part of the run's wall time; ``jobs`` and ``job_s`` (summed job spans) for a rule's share."""

    name: str
    wall_s: float
    jobs: int = 0
    job_s: float = 0.0


# the marks of the start, in order: the phase that ends at each (BEFORE_LOG ends at the first record)
STARTS = {
    SNAKEFILE: "start: Python, Snakemake and its plugins imported (the progress view too)",
    ANALYSIS: "start: the analysis read (its fileset, keys, layout)",
}
BEFORE_LOG = "start: the rest of the workflow read, Snakemake's set-up"
BEFORE_JOBS = "start: the DAG built, up to the first job"
BETWEEN = "no job running (scheduling rounds, DAG updates)"
AFTER = "end: after the last job"


def breakdown(t: Timeline) -> list[Phase]:
    """The run's wall time cut into phases (see the module's doc); they add up to the whole run."""
    end = t.end if t.end is not None else max((j.end or j.start for j in t.jobs), default=t.first_record)
    spans = [(j.rule, j.start, j.end if j.end is not None else end) for j in t.jobs]
    first = min((s for _, s, _ in spans), default=end)
    last = max((e for _, _, e in spans), default=first)
    # a sweep over the jobs' starts (+1) and ends (-1): which rules run between two events
    events = sorted([(s, 1, rule) for rule, s, _ in spans] + [(e, -1, rule) for rule, _, e in spans])
    running: dict[str, int] = {}
    share: dict[str, float] = {}
    idle, at = 0.0, first
    for when, step, rule in events:
        n = sum(running.values())
        if when > at:
            if n == 0:
                idle += when - at
            for r, k in running.items():
                share[r] = share.get(r, 0.0) + (when - at) * k / n
            at = when
        running[rule] = running.get(rule, 0) + step
        if not running[rule]:
            del running[rule]
    counts: dict[str, tuple[int, float]] = {}
    for rule, s, e in spans:
        n, total = counts.get(rule, (0, 0.0))
        counts[rule] = (n + 1, total + e - s)
    phases, at = [], t.process_start
    for name, label in STARTS.items():
        if name in t.marks:
            phases.append(Phase(label, t.marks[name] - at))
            at = t.marks[name]
    phases += [Phase(BEFORE_LOG, t.first_record - at), Phase(BEFORE_JOBS, first - t.first_record)]
    order = sorted(counts, key=lambda r: min(s for rule, s, _ in spans if rule == r))
    phases += [Phase(f"rule {r}", share.get(r, 0.0), *counts[r]) for r in order]
    phases += [Phase(BETWEEN, idle), Phase(AFTER, end - last)]
    return phases


def format_breakdown(phases: list[Phase]) -> str:
    """The breakdown as an aligned table: wall seconds, share of the run, jobs and their summed spans."""
    total = sum(p.wall_s for p in phases) or 1.0
    width = max(len(p.name) for p in phases)
    lines = [f"{'':{width}}  {'wall s':>7}  {'share':>6}  {'jobs':>5}  {'job s':>7}"]
    for p in phases:
        jobs = f"{p.jobs:5d}  {p.job_s:7.2f}" if p.jobs else f"{'':5}  {'':7}"
        lines.append(f"{p.name:{width}}  {p.wall_s:7.2f}  {p.wall_s / total:6.1%}  {jobs}")
    lines.append(f"{'the whole run':{width}}  {total:7.2f}")
    return "\n".join(lines)


def latest(logdir: Path) -> Path | None:
    """The newest timeline in a run-log folder (``<outdir>/logs/snakemake``), or None."""
    found = sorted(logdir.glob("*.timeline.json"))
    return found[-1] if found else None
