"""Chaining: two analyses in one Snakefile, the second's fileset being the first's skim.

A real outer Snakefile imports the first analysis (a skimming processor over the shared
NanoAOD, several chunks per file) as a ``module`` and runs the second (the dimuon histograms)
over its skim with ``coffea_smk.Chain``. One ``snakemake`` command from nothing makes both; the
second's result is coffea's Runner running the second's processor on the originals with the
first's cut. A changed selection of the first re-makes the second; a run with nothing changed
runs no job; going back to the first selection re-publishes what was made before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import awkward as ak
import pytest
import uproot
from conftest import PROCESSORS, Workflow, assert_same_result, run_coffea
from skim_data import copied_fileset

import coffea_smk
from coffea_smk.examples.dimuon import DimuonProcessor
from coffea_smk.smk.layout import Layout

OUTER = """
import coffea_smk

configfile: "analysis.yaml"

module first:
    snakefile: coffea_smk.snakefile()
    config: config

use rule * from first as first_*

chained = coffea_smk.Chain("second/analysis.yaml", after=rules.first_all.input[0], skim="dimuon")

rule all:
    default_target: True
    input:
        rules.first_all.input,
        chained.targets,

rule second:
    input: chained.after
    output: temp(chained.marker)
    log: chained.log
    threads: workflow.cores
    localrule: True
    shell: chained.command
"""
FIRST = {"chunksize": 10, "events_per_job": 40}  # 4 chunks per file, one unit per file
SECOND = {"processor": "coffea_smk.examples.dimuon:DimuonProcessor", "chunksize": 7}


class _Selected:
    """The second analysis on the events the first keeps (for coffea's Runner, on the originals)."""

    def __init__(self, min_muons: int) -> None:
        self.min_muons = min_muons

    def process(self, events: Any) -> dict[str, Any]:
        return DimuonProcessor().process(events[ak.num(events.Muon) >= self.min_muons])


def _reference(fileset: dict[str, Any], min_muons: int) -> Any:
    """coffea's result of the second's processor on the originals with the first's cut, over the
    datasets that keep an event (the skim leaves out the others)."""
    kept = {
        name: {"files": {f: "Events" for f in spec["files"]}}
        for name, spec in fileset.items()
        if any(ak.any(uproot.open(f)["Events"]["nMuon"].array() >= min_muons) for f in spec["files"])
    }
    return run_coffea(kept, lambda: _Selected(min_muons), 100)  # coffea takes 1 s a chunk


def _snakemake(root: Path) -> str:
    """One ``snakemake`` command in the outer directory; its log."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROCESSORS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2"],
        cwd=root,
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
    )
    chain_log = root / "second" / "chain.log"
    said = proc.stdout + proc.stderr + (chain_log.read_text() if chain_log.exists() else "")
    assert proc.returncode == 0, said
    return proc.stdout + proc.stderr


def _second(root: Path) -> tuple[Any, str]:
    """The second's published result, and the keyed result it leads to."""
    link = root / "second" / "results" / "result.npz"
    return coffea_smk.load(link), os.path.realpath(link)


@pytest.mark.slow
def test_a_chained_analysis_follows_the_first_ones_selection(
    tmp_path: Path, nanoaod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Workflow(tmp_path)
    fileset = copied_fileset(tmp_path, nanoaod)
    first.write({"processor": "skim_processors:DimuonSkim", **FIRST}, fileset)
    second = Workflow(tmp_path / "second")  # a folder of its own: the nested run's .snakemake/
    second.write({"fileset": "../results/skims/dimuon/fileset.json", **SECOND})  # replaced by the chain
    (tmp_path / "Snakefile").write_text(textwrap.dedent(OUTER))

    # from nothing, one command: the first, its skim, the second over it
    _snakemake(tmp_path)
    two, two_path = _second(tmp_path)
    assert_same_result(two, _reference(fileset, 2))
    meta = coffea_smk.load_meta(tmp_path / "second" / "results" / "result.npz")
    published = tmp_path / "results" / "skims" / "dimuon" / "fileset.json"
    assert os.path.realpath(meta["config"]["fileset"]) == os.path.realpath(published)
    manifest = json.loads(published.read_text())
    for name, entry in manifest.items():  # the second read the skim, not the originals
        rows = entry["metadata"]["skim"]["rows"]
        assert meta["datasets"][name]["events"] == rows < 40 * len(fileset[name]["files"]), name
    assert coffea_smk.load_meta(tmp_path / "results" / "result.npz")["totals"]["chunks"] == 12

    # a tighter selection in the first: the second is re-made over the new skim
    first.write({"processor": "skim_processors:ThreeMuonSkim", **FIRST}, fileset)
    _snakemake(tmp_path)
    three, three_path = _second(tmp_path)
    assert three_path != two_path
    assert_same_result(three, _reference(fileset, 3))
    assert set(three["cutflow"]) == {"Data"}  # DY has no event with three muons: not in the skim

    # nothing changed: no job, in either analysis
    stamps = {
        p: p.lstat().st_mtime_ns for p in (tmp_path / "second").rglob("*") if ".snakemake" not in p.parts
    }
    log = _snakemake(tmp_path)
    assert "Nothing to be done" in log, log
    assert {p: p.lstat().st_mtime_ns for p in stamps} == stamps
    assert len(list((tmp_path / "second").glob(".chain/*.done"))) == 1  # the last run's

    # what decides it, as the outer Snakefile's parse sees it: a change of the second's own
    # config makes it due as well
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(PROCESSORS))
    after = Layout.from_file("analysis.yaml").result
    assert coffea_smk.Chain("second/analysis.yaml", after=after, skim="dimuon").up_to_date()
    second.write({"fileset": "../results/skims/dimuon/fileset.json", **SECOND, "chunksize": 5})
    assert not coffea_smk.Chain("second/analysis.yaml", after=after, skim="dimuon").up_to_date()
    second.write({"fileset": "../results/skims/dimuon/fileset.json", **SECOND})

    # back to the first selection: both analyses' results exist and are published again
    first.write({"processor": "skim_processors:DimuonSkim", **FIRST}, fileset)
    _snakemake(tmp_path)
    again, again_path = _second(tmp_path)
    assert again_path == two_path
    assert_same_result(again, two)


def test_a_chain_needs_a_keyed_result_and_a_folder_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    after = f"results/global/{'0' * 16}.npz"
    with pytest.raises(ValueError, match="a folder of its own"):
        coffea_smk.Chain("analysis.yaml", after=after, skim="dimuon")
    with pytest.raises(ValueError, match="not a keyed global result"):
        coffea_smk.Chain("second/analysis.yaml", after="results/result.npz", skim="dimuon")
    with pytest.raises(ValueError, match="no --config"):
        coffea_smk.Chain("second/analysis.yaml", after=after, skim="dimuon", args=("--config", "a=1"))
    chain = coffea_smk.Chain("second/analysis.yaml", after=after, skim="dimuon", args=("--profile", "slurm"))
    assert chain.fileset == str(tmp_path / "results/skims/dimuon/manifests" / ("0" * 16) / "fileset.json")
    assert chain.fileset == os.path.abspath(coffea_smk.skim_fileset(after, "dimuon"))
    # nothing made yet: due, and its marker is a fresh name in the second's folder
    assert chain.targets == [chain.marker] and chain.marker.startswith("second/.chain/")
    assert chain.command.endswith(
        "--profile slurm --cores {threads} ) > {log:q} 2>&1 && rm -f second/.chain/*.done && touch {output:q}"
    )
