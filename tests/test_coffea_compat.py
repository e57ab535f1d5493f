"""coffea processors run unchanged: coffea's NanoEvents, equal results to coffea's own Runner."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import awkward as ak
import pytest
from conftest import PROCESSORS, Workflow, assert_same_result, run_coffea

pytest.importorskip(
    "coffea", reason="coffea cannot be imported: install coffea_smk[coffea] to test running coffea processors"
)

import coffea_smk
from coffea_smk import buffers
from coffea_smk.engine.reading import ChunkRun, EventsOptions, UnitReader
from coffea_smk.engine.records import PlanFile
from coffea_smk.events.coffea import SchemaError, schema_class
from coffea_smk.io.files import open_file, tree_of
from coffea_smk.spec.processor import Processor

sys.path.insert(0, str(PROCESSORS))
from coffea_test_processors import MatchedJets

sys.path.remove(str(PROCESSORS))


def usermeta_fileset(nanoaod: Path) -> dict[str, Any]:
    # as in coffea's own tests of NanoEventsProcessor: user metadata reaches events.metadata
    return {
        "ZJets": {
            "files": {str(nanoaod / "nano_dy.root"): "Events"},
            "metadata": {"checkusermeta": True, "someusermeta": "hello"},
        },
        "Data": {
            "files": {str(nanoaod / "nano_dimuon.root"): "Events"},
            "metadata": {"checkusermeta": True, "someusermeta2": "world"},
        },
    }


@pytest.mark.slow
def test_coffea_nanoevents_processor_through_the_workflow(workflow: Workflow, nanoaod: Path) -> None:
    from coffea.processor.test_items import NanoEventsProcessor

    fileset = usermeta_fileset(nanoaod)
    config = {"processor": "coffea_test_processors:nanoevents_virtual", "chunksize": 10, "events_per_job": 40}
    workflow.write(config, fileset)
    workflow.run()
    result = workflow.root / "results" / "result.npz"
    ours = coffea_smk.load(result)
    # the numbers coffea's test suite asserts for this processor on these files
    assert ours["cutflow"] == {"ZJets_pt": 18, "ZJets_mass": 6, "Data_pt": 84, "Data_mass": 66}
    theirs = run_coffea(fileset, NanoEventsProcessor(mode="virtual"), 10)
    assert_same_result(ours, theirs)

    # metrics are kept with the results and rolled up
    meta = coffea_smk.load_meta(result)
    assert meta["totals"]["events"] == 80 and meta["totals"]["chunks"] == 8
    assert all(d["totals"]["prefetched"] > 0 for d in meta["datasets"].values())  # automatic prefetch
    assert {"nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass"} <= set(meta["columns"])
    assert meta["datasets"]["ZJets"]["rates"]["events_per_s"] > 0
    table = subprocess.run(
        [sys.executable, "-m", "coffea_smk", "metrics", str(result)],
        text=True,
        capture_output=True,
        check=True,
    ).stdout
    assert "ZJets" in table and "Data" in table and "(all)" in table

    # reading settings do not change results: changing them redoes nothing
    workflow.write({**config, "prefetch": False, "prefetch_threads": 3}, fileset)
    workflow.reset_openlog()
    proc = workflow.run()
    assert "Nothing to be done" in proc.stdout + proc.stderr and workflow.opened() == []


def test_cross_references_equal_coffea_with_prefetch(nanoaod: Path, tmp_path: Path) -> None:
    from test_buffers import make_plans, run_all

    processor = MatchedJets()
    path = nanoaod / "nano_dimuon.root"  # 84 muons: cross-references to exercise
    fileset = {path.stem: {"files": {str(path): "Events"}}}
    theirs = run_coffea(fileset, processor, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # coffea's schema warns about these files
        ours, chunks = run_all(
            make_plans([path], tmp_path, 10, 40),
            processor.process,
            EventsOptions(schema="coffea", prefetch=True, prefetch_threads=2),
        )
    assert_same_result(ours, theirs)
    assert ours["counts"]["nano_dimuon"]["muons"] == 84
    assert sum(c["prefetched"] for c in chunks) > 0 and all(c["prefetch_errors"] == 0 for c in chunks)
    assert {"Muon_jetIdx", "nJet", "Jet_pt"} <= {col for c in chunks for col in c["columns"]}


@contextmanager
def coffea_chunk(path: Path, options: EventsOptions, wants: bool = True) -> Iterator[ChunkRun]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with UnitReader(options, wants) as unit:
            rootfile = open_file(str(path))
            tree = tree_of(rootfile, str(path), "Events")
            n = tree.num_entries
            file = PlanFile(
                path=str(path), treename="Events", key="", uuid="", entries=n, size=None, mtime_ns=None
            )
            with rootfile, unit.open(rootfile, file, [(0, n)]) as reader:
                with reader.chunk(0, n, {"dataset": "d", "filename": str(path)}) as chunk:
                    yield chunk


def test_each_file_is_opened_once_per_work_unit(
    nanoaod: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uproot
    from coffea.processor.test_items import NanoEventsProcessor
    from test_buffers import make_plans, run_all

    opened: list[str] = []
    real_open = uproot.open

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    counting_open.defaults = real_open.defaults  # type: ignore[attr-defined]
    monkeypatch.setattr(uproot, "open", counting_open)
    processor = NanoEventsProcessor(mode="virtual", check_filehandle=True)
    plans = make_plans([nanoaod / "nano_dy.root"], tmp_path, 10, 20)  # preprocessing opens it once
    opened.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out, chunks = run_all(plans, processor.process, EventsOptions(schema="coffea"))
    # two units of two chunks: one open per unit (coffea's Runner opens one per chunk)
    assert Counter(Path(p).name for p in opened) == {"nano_dy.root": 2}
    assert len(chunks) == 4 and out["cutflow"]["nano_dy_pt"] == 18


def test_clear_and_prefetch_on_coffea_events(nanoaod: Path) -> None:
    with coffea_chunk(nanoaod / "nano_dimuon.root", EventsOptions(schema="auto", prefetch=False)) as chunk:
        events = chunk.events
        assert type(events).__module__.startswith("coffea.nanoevents")
        assert events.metadata["dataset"] == "d"
        assert events.attrs["@events_factory"].file_handle is not None  # the open file was passed
        mgr = buffers.manager(events.Muon)
        pt = ak.to_list(events.Muon.pt)
        assert mgr.stats.columns == {"nMuon", "Muon_pt"}
        held = mgr.resident_bytes
        assert held > 0 and buffers.clear(events.Muon) > 0
        assert mgr.resident_bytes < held
        assert ak.to_list(events.Muon.pt) == pt and mgr.stats.rereads >= 1  # read again, same values

        with buffers.prefetch(["Jet.pt", "Jet.eta"], nthreads=2) as handle:
            deadline = time.monotonic() + 30
            while mgr.stats.prefetched < len(handle.keys) and time.monotonic() < deadline:
                time.sleep(0.01)
        assert len(handle.keys) == 3 and mgr.stats.prefetched == 3  # offsets, pt, eta
        _ = ak.sum(events.Jet.pt), ak.sum(events.Jet.eta)
        assert mgr.stats.prefetch_hits >= 2


def test_schema_selection(nanoaod: Path) -> None:
    from coffea.nanoevents import NanoAODSchema, PHYSLITESchema

    assert schema_class("auto", False) is None and schema_class("nanoaod", True) is None
    assert schema_class("auto", True) is NanoAODSchema and schema_class("coffea") is NanoAODSchema
    assert schema_class("coffea.nanoevents.PHYSLITESchema") is PHYSLITESchema
    assert schema_class("coffea.nanoevents:NanoAODSchema") is NanoAODSchema
    with pytest.raises(SchemaError, match="not a coffea schema"):
        schema_class("coffea.nanoevents.NanoEventsFactory")
    with pytest.raises(SchemaError, match="cannot import"):
        schema_class("no_such_module.Schema")

    # a coffea processor forced onto coffea_smk's own events, and a plain function onto coffea's
    with coffea_chunk(nanoaod / "nano_dy.root", EventsOptions(schema="nanoaod"), wants=True) as chunk:
        assert type(chunk.events).__module__ == "coffea_smk.events.nanoevents"
    with coffea_chunk(nanoaod / "nano_dy.root", EventsOptions(schema="coffea"), wants=False) as chunk:
        assert int(ak.sum(ak.num(chunk.events.Muon.matched_jet, axis=1))) >= 0


def test_coffea_processor_detection() -> None:
    from coffea.processor.test_items import NanoEventsProcessor

    from coffea_smk.spec.processor import load_processor

    sys.path.insert(0, str(PROCESSORS))
    try:
        loaded = load_processor("coffea_test_processors:nanoevents_virtual")
    finally:
        sys.path.remove(str(PROCESSORS))
    assert loaded.wants_coffea_events
    assert isinstance(NanoEventsProcessor(mode="virtual"), object)
    assert not Processor("f", len, None).wants_coffea_events
