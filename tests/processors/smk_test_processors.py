"""Processors used by the workflow tests (importable through PYTHONPATH)."""

from __future__ import annotations

from typing import Any

import awkward as ak


def count_muons(events: Any) -> dict[str, Any]:
    """A plain function processor."""
    return {"muons": int(ak.sum(ak.num(events.Muon, axis=1))), "events": len(events)}


class Failing:
    """Raises on the chunk that contains entry 20."""

    def process(self, events: Any) -> dict[str, int]:
        md = events.metadata
        if md["entrystart"] <= 20 < md["entrystop"]:
            raise ZeroDivisionError("deliberate failure in the test processor")
        return {"events": len(events)}


class Unaddable:
    def process(self, events: Any) -> Any:
        return "a string cannot be accumulated"
