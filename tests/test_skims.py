"""Skims: the selected events of every chunk written to files, and the fileset of the next analysis.

Real workflow runs over the shared NanoAOD (MC and data), several chunks per file and several
units per dataset; every number is checked against uproot reading the source files directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import Workflow, assert_same_result
from skim_data import copied_fileset

import coffea_smk
from coffea_smk.skim import lumi_json

pytestmark = pytest.mark.slow

SKIM = "skim_processors:DimuonSkim"
BRANCHES = [
    "Muon_pt",
    "Muon_eta",
    "Muon_phi",
    "Muon_charge",
    "Jet_pt",
    "Jet_eta",
    "Jet_phi",
    "Jet_mass",
    "run",
    "luminosityBlock",
    "event",
]
SETTINGS = {"chunksize": 10, "events_per_job": 20}


def _direct(files: list[str], min_muons: int = 2) -> dict[str, Any]:
    """What the skim must hold, from uproot: selected rows in file order, and pre-skim totals."""
    rows: dict[str, list[Any]] = {}
    events, weights, lumis = 0, [], []
    for f in files:
        tree = uproot.open(f)["Events"]
        names = [k for k in tree.keys() if k.startswith("Muon_")] + BRANCHES[4:]  # Skim columns "Muon", ...
        names += ["genWeight"] if "genWeight" in tree else []
        arrays = tree.arrays([*names, "nMuon"])
        keep = arrays.nMuon >= min_muons
        for b in names:
            rows.setdefault(b, []).append(arrays[b][keep])
        events += len(arrays)
        if "genWeight" in tree:
            weights.append(ak.to_numpy(arrays.genWeight))
        lumis.append(np.stack([ak.to_numpy(arrays.run), ak.to_numpy(arrays.luminosityBlock)], axis=1))
    w = np.concatenate(weights) if weights else None
    return {
        "rows": {b: ak.concatenate(v) for b, v in rows.items() if v},
        "events": events,
        "sumw": None if w is None else float(w.astype(np.float64).sum()),
        "sumw2": None if w is None else float(np.square(w.astype(np.float64)).sum()),
        "lumis": np.concatenate(lumis),
    }


def _read(files: dict[str, str], fmt: str) -> dict[str, ak.Array]:
    parts: list[dict[str, ak.Array]] = []
    for path in files:
        if fmt == "parquet":
            table = ak.from_parquet(path)
            parts.append({f: table[f] for f in ak.fields(table)})
        else:
            tree = uproot.open(path)["Events"]
            names = [k for k in tree.keys() if not k.startswith("n")]
            arrays = tree.arrays(names)
            parts.append({b: arrays[b] for b in names})
    return {b: ak.concatenate([p[b] for p in parts]) for b in parts[0]}


@pytest.mark.parametrize("fmt", ["parquet", "root"])
def test_a_skim_holds_the_selected_events_of_every_chunk(workflow: Workflow, nanoaod: Path, fmt: str) -> None:
    fileset = copied_fileset(workflow.root, nanoaod)
    workflow.write({"processor": SKIM, **SETTINGS, "skims": {"format": fmt, "target_size_mb": 0.01}}, fileset)
    workflow.run()
    results = workflow.root / "results"
    manifest = json.loads((results / "skims" / "dimuon" / "fileset.json").read_text())
    assert set(manifest) == {"DY", "Data"}
    for name, spec in fileset.items():
        want = _direct(spec["files"])
        entry = manifest[name]
        skim = entry["metadata"]["skim"]
        assert {k: v for k, v in entry["metadata"].items() if k != "skim"} == spec["metadata"]
        assert skim["events"] == want["events"] == 40 * len(spec["files"])
        got = _read(entry["files"], fmt)
        assert set(got) == set(want["rows"]), name
        for branch, values in want["rows"].items():
            assert ak.to_list(got[branch]) == ak.to_list(values), f"{name}: {branch}"
        assert skim["rows"] == len(want["rows"]["run"]) == sum(skim["entries"].values())
        if want["sumw"] is None:
            assert skim["sumw"] is None
        else:
            assert skim["sumw"] == pytest.approx(want["sumw"], rel=1e-12)
            assert skim["sumw2"] == pytest.approx(want["sumw2"], rel=1e-12)
        assert all(Path(f).is_file() and f.endswith(f".{fmt}") for f in entry["files"])
        if fmt == "root":  # the sources' Runs entries, once, in the first file
            runs = [uproot.open(f).get("Runs") for f in entry["files"]]
            assert runs[0] is not None and all(r is None for r in runs[1:])
            sources = [uproot.open(f)["Runs"]["run"].array(library="np") for f in spec["files"]]
            assert runs[0]["run"].array(library="np").tolist() == np.concatenate(sources).tolist()
            if name == "DY":
                want_sumw = sum(
                    uproot.open(f)["Runs"]["genEventSumw_"].array(library="np").sum() for f in spec["files"]
                )
                assert runs[0]["genEventSumw_"].array(library="np").sum() == pytest.approx(want_sumw)
    # data (no genWeight): the lumi sections of every event processed, per dataset and combined
    lumis = lumi_json(_direct(fileset["Data"]["files"])["lumis"])
    assert len(lumis) >= 1 and sum(len(r) for r in lumis.values()) >= 1
    assert json.loads((results / "skims" / "dimuon" / "lumi.json").read_text()) == lumis
    (folder,) = {Path(f).parent for f in manifest["Data"]["files"]}
    assert json.loads((folder / "lumi.json").read_text()) == lumis
    assert not list({Path(f).parent for f in manifest["DY"]["files"]}.pop().glob("lumi.json"))


def test_the_skim_is_the_fileset_of_the_next_analysis(workflow: Workflow, nanoaod: Path) -> None:
    fileset = copied_fileset(workflow.root, nanoaod)
    workflow.write({"processor": SKIM, **SETTINGS, "skims": {"format": "root"}}, fileset)
    workflow.run()
    first = coffea_smk.load(workflow.root / "results" / "result.npz")

    second = Workflow(workflow.root / "second")
    manifest = workflow.root / "results" / "skims" / "dimuon" / "fileset.json"
    second.root.mkdir(exist_ok=True)
    second.write(
        {"fileset": str(manifest), "processor": "coffea_smk.examples.dimuon:DimuonProcessor", "chunksize": 7}
    )
    second.run()
    after = coffea_smk.load(second.root / "results" / "result.npz")
    # events with fewer than two muons have no pair: the mass histogram is the same
    assert_same_result(after["mass"], first["mass"])
    for dataset, counts in after["cutflow"].items():
        assert counts["muon pairs"] == first["cutflow"][dataset]["muon pairs"]


def test_a_changed_selection_writes_a_new_skim(workflow: Workflow, nanoaod: Path) -> None:
    fileset = copied_fileset(workflow.root, nanoaod)
    workflow.write({"processor": SKIM, **SETTINGS}, fileset)
    workflow.run()
    published = workflow.root / "results" / "skims" / "dimuon" / "fileset.json"
    before = json.loads(published.read_text())
    workflow.write({"processor": "skim_processors:ThreeMuonSkim", **SETTINGS}, fileset)
    workflow.run()
    after = json.loads(published.read_text())
    for name, spec in fileset.items():
        want = _direct(spec["files"], 3)
        if not len(want["rows"]["run"]):  # a dataset that keeps nothing is left out of the fileset
            assert name not in after, name
            continue
        assert after[name]["metadata"]["skim"]["rows"] == len(want["rows"]["run"])
        assert set(after[name]["files"]).isdisjoint(before[name]["files"])
        got = _read(after[name]["files"], "parquet")
        assert ak.to_list(got["event"]) == ak.to_list(want["rows"]["event"])
    assert any(name in after for name in fileset)


def test_failed_chunks_rerun_write_each_event_once(workflow: Workflow, nanoaod: Path) -> None:
    fileset = copied_fileset(workflow.root, nanoaod)
    marker = workflow.root / "fail"
    marker.touch()
    env = {"SMK_TEST_FAIL_MARKER": str(marker)}
    config = {"processor": "skim_processors:FailsWhileMarkedSkim", **SETTINGS, "continue_on": ["ValueError"]}
    workflow.write(config, fileset)
    workflow.run(env=env)
    marker.unlink()
    workflow.run(env=env)
    manifest = json.loads((workflow.root / "results" / "skims" / "dimuon" / "fileset.json").read_text())
    want = _direct(fileset["DY"]["files"])
    got = _read(manifest["DY"]["files"], "parquet")
    assert ak.to_list(got["event"]) == ak.to_list(want["rows"]["event"])
    assert manifest["DY"]["metadata"]["skim"]["events"] == 80


def test_a_bare_per_event_array_is_refused_with_a_pointer_to_skim(workflow: Workflow, nanoaod: Path) -> None:
    workflow.write(
        {"processor": "skim_processors:BareArray", **SETTINGS},
        {"DY": {"files": [str(nanoaod / "nano_dy.root")]}},
    )
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    assert "output['pt']" in proc.stderr and "coffea_smk.Skim" in proc.stderr, proc.stderr
    assert "nano_dy.root" in proc.stderr


def test_column_accumulators_load_as_the_concatenated_values(workflow: Workflow, nanoaod: Path) -> None:
    from coffea.processor import column_accumulator

    fileset = copied_fileset(workflow.root, nanoaod)
    workflow.write({"processor": "skim_processors:Columns", **SETTINGS}, fileset)
    workflow.run()
    out = coffea_smk.load(workflow.root / "results" / "result.npz")
    assert isinstance(out["nmuon"], column_accumulator) and isinstance(
        out["per_event"]["event"], column_accumulator
    )
    files = [f for spec in fileset.values() for f in spec["files"]]
    want_n = np.concatenate([uproot.open(f)["Events"]["nMuon"].array(library="np") for f in files])
    want_event = np.concatenate([uproot.open(f)["Events"]["event"].array(library="np") for f in files])
    assert out["events"] == len(want_n) == 120
    got = sorted(zip(out["per_event"]["event"].value, out["nmuon"].value, strict=True))
    assert got == sorted(zip(want_event, want_n, strict=True))
    for dataset, spec in fileset.items():  # per dataset: exactly in file and entry order
        ds = coffea_smk.load(workflow.root / "results" / "datasets" / f"{dataset}.npz")
        events = np.concatenate(
            [uproot.open(f)["Events"]["event"].array(library="np") for f in spec["files"]]
        )
        assert ds["per_event"]["event"].value.tolist() == events.tolist()
