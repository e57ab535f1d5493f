"""Skims from coffea processors, read back by coffea, analysed again, and surviving a killed run.

Real workflow runs over the shared NanoAOD (MC and data; several chunks per file, several
units per dataset). The processors are coffea ``ProcessorABC`` subclasses, so ``schema: auto``
gives them coffea's NanoEvents; every skimmed value is checked against uproot reading the
source files directly, and the histograms against coffea's own Runner.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot
from conftest import PROCESSORS, Workflow, assert_same_result, run_coffea
from skim_data import copied_fileset

import coffea_smk
from coffea_smk.skim import lumi_json

pytestmark = pytest.mark.slow

SKIM = "skim_coffea_processors:CoffeaDimuonSkim"
SETTINGS = {"chunksize": 10, "events_per_job": 20}
SKIM_SETTINGS = {"target_size_mb": 0.01, "row_group_rows": 5}  # several files, several row groups each
# the Skim's columns beside "Muon" (and genWeight)
OTHERS = ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "run", "luminosityBlock", "event"]
COUNTERS = {"nMuon", "nJet"}


def _direct(files: list[str]) -> dict[str, Any]:
    """What the skim must hold, from uproot: the rows with two muons or more in file order, and
    the totals of every event."""
    rows: dict[str, list[ak.Array]] = {}
    events, weights = 0, []
    for f in files:
        tree = uproot.open(f)["Events"]
        names = [k for k in tree.keys() if k.startswith("Muon_")] + OTHERS
        names += ["genWeight"] if "genWeight" in tree else []
        arrays = tree.arrays([*names, "nMuon"])
        keep = arrays.nMuon >= 2
        for b in names:
            rows.setdefault(b, []).append(arrays[b][keep])
        events += len(arrays)
        if "genWeight" in tree:
            weights.append(ak.to_numpy(arrays.genWeight).astype(np.float64))
    w = np.concatenate(weights) if weights else None
    return {
        "rows": {b: ak.concatenate(v) for b, v in rows.items()},
        "events": events,
        "sumw": None if w is None else float(w.sum()),
        "sumw2": None if w is None else float(np.square(w).sum()),
    }


def _read_root(paths: list[str]) -> dict[str, ak.Array]:
    parts = []
    for path in paths:
        tree = uproot.open(path)["Events"]
        assert COUNTERS <= set(tree.keys()), f"{path}: no NanoAOD counters"
        parts.append(tree.arrays([k for k in tree.keys() if k not in COUNTERS]))
    return {b: ak.concatenate([p[b] for p in parts]) for b in ak.fields(parts[0])}


def _read_parquet(paths: list[str]) -> dict[str, ak.Array]:
    parts = [ak.from_arrow(pq.read_table(p)) for p in paths]
    return {b: ak.concatenate([p[b] for p in parts]) for b in ak.fields(parts[0])}


def _leaf_dtype(array: ak.Array) -> np.dtype:
    return ak.to_numpy(ak.flatten(array, axis=None)).dtype


def _assert_columns(got: dict[str, ak.Array], want: dict[str, ak.Array], where: str) -> None:
    extra = set(got) - set(want) - COUNTERS
    assert not extra and set(want) <= set(got), f"{where}: extra {extra}, missing {set(want) - set(got)}"
    for branch, values in want.items():
        assert ak.to_list(got[branch]) == ak.to_list(values), f"{where}: {branch}"
        assert _leaf_dtype(got[branch]) == _leaf_dtype(values), f"{where}: {branch} type"
        assert ak.num(got[branch], axis=0) == ak.num(values, axis=0)


class _First:
    """The first analysis (the coffea skim processor over the originals), once per format."""

    def __init__(self, factory: pytest.TempPathFactory, nanoaod: Path) -> None:
        self.factory, self.nanoaod = factory, nanoaod
        self.runs: dict[str, tuple[Workflow, dict[str, Any]]] = {}

    def __call__(self, fmt: str) -> tuple[Workflow, dict[str, Any]]:
        if fmt not in self.runs:
            wf = Workflow(self.factory.mktemp(f"first-{fmt}"))
            fileset = copied_fileset(wf.root, self.nanoaod)
            wf.write({"processor": SKIM, **SETTINGS, "skims": {"format": fmt, **SKIM_SETTINGS}}, fileset)
            wf.run()
            self.runs[fmt] = (wf, fileset)
        return self.runs[fmt]


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory, nanoaod: Path) -> _First:
    return _First(tmp_path_factory, nanoaod)


def _processors() -> Any:
    """tests/processors/skim_coffea_processors.py, imported here too (for coffea's Runner)."""
    sys.path.insert(0, str(PROCESSORS))
    try:
        import skim_coffea_processors
    finally:
        sys.path.remove(str(PROCESSORS))
    return skim_coffea_processors


def _manifest(wf: Workflow) -> dict[str, Any]:
    return json.loads((wf.root / "results" / "skims" / "dimuon" / "fileset.json").read_text())


def _files(entry: dict[str, Any]) -> list[str]:
    files = entry["files"]
    return list(files) if isinstance(files, dict) else files


@pytest.mark.parametrize("fmt", ["parquet", "root"])
def test_a_coffea_processor_skims_what_uproot_selects(first: _First, fmt: str) -> None:
    wf, fileset = first(fmt)
    manifest = _manifest(wf)
    assert set(manifest) == {"DY", "Data"}
    for name, spec in fileset.items():
        want = _direct(spec["files"])
        entry = manifest[name]
        files = _files(entry)
        assert all(Path(f).is_file() and f.endswith(f".{fmt}") for f in files)
        (folder,) = {Path(f).parent for f in files}
        assert sorted(str(p) for p in folder.glob(f"*.{fmt}")) == sorted(files), f"{name}: stray files"
        got = (_read_parquet if fmt == "parquet" else _read_root)(files)
        _assert_columns(got, want["rows"], name)
        skim = entry["metadata"]["skim"]
        assert skim["events"] == want["events"] == 40 * len(spec["files"])
        assert skim["rows"] == len(want["rows"]["event"]) == sum(skim["entries"].values()) > 0
        assert skim["format"] == fmt
        if want["sumw"] is None:
            assert skim["sumw"] is None and skim["sumw2"] is None
        else:
            assert skim["sumw"] == pytest.approx(want["sumw"], rel=1e-12)
            assert skim["sumw2"] == pytest.approx(want["sumw2"], rel=1e-12)
        assert {k: v for k, v in entry["metadata"].items() if k != "skim"} == spec["metadata"]
    # data: the lumi sections of every event processed (coffea's events), as uproot reads them
    tree = uproot.open(fileset["Data"]["files"][0])["Events"].arrays(["run", "luminosityBlock"])
    lumis = lumi_json(np.stack([ak.to_numpy(tree.run), ak.to_numpy(tree.luminosityBlock)], axis=1))
    assert json.loads((wf.root / "results" / "skims" / "dimuon" / "lumi.json").read_text()) == lumis
    lineage = json.loads((wf.root / "results" / "skims" / "dimuon" / "lineage.json").read_text())
    for name, spec in fileset.items():
        sources = [Path(f["path"]).name for f in lineage["datasets"][name]["source_files"]]
        assert sources == [Path(f).name for f in spec["files"]], name
        assert all(f["entries"] == 40 and f["uuid"] for f in lineage["datasets"][name]["source_files"])

    # the histograms of the same pass are coffea's own, bin for bin
    ours = coffea_smk.load(wf.root / "results" / "result.npz")
    coffea_fileset = {n: {"files": {f: "Events" for f in s["files"]}} for n, s in fileset.items()}
    theirs = run_coffea(coffea_fileset, _processors().CoffeaDimuonHists(), SETTINGS["chunksize"])
    assert set(ours) == set(theirs) | {"dimuon"}
    assert_same_result({k: v for k, v in ours.items() if k != "dimuon"}, theirs)
    assert ours["dimuon"].events == 120
    meta = coffea_smk.load_meta(wf.root / "results" / "result.npz")
    assert meta["totals"]["chunks"] == 12  # 4 per file: several chunks per file, several units


def test_coffea_reads_the_skim_files_back(first: _First) -> None:
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    wf_root, fileset = first("root")
    wf_parquet, _ = first("parquet")
    roots, parquets = _manifest(wf_root), _manifest(wf_parquet)
    for name, spec in fileset.items():
        want = _direct(spec["files"])["rows"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts = [
                NanoEventsFactory.from_root({f: "Events"}, schemaclass=NanoAODSchema, mode="eager").events()
                for f in _files(roots[name])
            ]
        events = ak.concatenate(parts)
        checks = {
            "Muon_pt": events.Muon.pt,
            "Muon_eta": events.Muon.eta,
            "Muon_charge": events.Muon.charge,
            "Jet_pt": events.Jet.pt,
            "run": events.run,
            "event": events.event,
        }
        for branch, values in checks.items():
            assert ak.to_list(values) == ak.to_list(want[branch]), f"{name}: coffea's {branch}"
        # coffea's behaviours work on the skim: its muon pairs are the originals'
        assert ak.sum(ak.num(ak.combinations(events.Muon, 2), axis=1)) == sum(
            n * (n - 1) // 2 for n in ak.to_list(ak.num(want["Muon_pt"]))
        )
        if "genWeight" in want:
            assert ak.to_list(events.genWeight) == ak.to_list(want["genWeight"])

        files = _files(parquets[name])
        table = ak.concatenate([ak.from_parquet(f) for f in files])
        got = {f: table[f] for f in ak.fields(table)}
        _assert_columns(got, want, f"{name} (ak.from_parquet)")


@pytest.mark.parametrize(
    "processor",
    ["skim_coffea_processors:CoffeaDimuonHists", "coffea_smk.examples.dimuon:DimuonProcessor"],
)
def test_the_parquet_skim_is_the_fileset_of_the_next_analysis(
    first: _First, tmp_path: Path, processor: str
) -> None:
    wf, _ = first("parquet")
    before = coffea_smk.load(wf.root / "results" / "result.npz")
    manifest = wf.root / "results" / "skims" / "dimuon" / "fileset.json"
    second = Workflow(tmp_path)
    second.write({"fileset": str(manifest), "processor": processor, "chunksize": 5, "events_per_job": 10})
    second.run()
    after = coffea_smk.load(second.root / "results" / "result.npz")
    # events with fewer than two muons have no pair: the mass histogram is the same
    assert_same_result(after["mass"], before["mass"])
    for dataset, flow in before["cutflow"].items():
        assert after["cutflow"][dataset]["opposite-sign pairs"] == flow["opposite-sign pairs"] > 0, dataset
    meta = coffea_smk.load_meta(second.root / "results" / "result.npz")
    skims = _manifest(wf)
    for dataset, entry in skims.items():
        assert meta["datasets"][dataset]["events"] == entry["metadata"]["skim"]["rows"], dataset
    # row groups of 5 rows: several chunks per skim file
    assert meta["totals"]["chunks"] > sum(len(_files(e)) for e in skims.values())


# ---- a killed run, resumed -------------------------------------------------------------


def _procs(root: Path, match: Callable[[list[str]], bool]) -> list[int]:
    here = os.path.realpath(root)
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmd = [c.decode(errors="replace") for c in (entry / "cmdline").read_bytes().split(b"\0") if c]
            if match(cmd) and os.path.realpath(entry / "cwd") == here:
                out.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return out


def _ours(cmd: list[str]) -> bool:
    return cmd[1:3] == ["-m", "coffea_smk"] or ("-m" in cmd[:3] and "snakemake" in cmd[:4])


def test_a_killed_skim_run_resumes_with_every_event_once(workflow: Workflow, nanoaod: Path) -> None:
    data = workflow.root / "data"
    data.mkdir()
    files = []
    for i in range(6):
        shutil.copyfile(nanoaod / "nano_dy.root", data / f"dy{i}.root")
        files.append(str(data / f"dy{i}.root"))
    config = {"processor": "skim_coffea_processors:CoffeaOnlySkim", "chunksize": 5, "events_per_job": 10}
    workflow.write(config, {"DY": {"files": files}})
    results = workflow.root / "results"
    path = [str(workflow.hooks), str(PROCESSORS), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "--cores", "2"],
        cwd=workflow.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        # half the units select no event and write no piece: wait for 3 partials and 1 piece
        while len(list(results.glob("partials/*/*/*.npz"))) < 3 or not list(
            results.glob("partials/*/*/*.skim-dimuon.parquet")
        ):
            assert proc.poll() is None, "the run ended before 3 partials and a piece appeared"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    end = time.monotonic() + 120
    while _procs(workflow.root, _ours):
        assert time.monotonic() < end, "processes of the killed run did not end"
        time.sleep(0.05)
    kept = {p: p.stat().st_mtime_ns for p in results.glob("partials/*/*/*.npz")}
    assert 3 <= len(kept) < 24, "the kill came too late (24 units)"
    assert not (results / "result.npz").exists()
    assert list(results.glob("partials/*/*/*.skim-dimuon.parquet")), "no piece beside the partials"

    workflow.run()
    # the resumed run kept what the killed one had finished, and did the rest
    assert any(p.exists() and p.stat().st_mtime_ns == t for p, t in kept.items()), "nothing was resumed"
    manifest = _manifest(workflow)
    want = _direct(files)
    got = _read_parquet(_files(manifest["DY"]))
    _assert_columns(got, want["rows"], "DY")
    assert len(got["event"]) == len(want["rows"]["event"]) == 6 * 6  # 6 events of nano_dy.root have 2+ muons
    skim = manifest["DY"]["metadata"]["skim"]
    assert skim["events"] == 240
    assert skim["rows"] == len(want["rows"]["event"])
    assert skim["sumw"] == pytest.approx(want["sumw"], rel=1e-12)
    assert skim["sumw2"] == pytest.approx(want["sumw2"], rel=1e-12)
    meta = coffea_smk.load_meta(results / "result.npz")
    assert meta["complete"] and meta["events"] == meta["events_expected"] == 240
    again = workflow.run()
    assert "Nothing to be done" in again.stdout + again.stderr
