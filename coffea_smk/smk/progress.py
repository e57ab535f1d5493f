"""The state of a run, from Snakemake's log events and the workflow's own files.

:class:`RunState` counts, per dataset, files preprocessed, work units done /
running / failed and events processed against those expected. Every update is
O(1) in the number of work units (a unit's events are looked up in a dict, the
totals are kept as running sums), so a dataset of 10^4 units costs nothing more
per event than one of 2, and rendering reads only the per-dataset sums.

:class:`Tracker` feeds it: Snakemake's log records (job info, finished, error)
name a job's rule and wildcards; the analysis's :class:`~coffea_smk.smk.layout.Layout`
says where the plans, partial results and failure manifests of those jobs are.
The plan and failure JSON files are read by :func:`load_plan` and
:func:`load_failures` only.

Never imports Snakemake: records are read by attribute (``event``, ``jobid``,
``rule_name``, ``wildcards``...), as Snakemake 9's logger plugins receive them.
"""

from __future__ import annotations

import enum
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coffea_smk.smk.layout import Layout, attempt_name, split_attempt


class Unit(enum.Enum):
    """What became of a work unit."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    """Its job failed, or it finished with failed chunks (retried on the next run)."""


@dataclass(frozen=True)
class PlanInfo:
    """What the view needs of a dataset's plan."""

    files: tuple[str, ...]
    units: dict[str, tuple[int, tuple[tuple[int, int, int], ...]]]
    """``{unit id: (events, ((file index, start, stop), ...))}``."""
    expected_events: int
    bad_files: tuple[tuple[str, str], ...] = ()
    """``(path, error)`` of files that could not be read (``skip_bad_files``)."""


@dataclass(frozen=True)
class Failure:
    """A failed chunk, file or job, as shown to the user."""

    dataset: str
    what: str
    """``file F entries A-B``, or the files a failed job covered."""
    error: str
    log: str | None
    events: int = 0
    """Events the failure leaves out of the result (0 when not known)."""

    def line(self) -> str:
        where = f" (log: {self.log})" if self.log else ""
        return f"FAILED {self.dataset}: {self.what}: {self.error}{where}"


# ---- the one place that reads the engine's records (plans, failure manifests) ---------------
def load_plan(path: str | Path) -> PlanInfo | None:
    """A plan file as :class:`PlanInfo`; None when it does not exist (yet) or is unreadable."""
    try:
        plan = json.loads(Path(path).read_text())
        return PlanInfo(
            tuple(f["path"] for f in plan["files"]),
            {
                u["id"]: (int(u["events"]), tuple((c[0], c[1], c[2]) for c in u["chunks"]))
                for u in plan["units"]
            },
            int(plan["expected_events"]),
            tuple((b["path"], str(b.get("error", ""))) for b in plan.get("bad_files", [])),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def load_failures(path: str | Path) -> list[tuple[str, int, int, str]]:
    """A failure manifest as ``(file, start, stop, error)``; bad files have ``start == stop == 0``."""
    try:
        data = json.loads(Path(path).read_text())
        out = [
            (f["file"], int(f["entrystart"]), int(f["entrystop"]), f"{f['exception']}: {f['message']}")
            for f in data.get("failed", [])
        ]
        out += [(b["path"], 0, 0, str(b.get("error", ""))) for b in data.get("bad_files", [])]
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


# ---- counting -------------------------------------------------------------------------------
@dataclass
class DatasetProgress:
    """The running sums of one dataset."""

    name: str
    files_total: int
    files_preprocessed: int = 0
    plan: PlanInfo | None = None
    units: dict[str, Unit] = field(default_factory=dict)
    done: int = 0
    running: int = 0
    failed: int = 0
    events_done: int = 0
    events_this_run: int = 0
    first_start: float | None = None
    last_done: float | None = None
    merging: int = 0
    finished: bool = False
    error: bool = False

    @property
    def units_total(self) -> int | None:
        return None if self.plan is None else len(self.plan.units)

    @property
    def events_expected(self) -> int | None:
        return None if self.plan is None else self.plan.expected_events

    def rate(self, now: float) -> float | None:
        """Events per second processed in this run (None before the first unit is done)."""
        if self.first_start is None or not self.events_this_run:
            return None
        end = now if self.running or self.last_done is None else self.last_done
        return self.events_this_run / max(end - self.first_start, 1e-3)

    def phase(self) -> str:
        if self.finished:
            return "done"
        if self.error and not self.running:
            return "failed"
        if self.plan is None:
            return "preprocessing"
        if self.running or self.done + self.failed < len(self.units):
            return "processing"
        return "merging"


@dataclass
class RunState:
    """Per-dataset sums and the failures of a run; every update is O(1) in the number of units."""

    datasets: dict[str, DatasetProgress] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    failures: deque[Failure] = field(default_factory=lambda: deque(maxlen=50))
    n_failures: int = 0
    events_failed: int = 0
    """Events left out by the failures so far (chunks failed under ``continue_on``)."""
    changes: int = 0
    """Counts every change that a plain-text view reports (datasets planned or done, failures)."""
    finished: bool | None = None
    """True once the global result is made; False after a workflow error."""

    def add_dataset(self, slug: str, name: str, files: int) -> None:
        self.datasets[slug] = DatasetProgress(name, files)

    def preprocessed(self, slug: str, files: int) -> None:
        d = self.datasets[slug]
        d.files_preprocessed = min(d.files_total, d.files_preprocessed + files)

    def planned(self, slug: str, plan: PlanInfo, done: dict[str, int] | None = None) -> None:
        """The plan of a dataset; ``done``: ``{unit: events}`` of units finished before this run."""
        d = self.datasets[slug]
        if d.plan is not None:
            return
        d.plan = plan
        d.files_preprocessed = d.files_total
        d.units = dict.fromkeys(plan.units, Unit.PENDING)
        for unit, events in (done or {}).items():
            if d.units.get(unit) is Unit.PENDING:
                d.units[unit] = Unit.DONE
                d.done += 1
                d.events_done += events
        self.changes += 1

    def unit_started(self, slug: str, unit: str, now: float | None = None) -> None:
        d = self.datasets[slug]
        if d.first_start is None:
            d.first_start = time.monotonic() if now is None else now
        self._move(d, unit, Unit.RUNNING)

    def unit_finished(self, slug: str, unit: str, failed_events: int = 0, now: float | None = None) -> None:
        """A unit's job succeeded; ``failed_events`` of its chunks failed (and are left out)."""
        d = self.datasets[slug]
        if d.units.get(unit) in (Unit.DONE, Unit.FAILED):
            return
        events = self._events(d, unit) - failed_events
        self._move(d, unit, Unit.FAILED if failed_events else Unit.DONE)
        d.events_done += events
        d.events_this_run += events
        d.last_done = time.monotonic() if now is None else now

    def unit_failed(self, slug: str, unit: str) -> None:
        d = self.datasets[slug]
        d.error = True
        self._move(d, unit, Unit.FAILED)

    def dataset_finished(self, slug: str) -> None:
        d = self.datasets[slug]
        if not d.finished:
            d.finished = True
            self.changes += 1

    def failure(self, failure: Failure) -> None:
        self.failures.append(failure)
        self.n_failures += 1
        self.events_failed += failure.events
        self.changes += 1

    def _events(self, d: DatasetProgress, unit: str) -> int:
        if d.plan is None or unit not in d.plan.units:
            return 0
        return d.plan.units[unit][0]

    def _move(self, d: DatasetProgress, unit: str, new: Unit) -> None:
        old = d.units.get(unit)
        if d.plan is None or unit not in d.plan.units:
            return  # not planned yet, or a unit of another plan (the analysis changed under the view)
        for state, step in ((old, -1), (new, +1)):
            if state is Unit.DONE:
                d.done += step
            elif state is Unit.RUNNING:
                d.running += step
            elif state is Unit.FAILED:
                d.failed += step
        d.units[unit] = new

    # ---- totals over datasets (a loop over datasets, never over units) ----------------------
    def totals(self) -> DatasetProgress:
        out = DatasetProgress("total", 0)
        starts = [d.first_start for d in self.datasets.values() if d.first_start is not None]
        out.first_start = min(starts) if starts else None
        for d in self.datasets.values():
            out.files_total += d.files_total
            out.files_preprocessed += d.files_preprocessed
            out.done += d.done
            out.running += d.running
            out.failed += d.failed
            out.events_done += d.events_done
            out.events_this_run += d.events_this_run
            out.last_done = max(filter(None, (out.last_done, d.last_done)), default=None)
        return out

    def expected(self) -> tuple[int, int, bool]:
        """Units and events expected over the planned datasets, and whether all are planned."""
        units = events = 0
        for d in self.datasets.values():
            if d.plan is not None:
                units += len(d.plan.units)
                events += d.plan.expected_events
        return units, events, all(d.plan is not None for d in self.datasets.values())

    def eta(self, now: float) -> float | None:
        """Seconds left for the events not processed yet, at this run's rate (None: not known yet)."""
        _, expected, all_planned = self.expected()
        total = self.totals()
        rate = total.rate(now)
        if not all_planned or not rate:
            return None
        return max(0.0, (expected - total.events_done - self.events_failed) / rate)


# ---- from Snakemake's log records to the state ------------------------------------------------
_CHUNK = re.compile(r"file (?P<file>.+?), entries (?P<start>\d+)-(?P<stop>\d+): (?P<error>.*)")


@dataclass(frozen=True)
class _Job:
    rule: str
    dataset: str | None
    name: str | None
    """The unit, batch or node wildcard."""
    log: str | None


class Tracker:
    """Keeps a :class:`RunState` up to date from Snakemake's log records and the analysis's files."""

    def __init__(self, layout: Layout, base: Path | None = None) -> None:
        self.layout = layout
        self.base = base or Path.cwd()
        self.state = RunState()
        self.jobs: dict[int, _Job] = {}
        self._batches: dict[str, dict[str, int]] = {}
        for slug, d in layout.datasets.items():
            self.state.add_dataset(slug, d.name, len(layout.identities[slug]))
            self._batches[slug] = {b: len(g) for b, g in layout.batches(slug).items()}
            self._scan(slug)

    def _path(self, path: str) -> Path:
        return self.base / path

    def _scan(self, slug: str) -> None:
        """What earlier runs left: preprocessed batches, the plan, finished units and results."""
        layout = self.layout
        if self._path(layout.dataset_result(slug)).exists():
            self.state.datasets[slug].finished = True
        if not self._load_plan(slug, scan_units=True):
            for batch in layout.batch_names(slug):
                if self._path(layout.path("preprocess", dataset=slug, batch=batch)).exists():
                    self.state.preprocessed(slug, self._batches[slug].get(split_attempt(batch)[0], 0))

    def _load_plan(self, slug: str, scan_units: bool) -> bool:
        plan = load_plan(self._path(self.layout.plan_path(slug)))
        if plan is None:
            return False
        done: dict[str, int] = {}
        if scan_units:
            tag = self.layout.keys[slug].tag
            attempts = self.layout.unit_attempts(slug)
            for unit, (events, _) in plan.units.items():
                name = attempt_name(unit, attempts.get(unit, 0))
                if self._path(self.layout.path("partial", dataset=slug, tag=tag, unit=name)).exists():
                    done[unit] = events
        self.state.planned(slug, plan, done)
        for path, error in plan.bad_files:
            self.state.failure(Failure(self.state.datasets[slug].name, f"file {path}", error, None))
        return True

    # ---- events -----------------------------------------------------------------------------
    def handle(self, record: Any) -> None:
        """Take one Snakemake log record (a :class:`logging.LogRecord` with Snakemake's extras)."""
        event = str(getattr(record, "event", "") or "")
        if event == "job_info":
            self._job_info(record)
        elif event == "job_finished":
            self._job_finished(int(record.job_id))
        elif event == "job_error":
            self._job_error(record)

    def _job_info(self, record: Any) -> None:
        wildcards = dict(getattr(record, "wildcards", None) or {})
        logs = list(getattr(record, "log", None) or [])
        name = wildcards.get("unit") or wildcards.get("batch") or wildcards.get("node")
        job = _Job(str(record.rule_name), wildcards.get("dataset"), name, logs[0] if logs else None)
        self.jobs[int(record.jobid)] = job
        d = self.state.datasets.get(job.dataset or "")
        if d is None:
            return
        if job.rule == "process" and job.name:
            self.state.unit_started(job.dataset or "", split_attempt(job.name)[0])
        elif job.rule == "merge":
            d.merging += 1

    def _job_finished(self, jobid: int) -> None:
        job = self.jobs.pop(jobid, None)
        if job is None:
            return
        slug = job.dataset or ""
        d = self.state.datasets.get(slug)
        if job.rule == "result":
            self.state.finished = True
            self.state.changes += 1
        if d is None:
            return
        if job.rule == "preprocess" and job.name:
            self.state.preprocessed(slug, self._batches[slug].get(split_attempt(job.name)[0], 0))
            manifest = self.layout.failure("preprocess", dataset=slug, batch=job.name)
            for path, _, _, error in load_failures(self._path(manifest)):
                self.state.failure(Failure(d.name, f"file {path}", error, job.log))
        elif job.rule == "plan":
            self._load_plan(slug, scan_units=False)
        elif job.rule == "process" and job.name:
            self._unit_finished(slug, job)
        elif job.rule == "merge":
            d.merging = max(0, d.merging - 1)
        elif job.rule == "dataset":
            self.state.dataset_finished(slug)

    def _unit_finished(self, slug: str, job: _Job) -> None:
        assert job.name is not None
        manifest = self.layout.failure("partial", dataset=slug, tag=self.layout.keys[slug].tag, unit=job.name)
        path = self._path(manifest)
        failed = load_failures(path) if path.exists() else []
        name = self.state.datasets[slug].name
        for file, start, stop, error in failed:
            self.state.failure(
                Failure(name, f"file {file} entries {start}-{stop}", error, job.log, stop - start)
            )
        self.state.unit_finished(slug, split_attempt(job.name)[0], sum(b - a for _, a, b, _ in failed))

    def _job_error(self, record: Any) -> None:
        job = self.jobs.pop(int(record.jobid), None)
        logs = list(getattr(record, "log", None) or [])
        if job is None:
            job = _Job(str(getattr(record, "rule_name", "?")), None, None, logs[0] if logs else None)
        d = self.state.datasets.get(job.dataset or "")
        name = d.name if d is not None else job.rule
        what, error = self._what_failed(job)
        if d is not None:
            d.error = True
            if job.rule == "process" and job.name:
                self.state.unit_failed(job.dataset or "", split_attempt(job.name)[0])
            elif job.rule == "merge":
                d.merging = max(0, d.merging - 1)
        self.state.failure(Failure(name, what, error, job.log))

    def _what_failed(self, job: _Job) -> tuple[str, str]:
        """The file and entries a failed job names in its log (else what it covered), and its error."""
        text = _tail(self._path(job.log)) if job.log else ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        for line in lines:
            m = _CHUNK.search(line)
            if m:
                return f"file {m['file']} entries {m['start']}-{m['stop']}", m["error"]
        error = lines[-1] if lines else "the job failed (no log)"
        slug = job.dataset or ""
        if job.rule == "process" and job.name and slug in self.state.datasets:
            plan = self.state.datasets[slug].plan
            unit = plan.units.get(split_attempt(job.name)[0]) if plan is not None else None
            if plan is not None and unit is not None:
                covers = ", ".join(f"{plan.files[i]} entries {a}-{b}" for i, a, b in unit[1][:3])
                more = f" and {len(unit[1]) - 3} more chunks" if len(unit[1]) > 3 else ""
                return f"unit {job.name}: file {covers}{more}", error
        if job.rule == "preprocess" and job.name and slug in self.layout.datasets:
            group = self.layout.batches(slug).get(split_attempt(job.name)[0], [])
            files = ", ".join(i.path for i in group[:3]) + (
                f" and {len(group) - 3} more" if len(group) > 3 else ""
            )
            return f"preprocessing file {files}", error
        return f"job {job.rule}" + (f" {job.name}" if job.name else ""), error


def _tail(path: Path, size: int = 1 << 16) -> str:
    """The end of a (job's log) file."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""
