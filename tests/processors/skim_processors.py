"""Processors that write skims (tests/test_skims.py, test_chain.py); their columns and histograms are
those of skim_coffea_processors too."""

from __future__ import annotations

import os
from typing import Any

import awkward as ak

import coffea_smk
from coffea_smk.examples.dimuon import DimuonProcessor

# Jet's four coordinates: coffea's NanoAODSchema cannot build events.Jet from Jet_pt alone
COLUMNS = ["Muon", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "run", "luminosityBlock", "event"]


def columns_of(events: Any) -> list[str]:
    """The skim's columns: genWeight where the events have it (MC)."""
    return COLUMNS + (["genWeight"] if "genWeight" in events.fields else [])


class DimuonSkim(DimuonProcessor):
    """The dimuon histograms, and the events with two muons or more as the skim ``dimuon``."""

    min_muons = 2

    def process(self, events: Any) -> dict[str, Any]:
        out = super().process(events)
        selected = events[ak.num(events.Muon) >= self.min_muons]
        out["dimuon"] = coffea_smk.Skim(selected, columns=columns_of(events))
        return out


class ThreeMuonSkim(DimuonSkim):
    """A tighter selection (three muons or more)."""

    min_muons = 3


class OnlySkim:
    """A run with only a skim (no histogram)."""

    def process(self, events: Any) -> dict[str, Any]:
        return {"dimuon": coffea_smk.Skim(events[ak.num(events.Muon) >= 2], columns=columns_of(events))}


class BareArray:
    """Returns a per-event array bare: a clear error, pointing at Skim."""

    def process(self, events: Any) -> dict[str, Any]:
        return {"pt": events.Muon.pt}


class FailsWhileMarkedSkim(DimuonSkim):
    """The dimuon skim, failing with ValueError on DY's entries from 20 while $SMK_TEST_FAIL_MARKER exists."""

    def process(self, events: Any) -> dict[str, Any]:
        md = events.metadata
        marker = os.environ.get("SMK_TEST_FAIL_MARKER", "")
        if marker and os.path.exists(marker) and md["dataset"] == "DY" and md["entrystart"] == 20:
            raise ValueError("failing while marked")
        return super().process(events)


class Columns:
    """coffea's column_accumulator, at the top level and in a dict: per-event values, concatenated."""

    def process(self, events: Any) -> dict[str, Any]:
        import numpy as np
        from coffea.processor import column_accumulator

        n = np.asarray(ak.num(events.Muon, axis=1))
        return {
            "nmuon": column_accumulator(n),
            "per_event": {"event": column_accumulator(np.asarray(events.event))},
            "events": len(events),
        }
