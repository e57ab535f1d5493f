"""What ``coffea-smk run`` shows while Snakemake runs: a live view, or plain progress lines.

:class:`ProgressLog` receives every Snakemake log record (from the logger
plugin ``snakemake_logger_plugin_coffea_smk``). It writes Snakemake's full log,
formatted as Snakemake would print it, to ``<outdir>/logs/snakemake/<time>.log``
(and the run's :mod:`~coffea_smk.smk.timeline` beside it),
keeps a :class:`~coffea_smk.smk.progress.RunState` through a
:class:`~coffea_smk.smk.progress.Tracker`, and shows it:

* on a terminal, a rich live table (4 refreshes a second at most); failures
  and Snakemake's errors and warnings are printed above it as they happen. The
  jobs' own output (file descriptors 1 and 2, which jobs inherit) goes to the
  full log instead of breaking the table, until the view closes;
* otherwise, plain lines: one per dataset when it is planned or done, one per
  failure, and a line for the whole run every ``interval`` seconds when
  something moved, without any control character.

The outdir is known once Snakemake reports that the workflow started (with
the config files); records before that are kept and written to the log then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from coffea_smk.smk.layout import Layout
from coffea_smk.smk.progress import RunState
from coffea_smk.smk.progress_tracker import Tracker
from coffea_smk.smk.progress_view import duration, plain_dataset_line, plain_total_line, render
from coffea_smk.smk.timeline import TimelineRecorder
from coffea_smk.spec.config import read_mapping

Formatter = Callable[[logging.LogRecord], "str | None"]

# Snakemake's words for a failed job, which the view shows as a failure line instead (they stay in the log)
_SAID_BY_FAILURE_LINES = (
    "RuleException:\nCalledProcessError in ",
    "Exiting because a job execution failed",
    "WorkflowError:\nAt least one job did not complete successfully",
)


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is an interactive terminal that can show a live view."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def load_layout(configfiles: list[str]) -> Any:
    """The analysis of a run from its config files (merged like Snakemake does, later ones win)."""

    config: dict[str, Any] = {}
    for path in configfiles:
        data = read_mapping(Path(path))
        if isinstance(data, dict):
            config.update(data)
    return Layout.from_config(config, str(configfiles[-1]) if configfiles else None)


class ProgressLog:
    """Shows a run's progress from Snakemake's log records; the full log goes to a file.

    Args:
        format_record: Snakemake's own filtering and formatting of a record (None: not shown).
        terminal: Show the live view (default: whether stdout is a terminal).
        interval: Seconds between two progress lines of the whole run in plain mode.
    """

    def __init__(
        self, format_record: Formatter, terminal: bool | None = None, interval: float = 15.0
    ) -> None:
        self.format = format_record
        self.out: IO[str] = sys.stdout
        self.err: IO[str] = sys.stderr
        self.terminal = is_terminal(self.out) if terminal is None else terminal
        self.interval = interval
        self.state = RunState()
        self.tracker: Tracker | None = None
        self.logfile: Path | None = None
        self.failed = False
        self._buffer: list[str] = []
        self._file: IO[str] | None = None
        self._lock = threading.RLock()
        self._shown_failures = 0
        self._phases: dict[str, str] = {}
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._live: Any = None
        self._console: Any = None
        self._saved_fds: tuple[int, int] | None = None
        self._started = False
        self.timeline = TimelineRecorder()

    # ---- records ------------------------------------------------------------------------------
    def handle(self, record: logging.LogRecord) -> None:
        """Take one record: log it, update the state, show what must be shown now."""
        self.timeline.handle(record)
        text = self.format(record)
        if text:
            self._log(text)
        event = str(getattr(record, "event", "") or "")
        if event == "workflow_started" and not self._started:
            self._started = True
            self._start([str(p) for p in getattr(record, "configfiles", None) or []])
        elif event == "run_info":
            stats = getattr(record, "stats", None)
            with self._lock:
                total = int(stats.get("total", 0)) if isinstance(stats, dict) else 0
                self.state.jobs = (self.state.jobs[0], total or self.state.jobs[1])
        elif event == "progress":
            with self._lock:
                self.state.jobs = (int(getattr(record, "done", 0)), int(getattr(record, "total", 0)))
        if record.levelno >= logging.ERROR:
            self.failed = True
        with self._lock:
            if self.tracker is not None:
                self.tracker.handle(record)
        if record.levelno >= logging.WARNING and event not in ("job_error", "group_error") and text:
            if not text.startswith(_SAID_BY_FAILURE_LINES):
                self._message(text, error=True)
        elif event == "" and text and text.startswith("Nothing to be done"):
            self._message(text, error=False)
        self._report_changes()

    def _log(self, text: str) -> None:
        if self._file is None:
            self._buffer.append(text)
            return
        self._file.write(text + "\n")
        self._file.flush()

    def _message(self, text: str, error: bool) -> None:
        if self._live is not None:
            self._console.print(Text(text, style="yellow" if error else ""), soft_wrap=True)
        else:
            print(text, file=self.err if error else self.out, flush=True)

    # ---- start and end ------------------------------------------------------------------------
    def _start(self, configfiles: list[str]) -> None:
        """The workflow started: find the analysis, open the full log, start showing."""
        base = Path.cwd()
        try:
            layout = load_layout(configfiles)
            tracker = Tracker(layout, base)
            outdir = base / layout.outdir
        except Exception as err:  # the view is a help: a config it cannot read must not stop the run
            self._message(f"coffea-smk: no progress view ({type(err).__name__}: {err})", error=True)
            tracker, outdir = None, base / ".snakemake"
        stamp = time.strftime("%Y-%m-%dT%H%M%S")
        self.logfile = outdir / "logs" / "snakemake" / f"{stamp}.log"
        try:
            self.logfile.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.logfile, "a", buffering=1)  # closed by close()
        except OSError as err:
            self._message(f"coffea-smk: cannot write the log {self.logfile}: {err}", error=True)
            self.logfile = None
        for text in self._buffer:
            self._log(text)
        self._buffer.clear()
        with self._lock:
            self.tracker = tracker
            if tracker is not None:
                tracker.state.jobs = self.state.jobs
                self.state = tracker.state
                self._phases = {s: d.phase() for s, d in self.state.datasets.items()}
        print(f"coffea-smk: full log: {self.logfile}", file=self.out, flush=True)
        if self.terminal and self._file is not None:
            self._start_live()
        else:
            for d in self.state.datasets.values():
                print(plain_dataset_line(d, time.monotonic()), file=self.out, flush=True)
            self._ticker = threading.Thread(target=self._tick, name="coffea-smk-progress", daemon=True)
            self._ticker.start()

    def _start_live(self) -> None:

        assert self._file is not None
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        tty = os.dup(self.out.fileno())
        self._saved_fds = (os.dup(1), os.dup(2))
        # jobs inherit 1 and 2: their output goes to the full log, not through the table
        os.dup2(self._file.fileno(), 1)
        os.dup2(self._file.fileno(), 2)
        self._tty = os.fdopen(tty, "w", buffering=1)
        self._console = Console(file=self._tty, force_terminal=True)
        self._fit()
        self._live = Live(
            get_renderable=self._render,
            console=self._console,
            refresh_per_second=4,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._live.start()

    def _fit(self) -> None:
        with contextlib.suppress(OSError):
            self._console.size = os.get_terminal_size(self._tty.fileno())

    def _render(self) -> Any:
        with self._lock:
            self._fit()
            return render(self.state, time.monotonic(), str(self.logfile) if self.logfile else None)

    def close(self) -> None:
        """The run is over: stop showing, say how it ended, restore the output, close the log."""
        if self._stop.is_set():
            return  # closed by Snakemake's logger manager, then again by logging.shutdown
        self._stop.set()
        with self._lock:
            if self.state.finished is None:
                self.state.finished = not self.failed
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        if self._live is not None:
            # not under self._lock: Live's refresh thread takes Live's lock, then ours (in _render)
            self._live.stop()
            self._live = None
        if self._saved_fds is not None:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(self._saved_fds[0], 1)
            os.dup2(self._saved_fds[1], 2)
            for fd in self._saved_fds:
                os.close(fd)
            self._saved_fds = None
            self._tty.close()
        elif self.tracker is not None:
            self._print_plain(all_datasets=True)
        if self.tracker is not None or self.logfile is not None:
            if self.failed:
                print(
                    f"coffea-smk: the run stopped with errors; full log: {self.logfile}",
                    file=self.err,
                    flush=True,
                )
            elif self.state.datasets:
                elapsed = duration(time.monotonic() - self.state.started)
                print(f"coffea-smk: done in {elapsed}", file=self.out, flush=True)
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.logfile is not None:
            with contextlib.suppress(OSError):
                self.timeline.write(self.logfile.with_suffix(".timeline.json"))

    # ---- what changed ---------------------------------------------------------------------------
    def _report_changes(self) -> None:
        with self._lock:
            new = self.state.n_failures - self._shown_failures
            failures = list(self.state.failures)[-new:] if new > 0 else []
            self._shown_failures = self.state.n_failures
            changed = []
            for slug, d in self.state.datasets.items():
                phase = d.phase()
                if self._phases.get(slug) != phase:
                    self._phases[slug] = phase
                    changed.append(d)
        for failure in failures:
            self._failure_line(failure.line())
        if self._live is None and self.tracker is not None:
            now = time.monotonic()
            for d in changed:
                print(plain_dataset_line(d, now), file=self.out, flush=True)

    def _failure_line(self, text: str) -> None:
        if self._live is not None:
            self._console.print(Text(text, style="red"), soft_wrap=True)
        else:
            print(text, file=self.out, flush=True)

    def _tick(self) -> None:
        """Plain mode: a line for the whole run every ``interval`` seconds, when something moved."""
        last: tuple[int, ...] = ()
        next_at = time.monotonic() + self.interval
        while not self._stop.wait(min(1.0, self.interval)):
            if time.monotonic() < next_at:
                continue
            next_at = time.monotonic() + self.interval
            with self._lock:
                t = self.state.totals()
                now = (t.files_preprocessed, t.done, t.running, t.failed, t.events_done, *self.state.jobs)
            if now != last:
                last = now
                self._print_plain(all_datasets=False)

    def _print_plain(self, all_datasets: bool) -> None:
        now = time.monotonic()
        with self._lock:
            lines = [plain_dataset_line(d, now) for d in self.state.datasets.values()] if all_datasets else []
            lines.append(plain_total_line(self.state, now))
        for line in lines:
            print(line, file=self.out, flush=True)
