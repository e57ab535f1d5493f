"""How a :class:`~coffea_smk.smk.progress.RunState` looks: a rich table, or plain lines.

Both read the per-dataset sums only, so their cost does not grow with the
number of work units; with many datasets the table shows the unfinished ones
first and folds the rest into one row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from coffea_smk.smk.progress import DatasetProgress, RunState

if TYPE_CHECKING:
    from rich.console import RenderableType

MAX_ROWS = 20
"""Datasets shown one per row; the others are summed up in one row."""


def duration(seconds: float | None) -> str:
    """``h:mm:ss`` (``?`` when not known)."""
    if seconds is None:
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def rate(value: float | None) -> str:
    """Events per second, short (``12.3k ev/s``)."""
    if value is None:
        return "-"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.1f}{suffix} ev/s"
    return f"{value:.0f} ev/s"


def _of(done: int, total: int | None) -> str:
    return f"{done}/{'?' if total is None else total}"


def _units(d: DatasetProgress) -> str:
    return _of(d.done, d.units_total)


def _events(d: DatasetProgress) -> str:
    return _of(d.events_done, d.events_expected)


def _rows(state: RunState, max_rows: int) -> tuple[list[tuple[str, DatasetProgress]], int]:
    """The datasets to show (unfinished first, in the fileset's order) and how many are folded away."""
    items = list(state.datasets.items())
    if len(items) <= max_rows:
        return items, 0
    unfinished = [(s, d) for s, d in items if not d.finished]
    finished = [(s, d) for s, d in items if d.finished]
    shown = (unfinished + finished)[: max_rows - 1]
    return shown, len(items) - len(shown)


def summary_numbers(state: RunState, now: float) -> tuple[str, str, str, str]:
    """Files, units, events and rate of the whole run as text (``2/2``, ``4/4``, ``160/160``, ``1k ev/s``)."""
    total = state.totals()
    units, events, all_planned = state.expected()
    return (
        _of(total.files_preprocessed, total.files_total),
        _of(total.done, units if all_planned else None),
        _of(total.events_done, events if all_planned else None),
        rate(total.rate(now)),
    )


# ---- plain text (not a terminal) --------------------------------------------------------------
def plain_dataset_line(d: DatasetProgress, now: float) -> str:
    """One dataset as one line of plain text."""
    parts = [f"files {_of(d.files_preprocessed, d.files_total)}"]
    if d.plan is not None:
        parts.append(f"units {_units(d)} ({d.running} running, {d.failed} failed)")
        parts.append(f"events {_events(d)}")
        r = d.rate(now)
        if r is not None:
            parts.append(rate(r))
    return f"{d.name}: {d.phase()}, " + ", ".join(parts)


def plain_total_line(state: RunState, now: float) -> str:
    files, units, events, speed = summary_numbers(state, now)
    total = state.totals()
    eta = state.eta(now)
    failed = f", {total.failed} units failed" if total.failed else ""
    tail = f", ETA {duration(eta)}" if eta is not None and state.finished is None else ""
    return (
        f"[{duration(now - state.started)}] all datasets: files {files}, units {units} "
        f"({total.running} running{failed}), events {events}, {speed}, "
        f"jobs {state.jobs[0]}/{state.jobs[1]}{tail}"
    )


# ---- rich (a terminal) ------------------------------------------------------------------------
def render(
    state: RunState, now: float, logfile: str | None = None, max_rows: int = MAX_ROWS
) -> RenderableType:
    """The live view: a table of datasets, a total row, and the run's elapsed time and ETA."""

    table = Table(box=None, pad_edge=False, header_style="bold", expand=False)
    for name, justify in (
        ("dataset", "left"),
        ("status", "left"),
        ("files", "right"),
        ("units", "right"),
        ("running", "right"),
        ("failed", "right"),
        ("events", "right"),
        ("rate", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    shown, folded = _rows(state, max_rows)
    for _, d in shown:
        status = d.phase()
        style = {"done": "green", "failed": "red", "processing": "cyan"}.get(status, "")
        table.add_row(
            d.name,
            Text(status, style=style),
            _of(d.files_preprocessed, d.files_total),
            _units(d),
            str(d.running) if d.plan is not None else "",
            Text(str(d.failed), style="red") if d.failed else ("0" if d.plan is not None else ""),
            _events(d),
            rate(d.rate(now)),
        )
    if folded:
        table.add_row(f"... {folded} more datasets", "", "", "", "", "", "", "")
    files, units, events, speed = summary_numbers(state, now)
    total = state.totals()
    table.add_row(
        Text("total", style="bold"),
        "",
        files,
        units,
        str(total.running),
        Text(str(total.failed), style="red") if total.failed else "0",
        events,
        speed,
        end_section=True,
    )
    eta = state.eta(now)
    line = f"elapsed {duration(now - state.started)}   jobs {state.jobs[0]}/{state.jobs[1]}"
    if state.finished is None:
        line += f"   ETA {duration(eta)}"
    elif not state.finished:
        line += "   stopped with errors"
    if state.n_failures:
        line += f"   failures: {state.n_failures}"
    parts: list[RenderableType] = [table, Text(line, style="dim")]
    if logfile:
        parts.append(Text(f"full log: {logfile}", style="dim"))
    return Group(*parts)
