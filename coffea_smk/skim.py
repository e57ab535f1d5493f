"""What a processor returns to write selected events to files: :class:`Skim`.

::

    def process(self, events):
        sel = events[ak.num(events.Muon) >= 2]
        return {"hists": ..., "dimuon": coffea_smk.Skim(sel, columns=["Muon", "Jet_pt", "run"])}

The key of the output dict is the skim's name. Each work unit writes the rows of its
chunks to one piece file; per dataset the pieces are compacted, and
``<outdir>/skims/<name>/fileset.json`` is a fileset for the next analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["Skim"]


class Skim:
    """Selected events (or values per event) to write, with the columns to keep.

    Args:
        array: An events array or any subset of it: a selection of events, a collection,
            fields the processor computed, or a plain awkward array of per-event values.
        columns: NanoAOD branch names (``"Jet_pt"``), collection names (``"Muon"``: all its
            branches) or glob patterns (``"Jet_*"``); all fields of ``array`` by default.
    """

    __slots__ = ("array", "columns")

    def __init__(self, array: Any, columns: Sequence[str] | str | None = None) -> None:
        if isinstance(columns, str):
            columns = [columns]
        self.array = array
        self.columns = tuple(columns) if columns is not None else None

    def __repr__(self) -> str:
        cols = "all fields" if self.columns is None else ", ".join(self.columns)
        return f"Skim({len(self.array)} rows; {cols})"
