"""How far a task is: counts from the workflow's own files, and a live bar (terminal or Jupyter).

The counts are those of ``coffea-smk status``: :func:`coffea_smk.smk.status.dataset_status`
reads each dataset's plan and looks for its units' partial results, so a task measured from
another process (``SnakemakeBackend.attach``) counts the same. The bar is rich's, which
draws in a terminal and, with ``ipywidgets`` installed, as a widget in Jupyter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from coffea_smk.smk.layout import Layout


@dataclass(frozen=True)
class Progress:
    """How far a task is."""

    datasets: int
    """Datasets in the computation."""
    done: int
    """Datasets whose result exists and is complete (known once the run has ended)."""
    incomplete: int
    """Datasets whose result exists but lacks failed chunks."""
    failed_chunks: int
    """Chunks that failed (in the failure manifests of finished units)."""
    running: bool
    events_done: int = 0
    """Events of the chunks processed so far (earlier runs' finished units included)."""
    events_expected: int | None = None
    """Events of the whole computation; None while some dataset is not planned yet."""
    chunks_done: int = 0
    chunks_pending: int = 0
    events_per_second: float | None = None
    """Rate since the task was first measured (None before two measurements apart)."""

    @property
    def fraction(self) -> float | None:
        """``events_done / events_expected`` (None while not known)."""
        if not self.events_expected:
            return None
        return self.events_done / self.events_expected

    def __str__(self) -> str:
        share = "?" if self.fraction is None else f"{100 * self.fraction:.0f}%"
        rate = "" if self.events_per_second is None else f", {self.events_per_second:,.0f} events/s"
        expected = "?" if self.events_expected is None else f"{self.events_expected:,}"
        state = "running" if self.running else "ended"
        chunks = f"{self.chunks_done} done, {self.chunks_pending} pending, {self.failed_chunks} failed"
        return (
            f"{state}: {share} ({self.events_done:,}/{expected} events{rate}); chunks {chunks}; "
            f"datasets {self.done}/{self.datasets} done"
            + (f", {self.incomplete} incomplete" if self.incomplete else "")
        )


@dataclass(frozen=True)
class Counts:
    """What the workflow's files say, summed over the computation's datasets."""

    events_done: int
    events_expected: int | None
    chunks_done: int
    chunks_pending: int
    failed_chunks: int


def count(layout: Layout, names: set[str]) -> Counts:
    """The counts of the datasets named ``names`` in ``layout``."""
    from coffea_smk.smk.status import dataset_status  # noqa: PLC0415  (pydantic)

    done = pending = failed = events = 0
    expected: int | None = 0
    for slug, d in layout.datasets.items():
        if d.name not in names:
            continue
        st = dataset_status(layout, slug)
        done, pending, failed = done + st.chunks_done, pending + st.chunks_pending, failed + st.chunks_failed
        events += st.events_done
        expected = None if expected is None or st.events_expected is None else expected + st.events_expected
    return Counts(events, expected, done, pending, failed)


class Rate:
    """Events per second between the first measurement and the latest."""

    def __init__(self) -> None:
        self._first: tuple[float, int] | None = None

    def __call__(self, events: int) -> float | None:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, events)
            return None
        t0, e0 = self._first
        return (events - e0) / (now - t0) if now - t0 > 0.5 and events > e0 else None


def watch(measure: Callable[[], Progress], interval: float = 1.0, console: Console | None = None) -> Progress:
    """Draw ``measure()`` (a task's :class:`Progress`) as a bar until the run ends; the last one."""
    from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn  # noqa: PLC0415
    from rich.progress import Progress as Bar  # noqa: PLC0415

    columns = (TextColumn("events"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Bar(*columns, TextColumn("{task.fields[info]}"), console=console, refresh_per_second=4) as bar:
        row = bar.add_task("events", total=None, info="")
        while True:
            p = measure()
            info = f"{p.events_done:,} events, {p.failed_chunks} failed chunks"
            if p.events_per_second is not None:
                info += f", {p.events_per_second:,.0f}/s"
            bar.update(row, completed=p.events_done, total=p.events_expected, info=info)
            if not p.running:
                return p
            time.sleep(interval)
