"""coffea_smk against ROOT's RDataFrame: the same dimuon + jet HT analysis on the same files.

The analysis is ``compare.py``'s processor (``dimuon_ht.py``): the opposite-sign dimuon
mass (120 bins, 0-150 GeV, every opposite-sign pair of every event) and the jet HT (100 bins,
0-1000 GeV, jets with pT > 30 GeV and |eta| < 2.4), per dataset; plus an event cutflow
(events; at least two muons; an opposite-sign pair; a jet passing the HT cuts), so that the
two can be checked count for count. It is written twice:

- for RDataFrame: C++ JIT through ``Define``/``Filter`` strings, ``ROOT.EnableImplicitMT(2)``,
  one graph per dataset run together (``RunGraphs``), in a fresh Python process per round;
- for coffea_smk: the class ``DimuonHTCutflow`` below, through its cold run
  (``python -m coffea_smk run analysis.yaml --cores 2``, local profile, fresh outdir and cache).

The files are those ``compare.py`` uses (``replicate.scaled_set``: built once under DATA). The
two alternate, A/B, for ``--rounds`` rounds each; printed: wall times, events/s, the ratio
(RDataFrame time / coffea_smk time: > 1 means coffea_smk is faster) with RDataFrame timed as
a whole process and from the graph's construction on (ROOT's import left out), the cutflows
(exit status 1 if they differ) and whether the histograms agree bin for bin.

    python benchmarks/rdataframe.py DATA [--events 2000000] [--files 8] [--rounds 2]

Figures, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# the event cutflow: (name, RDataFrame filter), applied in turn
CUTS = (
    ("two muons", "nMuon >= 2"),
    ("an opposite-sign pair", "os_mass.size() > 0"),
    ("a jet pT > 30, |eta| < 2.4", "Sum(good_jet) > 0"),
)
CPP = r"""
template <typename F, typename I>
ROOT::RVecD bench_os_mass(const ROOT::RVec<F>& pt, const ROOT::RVec<F>& eta, const ROOT::RVec<F>& phi,
                          const ROOT::RVec<F>& m, const ROOT::RVec<I>& q) {
    ROOT::RVecD out;
    const auto n = pt.size();
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = i + 1; j < n; ++j)
            if (q[i] != q[j])
                out.push_back((ROOT::Math::PtEtaPhiMVector(pt[i], eta[i], phi[i], m[i]) +
                               ROOT::Math::PtEtaPhiMVector(pt[j], eta[j], phi[j], m[j])).M());
    return out;
}
"""


class DimuonHTCutflow:
    """``dimuon_ht.DimuonHT`` plus the event cutflow of ``CUTS`` (for coffea_smk)."""

    def process(self, events: Any) -> dict[str, Any]:
        import awkward as ak
        import hist

        dataset = events.metadata["dataset"]
        mu = events.Muon
        mu1, mu2 = ak.unzip(ak.combinations(mu, 2))
        dimuon = (mu1 + mu2)[mu1.charge != mu2.charge]
        jets = events.Jet
        good = (jets.pt > 30) & (abs(jets.eta) < 2.4)
        ht = ak.sum(jets.pt[good], axis=1)
        ds = hist.axis.StrCategory([], growth=True, name="dataset")
        out = {
            "mass": hist.Hist(ds, hist.axis.Regular(120, 0, 150, name="mass")),
            "ht": hist.Hist(ds, hist.axis.Regular(100, 0, 1000, name="ht")),
        }
        out["mass"].fill(dataset=dataset, mass=ak.flatten(dimuon.mass))
        out["ht"].fill(dataset=dataset, ht=ht)
        passing = [ak.num(mu) >= 2, ak.num(dimuon) > 0, ak.any(good, axis=1)]
        flow, mask = {"events": len(events)}, None
        for (name, _), cut in zip(CUTS, passing, strict=True):
            mask = cut if mask is None else mask & cut
            flow[name] = int(ak.sum(mask))
        flow["opposite-sign pairs"] = int(ak.sum(ak.num(dimuon)))
        out["cutflow"] = {dataset: flow}
        return out

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


def rdf_worker(fileset_json: Path, out_json: Path) -> None:
    """One RDataFrame round in this process; writes its seconds, cutflow and histograms."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import ROOT

    ROOT.EnableImplicitMT(2)
    fileset: dict[str, list[str]] = json.loads(fileset_json.read_text())
    t0 = time.perf_counter()
    ROOT.gInterpreter.Declare(CPP)
    booked: dict[str, dict[str, Any]] = {}
    for ds, files in fileset.items():
        df = (
            ROOT.RDataFrame("Events", files)
            .Define("os_mass", "bench_os_mass(Muon_pt, Muon_eta, Muon_phi, Muon_mass, Muon_charge)")
            .Define("good_jet", "Jet_pt > 30 && abs(Jet_eta) < 2.4")
            .Define("ht", "Sum(Jet_pt[good_jet])")
            .Define("n_os", "os_mass.size()")
        )
        b: dict[str, Any] = {
            "mass": df.Histo1D(("mass_" + ds, "", 120, 0.0, 150.0), "os_mass"),
            "ht": df.Histo1D(("ht_" + ds, "", 100, 0.0, 1000.0), "ht"),
            "events": df.Count(),
            "opposite-sign pairs": df.Sum("n_os"),
        }
        node = df
        for name, expr in CUTS:
            node = node.Filter(expr, name)
            b[name] = node.Count()
        booked[ds] = b
    ROOT.RDF.RunGraphs([r for b in booked.values() for r in b.values()])
    seconds = time.perf_counter() - t0
    flows: dict[str, dict[str, int]] = {}
    hists: dict[str, dict[str, list[float]]] = {}
    for ds, b in booked.items():
        hists[ds] = {}
        for key in ("mass", "ht"):
            h = b.pop(key).GetValue()
            hists[ds][key] = [h.GetBinContent(i) for i in range(h.GetNbinsX() + 2)]
        flows[ds] = {name: int(r.GetValue()) for name, r in b.items()}
    out_json.write_text(json.dumps({"seconds": seconds, "cutflow": flows, "hists": hists}))


def run_rdf(work: Path, fileset: dict[str, list[str]]) -> tuple[float, dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "fileset.json").write_text(json.dumps(fileset))
    out = work / "out.json"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "_rdf", str(work / "fileset.json"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"RDataFrame run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return dt, json.loads(out.read_text())


def run_smk(work: Path, fileset: dict[str, list[str]], per_job: int | None) -> tuple[float, dict[str, Any]]:
    """A cold ``coffea-smk run`` in a fresh ``work`` (no outdir, no cache); its result."""
    import coffea_smk

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "fileset.json").write_text(
        json.dumps({ds: {"files": dict.fromkeys(files, "Events")} for ds, files in fileset.items()})
    )
    config: dict[str, Any] = {
        "fileset": str(work / "fileset.json"),
        "processor": "rdataframe:DimuonHTCutflow",
        "basedir": str(HERE),
    }
    if per_job:
        config["events_per_job"] = per_job
    (work / "analysis.yaml").write_text(json.dumps(config))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "--cores", "2"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"coffea-smk run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return dt, coffea_smk.load(work / "results" / "result.npz")


def same_hists(smk: dict[str, Any], rdf: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Per histogram, the largest difference of a bin (flow bins included) over datasets."""
    import numpy as np

    worst: dict[str, float] = {}
    for ds, hs in rdf.items():
        for key, contents in hs.items():
            ours = smk[key][{"dataset": ds}].view(flow=True)
            diff = float(np.max(np.abs(np.asarray(ours) - np.asarray(contents))))
            worst[key] = max(worst.get(key, 0.0), diff)
    return worst


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_rdf":
        rdf_worker(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="where the built files are cached")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each, alternating")
    parser.add_argument(
        "--events-per-job", type=int, default=None, help="coffea_smk work-unit size (default: its own)"
    )
    parser.add_argument("--work", type=Path, default=None, help="work directory (default DATA/work_rdf)")
    a = parser.parse_args()

    sys.path.insert(0, str(HERE))
    import replicate

    files, _ = replicate.scaled_set(a.data, a.events, a.files)
    fileset: dict[str, list[str]] = {}
    for name, path, _ in files:
        fileset.setdefault(name, []).append(str(path))
    n_events = sum(n for _, _, n in files)
    size = sum(p.stat().st_size for _, p, _ in files) / 1e6
    print(f"dataset: {len(files)} files, {n_events} events, {size:.0f} MB; 2 cores", flush=True)

    work = (a.work or a.data / "work_rdf").resolve()
    rdf_wall: list[float] = []
    rdf_inside: list[float] = []
    smk_wall: list[float] = []
    rdf_out: dict[str, Any] = {}
    smk_out: dict[str, Any] = {}
    for r in range(a.rounds):
        dt, rdf_out = run_rdf(work / "rdf", fileset)
        rdf_wall.append(dt)
        rdf_inside.append(rdf_out["seconds"])
        print(
            f"round {r + 1}: RDataFrame {dt:.2f} s whole process, {rdf_out['seconds']:.2f} s "
            f"from the graph's construction",
            flush=True,
        )
        dt, smk_out = run_smk(work / "smk", fileset, a.events_per_job)
        smk_wall.append(dt)
        print(f"round {r + 1}: coffea_smk cold run {dt:.2f} s", flush=True)

    t_rdf, t_in, t_smk = min(rdf_wall), min(rdf_inside), min(smk_wall)
    print()
    print(f"{'best of ' + str(a.rounds):62} {'wall s':>8} {'events/s':>12}")
    for label, t in (
        ("RDataFrame, IMT(2), whole process (python + import ROOT + run)", t_rdf),
        ("RDataFrame, IMT(2), from the graph's construction (JIT + loop)", t_in),
        ("coffea_smk cold run, --cores 2 (local profile)", t_smk),
    ):
        print(f"{label:62} {t:8.2f} {n_events / t:12,.0f}")
    print(
        f"ratio RDataFrame / coffea_smk (> 1: coffea_smk faster): {t_rdf / t_smk:.2f} (whole process), "
        f"{t_in / t_smk:.2f} (RDataFrame from the graph's construction)"
    )

    print()
    smk_flow = {ds: smk_out["cutflow"][ds] for ds in fileset}
    match = smk_flow == rdf_out["cutflow"]
    names = ["events", *(n for n, _ in CUTS), "opposite-sign pairs"]
    print(f"{'cutflow':30} " + " ".join(f"{ds + ' RDF':>14} {ds + ' smk':>14}" for ds in fileset))
    for name in names:
        row = " ".join(f"{rdf_out['cutflow'][ds][name]:14,} {smk_flow[ds][name]:14,}" for ds in fileset)
        print(f"{name:30} {row}")
    worst = same_hists(smk_out, rdf_out["hists"])
    print(f"cutflows equal: {match}")
    print("histograms, largest bin difference: " + ", ".join(f"{k} {v:g}" for k, v in worst.items()))
    if not match:
        sys.exit(1)


if __name__ == "__main__":
    main()
