"""coffea processors for the compatibility tests (they import coffea, so they live apart)."""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist
from coffea import processor
from coffea.processor.test_items import NanoEventsProcessor

# coffea's own test item, as coffea's test suite runs it in virtual mode; it
# also asserts that it was handed the open file's handle.
nanoevents_virtual = NanoEventsProcessor(mode="virtual", check_filehandle=True)


class MatchedJets(processor.ProcessorABC):  # type: ignore[misc]
    """Uses coffea-only features: cross-references and coffea's candidate behaviours."""

    def process(self, events: Any) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        muons = events.Muon
        jets = muons.matched_jet  # cross-reference through Muon_jetIdx
        has = ~ak.is_none(jets, axis=1)
        h = (
            hist.Hist.new.StrCat([], growth=True, name="dataset")
            .Reg(40, 0.0, 200.0, name="pt", label="matched jet pt")
            .Double()
        )
        h.fill(dataset=dataset, pt=ak.flatten(jets[has].pt))
        dr = (
            hist.Hist.new.StrCat([], growth=True, name="dataset")
            .Reg(40, 0.0, 0.8, name="dr", label="muon-jet dR")
            .Double()
        )
        dr.fill(dataset=dataset, dr=ak.flatten(muons[has].delta_r(jets[has])))
        pairs = ak.combinations(muons, 2)
        mass = (pairs["0"] + pairs["1"]).mass
        m = hist.Hist.new.StrCat([], growth=True, name="dataset").Reg(60, 0, 150, name="mass").Double()
        m.fill(dataset=dataset, mass=ak.flatten(mass))
        return {
            "matched_pt": h,
            "dr": dr,
            "mass": m,
            "counts": {dataset: {"matched": int(ak.sum(has)), "muons": int(ak.sum(ak.num(muons)))}},
        }

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


class MuonPairs(processor.ProcessorABC):  # type: ignore[misc]
    """Reads only muons (``pt``, ``eta``, ``phi``, ``mass``, ``charge``): for files that hold nothing else."""

    def process(self, events: Any) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        muons = events.Muon
        pairs = ak.combinations(muons, 2)
        opposite = pairs[pairs["0"].charge != pairs["1"].charge]
        mass = (opposite["0"] + opposite["1"]).mass
        m = hist.Hist.new.StrCat([], growth=True, name="dataset").Reg(120, 0, 120, name="mass").Double()
        m.fill(dataset=dataset, mass=ak.flatten(mass))
        pt = hist.Hist.new.StrCat([], growth=True, name="dataset").Reg(50, 0, 100, name="pt").Double()
        pt.fill(dataset=dataset, pt=ak.flatten(muons.pt))
        return {
            "mass": m,
            "pt": pt,
            "counts": {dataset: {"events": len(events), "muons": int(ak.sum(ak.num(muons)))}},
        }

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator
