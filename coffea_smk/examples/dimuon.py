"""A dimuon analysis: muon counts, opposite-sign pairs, the dimuon mass and jet HT.

Written against the NanoAOD event interface that coffea and coffea_smk share
(``events.Muon``, ``ak.combinations``, ``(a + b).mass``), so the same class
runs in both.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist


class DimuonProcessor:
    """Counts muons and opposite-sign muon pairs and histograms their mass."""

    def process(self, events: Any) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        muons = events.Muon
        pairs = ak.combinations(muons, 2)
        mu1, mu2 = ak.unzip(pairs)
        opposite = mu1.charge != mu2.charge
        dimuon = (mu1 + mu2)[opposite]

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

        jets = events.Jet
        ht = ak.sum(jets.pt[jets.pt > 30.0], axis=1)
        jet_ht = (
            hist.Hist.new.StrCat([], growth=True, name="dataset")
            .Reg(60, 0.0, 600.0, name="ht", label=r"jet $H_T$ [GeV]")
            .Double()
        )
        jet_ht.fill(dataset=dataset, ht=ht)

        cutflow = {
            "events": len(events),
            "muons": int(ak.sum(ak.num(muons, axis=1))),
            "muon pairs": int(ak.sum(ak.num(pairs, axis=1))),
            "opposite-sign pairs": int(ak.sum(ak.num(dimuon, axis=1))),
        }
        return {"cutflow": {dataset: cutflow}, "mass": mass, "muon_pt": muon_pt, "jet_ht": jet_ht}

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return accumulator
