"""coffea processors that write skims (tests/test_skims_coffea.py); they import coffea, so they live apart."""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist
from coffea import processor
from skim_processors import columns_of

import coffea_smk
from coffea_smk.examples.dimuon import DimuonProcessor


class CoffeaDimuonHists(processor.ProcessorABC):  # type: ignore[misc]
    """coffea_smk.examples.dimuon's histograms (with coffea's candidates), and a weighted one."""

    def histograms(self, events: Any) -> dict[str, Any]:
        out = DimuonProcessor().process(events)
        weighted = hist.Hist.new.StrCat([], growth=True, name="dataset").Reg(40, 0, 200, name="ht").Weight()
        weights = events.genWeight if "genWeight" in events.fields else ak.ones_like(events.run, dtype="f8")
        weighted.fill(dataset=events.metadata["dataset"], ht=ak.sum(events.Jet.pt, axis=1), weight=weights)
        return {**out, "jet_ht_weighted": weighted}

    def process(self, events: Any) -> dict[str, Any]:
        return self.histograms(events)

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


class CoffeaDimuonSkim(CoffeaDimuonHists):
    """The histograms, and the events with two muons or more as the skim ``dimuon``."""

    def process(self, events: Any) -> dict[str, Any]:
        out = self.histograms(events)
        out["dimuon"] = coffea_smk.Skim(events[ak.num(events.Muon) >= 2], columns=columns_of(events))
        return out


class CoffeaOnlySkim(processor.ProcessorABC):  # type: ignore[misc]
    """Only the skim (no histogram): many small units for the kill tests."""

    def process(self, events: Any) -> dict[str, Any]:
        return {"dimuon": coffea_smk.Skim(events[ak.num(events.Muon) >= 2], columns=columns_of(events))}

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator
