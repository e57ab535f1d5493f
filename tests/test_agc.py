"""The AGC's ttbar analysis (tests/processors/agc_ttbar.py) through the workflow, on coffea's
events and on coffea_smk's own, equal bin for bin to coffea's Runner on the same files.

On the real samples (looser cuts of the same shape: the real ttbar events are mostly
hadronic) and on lepton+jets replicas (tests/replicas.py: real ttbar jets, real Drell-Yan
leptons) with the AGC's own cuts, several chunks per file, several files per
work unit and several units per dataset, automatic prefetch on and off.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
from conftest import PROCESSORS, Workflow, assert_same_result, run_coffea

pytest.importorskip(
    "coffea", reason="the AGC test analysis is a coffea processor: install coffea_smk[coffea]"
)

import coffea_smk
from coffea_smk.engine.records import Plan

sys.path.insert(0, str(PROCESSORS))
import agc_ttbar

sys.path.remove(str(PROCESSORS))

MC_VARIATIONS = {"nominal", *agc_ttbar.PT_VARIATIONS, *agc_ttbar.BTAG_VARIATIONS}
LUMI = 100.0  # /pb: weights of order one, well inside the exact range of the rounded weights
PER_FILE = 20_000
CHUNKSIZE = 5_000  # 4 chunks a file
EVENTS_PER_JOB = 40_000  # ttbar's 3 files in 2 units: files 0 and 1, file 2


def cells(h: Any) -> dict[str, dict[str, dict[str, tuple[list[float], list[float]]]]]:
    """A histogram as {region: {process: {variation: (values, variances)}}}, flow bins included:
    equal whatever order the growing categories came in."""
    out: dict[str, dict[str, dict[str, tuple[list[float], list[float]]]]] = {}
    for region in h.axes["region"]:
        for process in h.axes["process"]:
            for variation in h.axes["variation"]:
                cell = h[{"region": region, "process": process, "variation": variation}]
                values = cell.values(flow=True).tolist(), cell.variances(flow=True).tolist()
                out.setdefault(region, {}).setdefault(process, {})[variation] = values
    return out


def assert_same_analysis(ours: Any, theirs: Any) -> None:
    assert set(ours) == {"hist", "counts"}
    assert ours["hist"].axes["observable"] == theirs["hist"].axes["observable"]
    assert_same_result(cells(ours["hist"]), cells(theirs["hist"]), "hist")
    assert_same_result(ours["counts"], theirs["counts"], "counts")


def plans(root: Path) -> dict[str, Plan]:
    found = [Plan.model_validate_json(p.read_text()) for p in root.glob("results/**/plan/*/*.json")]
    return {p.dataset: p for p in found}


# ---- the analysis itself --------------------------------------------------------------


def test_smearing_is_deterministic_per_jet_and_normal(nanoaod: Path) -> None:
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    path = {str(nanoaod / "nano_tt_v15.root"): "Events"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        whole = NanoEventsFactory.from_root(path, schemaclass=NanoAODSchema, mode="virtual").events()
        part = NanoEventsFactory.from_root(
            path, schemaclass=NanoAODSchema, mode="virtual", entry_start=150, entry_stop=200
        ).events()
    factors = agc_ttbar.smear_factors(whole, whole.Jet)
    # a chunk draws what the whole file draws for the same jets: no state, no seed to pass
    assert ak.to_list(agc_ttbar.smear_factors(part, part.Jet)) == ak.to_list(factors[150:])
    flat = ak.to_numpy(ak.flatten(factors))
    assert len(np.unique(flat)) == len(flat) > 1500
    assert abs(flat.mean() - 1.0) < 0.005 and abs(flat.std() - 0.05) < 0.005


def test_jet_id_from_fractions() -> None:
    # the Run 3 criteria per |eta| range (v15 has no Jet_jetId; the replicas' is made with these)
    jets = ak.zip(
        {
            "eta": [0.5, 0.5, 0.5, 2.65, 2.9, 3.5],
            "neHEF": [0.5, 0.995, 0.5, 0.5, 0.5, 0.5],
            "neEmEF": [0.5, 0.5, 0.5, 0.995, 0.5, 0.3],
            "chHEF": [0.3, 0.3, 0.3, 0.0, 0.0, 0.0],
            "chEmEF": [0.1, 0.1, 0.85, 0.1, 0.9, 0.9],
            "muEF": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
            "chMultiplicity": [3, 3, 3, 0, 0, 0],
            "neMultiplicity": [2, 2, 2, 2, 2, 3],
        }
    )
    assert ak.to_list(agc_ttbar.tight_from_fractions(jets)) == [True, False, True, False, True, True]
    assert ak.to_list(agc_ttbar.tight_lepton_veto_from_fractions(jets)) == [
        True, False, False, False, True, True,
    ]  # fmt: skip


# ---- the real samples -------------------------------------------------------------------


def real_fileset(nanoaod: Path) -> dict[str, Any]:
    def mc(process: str, xsec: float, nevts: int) -> dict[str, Any]:
        return {"process": process, "is_mc": True, "xsec": xsec, "lumi": 1.0, "nevts": nevts}

    return {
        "ttbar": {
            "files": {str(nanoaod / "nano_tt_v15.root"): "Events"},
            "metadata": mc("ttbar", 200.0, 200),
        },
        "dy": {"files": {str(nanoaod / "nano_dy.root"): "Events"}, "metadata": mc("dy", 60.0, 40)},
        "data": {
            "files": {str(nanoaod / "nano_dimuon.root"): "Events"},
            "metadata": {"process": "data", "is_mc": False},
        },
    }


@pytest.fixture(scope="module")
def real_reference(nanoaod: Path) -> Any:
    return run_coffea(real_fileset(nanoaod), agc_ttbar.TTbarCoffeaLoose(), 50)


@pytest.mark.slow
@pytest.mark.parametrize("events", ["coffea", "own"])
def test_real_samples_equal_coffea(
    workflow: Workflow, nanoaod: Path, real_reference: Any, events: str
) -> None:
    processor = {"coffea": "agc_ttbar:TTbarCoffeaLoose", "own": "agc_ttbar:TTbarLoose"}[events]
    workflow.write({"processor": processor, "chunksize": 50, "events_per_job": 100}, real_fileset(nanoaod))
    workflow.run()
    ours = coffea_smk.load(workflow.root / "results" / "result.npz")
    assert_same_analysis(ours, real_reference)
    # what the 280 real events give with the loose cuts
    assert ours["counts"] == {
        "ttbar": {"events": 200, "4j1b": 1, "4j2b": 1},
        "dy": {"events": 40, "4j1b": 0, "4j2b": 0},
        "data": {"events": 40, "4j1b": 1, "4j2b": 0},
    }
    h = ours["hist"]
    assert set(h.axes["variation"]) == MC_VARIATIONS and set(h.axes["process"]) == {"ttbar", "data"}
    assert h[{"process": "data", "variation": "nominal"}].sum().value == 1.0
    assert len(plans(workflow.root)["ttbar"].units) == 2


# ---- the replicas -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def replica_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from replicas import lepton_plus_jets

    data = tmp_path_factory.mktemp("agc-replicas")
    ttbar = lepton_plus_jets([(data / f"ttbar_{i}.root", PER_FILE, 1 + i) for i in range(3)])
    wjets = lepton_plus_jets([(data / "wjets_0.root", PER_FILE, 11)])
    return {"ttbar": ttbar, "wjets": wjets}


def replica_fileset(files: dict[str, list[Path]], nanoaod: Path) -> dict[str, Any]:
    # cross sections of the right order, not the AGC's: the test needs weights near one
    xsec = {"ttbar": 729.84, "wjets": 150.0}
    fileset: dict[str, Any] = {
        name: {
            "files": {str(p): "Events" for p in paths},
            "metadata": {
                "process": name,
                "is_mc": True,
                "xsec": xsec[name],
                "lumi": LUMI,
                "nevts": PER_FILE * len(paths),
            },
        }
        for name, paths in files.items()
    }
    fileset["data"] = {
        "files": {str(nanoaod / "nano_dimuon.root"): "Events"},
        "metadata": {"process": "data", "is_mc": False},
    }
    return fileset


@pytest.fixture(scope="module")
def replica_reference(replica_files: dict[str, list[Path]], nanoaod: Path) -> Iterator[Any]:
    reference = run_coffea(replica_fileset(replica_files, nanoaod), agc_ttbar.TTbarCoffea(), CHUNKSIZE)
    yield reference


def assert_filled(result: Any) -> None:
    """Every region of every simulated process has entries in every variation, spread over bins."""
    h = result["hist"]
    assert set(h.axes["variation"]) == MC_VARIATIONS
    assert {"ttbar", "wjets"} <= set(h.axes["process"])
    for region in ("4j1b", "4j2b"):
        for process in ("ttbar", "wjets"):
            nominal = h[{"region": region, "process": process, "variation": "nominal"}].values()
            for variation in MC_VARIATIONS:
                values = h[{"region": region, "process": process, "variation": variation}].values()
                assert np.count_nonzero(values) >= 8, (region, process, variation)
                if variation != "nominal":
                    assert not np.array_equal(values, nominal), (region, process, variation)
    counts = result["counts"]
    assert {d: c["events"] for d, c in counts.items()} == {
        "ttbar": 3 * PER_FILE,
        "wjets": PER_FILE,
        "data": 40,
    }
    assert all(counts[d][r] > 500 for d in ("ttbar", "wjets") for r in ("4j1b", "4j2b"))


@pytest.mark.slow
@pytest.mark.parametrize("prefetch", [False, True], ids=["no-prefetch", "prefetch"])
@pytest.mark.parametrize("events", ["coffea", "own"])
def test_replicas_equal_coffea(
    workflow: Workflow,
    nanoaod: Path,
    replica_files: dict[str, list[Path]],
    replica_reference: Any,
    events: str,
    prefetch: bool,
) -> None:
    processor = {"coffea": "agc_ttbar:TTbarCoffea", "own": "agc_ttbar:TTbar"}[events]
    config = {
        "processor": processor,
        "chunksize": CHUNKSIZE,
        "events_per_job": EVENTS_PER_JOB,
        "merge_fanin": 2,
        "prefetch": prefetch,
    }
    workflow.write(config, replica_fileset(replica_files, nanoaod))
    workflow.run()
    ours = coffea_smk.load(workflow.root / "results" / "result.npz")
    assert_filled(replica_reference)
    assert_same_analysis(ours, replica_reference)

    ttbar = plans(workflow.root)["ttbar"]
    assert [sorted({c.file for c in u.chunks}) for u in ttbar.units] == [[0, 1], [2]]
    assert [len(u.chunks) for u in ttbar.units] == [8, 4]  # 4 chunks a file
    meta = coffea_smk.load_meta(workflow.root / "results" / "result.npz")
    assert meta["complete"] and meta["events"] == 4 * PER_FILE + 40
    prefetched = sum(d["totals"]["prefetched"] for d in meta["datasets"].values())
    assert (prefetched > 0) == prefetch
