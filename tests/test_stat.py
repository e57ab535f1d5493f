"""Statistical models: pyhf workspaces, CMS Combine datacards with their shapes, and the fit.

Unit tests build models from synthetic histograms whose answer is known; the workflow
tests run Snakemake on the real NanoAOD samples, where a data set made of the signal's
and the background's own files (marked is_data) must give mu = 1 and one made of the
background's alone mu = 0.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import hist
import numpy as np
import pytest
import uproot
from conftest import Workflow

import coffea_smk
from coffea_smk.post.datacard import datacard, write_shapes
from coffea_smk.post.fit import fit
from coffea_smk.post.normalise import Sample, luminosity, samples
from coffea_smk.post.statmodel import Model, StatError, build
from coffea_smk.post.workspace import workspace
from coffea_smk.spec.config import ConfigError, parse_config
from coffea_smk.spec.stat import StatModel, StatUnavailableError, require_pyhf

pyhf = pytest.importorskip("pyhf")

SCALES = {"sig": 0.5, "bkg": 2.0, "bkg2": 0.25, "data": 1.0}
NORMALISED = {
    name: Sample(name, name == "data", None if name == "data" else 1.0, 1.0, "genWeight", s)
    for name, s in SCALES.items()
}


def _hist(rng: np.random.Generator, data: str = "poisson") -> Any:
    """dataset x channel x syst x observable, Weight storage, the habits of coffea processors."""
    h = (
        hist.Hist.new.StrCat(list(SCALES), name="dataset")
        .StrCat(["ee", "mumu"], name="channel")
        .StrCat(["nominal", "jesUp", "jesDown"], name="syst")
        .Reg(6, 0.0, 120.0, name="x", label="m [GeV]")
        .Weight()
    )
    for ch in ("ee", "mumu"):
        for syst, shift in (("nominal", 1.0), ("jesUp", 1.05), ("jesDown", 0.95)):
            h.fill(dataset="bkg", channel=ch, syst=syst, x=rng.exponential(40, 800) * shift, weight=1.2)
            h.fill(dataset="bkg2", channel=ch, syst=syst, x=rng.uniform(0, 120, 400) * shift)
            h.fill(dataset="sig", channel=ch, syst=syst, x=rng.normal(60, 8, 300) * shift)
        if data == "poisson":
            h.fill(dataset="data", channel=ch, syst="nominal", x=rng.exponential(40, 2000))
        elif data == "weighted":
            h.fill(dataset="data", channel=ch, syst="nominal", x=rng.exponential(40, 2000), weight=1.1)
    return h


def _settings(**changes: Any) -> StatModel:
    base: dict[str, Any] = {
        "histogram": "h",
        "channels": "channel",
        "signal": ["sig"],
        "backgrounds": {"bkg": ["bkg", "bkg2"]},
        "data": ["data"],
        "normalisation": {"lumi": 1.025, "xsec_bkg": {"bkg": 1.1}},
    }
    return StatModel.model_validate({**base, **changes})


def _build(h: Any, s: StatModel | None = None, name: str = "m") -> Model:
    s = s or _settings()
    return build(name, s, {"h": h}, {}, NORMALISED, list(s.data or []), 1.0)


def _bins(h: Any, dataset: str, channel: str, syst: str = "nominal") -> tuple[np.ndarray, np.ndarray]:
    one = h[{"dataset": dataset, "channel": channel, "syst": syst}]
    return one.values(), one.variances()


def _parse_datacard(text: str) -> dict[str, Any]:
    lines = [ln.split() for ln in text.splitlines() if ln and not ln.startswith(("#", "-"))]
    rows = {ln[0]: ln[1:] for ln in lines if ln[0] in ("bin", "observation", "rate")}
    process = next(ln[1:] for ln in lines if ln[0] == "process")
    bins = [ln[1:] for ln in lines if ln[0] == "bin"]
    shapes = [ln[0] for ln in lines if len(ln) > 1 and ln[1] == "shape"]
    norms = {ln[0]: ln[2:] for ln in lines if len(ln) > 1 and ln[1] == "lnN"}
    return {
        "channels": bins[0],
        "observation": [float(x) for x in rows["observation"]],
        "columns": list(zip(bins[1], process, strict=True)),
        "rates": [float(x) for x in rows["rate"]],
        "shapes": shapes,
        "lnN": norms,
        "shapes_line": next(" ".join(ln) for ln in lines if ln[0] == "shapes"),
    }


def test_workspace_and_datacard_hold_the_normalised_histogram(tmp_path: Path) -> None:
    h = _hist(np.random.default_rng(1))
    model = _build(h)
    spec = workspace(model)
    ws = pyhf.Workspace(spec)  # validates against pyhf's schema
    pdf = ws.model()
    assert pdf.config.poi_name == "mu"
    assert set(pdf.config.parameters) == {"mu", "lumi", "xsec_bkg", "jes", "staterror_ee", "staterror_mumu"}
    pars, twice_nll = pyhf.infer.mle.fit(ws.data(pdf), pdf, return_fitted_val=True)
    assert np.isfinite(twice_nll) and np.all(np.isfinite(pars))
    for channel in spec["channels"]:
        ch = channel["name"]
        by_name = {s["name"]: s for s in channel["samples"]}
        assert list(by_name) == ["sig", "bkg"]
        sig = _bins(h, "sig", ch)[0]
        assert by_name["sig"]["data"] == list(0.0 + sig * 0.5)  # exactly: xsec x lumi / sumw = 0.5
        b1, v1 = _bins(h, "bkg", ch)
        b2, v2 = _bins(h, "bkg2", ch)
        assert by_name["bkg"]["data"] == list(0.0 + b1 * 2.0 + b2 * 0.25)
        mods = {m["name"]: m for m in by_name["bkg"]["modifiers"]}
        assert mods["staterror_" + ch]["data"] == list(np.sqrt(0.0 + v1 * 4.0 + v2 * 0.0625))
        assert mods["xsec_bkg"]["data"] == {"hi": 1.1, "lo": 1 / 1.1}
        assert mods["lumi"]["data"] == {"hi": 1.025, "lo": 1 / 1.025}
        up = _bins(h, "bkg", ch, "jesUp")[0] * 2.0 + _bins(h, "bkg2", ch, "jesUp")[0] * 0.25
        assert mods["jes"]["data"]["hi_data"] == list(0.0 + up)
        assert {m["type"] for m in by_name["sig"]["modifiers"]} == {
            "normfactor",
            "normsys",
            "histosys",
            "staterror",
        }
        assert "xsec_bkg" not in {m["name"] for m in by_name["sig"]["modifiers"]}
        observed = next(o["data"] for o in spec["observations"] if o["name"] == ch)
        assert observed == list(0.0 + _bins(h, "data", ch)[0])

    # the datacard's rates are the same yields, and the shapes file holds every histogram it names
    card = _parse_datacard(datacard(model))
    assert card["shapes_line"] == "shapes * * shapes.root $CHANNEL/$PROCESS $CHANNEL/$PROCESS_$SYSTEMATIC"
    assert card["channels"] == ["ee", "mumu"] and card["shapes"] == ["jes"]
    assert card["lnN"] == {"lumi": ["1.025"] * 4, "xsec_bkg": ["-", "1.1", "-", "1.1"]}
    yields = {(c["name"], s["name"]): s for c in spec["channels"] for s in c["samples"]}
    for (ch, process), rate in zip(card["columns"], card["rates"], strict=True):
        assert rate == pytest.approx(sum(yields[ch, process]["data"]), rel=1e-15)
    write_shapes(model, tmp_path / "shapes.root")
    with uproot.open(tmp_path / "shapes.root") as f:
        for i, ch in enumerate(card["channels"]):
            data_obs = f[f"{ch}/data_obs"]
            assert list(data_obs.values()) == next(o["data"] for o in spec["observations"] if o["name"] == ch)
            assert data_obs.values().sum() == card["observation"][i]
        for ch, process in card["columns"]:
            sample = yields[ch, process]
            th1 = f[f"{ch}/{process}"]
            assert th1.classname == "TH1D"
            assert list(th1.values()) == sample["data"]
            assert list(th1.axis().edges()) == list(np.linspace(0, 120, 7))
            mods = {m["name"]: m["data"] for m in sample["modifiers"]}
            assert list(np.sqrt(th1.variances())) == pytest.approx(mods[f"staterror_{ch}"], rel=1e-15)
            for name in card["shapes"]:
                assert list(f[f"{ch}/{process}_{name}Up"].values()) == mods[name]["hi_data"]
                assert list(f[f"{ch}/{process}_{name}Down"].values()) == mods[name]["lo_data"]


def _counts_hist(signal: np.ndarray, background: np.ndarray, data: np.ndarray) -> Any:
    h = hist.Hist.new.StrCat(["sig", "bkg", "data"], name="dataset").Reg(len(signal), 0, 1, name="x").Weight()
    for name, counts in (("sig", signal), ("bkg", background), ("data", data)):
        h.view()[h.axes[0].index(name)] = np.stack([counts, counts], axis=-1).astype(float)
    return h


@pytest.mark.parametrize(("mu", "minuit"), [(0.0, True), (1.0, True), (1.0, False)])
def test_a_model_with_a_known_answer(mu: float, minuit: bool) -> None:
    signal = np.array([2.0, 10.0, 30.0, 10.0, 2.0])
    background = np.array([100.0, 80.0, 60.0, 40.0, 20.0])
    normalised = {n: Sample(n, n == "data", None, None, None, 1.0) for n in ("sig", "bkg", "data")}
    s = StatModel(histogram="h", signal=["sig"], backgrounds=["bkg"], data=["data"])
    model = build(
        "known",
        s,
        {"h": _counts_hist(signal, background, background + mu * signal)},
        {},
        normalised,
        ["data"],
        1.0,
    )
    record = fit(workspace(model), minuit=minuit)
    best = record["bestfit"]
    assert record["optimizer"] == ("minuit" if minuit else "scipy")
    assert best["mu"] == pytest.approx(mu, abs=1e-2)  # 0 is the bound of mu: MINUIT stops near it
    assert best["uncertainty"] > 0.05
    lo, hi = best["interval_68"]
    assert lo <= mu <= hi and hi - lo > 0.1
    limit = record["upper_limit"]
    assert (
        limit["observed"] > mu
        and limit["expected_band"]["-2sigma"] < limit["expected"] < limit["expected_band"]["+2sigma"]
    )
    if mu == 0.0 and minuit:
        # the limits equal pyhf's own upper_limit (which makes five fits per point)
        pyhf.set_backend("numpy", "minuit")
        ws = pyhf.Workspace(workspace(model))
        pdf = ws.model()
        observed, expected = pyhf.infer.intervals.upper_limits.upper_limit(ws.data(pdf), pdf, rtol=1e-4)
        assert limit["observed"] == pytest.approx(float(observed), rel=3e-3)
        assert [
            limit["expected_band"][k] for k in ("-2sigma", "-1sigma", "median", "+1sigma", "+2sigma")
        ] == pytest.approx([float(e) for e in expected], rel=3e-3)


def test_asimov_data_is_the_expected_sum_at_mu_1() -> None:
    h = _hist(np.random.default_rng(2))
    model = _build(h, _settings(data=[]))
    assert model.asimov
    for c in model.channels:
        assert list(c.observed) == list(sum((x.yields for x in c.samples), np.zeros(6)))
    record = fit(workspace(model), asimov=model.asimov)
    assert record["observations"] == "asimov" and record["bestfit"]["mu"] == pytest.approx(1.0, abs=2e-3)


def test_range_rebin_select_and_sum() -> None:
    h = _hist(np.random.default_rng(3))
    model = _build(h, _settings(channels=None, sum=["channel"], range=[20, 100], rebin=2, shapes=["jes"]))
    (c,) = model.channels
    assert c.name == "m" and list(c.edges) == [20.0, 60.0, 100.0]
    sig = sum(_bins(h, "sig", ch)[0] for ch in ("ee", "mumu")) * 0.5
    assert list(c.samples[0].yields) == pytest.approx([sig[1] + sig[2], sig[3] + sig[4]], rel=1e-15)
    selected = _build(h, _settings(channels=None, select={"channel": "mumu"}, mc_stat=False))
    assert [c.name for c in selected.channels] == ["m"] and not selected.mc_stat
    assert "staterror" not in json.dumps(workspace(selected)) and "autoMCStats" not in datacard(selected)


def _error(h: Any, s: StatModel | None = None) -> str:
    with pytest.raises(StatError) as info:
        _build(h, s)
    return str(info.value)


def test_bad_input_gets_an_error_naming_the_model_and_the_fix() -> None:
    rng = np.random.default_rng(4)
    h = _hist(rng)
    text = _error(h, _settings(histogram="nope"))
    assert text.startswith("stat.m: histogram 'nope' is not in the result (its histograms: h)")
    # an Up without its Down
    lopsided = (
        hist.Hist.new.StrCat(["sig", "bkg"], name="dataset")
        .StrCat(["nominal", "jesUp"], name="syst")
        .Reg(3, 0, 3, name="x")
        .Weight()
    )
    lopsided.fill(dataset="bkg", syst="nominal", x=[0.5, 1.5, 2.5])
    s = _settings(channels=None, backgrounds=["bkg"], data=[])
    assert "stat.m: axis 'syst' has 'jesUp' but no 'jesDown': fill both variations" in _error(lopsided, s)
    # negative and empty background bins
    negative = _hist(rng)
    negative.fill(dataset="bkg2", channel="ee", syst="nominal", x=[110.0] * 3000, weight=-1.0)
    text = _error(negative)
    assert text.startswith(
        "stat.m: sample 'bkg' has negative expected yields in channel 'ee', bins [100, 120)"
    )
    assert "stat.m.rebin" in text and "stat.m.range" in text
    empty = _counts_hist(np.array([1.0, 2.0]), np.array([5.0, 0.0]), np.array([5.0, 1.0]))
    s = StatModel(histogram="h", signal=["sig"], backgrounds=["bkg"], data=["data"])
    text = _error(empty, s)
    assert text.startswith("stat.m: no expected background in channel 'm', bins [0.5, 1)")
    # data with weights
    text = _error(_hist(rng, data="weighted"))
    assert text.startswith("stat.m: data dataset 'data' has weighted entries in 'h'")
    # an axis that is neither a channel, selected nor summed
    text = _error(h, _settings(channels=None))
    assert "categorical axis 'channel' (ee, mumu): name it in stat.m.channels" in text
    text = _error(h, _settings(shapes=["jer"]))
    assert "stat.m: shapes: jer not on axis 'syst' as <name>Up/<name>Down (the pairs there: jes)" in text


def test_config_errors_name_the_model() -> None:
    base = {"fileset": "f.json", "processor": "a:b"}
    bad = [
        (
            {"histogram": "h", "signal": ["A"], "backgrounds": ["A"]},
            "sample(s) A are both signal and background",
        ),
        (
            {"histogram": "h", "signal": ["A"], "backgrounds": {"X": ["A"]}},
            "dataset(s) A listed more than once",
        ),
        ({"histogram": "h", "signal": ["A"], "backgrounds": []}, "backgrounds: name at least one dataset"),
        (
            {"histogram": "h", "signal": ["A"], "backgrounds": ["B"], "normalisation": {"x": {"C": 1.1}}},
            "no sample C",
        ),
        ({"histogram": "h", "signal": ["A"], "backgrounds": ["B"], "range": [2, 1]}, "low < high"),
        (
            {"histogram": "h", "signal": ["A"], "backgrounds": ["B"], "normalisation": {"lumi": -1}},
            "greater than 0",
        ),
    ]
    for model, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            parse_config({**base, "stat": {"m": model}})
        assert "stat.m" in str(info.value)
    with pytest.raises(ConfigError, match="looks like a content key"):
        parse_config(
            {**base, "stat": {"deadbeef01234567": {"histogram": "h", "signal": ["A"], "backgrounds": ["B"]}}}
        )


def test_without_pyhf_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyhf", None)  # import pyhf now fails as if it were not installed
    with pytest.raises(StatUnavailableError, match=re.escape("pip install 'coffea_smk[stat]'")):
        require_pyhf("stat.m")
    with pytest.raises(StatUnavailableError, match=re.escape("stat.m: statistical models need pyhf")):
        fit({}, where="stat.m")


# ---- the workflow, on the real NanoAOD samples ---------------------------------------------

STAT = "smk_test_processors:StatHistograms"


def _sumw(nanoaod: Path) -> dict[str, float]:
    with uproot.open(nanoaod / "nano_dy.root") as f:
        dy = float(f["Runs"]["genEventSumw_"].array(library="np").astype("f8").sum())
    with uproot.open(nanoaod / "nano_tt_v15.root") as f:
        tt = float(f["Events"]["genWeight"].array(library="np").astype("f8").sum())
    return {"DY": dy, "TT": tt}


def _fileset(nanoaod: Path) -> dict[str, Any]:
    """DY (signal) and TT (background) normalised to scale 1 at lumi 1; data sets made of their files."""
    sumw = _sumw(nanoaod)
    dy, tt = str(nanoaod / "nano_dy.root"), str(nanoaod / "nano_tt_v15.root")
    return {
        "DY": {"files": [dy], "metadata": {"xsec": sumw["DY"]}},
        "TT": {"files": [tt], "metadata": {"xsec": sumw["TT"]}},
        "DataSB": {"files": [dy, tt], "metadata": {"is_data": True}},
        "DataB": {"files": [tt], "metadata": {"is_data": True}},
    }


def _models(**changes: Any) -> dict[str, Any]:
    common = {"histogram": "muon_pt", "channels": "channel", "signal": ["DY"], "backgrounds": ["TT"]}
    common["normalisation"] = {"lumi": 1.025}
    return {
        "sb": {**common, "data": ["DataSB"], **changes},
        "bonly": {**common, "data": ["DataB"]},
        "asimov": {**common, "data": []},
    }


def _config(**changes: Any) -> dict[str, Any]:
    return {"processor": STAT, "chunksize": 20, "lumi": 1.0, "stat": _models(**changes)}


@pytest.fixture(scope="module")
def fitted(nanoaod: Path, tmp_path_factory: pytest.TempPathFactory) -> Workflow:
    wf = Workflow(tmp_path_factory.mktemp("stat"))
    wf.write(_config(), _fileset(nanoaod))
    wf.run()
    return wf


@pytest.mark.slow
def test_the_workflow_writes_workspace_datacard_shapes_and_fit(fitted: Workflow) -> None:
    results = fitted.root / "results"
    meta = coffea_smk.load_meta(results / "result.npz")
    h = coffea_smk.load(results / "result.npz")["muon_pt"]
    scale = {x.name: x.scale for x in samples(meta, luminosity(meta, 1.0))}
    assert scale["DY"] == pytest.approx(1.0, rel=1e-12) and scale["TT"] == pytest.approx(1.0, rel=1e-12)
    for name in ("sb", "bonly", "asimov"):
        folder = results / "stat" / name
        assert folder.is_symlink() and re.fullmatch(r"[0-9a-f]{16}", os.readlink(folder))
        spec = json.loads((folder / "workspace.json").read_text())
        pyhf.Workspace(spec)
        card = _parse_datacard((folder / "datacard.txt").read_text())
        assert card["shapes"] == ["scale"] and card["channels"] == ["barrel", "endcap"]
        with uproot.open(folder / "shapes.root") as f:
            for c in spec["channels"]:
                for s in c["samples"]:
                    one = h[{"dataset": s["name"], "channel": c["name"], "syst": "nominal"}]
                    assert s["data"] == list(0.0 + one.values() * scale[s["name"]])  # exactly the bins
                    assert list(f[f"{c['name']}/{s['name']}"].values()) == s["data"]
                    up = h[{"dataset": s["name"], "channel": c["name"], "syst": "scaleUp"}].values()
                    assert list(f[f"{c['name']}/{s['name']}_scaleUp"].values()) == list(
                        0.0 + up * scale[s["name"]]
                    )
            for (ch, process), rate in zip(card["columns"], card["rates"], strict=True):
                assert rate == pytest.approx(f[f"{ch}/{process}"].values().sum(), rel=1e-15)
        record = json.loads((folder / "fit.json").read_text())
        assert record["model"] == name and record["pyhf_version"] == pyhf.__version__
        assert record["seconds"] < 60
    sb = json.loads((results / "stat" / "sb" / "fit.json").read_text())
    assert sb["data"] == ["DataSB"] and sb["bestfit"]["mu"] == pytest.approx(1.0, abs=5e-3)
    bonly = json.loads((results / "stat" / "bonly" / "fit.json").read_text())["bestfit"]
    assert abs(bonly["mu"]) < bonly["uncertainty"] and bonly["interval_68"][0] == 0.0
    asimov = json.loads((results / "stat" / "asimov" / "fit.json").read_text())
    assert asimov["data"] == "asimov" and asimov["bestfit"]["mu"] == pytest.approx(1.0, abs=5e-3)
    page = (results / "report.html").read_text()
    assert "Statistical models" in page and 'href="stat/sb/workspace.json"' in page
    assert f"{sb['bestfit']['mu']:.4g}" in page


KEYED_FITS = "stat/" + "?" * 16 + "/fit.json"  # the keyed folders, not the links named after the models


def _mtimes(root: Path, pattern: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.glob(pattern)}


@pytest.mark.slow
def test_changing_a_model_redoes_only_that_model(fitted: Workflow, nanoaod: Path) -> None:
    results = fitted.root / "results"
    again = fitted.run()
    assert "Nothing to be done" in again.stdout + again.stderr
    processed = _mtimes(results, "partials/**/*.npz") | _mtimes(results, "global/*.npz")
    others = _mtimes(results, KEYED_FITS)
    old = os.readlink(results / "stat" / "sb")
    fitted.reset_openlog()
    fitted.write(_config(normalisation={"lumi": 1.025, "xsec_tt": {"TT": 1.1}}), _fileset(nanoaod))
    fitted.run()
    assert [p for p in fitted.opened() if "nano_" in p] == []  # no input file opened, no chunk processed
    assert _mtimes(results, "partials/**/*.npz") | _mtimes(results, "global/*.npz") == processed
    assert os.readlink(results / "stat" / "sb") != old
    assert {k: v for k, v in _mtimes(results, KEYED_FITS).items() if k in others} == others
    card = (results / "stat" / "sb" / "datacard.txt").read_text()
    assert re.search(r"^xsec_tt\s+lnN\s+-\s+1\.1\s+-\s+1\.1$", card, flags=re.M)
    again = fitted.run()
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_workflow_errors_name_the_model(fitted: Workflow, nanoaod: Path) -> None:
    results = fitted.root / "results"
    # a dataset that is not in the fileset: stopped when the workflow starts
    fitted.write(_config(signal=["Nope"]), _fileset(nanoaod))
    proc = fitted.run(check=False)
    assert proc.returncode != 0
    assert "stat.sb.signal: no dataset 'Nope' in the fileset (its datasets: DY, TT, DataSB, DataB)" in (
        proc.stdout + proc.stderr
    )
    # a histogram that is not in the result: the job fails, its log says why
    fitted.write(_config(histogram="nope"), _fileset(nanoaod))
    proc = fitted.run(check=False)
    assert proc.returncode != 0
    logs = "".join(p.read_text() for p in (results / "logs" / "stat").glob("*.log"))
    assert "stat.sb: histogram 'nope' is not in the result (its histograms: muon_pt)" in logs
    # without pyhf: the run stops at once and says how to install it
    sitecustomize = fitted.hooks / "sitecustomize.py"
    original = sitecustomize.read_text()
    sitecustomize.write_text(original + "\nsys.modules['pyhf'] = None  # as if pyhf were not installed\n")
    try:
        fitted.write(_config(), _fileset(nanoaod))
        proc = fitted.run(check=False)
    finally:
        sitecustomize.write_text(original)
    assert proc.returncode != 0
    assert "statistical models need pyhf, which is not installed: pip install 'coffea_smk[stat]'" in (
        proc.stdout + proc.stderr
    )
