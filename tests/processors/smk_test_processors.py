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


class FailsWhileMarked:
    """The dimuon analysis, failing with ValueError on DY entry 20 while $SMK_TEST_FAIL_MARKER exists."""

    def __init__(self) -> None:
        from coffea_smk.examples.dimuon import DimuonProcessor

        self.inner = DimuonProcessor()

    def process(self, events: Any) -> Any:
        import os

        md = events.metadata
        marker = os.environ.get("SMK_TEST_FAIL_MARKER", "")
        if (
            marker
            and os.path.exists(marker)
            and md["dataset"] == "DY"
            and md["entrystart"] <= 20 < md["entrystop"]
        ):
            raise ValueError("deliberate failure while the marker file exists")
        return self.inner.process(events)


_calls = {"n": 0}


class TransientOSError:
    """Raises OSError on the first chunk it sees in a job, then works (flaky storage)."""

    def process(self, events: Any) -> dict[str, int]:
        _calls["n"] += 1
        if _calls["n"] == 1:
            raise OSError("simulated transient read error")
        return {"events": len(events)}


class ChangesType:
    """Returns a dict for the first chunk and a number afterwards."""

    def process(self, events: Any) -> Any:
        return {"n": len(events)} if events.metadata["entrystart"] == 0 else len(events)
