"""The skim benchmark's processors: a selected dimuon analysis, and the same writing a skim."""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist

import coffea_smk

COLUMNS = [
    *(f"Muon_{f}" for f in ("pt", "eta", "phi", "mass", "charge", "pfRelIso04_all", "tightId", "dxy", "dz")),
    *(f"Jet_{f}" for f in ("pt", "eta", "phi", "mass", "btagDeepFlavB", "nConstituents")),
    "PuppiMET_pt",
    "PuppiMET_phi",
    "run",
    "luminosityBlock",
    "event",
]
"""20 columns (and genWeight where there is one)."""


def selected(events: Any) -> Any:
    """Events with two muons above 15 GeV (about 10% of the benchmark's events)."""
    return events[ak.num(events.Muon[events.Muon.pt > 15], axis=1) >= 2]


class SelectedDimuon:
    """Dimuon mass and jet HT of the selected events (the same over the skim and the originals)."""

    def process(self, events: Any) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        sel = selected(events)
        mu1, mu2 = ak.unzip(ak.combinations(sel.Muon, 2))
        dimuon = (mu1 + mu2)[mu1.charge != mu2.charge]
        jets = sel.Jet
        ht = ak.sum(jets.pt[(jets.pt > 30) & (abs(jets.eta) < 2.4)], axis=1)
        ds = hist.axis.StrCategory([], growth=True, name="dataset")
        out = {
            "mass": hist.Hist(ds, hist.axis.Regular(120, 0, 150, name="mass")),
            "ht": hist.Hist(ds, hist.axis.Regular(100, 0, 1000, name="ht")),
            "selected": {dataset: len(sel)},
        }
        out["mass"].fill(dataset=dataset, mass=ak.flatten(dimuon.mass))
        out["ht"].fill(dataset=dataset, ht=ht)
        return out


class SkimmingDimuon(SelectedDimuon):
    """The same histograms, and the selected events written as the skim ``dimuon``."""

    def process(self, events: Any) -> dict[str, Any]:
        out = super().process(events)
        columns = COLUMNS + (["genWeight"] if "genWeight" in events.fields else [])
        out["dimuon"] = coffea_smk.Skim(selected(events), columns=columns)
        return out
