"""RNTuple inputs: the twins of real NanoAOD TTrees give the TTrees' branches and results exactly.

Files: coffea's RNTuple twins of ``nano_dy.root`` and ``nano_dimuon.root`` (converted by ROOT's
RNTupleImporter: ``_collectionN`` records plus projected fields), a CMSSW-like native layout
written here with uproot (collections of records ``Muon.pt``, a record ``MET``, no counters),
CMS open data muons, and scikit-hep-testdata's odd layouts (12 clusters in 3 cluster groups;
fields added after the first clusters).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import PROCESSORS, REPO, UnplannedFile, Workflow, XRootD, assert_same_result, run_coffea

import coffea_smk
from coffea_smk.engine.preprocess import preprocess_files
from coffea_smk.engine.reading import UnitReader
from coffea_smk.engine.records import FileIdentity, PreprocessedFile
from coffea_smk.io.files import open_file, rntuple_of
from coffea_smk.io.rntuple import RNTupleInput, RNTupleReader
from coffea_smk.spec.config import InputFile
from coffea_smk.spec.settings import EventsOptions

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"
RNTUPLES = REPO.parent / "shared" / "data" / "rntuple"
TWINS = {"nano_dy.root": "nano_dy_rntuple.root", "nano_dimuon.root": "nano_dimuon_rntuple.root"}


def _write_native(src: Path, dst: Path) -> None:
    """``src``'s events in CMSSW's native layout: ``Muon`` a collection of records ``{pt, ...}``,
    ``MET`` a record of scalars, vectors without a shared prefix (``LHEPdfWeight``) as vectors,
    no ``nX`` counters."""
    arrays = uproot.open(src)["Events"].arrays(library="ak", how=dict)
    jagged = {n for n, a in arrays.items() if a.ndim == 2}
    collections: dict[str, dict[str, ak.Array]] = {}
    columns: dict[str, Any] = {}
    for name, array in arrays.items():
        prefix, _, rest = name.partition("_")
        if name in jagged and rest:
            collections.setdefault(prefix, {})[rest] = array
        elif name.startswith("n") and any(j.partition("_")[0] == name[1:] for j in jagged):
            continue  # a counter: the collection's length says it
        elif prefix == "MET" and rest:
            collections.setdefault("MET", {})[rest] = array
        else:
            columns[name] = array
    for prefix, fields in collections.items():
        columns[prefix] = ak.zip(fields, depth_limit=1 if prefix == "MET" else None)
    with uproot.recreate(dst) as out:
        out["Events"] = columns


@pytest.fixture(scope="session")
def native(nanoaod: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("native") / "nano_dy_native.root"
    _write_native(nanoaod / "nano_dy.root", out)
    return out


def _reader(path: Path, treename: str = "Events") -> RNTupleReader:
    rinput = rntuple_of(uproot.open(path), str(path), treename)
    assert isinstance(rinput, RNTupleInput)
    return RNTupleReader(rinput)


def _flat(array: Any) -> np.ndarray:
    return np.asarray(ak.flatten(array) if array.ndim > 1 else array)


RANGES = [(0, 40), (0, 7), (7, 19), (19, 40), (33, 34)]


@pytest.mark.parametrize("ttree", sorted(TWINS))
def test_every_branch_of_the_importer_twins_equals_the_ttree(nanoaod: Path, ttree: str) -> None:
    reader = _reader(RNTUPLES / TWINS[ttree])
    tree = uproot.open(nanoaod / ttree)["Events"]
    assert set(reader.map.types) == set(tree.keys())  # projected fields and _collectionN left out
    assert not reader.map.skipped
    for start, stop in RANGES:  # chunks that split the file's one cluster
        for name in tree.keys():
            values, compressed, uncompressed = reader.read(name, start, stop)
            expected = _flat(tree[name].array(entry_start=start, entry_stop=stop))
            assert values.dtype == expected.dtype.newbyteorder("<"), name  # nMuon: uint32, as the TTree's
            assert np.array_equal(values, expected, equal_nan=values.dtype.kind == "f"), (name, start, stop)
            assert 0 < compressed and 0 < uncompressed, name


def test_the_native_layout_reads_as_the_flat_branches(nanoaod: Path, native: Path) -> None:
    reader = _reader(native)
    tree = uproot.open(nanoaod / "nano_dy.root")["Events"]
    assert {"nMuon", "Muon_pt", "Muon_jetIdx", "MET_pt", "run", "LHEPdfWeight", "nLHEPdfWeight"} <= set(
        reader.map.types
    )
    assert set(tree.keys()) <= set(reader.map.types)
    for start, stop in RANGES:
        for name in tree.keys():
            values, _, _ = reader.read(name, start, stop)
            expected = _flat(tree[name].array(entry_start=start, entry_stop=stop))
            assert np.array_equal(
                values, expected.astype(values.dtype), equal_nan=values.dtype.kind == "f"
            ), name


@pytest.mark.parametrize(
    ("name", "clusters"),
    [
        ("test_multiple_cluster_groups_rntuple_v1-0-0-0.root", 12),
        ("test_extension_columns_rntuple_v1-0-0-0.root", 4),
    ],
)
def test_odd_layouts_equal_uproot(name: str, clusters: int) -> None:
    reader = _reader(RNTUPLES / name, "ntuple")
    ntuple = uproot.open(RNTUPLES / name)["ntuple"]
    assert len(reader.input.boundaries) - 1 == clusters
    n = ntuple.num_entries
    # ranges inside a cluster, across cluster (group) boundaries, before and after extension columns
    for first, last in [(0, n), (0, 100), (90, 460), (345, 600), (420, 423), (555, 600), (n - 1, n)]:
        start, stop = min(first, n), min(last, n)
        for branch, t in reader.map.types.items():
            values, _, _ = reader.read(branch, start, stop)
            field = branch[1:] if t.kind.value == "flat" and branch[1:] in reader.map.types else branch
            array = ntuple[field].array(entry_start=start, entry_stop=stop)
            expected = np.asarray(ak.num(array)) if field != branch else _flat(array)
            assert np.array_equal(values, expected), (branch, start, stop)


def test_open_data_muons_with_their_cardinality_field() -> None:
    reader = _reader(RNTUPLES / "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root")
    assert set(reader.map.types) == {f"Muon_{v}" for v in ("pt", "eta", "phi", "mass", "charge")} | {"nMuon"}
    ntuple = reader.input.ntuple
    counts, _, _ = reader.read("nMuon", 100, 900)
    assert counts.dtype == np.uint32
    assert np.array_equal(counts, np.asarray(ntuple["nMuon"].array(entry_start=100, entry_stop=900)))  # int64


def test_preprocessing_records_clusters_and_identity_without_listing_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # uproot's keys() costs seconds on a wide RNTuple: neither preprocessing nor reading calls it
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("keys() listed the fields")

    monkeypatch.setattr(uproot.behaviors.RNTuple.HasFields, "keys", refused)
    path = tmp_path / "dy.root"
    shutil.copy(RNTUPLES / "nano_dy_rntuple.root", path)
    identity = FileIdentity.of(InputFile(str(path), "Events"))
    (record,), bad = preprocess_files([identity], tmp_path / "cache")
    assert not bad and isinstance(record, PreprocessedFile)
    assert record.format == "rntuple" and record.entries == 40 and record.clusters == (0, 40)
    assert record.nbranches == len(uproot.open(RNTUPLES.parent / "nanoaod" / "nano_dy.root")["Events"].keys())
    with open_file(str(path)) as opened:
        assert record.uuid == str(opened.file.uuid)
    (again,), _ = preprocess_files([identity], tmp_path / "cache")
    assert isinstance(again, PreprocessedFile) and again.seconds == record.seconds  # the cached record
    with UnitReader(EventsOptions(schema="nanoaod")) as unit, open_file(str(path)) as opened:
        with unit.open(opened, again, [(10, 30)]) as reader, reader.chunk(10, 30, {}) as chunk:
            assert float(ak.sum(chunk.events.Muon.pt)) > 0


def test_only_the_touched_fields_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    path = RNTUPLES / "nano_dy_rntuple.root"
    read: list[str] = []
    original = RNTupleInput.read_column

    def spy(self: RNTupleInput, column: int, clusters: range) -> np.ndarray:
        record = self.ntuple.column_records[column]
        read.append(str(self.ntuple.field_records[record.field_id].field_name))
        return original(self, column, clusters)

    monkeypatch.setattr(RNTupleInput, "read_column", spy)
    with UnitReader(EventsOptions(schema="nanoaod")) as unit, open_file(str(path)) as opened:
        with unit.open(opened, UnplannedFile(path), [(0, 20), (20, 40)]) as reader:
            for start, stop in [(0, 20), (20, 40)]:
                with reader.chunk(start, stop, {}) as chunk:
                    assert float(ak.sum(chunk.events.Muon.pt) + ak.sum(chunk.events.MET.pt)) > 0
    # Muon_pt, the muons' offsets (the collection holding them), MET_pt; each once: one cluster
    assert sorted(read) == sorted(["Muon_pt", "_collection" + _muon_collection(path), "MET_pt"])


def _muon_collection(path: Path) -> str:
    fields = uproot.open(path)["Events"].field_records
    parent = next(f.parent_field_id for f in fields if f.field_name == "Muon_pt" and f.type_name == "float")
    record = fields[parent]
    return str(fields[record.parent_field_id].field_name).removeprefix("_collection")


def _copies(src: Path, folder: Path, stem: str, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        shutil.copy(src, folder / f"{stem}_{i}.root")
        out.append(str(folder / f"{stem}_{i}.root"))
    return out


@pytest.mark.parametrize("schema", ["nanoaod", "coffea"])
def test_rntuple_datasets_give_the_ttree_results(
    workflow: Workflow, nanoaod: Path, native: Path, schema: str
) -> None:
    data = workflow.root / "data"
    ttrees = _copies(nanoaod / "nano_dy.root", data, "dy", 4)
    rntuples = _copies(RNTUPLES / "nano_dy_rntuple.root", data, "dy_rntuple", 4)
    datasets = {
        "TTree": ttrees,
        "RNTuple": rntuples,
        "Mixed": [ttrees[0], rntuples[1], ttrees[2], rntuples[3]],  # a dataset in both formats
    }
    if schema == "nanoaod":  # coffea's NanoAODSchema itself cannot build this made-up native layout
        datasets["Native"] = _copies(native, data, "dy_native", 4)
    # chunks of 10 events in clusters of 40, units of two files
    workflow.write(
        {"processor": DIMUON, "chunksize": 10, "events_per_job": 80, "schema": schema},
        {name: {"files": files} for name, files in datasets.items()},
    )
    workflow.run()
    result = coffea_smk.load(workflow.root / "results" / "result.npz")
    assert result["cutflow"]["TTree"]["muons"] == 4 * 18  # coffea's own count in nano_dy.root
    for name in datasets:
        assert result["cutflow"][name] == result["cutflow"]["TTree"], name
        for h in ("mass", "muon_pt", "jet_ht"):
            assert_same_result(result[h][{"dataset": name}], result[h][{"dataset": "TTree"}], f"{name} {h}")


def test_a_coffea_processor_on_rntuple_equals_coffeas_runner(workflow: Workflow) -> None:
    sys.path.insert(0, str(PROCESSORS))
    try:
        from coffea_test_processors import MatchedJets
    finally:
        sys.path.remove(str(PROCESSORS))

    data = workflow.root / "data"
    fileset = {
        "DY": {"files": _copies(RNTUPLES / "nano_dy_rntuple.root", data, "dy", 2)},
        "DoubleMuon": {"files": _copies(RNTUPLES / "nano_dimuon_rntuple.root", data, "dimuon", 2)},
    }
    # cross-references (Muon_jetIdx) and coffea's candidate behaviours; chunks of 10 events
    workflow.write(
        {"processor": "coffea_test_processors:MatchedJets", "chunksize": 10, "events_per_job": 80}, fileset
    )
    workflow.run()
    ours = coffea_smk.load(workflow.root / "results" / "result.npz")
    # coffea's Runner lists the fields of the wide RNTuple at every chunk (seconds each): one chunk a file
    theirs = run_coffea(
        {name: {"files": {d["files"][0]: "Events"}} for name, d in fileset.items()}, MatchedJets(), 40
    )
    for name in fileset:
        assert ours["counts"][name] == {k: 2 * v for k, v in theirs["counts"][name].items()}, name
        assert ours["counts"][name]["muons"] > 0
    for h in ("matched_pt", "dr", "mass"):
        for name in fileset:
            expected = theirs[h][{"dataset": name}] * 2
            assert_same_result(ours[h][{"dataset": name}], expected, f"{h} {name}")


def test_a_replaced_rntuple_file_is_processed_anew(workflow: Workflow) -> None:
    data = workflow.root / "data"
    data.mkdir()
    target = data / "dy.root"
    shutil.copy(RNTUPLES / "nano_dy_rntuple.root", target)
    workflow.write({"processor": DIMUON, "chunksize": 10}, {"DY": {"files": [str(target)]}})
    workflow.run()
    first = coffea_smk.load(workflow.root / "results" / "result.npz")["cutflow"]["DY"]
    shutil.copy(RNTUPLES / "nano_dimuon_rntuple.root", target)  # another file under the same name
    workflow.run()
    second = coffea_smk.load(workflow.root / "results" / "result.npz")["cutflow"]["DY"]
    assert first["muons"] == 18 and second != first
    direct = uproot.open(RNTUPLES / "nano_dimuon_rntuple.root")["Events"]
    assert second["events"] == direct.num_entries
    assert second["muons"] == int(
        np.sum(_reader(RNTUPLES / "nano_dimuon_rntuple.root").read("nMuon", 0, 40)[0])
    )


def test_rntuple_over_root_equals_the_local_ttrees(
    workflow: Workflow, xrootd: XRootD, nanoaod: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = xrootd.data / f"rntuple-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        for twin in TWINS.values():
            shutil.copyfile(RNTUPLES / twin, folder / twin)
        settings = {"processor": DIMUON, "chunksize": 10, "events_per_job": 40, "retries": 1}
        workflow.write(
            settings, {"Mixed": {"files": [xrootd.url(f"{folder.name}/{twin}") for twin in TWINS.values()]}}
        )
        workflow.run()
        assert workflow.opened() == []  # no local ROOT file: everything came over root://
        local = Workflow(tmp_path_factory.mktemp("local-ttrees"))
        local.write(settings, {"Mixed": {"files": [str(nanoaod / ttree) for ttree in TWINS]}})
        local.run()
        ours = coffea_smk.load(workflow.root / "results" / "result.npz")
        assert_same_result(ours, coffea_smk.load(local.root / "results" / "result.npz"))
        assert ours["cutflow"]["Mixed"]["events"] == 80
    finally:
        shutil.rmtree(folder, ignore_errors=True)
