"""The benchmark processor: opposite-sign dimuon mass and jet HT (9 columns touched)."""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist


class DimuonHT:
    def process(self, events: Any) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        mu = events.Muon
        mu1, mu2 = ak.unzip(ak.combinations(mu, 2))
        dimuon = (mu1 + mu2)[mu1.charge != mu2.charge]
        jets = events.Jet
        ht = ak.sum(jets.pt[(jets.pt > 30) & (abs(jets.eta) < 2.4)], axis=1)
        ds = hist.axis.StrCategory([], growth=True, name="dataset")
        out = {
            "mass": hist.Hist(ds, hist.axis.Regular(120, 0, 150, name="mass")),
            "ht": hist.Hist(ds, hist.axis.Regular(100, 0, 1000, name="ht")),
            "events": {dataset: len(events)},
        }
        out["mass"].fill(dataset=dataset, mass=ak.flatten(dimuon.mass))
        out["ht"].fill(dataset=dataset, ht=ht)
        return out

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator
