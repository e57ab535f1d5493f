"""From Snakemake's log records and the workflow's files to a :class:`~coffea_smk.smk.progress.RunState`.

Snakemake's log records (job info, finished, error) name a job's rule and
wildcards; the analysis's :class:`~coffea_smk.smk.layout.Layout` says where the
plans, partial results and failure manifests of those jobs are. The plan and
failure JSON files are read by :func:`load_plan` and :func:`load_failures` only.

Never imports Snakemake: records are read by attribute (``event``, ``jobid``,
``rule_name``, ``wildcards``...), as Snakemake 9's logger plugins receive them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coffea_smk.smk.layout import Layout
from coffea_smk.smk.names import attempt_name, split_attempt
from coffea_smk.smk.progress import Failure, PlanInfo, RunState


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

    def _job_finished(self, jobid: int) -> None:
        job = self.jobs.pop(jobid, None)
        if job is None:
            return
        slug = job.dataset or ""
        d = self.state.datasets.get(slug)
        if job.rule == "result":
            self.state.finished = True
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
            job = _Job(str(getattr(record, "rule_name", "?")), None, None, None)
        if logs:
            job = _Job(job.rule, job.dataset, job.name, logs[0])
        d = self.state.datasets.get(job.dataset or "")
        name = d.name if d is not None else job.rule
        what, error = self._what_failed(job)
        if d is not None:
            d.error = True
            if job.rule == "process" and job.name:
                self.state.unit_failed(job.dataset or "", split_attempt(job.name)[0])
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
