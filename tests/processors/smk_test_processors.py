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


class StatHistograms:
    """Muon pT per channel (barrel, endcap) and variation (nominal, scaleUp, scaleDown), unweighted
    fills into a Weight storage: the histogram of the statistical-model tests."""

    def process(self, events: Any) -> dict[str, Any]:
        import hist
        import numpy as np

        muons = events.Muon
        pt, eta = ak.to_numpy(ak.flatten(muons.pt)), ak.to_numpy(ak.flatten(muons.eta))
        h = (
            hist.Hist.new.StrCat([], growth=True, name="dataset")
            .StrCat(["barrel", "endcap"], name="channel")
            .StrCat(["nominal", "scaleUp", "scaleDown"], name="syst")
            .Var([0.0, 10.0, 20.0, 40.0, 200.0], name="pt", label="muon pT")
            .Weight()
        )
        dataset = events.metadata["dataset"]
        for channel, selected in (("barrel", np.abs(eta) < 1.2), ("endcap", np.abs(eta) >= 1.2)):
            for syst, factor in (("nominal", 1.0), ("scaleUp", 1.03), ("scaleDown", 0.97)):
                h.fill(dataset=dataset, channel=channel, syst=syst, pt=pt[selected] * factor)
        return {"muon_pt": h}
