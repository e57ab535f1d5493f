"""The demo: NanoAOD-layout files generated with uproot, and a dimuon analysis to run on them.

The generator writes Drell-Yan-like events: a Z boson decaying to two muons
(Breit-Wigner mass, random transverse boost and rapidity), some extra soft
muons, jets with a falling pT spectrum, MET, and run/lumi/event numbers, in
NanoAOD's layout (counter ``nMuon`` plus jagged ``Muon_*`` branches, a TTree
called ``Events``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from coffea_smk.results import PickledResultError, Stored, load_meta, load_stored
from coffea_smk.skim import skim_name, skims_in

MUON_MASS = 0.1056583745


def _polar(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pt = np.hypot(px, py)
    return pt, np.arcsinh(pz / np.maximum(pt, 1e-9)), np.arctan2(py, px)


def _z_decays(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Two muons per event from a Z decay, as flat (n, 2) arrays of pt, eta, phi."""
    mass = np.clip(91.1876 + 2.4952 / 2 * rng.standard_cauchy(n), 50.0, 140.0)
    p_star = np.sqrt(np.maximum(mass**2 / 4 - MUON_MASS**2, 0.0))
    cos_t = rng.uniform(-1, 1, n)
    phi_star = rng.uniform(-np.pi, np.pi, n)
    sin_t = np.sqrt(1 - cos_t**2)
    d = np.stack([sin_t * np.cos(phi_star), sin_t * np.sin(phi_star), cos_t], axis=1)
    # Z momentum: exponential pT, Gaussian rapidity
    zpt = rng.exponential(8.0, n)
    zphi = rng.uniform(-np.pi, np.pi, n)
    zy = rng.normal(0.0, 1.2, n)
    mt = np.sqrt(mass**2 + zpt**2)
    zp = np.stack([zpt * np.cos(zphi), zpt * np.sin(zphi), mt * np.sinh(zy)], axis=1)
    ze = mt * np.cosh(zy)
    beta = zp / ze[:, None]
    b2 = np.sum(beta**2, axis=1)
    gamma = 1 / np.sqrt(1 - b2)
    out = {"pt": np.empty((n, 2)), "eta": np.empty((n, 2)), "phi": np.empty((n, 2))}
    e_star = np.sqrt(p_star**2 + MUON_MASS**2)
    for i, sign in enumerate((1.0, -1.0)):
        p = sign * p_star[:, None] * d
        bp = np.sum(beta * p, axis=1)
        coef = (gamma - 1) * bp / np.where(b2 > 0, b2, 1) + gamma * e_star
        lab = p + coef[:, None] * beta
        pt, eta, phi = _polar(lab[:, 0], lab[:, 1], lab[:, 2])
        out["pt"][:, i], out["eta"][:, i], out["phi"][:, i] = pt, eta, phi
    return out


def generate_events(n: int, seed: int, first_event: int = 1, *, mc: bool = True) -> dict[str, Any]:
    """``n`` events of NanoAOD-layout columns (awkward records for collections); simulation
    has generator weights (``genWeight``: mostly positive, a few percent negative, as at NLO)."""
    rng = np.random.default_rng(seed)
    z = _z_decays(rng, n)
    has_z = rng.random(n) < 0.7
    extra = rng.poisson(0.3, n)
    n_mu = np.where(has_z, 2, 0) + extra
    pt, eta, phi, charge = [], [], [], []
    for i in range(n):
        p = list(z["pt"][i]) if has_z[i] else []
        e = list(z["eta"][i]) if has_z[i] else []
        f = list(z["phi"][i]) if has_z[i] else []
        q = [1, -1] if has_z[i] else []
        for _ in range(extra[i]):
            p.append(3.0 + rng.exponential(6.0))
            e.append(rng.uniform(-2.4, 2.4))
            f.append(rng.uniform(-np.pi, np.pi))
            q.append(int(rng.choice([-1, 1])))
        pt.append(p)
        eta.append(e)
        phi.append(f)
        charge.append(q)
    counts = n_mu.astype(np.int64)

    def jag(values: list[list[Any]], dtype: Any) -> Any:
        flat = np.asarray([v for row in values for v in row], dtype=dtype)
        return ak.unflatten(flat, counts)

    muon = ak.zip(
        {
            "pt": jag(pt, np.float32),
            "eta": jag(eta, np.float32),
            "phi": jag(phi, np.float32),
            "mass": ak.values_astype(jag(pt, np.float32) * 0 + MUON_MASS, np.float32),
            "charge": jag(charge, np.int32),
            "pfRelIso04_all": jag([[abs(rng.normal(0, 0.1)) for _ in r] for r in pt], np.float32),
            "tightId": jag([[bool(rng.random() < 0.9) for _ in r] for r in pt], np.bool_),
        }
    )
    n_jet = rng.poisson(3.0, n)
    total = int(n_jet.sum())
    jet = ak.zip(
        {
            "pt": ak.unflatten((15.0 + rng.exponential(35.0, total)).astype(np.float32), n_jet),
            "eta": ak.unflatten(rng.uniform(-4.7, 4.7, total).astype(np.float32), n_jet),
            "phi": ak.unflatten(rng.uniform(-np.pi, np.pi, total).astype(np.float32), n_jet),
            "mass": ak.unflatten(rng.exponential(8.0, total).astype(np.float32), n_jet),
            "btagDeepFlavB": ak.unflatten(rng.random(total).astype(np.float32), n_jet),
            "jetId": ak.unflatten(rng.integers(0, 7, total).astype(np.int32), n_jet),
        }
    )
    weights = {}
    if mc:
        sign = np.where(rng.random(n) < 0.03, -1.0, 1.0)
        weights["genWeight"] = (sign * rng.normal(1.0, 0.05, n)).astype(np.float32)
    return {
        **weights,
        "run": np.full(n, 1, dtype=np.uint32),
        "luminosityBlock": (1 + np.arange(first_event, first_event + n) // 1000).astype(np.uint32),
        "event": np.arange(first_event, first_event + n, dtype=np.uint64),
        "Muon": muon,
        "Jet": jet,
        "MET_pt": rng.exponential(25.0, n).astype(np.float32),
        "MET_phi": rng.uniform(-np.pi, np.pi, n).astype(np.float32),
        "PV_npvs": rng.poisson(30, n).astype(np.int32),
    }


def write_nanoaod(
    path: str | Path, n_events: int, seed: int, basket_events: int = 10_000, *, mc: bool = True
) -> None:
    """Write a NanoAOD-layout ROOT file of ``n_events`` generated events; simulation also
    gets a ``Runs`` tree with the file's sum of generator weights (``genEventSumw``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.root")
    sumw = sumw2 = 0.0
    with uproot.recreate(tmp) as f:
        tree = None
        for start in range(0, n_events, basket_events):
            n = min(basket_events, n_events - start)
            data = generate_events(n, seed * 1_000_003 + start, first_event=start + 1, mc=mc)
            if tree is None:
                types = {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in data.items()}
                tree = f.mktree("Events", types)
            tree.extend(data)
            if mc:
                w = data["genWeight"].astype(np.float64)
                sumw, sumw2 = sumw + float(w.sum()), sumw2 + float((w * w).sum())
        if tree is None:  # zero events: an empty tree with the full layout
            data = generate_events(1, seed, mc=mc)
            f.mktree("Events", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in data.items()})
        if mc:
            f["Runs"] = {
                "run": np.array([1], dtype=np.uint32),
                "genEventCount": np.array([n_events], dtype=np.int64),
                "genEventSumw": np.array([sumw]),
                "genEventSumw2": np.array([sumw2]),
            }
    tmp.replace(path)


LUMI = 1000.0
"""The demo's luminosity at scale 1, in pb^-1."""
# name: (files, events per file at scale 1, metadata). The cross sections make the
# normalised simulation match the pseudo-data (xsec x lumi ~ the selected events).
DEMO_DATASETS: dict[str, tuple[int, int, dict[str, Any]]] = {
    "DYJetsToLL": (3, 30_000, {"xsec": 72.0, "is_data": False}),
    "ZToMuMu_extra": (2, 20_000, {"xsec": 18.0, "is_data": False}),
    "SingleMuon": (2, 45_000, {"is_data": True}),
}


STAT = """\
# a statistical model of the dimuon mass around the Z peak (needs coffea_smk[stat]):
# results/stat/zmumu/ holds a pyhf workspace, a CMS Combine datacard with its
# shapes, and fit.json (best-fit signal strength, 95% CL upper limits)
stat:
  zmumu:
    histogram: mass
    range: [70, 110]
    rebin: 4
    signal: [ZToMuMu_extra]
    backgrounds: [DYJetsToLL]
    normalisation:
      lumi: 1.025
      xsec_dy: {DYJetsToLL: 1.05}
"""
"""The demo's ``stat:`` section (data: SingleMuon, the data dataset)."""


def prepare(directory: str | Path, scale: float = 1.0, *, stat: bool | None = None) -> Path:
    """Write the demo's data, fileset, processor and ``analysis.yaml`` into ``directory``.

    Args:
        directory: Where.
        scale: Events per file relative to the default.
        stat: Add the ``stat:`` section; default: when pyhf is installed (``coffea_smk[stat]``).
    """
    directory = Path(directory).resolve()
    data = directory / "data"
    fileset: dict[str, Any] = {}
    seed = 1
    for name, (n_files, n_events, metadata) in DEMO_DATASETS.items():
        files = []
        for i in range(n_files):
            path = data / f"{name}_v2_{i}.root"  # v2: generator weights and a Runs tree
            if not path.exists():
                write_nanoaod(path, max(1, int(n_events * scale)), seed, mc=not metadata["is_data"])
            seed += 1
            files.append(str(path.relative_to(directory)))
        md = {**metadata, **({"lumi": LUMI * scale} if metadata["is_data"] else {})}
        fileset[name] = {"files": {f: "Events" for f in files}, "metadata": md}
    (directory / "fileset.json").write_text(json.dumps(fileset, indent=2) + "\n")
    shutil.copyfile(Path(__file__).parent / "examples" / "dimuon.py", directory / "dimuon.py")
    (directory / "analysis.yaml").write_text(
        "# The demo analysis: see `coffea-smk run --help` and README.md\n"
        "fileset: fileset.json\n"
        "processor: dimuon:DimuonProcessor\n"
        "outdir: results\n"
        "chunksize: 10000\n"
        "events_per_job: 40000\n"
        "# plots of every histogram, per dataset and stacked (simulation normalised to the\n"
        "# luminosity of the data sets' metadata), and the report: results/report.html\n"
        "plots:\n"
        "  yscale: both\n"
        + (STAT if (importlib.util.find_spec("pyhf") is not None if stat is None else stat) else "")
    )
    return directory


def _taken_on_records(result_path: Path, meta: dict[str, Any]) -> list[str]:
    """Remote files identified by their records (their storage did not answer): when the result
    was made (its meta), and at the last run's start (``cache/remote/last-run.json``)."""
    from coffea_smk.smk.remote import RUN_RECORD, RunRecord, describe_down  # noqa: PLC0415

    lines = [
        f"storage unreachable when this result was made: {t['host']}: {t['files']} files taken on "
        f"their records ({t['error']})"
        for t in meta.get("taken_on_records") or ()
    ]
    for outdir in (result_path.parent, result_path.parent.parent):  # result.npz, or global/<key>.npz
        last = RunRecord.read(outdir / "cache" / "remote" / RUN_RECORD)
        if last is not None:
            if last.down and last.analysis_key == meta.get("analysis_key"):
                lines.append(
                    f"last run (started {last.started}): storage unreachable: {describe_down(last.down)}"
                )
            break
    return lines


def skim_lines(result: Any, outdir: Path, config: dict[str, Any]) -> list[str]:
    """A line per skim of a result: files, rows, bytes, the fraction of events kept, the format."""
    lines = []
    settings = config.get("skims") or {}
    for at, skim in skims_in(result).items():
        name = skim_name(at)
        size = sum(f.bytes for f in skim.files)
        kept = f"{100 * skim.rows / skim.events:.3g}%" if skim.events else "-"
        how = f"{settings.get('format', 'parquet')}, {settings.get('compression', 'zstd')}"
        lines.append(
            f"skim {name}: {len(skim.files)} files, {skim.rows} of {skim.events} events kept ({kept}), "
            f"{size / 1e6:.3g} MB ({how}; {size / max(skim.rows, 1):.0f} bytes per event)"
        )
        manifest = outdir / "skims" / str(name) / "fileset.json"
        if manifest.exists():
            lines.append(f"  fileset of the next analysis: {manifest}")
    return lines


def summary(result_path: str | Path, *, allow_pickle: bool = False) -> str:
    """A short human-readable summary of a global or per-dataset result, with its origin."""
    lines = [f"result: {result_path}"]
    try:
        stored = load_stored(result_path, allow_pickle=allow_pickle)
    except PickledResultError as err:  # (allow_pickle: true) what the meta says is still worth showing
        stored = Stored(None, load_meta(result_path))
        lines.append(f"(the result itself is not shown: {err})")
    meta = stored.meta
    config = meta.get("config") or {}
    if meta.get("analysis_key"):
        lines.append(
            f"analysis key: {meta['analysis_key']} (coffea_smk {meta.get('coffea_smk_version', '?')}; "
            f"config {meta.get('configfile') or '(none)'})"
        )
        settings = ", ".join(
            f"{k} {config[k]!r}"
            for k in ("processor", "fileset", "version", "schema", "chunksize", "events_per_job")
            if k in config
        )
        lines.append(f"config: {settings}")
    lines.append(
        f"events processed: {meta['events']} of {meta['events_expected']} expected"
        f" ({'complete' if meta['complete'] else 'INCOMPLETE'})"
    )
    if meta.get("dataset") is not None:
        lines.append(
            f"dataset {meta['dataset']!r}: {meta['files']} files, metadata {meta.get('metadata', {})}"
        )
    for name, d in meta.get("datasets", {}).items():
        lines.append(f"  {name}: {d['events']} events, {d['files']} files -> {d['path']}")
    lines.extend(_taken_on_records(Path(result_path), meta))
    result = stored.result
    if isinstance(result, dict) and isinstance(result.get("cutflow"), dict):
        lines.append("cutflow:")
        for ds, flow in result["cutflow"].items():
            lines.append(f"  {ds}: " + ", ".join(f"{k} {v}" for k, v in flow.items()))
    if isinstance(result, dict):
        hists = [k for k, v in result.items() if hasattr(v, "axes")]
        if hists:
            lines.append(f"histograms ({', '.join(hists)}): coffea_smk.load({str(result_path)!r})")
    folder = Path(result_path).parent
    lines.extend(skim_lines(result, folder, config))
    if (folder / "plots" / "latest").is_dir():
        lines.append(f"plots: {folder / 'plots' / 'latest'}/")
    for link in sorted(p for p in folder.glob("stat/*") if p.is_symlink()):  # the published models
        fit = link / "fit.json"
        if not fit.is_file():
            continue
        record = json.loads(fit.read_text())
        best, limit = record["bestfit"], record["upper_limit"]
        observed, expected = (
            "above the bound" if x is None else f"{x:.3g}" for x in (limit["observed"], limit["expected"])
        )
        lines.append(
            f"stat {record['model']}: mu = {best['mu']:.3g} +- {best['uncertainty']:.2g}, 95% CL upper "
            f"limit {observed} (expected {expected}); workspace, datacard, fit: {fit.parent}/"
        )
    if (folder / "report.html").is_file():
        lines.append(f"report: {(folder / 'report.html').absolute().as_uri()}")
    return "\n".join(lines)
