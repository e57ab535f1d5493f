"""The RNTuple test files (tests/rntuple_files.py) are what they claim, seen by uproot and ROOT.

uproot (not the writer) checks each file's kind, entries, clusters and compression, and
that its events are its TTree twin's (a few columns, across cluster boundaries); ROOT
(in a subprocess) reads the native-layout files back through RDataFrame.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from rntuple_files import Compression, Layout, RNTupleFile


@functools.cache
def _events(path: Path) -> Any:
    return uproot.open(path)["Events"]  # opened once: a wide RNTuple's header takes a second to parse


def _open(f: RNTupleFile) -> tuple[Any, Any]:
    return _events(f.path), _events(f.twin)


def _top_level(ntuple: Any) -> set[str]:
    """The top-level field names, from the header (``keys()`` is slow on wide RNTuples)."""
    return {r.field_name for i, r in enumerate(ntuple.field_records) if r.parent_field_id == i}


def _boundaries(ntuple: Any) -> list[int]:
    return [c.num_first_entry for c in ntuple.cluster_summaries] + [ntuple.num_entries]


def test_kind_entries_clusters(rntuple_file: RNTupleFile) -> None:
    ntuple, twin = _open(rntuple_file)
    assert isinstance(ntuple, uproot.behaviors.RNTuple.HasFields)
    assert isinstance(twin, uproot.behaviors.TTree.TTree)
    assert ntuple.num_entries == twin.num_entries == rntuple_file.entries
    assert len(ntuple.cluster_summaries) == rntuple_file.clusters
    bounds = _boundaries(ntuple)
    assert bounds == sorted(bounds) and bounds[0] == 0
    has_runs = "Runs" in uproot.open(rntuple_file.twin).keys(cycle=False)
    assert ("Runs" in uproot.open(rntuple_file.path).keys(cycle=False)) == has_runs


def test_multicluster(rntuple_multicluster: RNTupleFile) -> None:
    ntuple, _ = _open(rntuple_multicluster)
    assert len(ntuple.cluster_summaries) >= 3
    assert rntuple_multicluster.entries >= 3000
    if rntuple_multicluster.name.startswith("native_dy"):
        assert rntuple_multicluster.cluster_groups >= 3  # committed every 3 clusters
        assert len(ntuple.page_link_list) == rntuple_multicluster.clusters


def test_compression(rntuple_file: RNTupleFile) -> None:
    """Every column range carries the claimed settings; compressed pages start with its block header."""
    ntuple, _ = _open(rntuple_file)
    if rntuple_file.entries == 0:
        return
    ranges = [c for cluster in ntuple.page_link_list for c in cluster if not c.suppressed]
    assert {c.compression_settings for c in ranges} == {rntuple_file.compression.value}
    pages = [p for c in ranges for p in c.pages]
    largest = max(pages, key=lambda p: p.locator.num_bytes)
    loc = largest.locator
    head = ntuple.file.source.chunk(loc.offset, loc.offset + loc.num_bytes).raw_data[:2].tobytes()
    if rntuple_file.compression is Compression.NONE:
        assert all(p.locator.num_bytes >= p.num_elements // 8 for p in pages)
    else:
        assert head == rntuple_file.compression.magic


def _window(ntuple: Any) -> tuple[int, int]:
    """Entries straddling the second cluster boundary (all of them in a one-cluster file)."""
    bounds = _boundaries(ntuple)
    if len(bounds) < 4:
        return 0, ntuple.num_entries
    return bounds[1] + 7, bounds[2] + 11


COLUMNS = ["event", "nMuon", "Muon_pt", "Muon_charge", "Jet_eta", "PuppiMET_pt"]


def _read(f: RNTupleFile, ntuple: Any, start: int, stop: int) -> dict[str, Any]:
    """``COLUMNS`` from the RNTuple, field by field (``arrays()`` takes seconds on a wide one)."""
    if f.layout is Layout.CONVERTED:
        return {n: ntuple[n].array(entry_start=start, entry_stop=stop) for n in COLUMNS}
    muon, jet, met, event = (
        ntuple[n].array(entry_start=start, entry_stop=stop) for n in ("Muon", "Jet", "PuppiMET", "event")
    )
    return {
        "event": event,
        "nMuon": ak.num(muon),
        "Muon_pt": muon.pt,
        "Muon_charge": muon.charge,
        "Jet_eta": jet.eta,
        "PuppiMET_pt": met.pt,
    }


def test_same_events_as_twin(rntuple_file: RNTupleFile) -> None:
    ntuple, twin = _open(rntuple_file)
    start, stop = _window(ntuple)
    theirs = twin.arrays(COLUMNS, entry_start=start, entry_stop=stop, how=dict)
    ours = _read(rntuple_file, ntuple, start, stop)
    for name in COLUMNS:
        assert ak.to_list(ours[name]) == ak.to_list(theirs[name]), name
    top = _top_level(ntuple)
    assert set(rntuple_file.fields) == top
    if rntuple_file.layout is Layout.NATIVE:
        assert "nMuon" not in top and "Muon_pt" not in top
        assert rntuple_file.fields["Muon"] == "collection" and rntuple_file.fields["PuppiMET"] == "record"
    else:
        # the importer makes a TTree's counter a cardinality field (nMuon; nMuon_pt in the v15 sample,
        # whose every jagged branch has its own counter)
        counters = {n: t for n, t in rntuple_file.fields.items() if n.startswith("nMuon")}
        assert "ROOT::RNTupleCardinality<std::uint32_t>" in counters.values(), counters
    if "genWeight" in twin:
        assert np.array_equal(ntuple["genWeight"].array(library="np"), twin["genWeight"].array(library="np"))


_ROOT_READS = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.filterwarnings("ignore", category=UserWarning)
    import ROOT
    out = {}
    for path in sys.argv[1:]:
        df = ROOT.RDataFrame("Events", path)
        sums = [
            df.Count(),
            df.Define("n", "Muon.pt.size()").Sum("n"),
            df.Define("s", "ROOT::VecOps::Sum(ROOT::RVecD(Muon.pt))").Sum("s"),
            df.Sum("PuppiMET.pt"),
            df.Sum("event"),
        ]
        ROOT.RDF.RunGraphs(sums)
        out[path] = [float(s.GetValue()) for s in sums]
    print(json.dumps(out))
    """
)


def test_root_reads_native(rntuple_files: dict[str, RNTupleFile]) -> None:
    """ROOT's RDataFrame reads the native files back (collections of records, records)."""
    native = [f for f in rntuple_files.values() if f.layout is Layout.NATIVE]
    proc = subprocess.run(
        [sys.executable, "-c", _ROOT_READS, *(str(f.path) for f in native)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = json.loads(proc.stdout.strip().splitlines()[-1])
    for f in native:
        twin = _events(f.twin)
        a = twin.arrays(["nMuon", "Muon_pt", "PuppiMET_pt", "event"])
        expected = [
            twin.num_entries,
            int(ak.sum(a["nMuon"])),
            float(ak.sum(ak.values_astype(a["Muon_pt"], np.float64))),
            float(np.sum(ak.to_numpy(a["PuppiMET_pt"]).astype(np.float64))),
            float(np.sum(ak.to_numpy(a["event"]).astype(np.float64))),
        ]
        assert sums[str(f.path)] == pytest.approx(expected, rel=1e-9), f.name
