"""The state of a run: per dataset, files preprocessed, work units and events.

:class:`RunState` counts, per dataset, files preprocessed, work units done /
running / failed and events processed against those expected. Every update is
O(1) in the number of work units (a unit's events are looked up in a dict, the
totals are kept as running sums), so a dataset of 10^4 units costs nothing more
per event than one of 2, and a view reads only the per-dataset sums.

:mod:`coffea_smk.smk.progress_tracker` feeds it from Snakemake's log records and
the workflow's files; :mod:`coffea_smk.smk.progress_view` shows it.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field


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
    jobs: tuple[int, int] = (0, 0)
    """Snakemake's count of jobs done and in the DAG."""
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
        self.datasets[slug].finished = True

    def failure(self, failure: Failure) -> None:
        self.failures.append(failure)
        self.n_failures += 1
        self.events_failed += failure.events

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
