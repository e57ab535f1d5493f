"""The analysis end to end through real Snakemake runs on real NanoAOD files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Workflow, assert_same_result, run_coffea

import coffea_smk
from coffea_smk.examples.dimuon import DimuonProcessor

pytestmark = pytest.mark.slow

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"


def two_datasets(nanoaod: Path) -> dict:
    return {
        "DY": {"files": {str(nanoaod / "nano_dy.root"): "Events"}, "metadata": {"is_mc": True}},
        "DoubleMuon": {"files": [str(nanoaod / "nano_dimuon.root")], "treename": "Events"},
    }


@pytest.mark.parametrize("chunksize", [7, 13, 40, 100_000])
def test_results_equal_coffea_bin_for_bin(workflow: Workflow, nanoaod: Path, chunksize: int) -> None:
    fileset = two_datasets(nanoaod)
    workflow.write(
        {"processor": DIMUON, "chunksize": chunksize, "events_per_job": 2 * chunksize, "merge_fanin": 2},
        fileset,
    )
    workflow.run()
    ours = coffea_smk.load(workflow.root / "results" / "result.npz")
    # coffea's own test suite: 18 muons in nano_dy, 84 in nano_dimuon; 6 and 66 pairs
    assert ours["cutflow"]["DY"]["muons"] == 18
    assert ours["cutflow"]["DoubleMuon"]["muons"] == 84
    assert ours["cutflow"]["DY"]["muon pairs"] == 6
    assert ours["cutflow"]["DoubleMuon"]["muon pairs"] == 66
    theirs = run_coffea(fileset, DimuonProcessor, chunksize)
    assert_same_result(ours, theirs)

    meta = coffea_smk.load_meta(workflow.root / "results" / "result.npz")
    assert meta["events"] == meta["events_expected"] == 80 and meta["complete"]
    # per-dataset results stand on their own
    dy = coffea_smk.load(workflow.root / "results" / "datasets" / "DY.npz")
    assert dy["cutflow"] == {"DY": theirs["cutflow"]["DY"]}
    assert dy["mass"].sum() == theirs["mass"][{"dataset": "DY"}].sum()


def test_ttbar_v15_layout_matches_coffea(workflow: Workflow, nanoaod: Path) -> None:
    fileset = {"TT": {"files": {str(nanoaod / "nano_tt_v15.root"): "Events"}}}
    workflow.write({"processor": DIMUON, "chunksize": 64, "events_per_job": 128}, fileset)
    workflow.run()
    ours = coffea_smk.load(workflow.root / "results" / "result.npz")
    assert_same_result(ours, run_coffea(fileset, DimuonProcessor, 64))


def _copy_samples(nanoaod: Path, root: Path) -> dict:
    data = root / "data"
    data.mkdir()
    for name in ("nano_dy.root", "nano_dimuon.root", "nano_dy_empty.root"):
        shutil.copy(nanoaod / name, data / name)
    return {
        "DY": {"files": ["data/nano_dy.root", "data/nano_dy_empty.root"]},
        "DoubleMuon": {"files": ["data/nano_dimuon.root"]},
    }


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*.npz")}


def test_rerun_is_a_noop_and_a_touched_file_redoes_only_its_chain(workflow: Workflow, nanoaod: Path) -> None:
    workflow.write(
        {"processor": DIMUON, "chunksize": 10, "events_per_job": 20}, _copy_samples(nanoaod, workflow.root)
    )
    workflow.run()
    first = coffea_smk.load(workflow.root / "results" / "result.npz")
    before = _mtimes(workflow.root / "results")
    assert any("nano_dy.root" in p for p in workflow.opened())

    workflow.reset_openlog()
    proc = workflow.run()
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert workflow.opened() == [], "a re-run with nothing changed must not open any ROOT file"
    assert _mtimes(workflow.root / "results") == before

    # touch one input file: only its chain runs again
    touched = workflow.root / "data" / "nano_dimuon.root"
    os.utime(touched)
    workflow.reset_openlog()
    workflow.run()
    assert {Path(p).name for p in workflow.opened()} == {"nano_dimuon.root"}
    after = _mtimes(workflow.root / "results")
    dy_partials = [p for p in before if p.startswith("partials/DY/")]
    assert dy_partials and all(after[p] == before[p] for p in dy_partials)
    assert after["datasets/DY.npz"] == before["datasets/DY.npz"]
    assert after["datasets/DoubleMuon.npz"] != before["datasets/DoubleMuon.npz"]
    assert_same_result(coffea_smk.load(workflow.root / "results" / "result.npz"), first)

    # replace a file's content: it is preprocessed again and its new events are counted
    shutil.copy(nanoaod / "nano_dimuon.root", workflow.root / "data" / "nano_dy.root")
    workflow.run()
    replaced = coffea_smk.load(workflow.root / "results" / "result.npz")
    assert replaced["cutflow"]["DY"]["muons"] == 84
    assert replaced["cutflow"]["DoubleMuon"]["muons"] == 84


def test_empty_files_have_no_chunks(workflow: Workflow, nanoaod: Path) -> None:
    fileset = {
        "DY": {"files": [str(nanoaod / "nano_dy.root"), str(nanoaod / "nano_dy_empty.root")]},
        "Empty": {"files": [str(nanoaod / "nano_dy_empty.root")]},
    }
    workflow.write({"processor": DIMUON, "chunksize": 15}, fileset)
    workflow.run()
    result = coffea_smk.load(workflow.root / "results" / "result.npz")
    assert result["cutflow"] == {"DY": {"events": 40, "muons": 18, "muon pairs": 6, "opposite-sign pairs": 6}}
    meta = coffea_smk.load_meta(workflow.root / "results" / "result.npz")
    assert meta["datasets"]["Empty"]["events"] == 0 and meta["datasets"]["Empty"]["empty_files"] == 1
    assert meta["datasets"]["DY"]["empty_files"] == 1 and meta["complete"]
    assert coffea_smk.load(workflow.root / "results" / "datasets" / "Empty.npz") is None


def test_other_tree_name_and_function_processor(workflow: Workflow, nanoaod: Path) -> None:
    fileset = {"Special": {"files": {str(nanoaod / "nano_dy_SpecialTree.root"): "NotEvents"}}}
    workflow.write({"processor": "smk_test_processors:count_muons", "chunksize": 9}, fileset)
    workflow.run()
    assert coffea_smk.load(workflow.root / "results" / "result.npz") == {"muons": 18, "events": 40}


def test_missing_file_is_a_clear_error(workflow: Workflow, nanoaod: Path) -> None:
    missing = workflow.root / "nope" / "missing.root"
    workflow.write({"processor": DIMUON}, {"DY": {"files": [str(nanoaod / "nano_dy.root"), str(missing)]}})
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    assert str(missing) in proc.stderr and "does not exist" in proc.stderr and "'DY'" in proc.stderr


def test_wrong_tree_name_is_a_clear_error_and_keeps_other_work(workflow: Workflow, nanoaod: Path) -> None:
    good, bad = str(nanoaod / "nano_dimuon.root"), str(nanoaod / "nano_dy.root")
    workflow.write(
        {"processor": DIMUON, "files_per_preprocess_job": 1},
        {"Good": {"files": [good]}, "Bad": {"files": {bad: "NoSuchTree"}}},
    )
    proc = workflow.run("--keep-going", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert bad in out and "no tree 'NoSuchTree'" in out and "Events" in out
    # the good dataset was still preprocessed, processed and merged (under its keyed name:
    # the fixed names are published only when the whole analysis is done)
    (good_result,) = (workflow.root / "results" / "datasets" / "Good").glob("*.npz")
    assert coffea_smk.load_meta(good_result)["complete"]


def test_processor_error_names_dataset_file_and_entries(workflow: Workflow, nanoaod: Path) -> None:
    path = str(nanoaod / "nano_dy.root")
    workflow.write({"processor": "smk_test_processors:Failing", "chunksize": 10}, {"DY": {"files": [path]}})
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "'DY'" in out and path in out and "entries 20-30" in out and "ZeroDivisionError" in out


def test_unaddable_output_is_a_clear_error(workflow: Workflow, nanoaod: Path) -> None:
    workflow.write(
        {"processor": "smk_test_processors:Unaddable", "chunksize": 10},
        {"DY": {"files": [str(nanoaod / "nano_dy.root")]}},
    )
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    assert "cannot accumulate str" in proc.stdout + proc.stderr


def test_reused_as_a_snakemake_module(tmp_path: Path, nanoaod: Path) -> None:
    wf = Workflow(tmp_path)
    wf.write({"processor": DIMUON, "chunksize": 20}, two_datasets(nanoaod))
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            """
            import coffea_smk

            configfile: "analysis.yaml"

            module cs:
                snakefile: coffea_smk.snakefile()
                config: config

            use rule * from cs as cs_*

            rule report:
                input: rules.cs_all.input
                output: "report.txt"
                run:
                    result = coffea_smk.load(input[0])
                    with open(output[0], "w") as f:
                        for name, flow in sorted(result["cutflow"].items()):
                            print(name, flow["muons"], file=f)
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "report"],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "report.txt").read_text().split() == ["DY", "18", "DoubleMuon", "84"]


def test_demo_runs_and_summarises(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "coffea_smk",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--scale",
            "0.05",
            "--cores",
            "2",
        ],
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(complete)" in proc.stdout and "cutflow:" in proc.stdout
    # the demo's statistical model (pyhf is in the test extra): workspace, datacard, fit
    assert "stat zmumu: mu = " in proc.stdout
    model = tmp_path / "demo" / "results" / "stat" / "zmumu"
    assert all(
        (model / name).is_file() for name in ("workspace.json", "datacard.txt", "shapes.root", "fit.json")
    )
    result = coffea_smk.load(tmp_path / "demo" / "results" / "result.npz")
    events = sum(flow["events"] for flow in result["cutflow"].values())
    meta = coffea_smk.load_meta(tmp_path / "demo" / "results" / "result.npz")
    assert events == meta["events"] == meta["events_expected"] > 0
    assert result["mass"].sum(flow=True) == sum(
        flow["opposite-sign pairs"] for flow in result["cutflow"].values()
    )


def test_remote_files_over_http_equal_local(workflow: Workflow, nanoaod: Path) -> None:
    """Files read from a (local) HTTP server with range requests, as from a storage element."""
    from rangeserver import serve

    with serve(nanoaod, latency=0.002) as remote:
        fileset = {
            "DY": {"files": {remote("nano_dy.root"): "Events"}},
            "DoubleMuon": {"files": [remote("nano_dimuon.root")], "treename": "Events"},
        }
        workflow.write({"processor": DIMUON, "chunksize": 13, "events_per_job": 26}, fileset)
        workflow.run()
        assert remote.requests > 0
        ours = coffea_smk.load(workflow.root / "results" / "result.npz")
        assert workflow.opened() == []  # no local ROOT file was opened: all came over HTTP
        requests = remote.requests
        workflow.run()  # nothing changed: no job, no read (the start sends a HEAD per file)
        assert remote.requests == requests
    assert ours["cutflow"]["DY"]["muons"] == 18 and ours["cutflow"]["DoubleMuon"]["muons"] == 84
    assert_same_result(ours, run_coffea(two_datasets(nanoaod), DimuonProcessor, 13))
