"""A result always describes the analysis as configured now, with or without `.snakemake/`.

One analysis directory goes through a sequence of changes (dataset metadata,
the processor's source, a file added, a file removed, the chunk size, a dataset
renamed, and back to an earlier analysis). After each change, `coffea-smk run`
must give exactly the result of a clean run of the changed analysis in a fresh
directory, and running again must do nothing and open no ROOT file. The whole
sequence runs twice: keeping Snakemake's records, and deleting `.snakemake/`
before every run (users do, to clear a stuck lock; a colleague runs elsewhere).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import Workflow, assert_same_result

import coffea_smk

pytestmark = pytest.mark.slow

PROCESSOR = textwrap.dedent(
    """
    import awkward as ak
    import hist

    SCALE = {scale}


    class Weighted:
        '''Muon pt weighted by the dataset's xsec; records the metadata it saw.'''

        def process(self, events):
            md = events.metadata
            h = hist.Hist.new.StrCat([], growth=True, name="dataset").Reg(20, 0, 100, name="pt").Weight()
            h.fill(dataset=md["dataset"], pt=ak.flatten(events.Muon.pt), weight=md.get("xsec", 1.0) * SCALE)
            seen = {{f"{{k}}={{md[k]}}" for k in sorted(md) if k in ("dataset", "xsec", "year")}}
            return {{"pt": h, "events": {{md["dataset"]: len(events)}}, "seen": seen}}
    """
)

# Each step: (what changes, config, processor scale, datasets {name: (files, metadata)}).
BASE = {
    "DY": (["data/dy.root"], {"xsec": 2.0, "year": 2018}),
    "Mu": (["data/mu.root"], {"year": 2018}),
}
DY3 = {"xsec": 3.0, "year": 2018}
STEPS: list[tuple[str, dict[str, Any], float, dict[str, Any]]] = [
    ("base", {"chunksize": 10}, 1.0, BASE),
    ("metadata", {"chunksize": 10}, 1.0, {**BASE, "DY": (["data/dy.root"], {"xsec": 3.0, "year": 2018})}),
    ("processor", {"chunksize": 10}, 2.0, {**BASE, "DY": (["data/dy.root"], {"xsec": 3.0, "year": 2018})}),
    (
        "file added",
        {"chunksize": 10},
        2.0,
        {**BASE, "DY": (["data/dy.root", "data/dy2.root"], {"xsec": 3.0, "year": 2018})},
    ),
    (
        "file removed",
        {"chunksize": 10},
        2.0,
        {**BASE, "DY": (["data/dy2.root"], {"xsec": 3.0, "year": 2018})},
    ),
    ("chunksize", {"chunksize": 15}, 2.0, {**BASE, "DY": (["data/dy2.root"], {"xsec": 3.0, "year": 2018})}),
    (
        "dataset renamed",
        {"chunksize": 15},
        2.0,
        {"DY": (["data/dy2.root"], {"xsec": 3.0, "year": 2018}), "DoubleMuon": BASE["Mu"]},
    ),
    ("back to the base analysis", {"chunksize": 10}, 1.0, BASE),
]


def _setup(root: Path, nanoaod: Path, step: tuple[str, dict[str, Any], float, dict[str, Any]]) -> Workflow:
    _, config, scale, datasets = step
    data = root / "data"
    if not data.exists():
        data.mkdir(parents=True)
        shutil.copy(nanoaod / "nano_dy.root", data / "dy.root")
        shutil.copy(nanoaod / "nano_dy.root", data / "dy2.root")
        shutil.copy(nanoaod / "nano_dimuon.root", data / "mu.root")
    source = PROCESSOR.format(scale=scale)
    module = root / "weighted.py"
    if not module.exists() or module.read_text() != source:
        module.write_text(source)
    fileset = {name: {"files": files, "metadata": md} for name, (files, md) in datasets.items()}
    workflow = Workflow(root)
    workflow.write({"processor": "weighted:Weighted", "events_per_job": 20, **config}, fileset)
    return workflow


@pytest.fixture(scope="module")
def clean_results(tmp_path_factory: pytest.TempPathFactory, nanoaod: Path) -> dict[str, Any]:
    """The result of a clean run of each step's analysis, each in a fresh directory."""
    out = {}
    for step in STEPS:
        if step[0] in out or step[0] == "back to the base analysis":
            continue
        workflow = _setup(tmp_path_factory.mktemp("clean"), nanoaod, step)
        workflow.run()
        results = workflow.root / "results"
        out[step[0]] = {
            "result": coffea_smk.load(results / "result.npz"),
            "meta": coffea_smk.load_meta(results / "result.npz"),
            "datasets": {n: coffea_smk.load(results / "datasets" / f"{n}.npz") for n in step[3]},
        }
    out["back to the base analysis"] = out["base"]
    return out


@pytest.mark.parametrize("keep_records", [True, False], ids=["with .snakemake", "without .snakemake"])
def test_every_change_gives_the_clean_result(
    tmp_path: Path, nanoaod: Path, clean_results: dict[str, Any], keep_records: bool
) -> None:
    keys: list[str] = []
    for step in STEPS:
        name, _, _, datasets = step
        workflow = _setup(tmp_path, nanoaod, step)
        if not keep_records:
            shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)
        workflow.run()
        results = tmp_path / "results"
        clean = clean_results[name]
        assert_same_result(coffea_smk.load(results / "result.npz"), clean["result"], f"{name}: result")
        meta = coffea_smk.load_meta(results / "result.npz")
        assert meta["analysis_key"] not in keys or name == "back to the base analysis", name
        keys.append(meta["analysis_key"])
        assert set(meta["datasets"]) == set(datasets), name
        assert meta["events"] == meta["events_expected"] == clean["meta"]["events"], name
        for dataset in datasets:
            ours = coffea_smk.load(results / "datasets" / f"{dataset}.npz")
            assert_same_result(ours, clean["datasets"][dataset], f"{name}: dataset {dataset}")
            dmeta = coffea_smk.load_meta(results / "datasets" / f"{dataset}.npz")
            assert dmeta["metadata"] == datasets[dataset][1], name
        # the links of datasets no longer in the analysis are gone
        assert {p.stem for p in (results / "datasets").glob("*.npz")} == set(datasets), name

        # unchanged: nothing runs, no ROOT file is opened
        if not keep_records:
            shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)
        workflow.reset_openlog()
        proc = workflow.run()
        assert "Nothing to be done" in proc.stdout + proc.stderr, f"{name}: the re-run did work"
        assert workflow.opened() == [], name


def test_going_back_to_an_earlier_analysis_only_republishes(workflow: Workflow, nanoaod: Path) -> None:
    """A -> B -> A: A's results exist; the fixed names point at them again and nothing is recomputed."""
    _setup(workflow.root, nanoaod, STEPS[0])
    workflow.run()
    first = coffea_smk.load(workflow.root / "results" / "result.npz")
    _setup(workflow.root, nanoaod, STEPS[1])
    workflow.run()
    assert coffea_smk.load_meta(workflow.root / "results" / "result.npz")["datasets"]["DY"]["metadata"] == {
        "xsec": 3.0,
        "year": 2018,
    }
    _setup(workflow.root, nanoaod, STEPS[0])
    shutil.rmtree(workflow.root / ".snakemake")
    dry = workflow.run("-n")
    # Snakemake's job table (on stderr under the progress view, which the profiles select)
    listing = dry.stdout + dry.stderr
    jobs = {line.split()[0] for line in listing.splitlines() if re.match(r"^\w+\s+\d+$", line)}
    assert jobs == {"publish", "all", "total"}, listing
    workflow.reset_openlog()
    workflow.run()
    assert workflow.opened() == []
    assert_same_result(coffea_smk.load(workflow.root / "results" / "result.npz"), first)
    # a removed link is made again, each time
    for _ in range(2):
        (workflow.root / "results" / "result.npz").unlink()
        workflow.run()
        assert_same_result(coffea_smk.load(workflow.root / "results" / "result.npz"), first)


def test_results_record_their_origin(workflow: Workflow, nanoaod: Path) -> None:
    _setup(workflow.root, nanoaod, STEPS[0])
    workflow.run()
    results = workflow.root / "results"
    meta = coffea_smk.load_meta(results / "result.npz")
    assert meta["config"]["processor"] == "weighted:Weighted"
    assert meta["config"]["chunksize"] == 10
    assert meta["configfile"] == str((workflow.root / "analysis.yaml").resolve())
    assert meta["coffea_smk_version"] == coffea_smk.__version__
    dy = coffea_smk.load_meta(results / "datasets" / "DY.npz")
    assert dy["analysis_key"] == meta["datasets"]["DY"]["analysis_key"]
    assert [Path(f["path"]).name for f in dy["input_files"]] == ["dy.root"]
    assert all(f["uuid"] and f["entries"] == 40 for f in dy["input_files"])
    status = workflow.run(command="status")
    assert meta["analysis_key"] in status.stdout
    out = subprocess.run(
        [sys.executable, "-m", "coffea_smk", "summary", str(results / "result.npz")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"analysis key: {meta['analysis_key']}" in out and "weighted:Weighted" in out


def test_a_new_plan_redoes_only_the_units_it_adds(workflow: Workflow, nanoaod: Path) -> None:
    """A file added to a dataset re-plans it: the units of its other files keep their results
    (with Snakemake's records kept, which recorded the plan the units ran from), and so does a
    new merge fan-in."""
    base = ("base", {"chunksize": 10}, 1.0, BASE)
    _setup(workflow.root, nanoaod, base)
    workflow.run()
    partials = workflow.root / "results" / "partials"

    def stamps() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in partials.rglob("*.npz")}

    before = stamps()
    assert len(before) >= 4
    added = {**BASE, "DY": (["data/dy.root", "data/dy2.root"], BASE["DY"][1])}
    _setup(workflow.root, nanoaod, ("file added", {"chunksize": 10}, 1.0, added))
    proc = workflow.run()
    after = stamps()
    assert {p: after[p] for p in before} == before, proc.stderr
    assert len(after) == len(before) + 2  # dy2.root: 40 events, 2 units of 20
    _setup(workflow.root, nanoaod, ("fan-in", {"chunksize": 10, "merge_fanin": 3}, 1.0, added))
    proc = workflow.run()
    assert stamps() == after, proc.stderr
