"""coffea processors that write skims (tests/test_skims_coffea.py); they import coffea, so they live apart."""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist
from coffea import processor

import coffea_smk

# Jet's four coordinates: coffea's NanoAODSchema cannot build events.Jet from Jet_pt alone
COLUMNS = ["Muon", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "run", "luminosityBlock", "event"]


def columns_of(events: Any) -> list[str]:
    """The skim's columns: genWeight where the events have it (MC)."""
    return COLUMNS + (["genWeight"] if "genWeight" in events.fields else [])


class CoffeaDimuonHists(processor.ProcessorABC):  # type: ignore[misc]
    """Histograms with coffea's candidates; the mass binned as coffea_smk.examples.dimuon's."""

    def histograms(self, events: Any) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        muons = events.Muon
        mu1, mu2 = ak.unzip(ak.combinations(muons, 2))
        dimuon = (mu1 + mu2)[mu1.charge != mu2.charge]
        mass = (
            hist.Hist.new.StrCat([], growth=True, name="dataset")
            .Reg(120, 0.0, 150.0, name="mass", label=r"$m_{\mu\mu}$ [GeV]")
            .Double()
        )
        mass.fill(dataset=dataset, mass=ak.flatten(dimuon.mass))
        muon_pt = (
            hist.Hist.new.StrCat([], growth=True, name="dataset")
            .Reg(50, 0.0, 100.0, name="pt", label=r"muon $p_T$ [GeV]")
            .Double()
        )
        muon_pt.fill(dataset=dataset, pt=ak.flatten(muons.pt))
        weighted = hist.Hist.new.StrCat([], growth=True, name="dataset").Reg(40, 0, 200, name="ht").Weight()
        weights = events.genWeight if "genWeight" in events.fields else ak.ones_like(events.run, dtype="f8")
        weighted.fill(dataset=dataset, ht=ak.sum(events.Jet.pt, axis=1), weight=weights)
        return {
            "mass": mass,
            "muon_pt": muon_pt,
            "jet_ht_weighted": weighted,
            "counts": {dataset: {"events": len(events), "pairs": int(ak.sum(ak.num(dimuon, axis=1)))}},
        }

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
