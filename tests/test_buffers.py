"""Virtual columns, buffer control (clear, prefetch), automatic prefetch and per-chunk metrics."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import assert_same_result

from coffea_smk import buffers
from coffea_smk.engine.plan import PlanSettings, make_plan
from coffea_smk.engine.preprocess import FileIdentity, preprocess_files
from coffea_smk.engine.process import ChunkError, run_unit
from coffea_smk.engine.reading import ChunkRun, EventsOptions, UnitReader
from coffea_smk.engine.records import PlanFile
from coffea_smk.events.nanoevents import TreeLayout, basket_bytes
from coffea_smk.examples.dimuon import DimuonProcessor
from coffea_smk.io.files import open_file, tree_of
from coffea_smk.spec.config import InputFile
from coffea_smk.spec.processor import Processor

OFF = EventsOptions(schema="nanoaod", prefetch=False)


def make_plans(paths: list[Path], cache: Path, chunksize: int, events_per_job: int = 10**9) -> list[Any]:
    plans = []
    for path in paths:
        records, _ = preprocess_files([FileIdentity.of(InputFile(str(path), "Events"), path.stem)], cache)
        settings = PlanSettings(
            chunksize=chunksize, events_per_job=events_per_job, merge_fanin=4, align_chunks=False
        )
        plans.append(make_plan(path.stem, path.stem, {}, records, settings))
    return plans


def run_all(plans: list[Any], process: Callable[[Any], Any], options: EventsOptions) -> tuple[Any, list[Any]]:
    from coffea_smk.engine.accumulate import add

    result, chunks = None, []
    for plan in plans:
        for unit in plan.units:
            out, meta = run_unit(plan, unit.id, Processor("test", process, None), events=options)
            result = add(result, out)
            chunks += [c.model_dump(mode="json") for c in meta.chunks]
    return result, chunks


def _file(path: Path, entries: int) -> PlanFile:
    """A file as a plan lists it, without preprocessing (no basket map)."""
    return PlanFile(
        path=str(path), treename="Events", key="", uuid="", entries=entries, size=None, mtime_ns=None
    )


@contextmanager
def one_chunk(path: Path, start: int = 0, stop: int | None = None) -> Iterator[ChunkRun]:
    """A chunk as the processing loop makes it (buffer manager active)."""
    with UnitReader(OFF) as unit:
        rootfile = open_file(str(path))
        tree = tree_of(rootfile, str(path), "Events")
        stop = tree.num_entries if stop is None else stop
        with (
            rootfile,
            unit.open(rootfile, _file(path, stop), [(start, stop)]) as reader,
        ):
            with reader.chunk(start, stop, {"dataset": "d"}) as chunk:
                yield chunk


# ---- virtual columns ------------------------------------------------------------------


@pytest.mark.parametrize(
    "options", [OFF, EventsOptions(schema="nanoaod", prefetch=True)], ids=["off", "auto"]
)
def test_only_touched_columns_are_read_once_per_chunk(
    nanoaod: Path, tmp_path: Path, options: EventsOptions
) -> None:
    def process(events: Any) -> dict[str, int]:
        n = int(ak.sum(ak.num(events.Muon, axis=1)))
        s = float(ak.sum(events.Muon.pt)) + float(ak.sum(events.Muon.pt * 2))  # touched twice
        return {"muons": n, "positive": int(s > 0)}

    path = nanoaod / "nano_dimuon.root"
    result, chunks = run_all(make_plans([path], tmp_path, 10), process, options)
    assert result == {"muons": 84, "positive": 4}
    tree = uproot.open(path)["Events"]
    for chunk in chunks:
        start, stop = chunk["entrystart"], chunk["entrystop"]
        assert chunk["columns"] == ["Muon_pt", "nMuon"]
        assert chunk["buffers"] == 2 and chunk["rereads"] == 0  # offsets and content, each once
        expected = np.add(
            basket_bytes(tree["nMuon"], start, stop), basket_bytes(tree["Muon_pt"], start, stop)
        )
        assert [chunk["bytes_compressed"], chunk["bytes_uncompressed"]] == list(expected)
        assert chunk["events"] == stop - start and chunk["total_s"] >= chunk["read_s"] >= 0
    if options.prefetch:  # from the second chunk on, both buffers come from the prefetch thread
        assert all(c["prefetched"] == 2 for c in chunks[1:])


def test_resolving_arrays_and_names_reads_nothing(nanoaod: Path) -> None:
    with one_chunk(nanoaod / "nano_dy.root") as chunk:
        mgr = buffers.manager()
        assert mgr is buffers.manager(chunk.events.Jet) and mgr is chunk.manager
        # (awkward reads a collection's offsets to project a field: events.Jet.pt reads nJet;
        # names are resolved on the layout instead)
        keys = mgr.keys(chunk.events.Muon, ["Jet.pt", "Jet.eta"], "Tau_pt", "MET.pt", ["Electron"])
        names = {k.split("/")[1] for k in keys}
        assert names >= {"nJet.offsets", "Jet_pt", "Jet_eta", "nMuon.offsets", "Muon_pt", "Tau_pt", "MET_pt"}
        assert "Jet_phi" not in names
        assert len([k for k in keys if "/Electron_" in k]) > 5
        assert mgr.stats.buffers == 0 and mgr.resident_bytes == 0
        with pytest.raises(KeyError, match="NoSuchThing"):
            mgr.keys("NoSuchThing")


# ---- clear ------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["array", "collection name", "field path", "branch names"])
def test_clear_frees_and_rereading_gives_the_same_values(nanoaod: Path, what: str) -> None:
    with one_chunk(nanoaod / "nano_tt_v15.root") as chunk:
        events = chunk.events
        before = ak.to_list(events.Jet.pt)
        mgr = buffers.manager()
        held = mgr.resident_bytes
        assert held > 0 and mgr.stats.buffers == 2
        target: Any = {
            "array": events.Jet,
            "collection name": "Jet",
            "field path": ["Jet.pt"],
            "branch names": ["Jet_pt"],
        }[what]
        freed = buffers.clear(target)
        if what != "branch names":  # offsets and content
            assert freed == held and mgr.resident_bytes == 0
        else:  # the content only
            assert 0 < freed < held and mgr.resident_bytes == held - freed
        assert ak.to_list(events.Jet.pt) == before  # re-read from the file
        assert mgr.stats.rereads >= 1


def test_clear_inside_process_bounds_memory(nanoaod: Path, tmp_path: Path) -> None:
    peaks: dict[bool, int] = {}
    left: dict[bool, int] = {}

    def many_columns(clear: bool) -> Callable[[Any], Any]:
        def process(events: Any) -> dict[str, float]:
            total, peak = 0.0, 0
            for name in ("Jet", "Electron", "Muon", "Photon", "Tau", "FatJet"):
                coll = events[name]
                for field in coll.fields:
                    if str(ak.type(coll[field])).endswith("float32"):
                        total += float(ak.sum(coll[field]))
                peak = max(peak, buffers.manager().resident_bytes)
                if clear:
                    buffers.clear(coll)
            peaks[clear] = max(peaks.get(clear, 0), peak)
            left[clear] = buffers.manager().resident_bytes
            return {"total": total}

        return process

    plans = make_plans([nanoaod / "nano_dy.root"], tmp_path, 40)
    kept, kept_chunks = run_all(plans, many_columns(False), OFF)
    cleared, cleared_chunks = run_all(plans, many_columns(True), OFF)
    assert kept == cleared
    # without clear() everything stays until the chunk ends; with it, one collection at a time
    assert left[True] == 0 and left[False] == peaks[False]
    assert peaks[True] < 0.7 * peaks[False]
    assert sum(c["buffers"] for c in kept_chunks) == sum(c["buffers"] for c in cleared_chunks)


# ---- prefetch ---------------------------------------------------------------------------


class ExplicitPrefetch(DimuonProcessor):
    def __init__(self, nthreads: int) -> None:
        self.nthreads = nthreads

    def process(self, events: Any) -> dict[str, Any]:
        with buffers.prefetch(events.Jet.pt, "Muon", nthreads=self.nthreads) as handle:
            assert handle.keys
            out = super().process(events)
            handle.wait()  # every asked-for column is read before the chunk ends (else it is cancelled)
            return out


@pytest.fixture(scope="module")
def dimuon_reference(nanoaod: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    plans = make_plans([nanoaod / "nano_dimuon.root"], tmp_path_factory.mktemp("cache"), 10)
    return (plans, *run_all(plans, DimuonProcessor().process, OFF))


@pytest.mark.parametrize(
    ("process", "options"),
    [
        (DimuonProcessor().process, EventsOptions(schema="nanoaod", prefetch=True)),
        (
            DimuonProcessor().process,
            EventsOptions(schema="nanoaod", prefetch=True, prefetch_threads=3, prefetch_max_mb=1),
        ),
        (ExplicitPrefetch(1).process, OFF),
        (ExplicitPrefetch(4).process, EventsOptions(schema="nanoaod", prefetch=True)),
    ],
    ids=["auto", "auto-3-threads-tiny-budget", "explicit-1", "explicit-4+auto"],
)
def test_prefetch_gives_identical_results(
    dimuon_reference: tuple[Any, Any, Any], process: Callable[[Any], Any], options: EventsOptions
) -> None:
    plans, reference, ref_chunks = dimuon_reference
    result, chunks = run_all(plans, process, options)
    assert_same_result(result, reference)
    for ours, ref in zip(chunks, ref_chunks, strict=True):
        if isinstance(process.__self__, ExplicitPrefetch):  # type: ignore[attr-defined]
            assert set(ours["columns"]) > set(ref["columns"])  # all of Muon was asked for
        else:
            assert ours["columns"] == ref["columns"]
    assert sum(c["prefetched"] for c in chunks) > 0
    assert all(c["rereads"] == 0 and c["prefetch_errors"] == 0 for c in chunks)
    assert sum(c["prefetch_hits"] + c["prefetch_waits"] for c in chunks) > 0


def test_explicit_prefetch_reads_in_background_while_processing(nanoaod: Path) -> None:
    with one_chunk(nanoaod / "nano_tt_v15.root") as chunk:
        events = chunk.events
        mgr = buffers.manager()
        with buffers.prefetch(events.Jet, nthreads=2) as handle:
            deadline = time.monotonic() + 30
            while mgr.stats.prefetched < len(handle.keys) and time.monotonic() < deadline:
                time.sleep(0.01)
        assert mgr.stats.prefetched == len(handle.keys) and mgr.stats.read_seconds == 0
        assert mgr.stats.background_seconds > 0
        _ = ak.sum(events.Jet.pt), ak.sum(events.Jet.eta)
        assert mgr.stats.prefetch_hits == 3 and mgr.stats.buffers == len(handle.keys)


def test_clear_while_a_prefetch_read_is_in_flight(nanoaod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read = TreeLayout.read
    started = threading.Event()

    def slow(self: TreeLayout, key: str, start: int, stop: int) -> Any:
        if threading.current_thread() is not threading.main_thread():
            started.set()
            time.sleep(0.3)
        return read(self, key, start, stop)

    monkeypatch.setattr(TreeLayout, "read", slow)
    with one_chunk(nanoaod / "nano_dy.root") as chunk:
        mgr = buffers.manager()
        buffers.prefetch("Jet_pt")
        assert started.wait(10)
        assert buffers.clear("Jet_pt") == 0  # nothing in memory yet: the read is in flight
        for done in mgr.store.in_flight():
            done.wait(10)
        assert mgr.resident_bytes == 0  # the late result was not stored
        assert float(ak.sum(chunk.events.Jet.pt)) > 0  # read again, in this thread
        assert mgr.stats.rereads == 1


# ---- read errors in prefetch threads -----------------------------------------------------


def corrupt_branch(src: Path, dst: Path, branch: str) -> None:
    """Copy ``src`` with the compressed payload of ``branch``'s first basket overwritten."""
    shutil.copy(src, dst)
    b = uproot.open(src)["Events"][branch]
    key = b.basket_key(0)
    payload = key.data_cursor.index + 9  # after the compression header
    with open(dst, "r+b") as f:
        f.seek(payload)
        f.write(b"\xff" * 32)


def _run_in_thread(fn: Callable[[], Any], timeout: float = 120) -> Any:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "processing hung"
    return outcome


def test_prefetch_read_error_is_the_chunks_error(nanoaod: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.root"
    corrupt_branch(nanoaod / "nano_dy.root", bad, "Muon_pt")

    def process(events: Any) -> dict[str, int]:
        mgr = buffers.manager()
        with buffers.prefetch(events.Muon.pt, nthreads=2):
            deadline = time.monotonic() + 30
            while not mgr.stats.prefetch_errors and time.monotonic() < deadline:
                time.sleep(0.01)
        assert mgr.stats.prefetch_errors == 1  # it failed in the background thread
        return {"pt": float(ak.sum(events.Muon.pt))}  # touches it: the error surfaces here

    plans = make_plans([bad], tmp_path / "cache", 100)
    outcome = _run_in_thread(lambda: run_all(plans, process, OFF))
    err = outcome.get("error")
    assert isinstance(err, ChunkError), outcome
    message = str(err)
    assert str(bad) in message and "entries 0-40" in message
    assert "BufferReadError" in message and "reading Muon_pt" in message and "prefetch thread" in message


def test_auto_prefetch_read_error_and_untouched_errors(
    nanoaod: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = TreeLayout.read

    def flaky(self: TreeLayout, key: str, start: int, stop: int) -> Any:
        if threading.current_thread() is not threading.main_thread() and start >= 20:
            if key in ("Muon_pt", "Electron_pt"):
                raise OSError(f"simulated read failure of {key}")
        return read(self, key, start, stop)

    monkeypatch.setattr(TreeLayout, "read", flaky)
    plans = make_plans([nanoaod / "nano_dy.root"], tmp_path, 10)

    # an untouched prefetched column that fails changes nothing
    def untouched(events: Any) -> dict[str, int]:
        buffers.prefetch(events.Electron.pt)
        return {"muons": int(ak.sum(ak.num(events.Muon, axis=1)))}

    outcome = _run_in_thread(lambda: run_all(plans, untouched, OFF))
    assert outcome["value"][0] == {"muons": 18}
    assert sum(c["prefetch_errors"] for c in outcome["value"][1]) <= 2

    # the automatic prefetch of Muon_pt for entries 20-30 fails: that chunk fails, naming it
    def touching(events: Any) -> dict[str, float]:
        return {"pt": float(ak.sum(events.Muon.pt))}

    outcome = _run_in_thread(lambda: run_all(plans, touching, EventsOptions(schema="nanoaod", prefetch=True)))
    err = outcome.get("error")
    assert isinstance(err, ChunkError), outcome
    assert "entries 20-30" in str(err) and "simulated read failure of Muon_pt" in str(err)
    assert str(nanoaod / "nano_dy.root") in str(err)


# ---- metrics roll-up ----------------------------------------------------------------------


def test_metrics_roll_up_per_dataset_and_globally(nanoaod: Path, tmp_path: Path) -> None:
    from coffea_smk import results as storage
    from coffea_smk.engine import metrics
    from coffea_smk.engine.process import process_unit_to_file
    from coffea_smk.engine.reduce import finish_dataset, finish_global, merge_stored

    plans = make_plans([nanoaod / "nano_dy.root", nanoaod / "nano_dimuon.root"], tmp_path / "c", 20, 20)
    processor = Processor("p", DimuonProcessor().process, None)
    datasets = []
    for plan in plans:
        partials = []
        for unit in plan.units:
            out = tmp_path / f"{unit.id}.npz"
            process_unit_to_file(plan, unit.id, processor, str(out), events=OFF)
            partials.append(str(out))
        chunks = [c for p in partials for c in storage.load_meta(p)["chunks"]]
        merged = merge_stored(partials).meta.model_dump()
        assert merged["totals"]["chunks"] == len(chunks) == 2
        assert merged["totals"]["events"] == 40
        assert merged["totals"]["bytes_compressed"] == sum(c["bytes_compressed"] for c in chunks)
        assert merged["totals"]["peak_rss_mb"] == max(c["peak_rss_mb"] for c in chunks)
        ds = tmp_path / f"{plan.slug}.npz"
        meta = finish_dataset(partials, plan, str(ds)).model_dump()
        assert meta["rates"]["events_per_s"] > 0 and "Muon_pt" in meta["columns"]
        datasets.append(str(ds))
    glob = finish_global(datasets, str(tmp_path / "result.npz")).model_dump()
    assert glob["totals"]["events"] == 80 and glob["totals"]["chunks"] == 4
    assert set(glob["columns"]) >= {"Muon_pt", "Jet_pt", "nMuon"}
    table = metrics.report(storage.load_meta(tmp_path / "result.npz"))
    assert "nano_dy" in table and "(all)" in table and "events/s" in table


def test_events_options_round_trip() -> None:
    options = EventsOptions(schema="coffea", prefetch=False, prefetch_threads=3, prefetch_max_mb=64)
    assert EventsOptions.from_json(options.to_json()) == options
    assert EventsOptions.from_json(None) == EventsOptions()
