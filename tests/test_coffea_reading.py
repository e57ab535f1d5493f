"""coffea's NanoEvents as coffea_smk builds them: equal to coffea's own, whoever reads the branches.

coffea_smk gives coffea processors coffea's NanoEvents, built with one mapping,
base form and (for coffea's schemas) one schema per file, and with the branches on
the basket reader's fast path read by coffea_smk's reader. These tests hold every
field of every real file against ``NanoEventsFactory.from_root`` on the same entry
range (types, parameters, values), and run work units the way the workflow does:
several files per unit, several chunks per file, chunks that split baskets, units that
start with a column hint, prefetch on and off.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
from conftest import assert_same_result, run_coffea

pytest.importorskip("coffea", reason="coffea cannot be imported: install coffea_smk[coffea]")

from coffea_smk.engine.process import run_unit
from coffea_smk.engine.reading import ColumnHint, EventsOptions, UnitReader
from coffea_smk.engine.records import PlanFile
from coffea_smk.io.files import open_file
from coffea_smk.spec.processor import Processor

ROOTFILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "rootfiles"


def _leaves(array: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    fields = ak.fields(array)
    if not fields:
        yield path, array
        return
    for field in fields:
        yield from _leaves(array[field], (*path, field))


@contextmanager
def our_events(path: Path, treename: str, schema: str, start: int, stop: int) -> Iterator[Any]:
    with warnings.catch_warnings(), UnitReader(EventsOptions(schema=schema, prefetch=False), True) as unit:
        warnings.simplefilter("ignore", RuntimeWarning)  # coffea's schema warns about these files
        rootfile = open_file(str(path))
        n = rootfile[treename].num_entries
        file = PlanFile(
            path=str(path), treename=treename, key="", uuid="", entries=n, size=None, mtime_ns=None
        )
        with rootfile, unit.open(rootfile, file, [(start, stop)]) as reader:
            with reader.chunk(start, stop, {"dataset": "d"}) as chunk:
                yield chunk


def _theirs(path: Path, treename: str, schemaclass: type, start: int, stop: int) -> Any:
    from coffea.nanoevents import NanoEventsFactory

    return NanoEventsFactory.from_root(
        {str(path): treename},
        entry_start=start,
        entry_stop=stop,
        schemaclass=schemaclass,
        metadata={"dataset": "d"},
        mode="virtual",
    ).events()


CASES = [
    ("nanoaod", "nano_dy.root", "Events", "coffea.nanoevents.NanoAODSchema"),
    ("nanoaod", "nano_dimuon.root", "Events", "coffea.nanoevents.NanoAODSchema"),
    ("nanoaod", "nano_tt_v15.root", "Events", "coffea.nanoevents.NanoAODSchema"),
]


@pytest.mark.parametrize(("where", "name", "treename", "schema"), CASES, ids=[c[1] for c in CASES])
def test_every_field_equals_coffeas_own(
    where: str, name: str, treename: str, schema: str, nanoaod: Path
) -> None:
    from coffea_smk.events.coffea import schema_class

    path = (nanoaod if where == "nanoaod" else ROOTFILES) / name
    schemaclass = schema_class(schema)
    assert schemaclass is not None
    n = open_file(str(path))[treename].num_entries
    # the whole file, and ranges that begin and end inside baskets
    ranges = [(0, n), (3, n // 2 + 1), (n // 2 + 1, n)]
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # coffea's schema warns about these files
        for start, stop in ranges:
            theirs = _theirs(path, treename, schemaclass, start, stop)
            with our_events(path, treename, schema, start, stop) as chunk:
                ours = chunk.events
                assert ours.layout.form.to_dict() == theirs.layout.form.to_dict()
                assert ours.metadata == theirs.metadata and len(ours) == len(theirs) == stop - start
                for (field, a), (_, b) in zip(_leaves(ours), _leaves(theirs), strict=True):
                    assert ak.array_equal(a, b, dtype_exact=True, equal_nan=True, check_parameters=True), (
                        f"{name} [{start}, {stop}): {'.'.join(field)} differs from coffea's"
                    )
                    compared += 1
                fallbacks = chunk.reader.source.fallbacks(start, stop)
                assert fallbacks == sorted(set(fallbacks))
    assert compared > 50


def test_coffea_events_of_baskets_without_offsets() -> None:
    """A file uproot's array() cannot read (jagged baskets without entry offsets, not lined up
    with their counter's): coffea events read by coffea_smk give the values its basket reader
    gives (held against the baskets in test_reader_differential)."""
    from coffea_smk.events.nanoevents import TreeLayout

    path = ROOTFILES / "uproot-small-dy-nooffsets.root"
    tree = open_file(str(path))["tree"]
    n = tree.num_entries
    plain = TreeLayout(tree).events(0, n, {})
    with our_events(path, "tree", "coffea.nanoevents.BaseSchema", 0, n) as chunk:
        events = chunk.events
        for name in ("Muon_pt", "Jet_pt", "Jet_jetId"):
            coll, _, field = name.partition("_")
            assert ak.array_equal(events[name], plain[coll][field], dtype_exact=True, check_parameters=False)
        assert chunk.reader.source.fallbacks(0, n) == []


def test_fast_path_reads_nanoaod_branches_from_their_baskets(nanoaod: Path) -> None:
    path = nanoaod / "nano_dy.root"
    with our_events(path, "Events", "coffea", 0, 40) as chunk:
        muons = chunk.events.Muon
        _ = ak.to_list(muons.pt), ak.to_list(muons.matched_jet.pt)
        source = chunk.reader.source
        assert source.fallbacks(0, 40) == []  # numbers and jagged numbers: all from their baskets
        assert source._tree is None  # and the base form from the basket map: no tree metadata decoded
        assert {"nMuon", "Muon_pt", "Muon_jetIdx", "nJet", "Jet_pt"} <= set(
            chunk.reader.store.stats(0, 40).columns
        )


class _Counting:
    """A coffea-style processor: muon and jet sums, an assignment into the events, clear()
    (under coffea_smk: coffea's Runner has no buffer manager)."""

    def __init__(self, clear: bool = True) -> None:
        self.clear = clear

    def process(self, events: Any) -> dict[str, Any]:
        from coffea_smk import buffers

        dataset = events.metadata["dataset"]
        jets = events.Jet
        jets["pt_scaled"] = jets.pt * 1.03
        events["Jet"] = jets
        mu = events.Muon
        out = {
            dataset: {
                "events": len(events),
                "muons": int(ak.sum(ak.num(mu, axis=1))),
                "mu_pt": float(np.sum(ak.to_numpy(ak.flatten(mu.pt)), dtype=np.float64)),
                "jet_pt_scaled": float(
                    np.sum(ak.to_numpy(ak.flatten(events.Jet.pt_scaled)), dtype=np.float64)
                ),
                "matched": int(ak.sum(ak.num(mu.matched_jet, axis=1))),
            }
        }
        if self.clear:
            buffers.clear(events.Muon)
        return out


def _run_dataset(paths: list[str], cache: Path, prefetch: bool) -> tuple[Any, int]:
    """A dataset of several units run unit after unit as the workflow's jobs would (the later
    ones starting with the column hint the first wrote): the result and the buffers prefetched."""
    from coffea_smk.engine.accumulate import add
    from coffea_smk.engine.plan import PlanSettings, make_plan
    from coffea_smk.engine.preprocess import FileIdentity, preprocess_files
    from coffea_smk.spec.config import InputFile

    ids = [FileIdentity.of(InputFile(p, "Events"), "d") for p in paths]
    records, _ = preprocess_files(ids, cache / "cache")
    settings = PlanSettings(chunksize=7, events_per_job=85, merge_fanin=4, align_chunks=False)
    plan = make_plan("d", "d", {}, records, settings)
    if len(paths) > 2:
        assert len(plan.units) >= 2 and any(len({c.file for c in u.chunks}) > 1 for u in plan.units)
    hint = ColumnHint(cache / "hint.json")
    processor = Processor("counting", _Counting().process, None, wants_coffea_events=True)
    options = EventsOptions(schema="auto", prefetch=prefetch, prefetch_threads=2)
    result: Any = None
    prefetched = 0
    for unit in plan.units:
        out, meta = run_unit(plan, unit.id, processor, events=options, hint=hint)
        result = add(result, out)
        prefetched += sum(c.prefetched for c in meta.chunks)
        assert all(c.prefetch_errors == 0 for c in meta.chunks)
    assert (cache / "hint.json").exists()
    return result, prefetched


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # coffea's schema warns about these files
@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
def test_units_that_start_with_a_column_hint(nanoaod: Path, tmp_path: Path, prefetch: bool) -> None:
    """Several files per unit, several chunks per file (splitting baskets), several units per
    dataset, the later ones starting with the hint the first one wrote: the failure of issue 19
    (a prefetch thread asked for buffers before coffea's events for the file existed)."""
    paths = [str(nanoaod / n) for n in ("nano_dy.root", "nano_dimuon.root", "nano_dy_SpecialTree.root")]
    result, prefetched = _run_dataset(paths, tmp_path, prefetch)
    assert prefetched > 0 if prefetch else prefetched == 0
    theirs = run_coffea({"d": {"files": dict.fromkeys(paths, "Events")}}, lambda: _Counting(clear=False), 7)
    assert_same_result(result, theirs)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_units_with_a_column_hint_over_xrootd(xrootd: Any, nanoaod: Path, tmp_path: Path) -> None:
    """The same over root:// from the real XRootD server: batched reads of the hinted columns."""
    import os
    import shutil

    folder = xrootd.data / f"coffea-reading-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        names = ("nano_dy.root", "nano_dimuon.root", "nano_dy_SpecialTree.root")
        for n in names:
            shutil.copyfile(nanoaod / n, folder / n)
        urls = [xrootd.url(f"{folder.name}/{n}") for n in names]
        result, prefetched = _run_dataset(urls, tmp_path, prefetch=True)
        assert prefetched > 0
        theirs = run_coffea(
            {"d": {"files": dict.fromkeys(urls, "Events")}}, lambda: _Counting(clear=False), 7
        )
        assert_same_result(result, theirs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    "path",
    [
        *(
            f"nanoaod/{n}"
            for n in ("nano_dy.root", "nano_dimuon.root", "nano_tt_v15.root", "nano_dy_empty.root")
        ),
        "rootfiles/uproot-small-dy-nooffsets.root",
        "rootfiles/uproot-issue513.root",
    ],
)
def test_base_form_from_the_basket_map_equals_coffeas(path: str, nanoaod: Path, tmp_path: Path) -> None:
    """The base form coffea builds from a basket map (saved and loaded, as jobs get it) is the one
    it builds from uproot's tree; a map it cannot describe every branch of gives no view."""
    from coffea.nanoevents.mapping.uproot import UprootSourceMapping

    from coffea_smk.events.coffea import _MapTree, _object_path
    from coffea_smk.io.basketmap import TreeMap

    where, _, name = path.partition("/")
    file = (nanoaod if where == "nanoaod" else ROOTFILES) / name
    rootfile = open_file(str(file))
    treename = {"uproot-small-dy-nooffsets.root": "tree", "uproot-issue513.root": "Delphes"}.get(
        name, "Events"
    )
    tree = rootfile[treename]
    assert _object_path(rootfile, treename) == tree.object_path
    TreeMap.read(rootfile, str(file), treename, "u").save(tmp_path / "map.npz", "k")
    view = _MapTree.of(TreeMap.load(tmp_path / "map.npz", "k", "u"))
    if name == "uproot-issue513.root":  # Delphes: objects, not numbers
        assert view is None
        return
    assert view is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert UprootSourceMapping._extract_base_form(view) == UprootSourceMapping._extract_base_form(tree)
    assert view.typenames() == tree.typenames()
