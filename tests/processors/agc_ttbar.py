"""The AGC's ttbar analysis (CMS open data), written from its public definition, for the tests.

One analysis body, :class:`TTbarAnalysis`, and two thin classes: :class:`TTbarCoffea`, a
``coffea.processor.ProcessorABC`` (coffea_smk hands it coffea's NanoEvents), and
:class:`TTbar`, a plain class (coffea_smk hands it its own events). ``*Loose`` variants
select with :data:`LOOSE` instead of :data:`AGC`, for the small real samples.

The analysis:

- electrons: pt, |eta|, ``cutBased``, ``sip3d``; muons: pt, |eta|, ``tightId``, ``sip3d``,
  ``pfRelIso04_all``; events with exactly one of them;
- jets: pt (after the variation), |eta|, tight lepton veto id (``isTightLeptonVeto``, or
  the Run 3 criteria on the energy fractions where a file has no ``Jet_jetId``, as NanoAOD
  v15 has not); at least 4, b-tagged by ``btagDeepFlavB``;
- region ``4j1b`` (exactly one b-tag): HT, the sum of the jets' pt; region ``4j2b`` (two
  or more): the mass of the three-jet combination with the largest pt among those with
  a b-tagged jet;
- variations (simulation only): ``pt_scale_up`` (jet pt x 1.03, assigned into the events),
  ``pt_res_up`` (jet pt smeared by N(1, 0.05) drawn by correctionlib's ``HashPRNG`` from
  run, luminosity block, event and jet index, assigned into the jets) and
  ``btag_var_<i>_{up,down}``, event weights 1 +- 0.075 pt_i / 50 GeV of the i-th jet,
  i < 4; simulation is scaled by xsec * lumi / nevts from the dataset's metadata;
- one histogram: observable x region x process (grows) x variation (grows), and event
  counts keyed by dataset.

Weights are rounded to multiples of 2^-10: the sums in a bin are then exact whatever the
order coffea's Runner and coffea_smk add the chunks in, so results compare bin for bin.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import awkward as ak
import hist
import numpy as np
from coffea import processor
from coffea.analysis_tools import PackedSelection

__all__ = ["AGC", "LOOSE", "Cuts", "TTbar", "TTbarAnalysis", "TTbarCoffea", "TTbarCoffeaLoose", "TTbarLoose"]

_WEIGHT_QUANTUM = 2.0**-10


@dataclass(frozen=True)
class Cuts:
    """Thresholds of the object and event selection."""

    electron_pt: float = 30.0
    electron_eta: float = 2.1
    electron_cut_based: int = 4
    """``cutBased`` at least this (4: tight)."""
    muon_pt: float = 30.0
    muon_eta: float = 2.1
    muon_iso: float = 0.15
    sip3d: float = 4.0
    jet_pt: float = 30.0
    jet_eta: float = 2.4
    btag: float = 0.5


AGC = Cuts()
"""The AGC's own thresholds (its b-tag cut, on CSVv2, applied to DeepJet here)."""

LOOSE = Cuts(
    electron_pt=15.0, electron_eta=2.5, electron_cut_based=1, muon_pt=15.0, muon_eta=2.4, muon_iso=0.4,
    jet_pt=20.0, btag=0.3,
)  # fmt: skip
"""Same shape, looser: the 200 ttbar events of the real sample are mostly hadronic."""

PT_VARIATIONS = ("nominal", "pt_scale_up", "pt_res_up")
BTAG_VARIATIONS = tuple(f"btag_var_{i}_{d}" for i in range(4) for d in ("up", "down"))


@functools.cache
def _resolution_rng() -> Any:
    """A deterministic standard normal per jet (correctionlib ``HashPRNG``), built in code."""
    import correctionlib
    import correctionlib.schemav2 as cs

    names = ("run", "luminosityBlock", "event", "jet_index")
    correction = cs.Correction(
        name="jet_pt_resolution_rng",
        description="standard normal draw per jet, a hash of its event's identity and its index",
        version=1,
        inputs=[cs.Variable(name=n, type="int", description=n) for n in names],
        output=cs.Variable(name="rng", type="real", description="N(0, 1)"),
        data=cs.HashPRNG(nodetype="hashprng", inputs=list(names), distribution="normal"),
    )
    cset = cs.CorrectionSet(schema_version=2, description="AGC test corrections", corrections=[correction])
    return correctionlib.CorrectionSet.from_string(cset.model_dump_json())["jet_pt_resolution_rng"]


def smear_factors(events: Any, jets: Any) -> Any:
    """N(1, 0.05) per jet, the same for the same event whatever chunk or reader it comes in."""
    index = ak.local_index(jets.pt, axis=1)
    run, lumi, event, index = ak.broadcast_arrays(events.run, events.luminosityBlock, events.event, index)
    counts = ak.num(index, axis=1)
    flat = [np.asarray(ak.to_numpy(ak.flatten(a)), dtype=np.int64) for a in (run, lumi, event, index)]
    rng = _resolution_rng().evaluate(*flat)
    return ak.unflatten(1.0 + 0.05 * rng, counts)


def tight_from_fractions(jets: Any) -> Any:
    """The Run 3 tight jet id from the energy fractions and multiplicities (what NanoAOD up
    to v14 stored in bit 1 of ``Jet_jetId``; v15 leaves it to the analysis)."""
    abseta = abs(jets.eta)
    central = (
        (jets.neHEF < 0.99)
        & (jets.neEmEF < 0.9)
        & (jets.chMultiplicity + jets.neMultiplicity > 1)
        & (jets.chHEF > 0.01)
        & (jets.chMultiplicity > 0)
    )
    return ak.where(
        abseta <= 2.6,
        central,
        ak.where(
            abseta <= 2.7,
            (jets.neHEF < 0.9) & (jets.neEmEF < 0.99),
            ak.where(abseta <= 3.0, jets.neHEF < 0.99, (jets.neEmEF < 0.4) & (jets.neMultiplicity >= 2)),
        ),
    )


def tight_lepton_veto_from_fractions(jets: Any) -> Any:
    """Tight, and no lepton-like energy within |eta| <= 2.7 (bit 2 of ``Jet_jetId`` up to v14)."""
    veto = ak.where(abs(jets.eta) <= 2.7, (jets.muEF < 0.8) & (jets.chEmEF < 0.8), True)
    return tight_from_fractions(jets) & veto


def _jet_id(jets: Any) -> Any:
    if "jetId" in ak.fields(jets):
        return jets.isTightLeptonVeto
    return tight_lepton_veto_from_fractions(jets)


def _quantised(weights: Any) -> np.ndarray:
    return np.round(np.asarray(weights, dtype=np.float64) / _WEIGHT_QUANTUM) * _WEIGHT_QUANTUM


def new_histogram() -> hist.Hist[Any]:
    return (
        hist.Hist.new.Reg(25, 50.0, 550.0, name="observable", label="observable [GeV]")
        .StrCat(["4j1b", "4j2b"], name="region", label="region")
        .StrCat([], name="process", label="process", growth=True)
        .StrCat([], name="variation", label="variation", growth=True)
        .Weight()
    )


class TTbarAnalysis:
    """The analysis body: ``process`` and ``postprocess`` for both thin classes."""

    cuts: Cuts = AGC

    def process(self, events: Any) -> dict[str, Any]:
        cuts = self.cuts
        meta = events.metadata
        dataset = meta["dataset"]
        process = meta.get("process", dataset)
        is_mc = bool(meta.get("is_mc", True))
        norm = float(meta["xsec"]) * float(meta["lumi"]) / float(meta["nevts"]) if is_mc else 1.0

        electrons, muons = events.Electron, events.Muon
        good_electrons = (
            (electrons.pt > cuts.electron_pt)
            & (abs(electrons.eta) < cuts.electron_eta)
            & (electrons.cutBased >= cuts.electron_cut_based)
            & (electrons.sip3d < cuts.sip3d)
        )
        good_muons = (
            (muons.pt > cuts.muon_pt)
            & (abs(muons.eta) < cuts.muon_eta)
            & muons.tightId
            & (muons.sip3d < cuts.sip3d)
            & (muons.pfRelIso04_all < cuts.muon_iso)
        )
        single_lepton = (ak.sum(good_electrons, axis=1) + ak.sum(good_muons, axis=1)) == 1

        nominal = events.Jet
        nominal_pt = nominal.pt
        smeared = events.Jet
        smeared["pt"] = nominal_pt * smear_factors(events, nominal)  # into the jets
        events["Jet", "pt"] = nominal_pt * 1.03  # into the events
        scaled = events.Jet
        varied = {"nominal": nominal, "pt_scale_up": scaled, "pt_res_up": smeared}

        out = new_histogram()
        counts: dict[str, int] = {"events": len(events)}
        for variation in PT_VARIATIONS if is_mc else ("nominal",):
            jets = varied[variation]
            jets = jets[(jets.pt > cuts.jet_pt) & (abs(jets.eta) < cuts.jet_eta) & _jet_id(jets)]
            btagged = jets.btagDeepFlavB >= cuts.btag
            nbtag = ak.sum(btagged, axis=1)
            selection = PackedSelection()
            selection.add("single_lepton", single_lepton)
            selection.add("four_jets", ak.num(jets, axis=1) >= 4)
            selection.add("exactly_1b", nbtag == 1)
            selection.add("two_b", nbtag >= 2)
            for region, cut in (("4j1b", "exactly_1b"), ("4j2b", "two_b")):
                mask = selection.all("single_lepton", "four_jets", cut)
                chosen = jets[mask]
                if region == "4j1b":
                    observable = ak.sum(chosen.pt, axis=1)
                else:
                    observable = self._trijet_mass(chosen, chosen.btagDeepFlavB >= cuts.btag)
                observable = ak.to_numpy(observable, allow_missing=False)
                weight = np.full(len(observable), norm)
                if variation == "nominal":
                    counts[region] = len(observable)
                out.fill(
                    observable=observable,
                    region=region,
                    process=process,
                    variation=variation,
                    weight=_quantised(weight),
                )
                if variation == "nominal" and is_mc:
                    for i in range(4):
                        shift = 0.075 * ak.to_numpy(chosen.pt[:, i]) / 50.0
                        for direction, sign in (("up", 1.0), ("down", -1.0)):
                            out.fill(
                                observable=observable,
                                region=region,
                                process=process,
                                variation=f"btag_var_{i}_{direction}",
                                weight=_quantised(weight * (1.0 + sign * shift)),
                            )
        return {"hist": out, "counts": {dataset: counts}}

    @staticmethod
    def _trijet_mass(jets: Any, btagged: Any) -> Any:
        """Per event, the mass of the three-jet system with the largest pt among those with a b-tag."""
        trijets = ak.combinations(jets, 3)
        tags = ak.combinations(btagged, 3)
        p4 = trijets["0"] + trijets["1"] + trijets["2"]
        p4 = p4[tags["0"] | tags["1"] | tags["2"]]
        best = ak.argmax(p4.pt, axis=1, keepdims=True)
        return ak.firsts(p4[best]).mass

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


class TTbarCoffea(TTbarAnalysis, processor.ProcessorABC):  # type: ignore[misc]
    """The analysis as a coffea processor: coffea_smk gives it coffea's NanoEvents."""


class TTbar(TTbarAnalysis):
    """The analysis as a plain class: coffea_smk gives it its own events."""


class TTbarCoffeaLoose(TTbarCoffea):
    cuts = LOOSE


class TTbarLoose(TTbar):
    cuts = LOOSE
