"""What the plot job wrote, as the report reads it (no matplotlib needed to read it)."""

from __future__ import annotations

from dataclasses import dataclass

MANIFEST = "plots.json"
"""The list of plots in a plot folder."""
NOTES = "notes.json"
"""What was not drawn, and why (the report shows it)."""


@dataclass(frozen=True)
class Plot:
    """One written plot (all its formats), as the report lists it."""

    histogram: str
    kind: str
    """``dataset`` or ``stack``."""
    dataset: str | None
    selection: str
    """The category values it shows (``channel=ee``), or "" for the whole histogram."""
    yscale: str
    files: tuple[str, ...]
    """Paths relative to the plot folder."""
