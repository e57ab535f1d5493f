"""Plots and the report as rules of the workflow, the sum of generator weights, and the report in a browser.

The datasets: DY (a ``Runs`` tree with ``genEventSumw_``), TT (no ``Runs`` tree: the sum
comes from ``genWeight``) and DoubleMuon data. The report is opened in headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import uproot
from conftest import Workflow, unavailable

import coffea_smk
from coffea_smk.post.normalise import NormalisationError, luminosity, samples

pytestmark = pytest.mark.slow

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"
LUMI = 100.0


def _fileset(nanoaod: Path) -> dict[str, Any]:
    return {
        "DY": {"files": [str(nanoaod / "nano_dy.root")], "metadata": {"xsec": 6077.22}},
        "TT": {"files": [str(nanoaod / "nano_tt_v15.root")], "metadata": {"xsec": 833.9}},
        "DoubleMuon": {
            "files": [str(nanoaod / "nano_dimuon.root")],
            "metadata": {"is_data": True, "lumi": LUMI},
        },
    }


def _mtimes(root: Path, pattern: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.glob(pattern)}


@pytest.fixture(scope="module")
def plotted(nanoaod: Path, tmp_path_factory: pytest.TempPathFactory) -> Workflow:
    wf = Workflow(tmp_path_factory.mktemp("plots"))
    wf.write({"processor": DIMUON, "chunksize": 20, "plots": {"yscale": "both"}}, _fileset(nanoaod))
    wf.run()
    return wf


def test_sums_of_generator_weights_are_in_the_results(plotted: Workflow, nanoaod: Path) -> None:
    meta = coffea_smk.load_meta(plotted.root / "results" / "result.npz")
    runs = uproot.open(nanoaod / "nano_dy.root")["Runs"]["genEventSumw_"].array(library="np")
    weights = uproot.open(nanoaod / "nano_tt_v15.root")["Events"]["genWeight"].array(library="np")
    dy, tt, data = (meta["datasets"][d] for d in ("DY", "TT", "DoubleMuon"))
    assert dy["sumw"] == pytest.approx(float(runs.astype("f8").sum()), rel=1e-12)
    assert dy["sumw_source"] == "Runs.genEventSumw"
    assert tt["sumw"] == pytest.approx(float(weights.astype("f8").sum()), rel=1e-12)
    assert tt["sumw_source"] == "genWeight"
    assert data["sumw"] is None and data["sumw_source"] is None
    # and in each dataset's own result
    assert coffea_smk.load_meta(plotted.root / "results" / "datasets" / "TT.npz")["sumw"] == tt["sumw"]


def test_plots_are_drawn_normalised_and_listed(plotted: Workflow) -> None:
    folder = plotted.root / "results" / "plots" / "latest"
    manifest = json.loads((folder / "plots.json").read_text())
    assert json.loads((folder / "notes.json").read_text()) == []
    names = {p["histogram"] for p in manifest}
    assert names == {"mass", "muon_pt", "jet_ht"}
    for name in names:
        kinds = sorted(
            (p["kind"], p["dataset"] or "", p["yscale"]) for p in manifest if p["histogram"] == name
        )
        expected = [("dataset", d, y) for d in ("DY", "DoubleMuon", "TT") for y in ("linear", "log")]
        assert kinds == sorted([*expected, ("stack", "", "linear"), ("stack", "", "log")])
    for plot in manifest:
        assert len(plot["files"]) == 2  # png and pdf
        image = matplotlib.image.imread(folder / plot["files"][0])
        assert image.std() > 0.01  # not blank
        assert (folder / plot["files"][1]).read_bytes().startswith(b"%PDF")
    # the normalisation the stack used: xsec x lumi / sum of weights
    meta = coffea_smk.load_meta(plotted.root / "results" / "result.npz")
    by_name = {s.name: s for s in samples(meta, luminosity(meta, None))}
    assert by_name["TT"].scale == pytest.approx(833.9 * LUMI / meta["datasets"]["TT"]["sumw"])
    assert by_name["DoubleMuon"].is_data and by_name["DoubleMuon"].scale == 1.0


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        unavailable("headless Chromium is not installed (apt-get install chromium)")
    return found


def test_the_report_opens_in_a_browser(plotted: Workflow, tmp_path: Path) -> None:
    chromium = _chromium()
    report = plotted.root / "results" / "report.html"
    page = report.read_text()
    for text in (
        "DY",
        "TT",
        "DoubleMuon",
        "cutflow",
        "opposite-sign pairs",
        "Runs.genEventSumw",
        "genWeight",
    ):
        assert text in page
    assert "http://" not in page and "https://" not in page.replace("https://json-schema.org", "")
    # every image loads: a copy of the page reports each image's decoded width in its title
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => { document.title = 'widths:' + "
        "JSON.stringify([...document.images].map(i => i.complete ? i.naturalWidth : -1)); });</script>"
    )
    probe.write_text(page.replace("</body>", script + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    match = re.search(r"<title>widths:(\[.*?\])</title>", dom)
    assert match, dom[:500]
    widths = json.loads(match.group(1))
    assert len(widths) == 3 * (3 * 2 + 2)  # 3 histograms: 3 datasets and the stack, linear and log
    assert all(w > 100 for w in widths), widths
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()],
        capture_output=True,
        timeout=120,
    )
    image = matplotlib.image.imread(shot)
    assert image.shape[0] > 1000 and image.std() > 0.05  # a page with tables and plots, not blank
    assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 50


def test_changing_plot_settings_redoes_only_plots(plotted: Workflow, nanoaod: Path) -> None:
    results = plotted.root / "results"
    before = _mtimes(results, "partials/**/*.npz") | _mtimes(results, "global/*.npz")
    old = os.readlink(results / "plots" / "latest")
    plotted.write(
        {"processor": DIMUON, "chunksize": 20, "plots": {"histograms": ["mass"], "rebin": {"mass": 4}}},
        _fileset(nanoaod),
    )
    plotted.run()
    assert _mtimes(results, "partials/**/*.npz") | _mtimes(results, "global/*.npz") == before
    assert os.readlink(results / "plots" / "latest") != old
    manifest = json.loads((results / "plots" / "latest" / "plots.json").read_text())
    assert {p["histogram"] for p in manifest} == {"mass"} and all(p["yscale"] == "linear" for p in manifest)
    again = plotted.run()
    assert "Nothing to be done" in again.stdout + again.stderr
    # a histogram that is not in the result: a clear error naming it and the ones there are
    plotted.write(
        {"processor": DIMUON, "chunksize": 20, "plots": {"histograms": ["nope"]}}, _fileset(nanoaod)
    )
    proc = plotted.run(check=False)
    assert proc.returncode != 0
    log = "".join(p.read_text() for p in (results / "logs" / "plots").glob("*.log"))
    assert "plots.histograms: nope not in the result" in log and "jet_ht, mass, muon_pt" in log


def test_normalisation_errors_say_what_to_add() -> None:
    meta = {"datasets": {"X": {"metadata": {}, "sumw": 1.0}}}
    with pytest.raises(NormalisationError, match=r"'X' is simulation without a cross section.*xsec"):
        samples(meta, 1.0)
    meta = {"datasets": {"X": {"metadata": {"xsec": 1.0}, "sumw": 1.0}}}
    with pytest.raises(NormalisationError, match="no luminosity"):
        samples(meta, None)
    meta = {"datasets": {"X": {"metadata": {"xsec": 1.0}, "sumw": None}}}
    with pytest.raises(NormalisationError, match="no sum of generator weights"):
        samples(meta, 1.0)


def test_categorical_axes_give_a_plot_per_value_or_a_sum(tmp_path: Path) -> None:
    import hist

    from coffea_smk.post.normalise import Sample
    from coffea_smk.post.plots import draw
    from coffea_smk.spec.plots import PlotSettings

    h = (
        hist.Hist.new.StrCat(["MC", "Data"], name="dataset")
        .StrCat(["ee", "mumu"], name="channel")
        .Reg(10, 0, 100, name="x")
        .Weight()
    )
    h.fill(dataset="MC", channel="ee", x=[10, 20, 30], weight=2.0)
    h.fill(dataset="MC", channel="mumu", x=[40, 50])
    h.fill(dataset="Data", channel="ee", x=[15, 25, 35, 45])
    h.fill(dataset="Data", channel="mumu", x=[45, 55])
    samples_ = [Sample("MC", False, 1.0, 1.0, "genWeight", 3.0), Sample("Data", True, None, None, None, 1.0)]
    each = draw({"h": h}, {}, samples_, PlotSettings(formats=["png"]), tmp_path / "each", 1.0)
    kinds = [("dataset", "MC"), ("dataset", "Data"), ("stack", "")]
    expected = [(k, d, f"channel={c}") for c in ("ee", "mumu") for k, d in kinds]
    assert sorted((p.kind, p.dataset or "", p.selection) for p in each) == sorted(expected)
    summed = draw(
        {"h": h},
        {},
        samples_,
        PlotSettings(formats=["png"], categories={"channel": "sum"}, rebin={"x": 5}),
        tmp_path / "sum",
        1.0,
    )
    assert sorted((p.kind, p.dataset or "", p.selection) for p in summed) == [
        ("dataset", "Data", ""),
        ("dataset", "MC", ""),
        ("stack", "", ""),
    ]
    assert all(matplotlib.image.imread(tmp_path / "sum" / p.files[0]).std() > 0.01 for p in summed)
