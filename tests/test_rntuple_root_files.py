"""RNTuples written by ROOT itself against their TTree twins: every branch, and whole runs.

The files (``tests/rntuple_files.py``): the real NanoAOD samples (v15 among them) converted by
ROOT's RNTupleImporter and written in CMSSW's native layout by ROOT's RNTupleWriter, and
replicas of a few thousand events in 12 to 28 clusters, in every compression ROOT writes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import UnplannedFile, Workflow, assert_same_result
from rntuple_files import RNTupleFile

import coffea_smk
from coffea_smk.engine.plan import chunk_boundaries
from coffea_smk.engine.reading import UnitReader
from coffea_smk.engine.records import Plan
from coffea_smk.io.files import open_file, rntuple_of
from coffea_smk.io.rntuple import RNTupleInput, RNTupleReader
from coffea_smk.spec.settings import EventsOptions

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"


def _reader(path: Path) -> RNTupleReader:
    rinput = rntuple_of(uproot.open(path), str(path), "Events")
    assert isinstance(rinput, RNTupleInput)
    return RNTupleReader(rinput)


def _private_counter(name: str, branches: set[str]) -> bool:
    """NanoAOD v15 TTrees give each jagged branch ``X_y`` a counter ``nX_y`` besides ``nX``."""
    prefix = name[1:].partition("_")[0]
    return name.startswith("n") and "_" in name and f"n{prefix}" in branches


def test_every_branch_equals_the_ttree_twin(rntuple_file: RNTupleFile) -> None:
    reader = _reader(rntuple_file.path)
    tree = uproot.open(rntuple_file.twin)["Events"]
    branches = set(tree.keys())
    assert {b for b in branches if not _private_counter(b, branches)} <= set(reader.map.types)
    assert not reader.map.skipped
    assert len(reader.input.boundaries) - 1 == rntuple_file.clusters
    n = tree.num_entries
    bounds = [int(b) for b in reader.input.boundaries]
    # the whole file, a range across several clusters, one inside a cluster, the last entry
    inner = (bounds[0] + 1, max(bounds[1] - 1, bounds[0] + 1)) if n > 2 else (0, n)
    ranges = [(0, n), (min(n, 333), min(n, 1777)), inner, (max(n - 1, 0), n)]
    for name in sorted(branches & set(reader.map.types)):
        for start, stop in ranges:
            values, _, _ = reader.read(name, start, stop)
            array = tree[name].array(entry_start=start, entry_stop=stop)
            expected = np.asarray(ak.flatten(array) if array.ndim > 1 else array)
            same = np.array_equal(values, expected.astype(values.dtype), equal_nan=values.dtype.kind == "f")
            # a counter is uint32 (as ROOT's importer declares it); NanoAOD v15's TTrees write int32
            kinds = {"u", "i"} if reader.map.sources[name].data is None else {expected.dtype.kind}
            assert same and values.dtype.kind in kinds, (name, start, stop)


@pytest.mark.parametrize("schema", ["nanoaod", "coffea"])
def test_multicluster_rntuples_give_the_twins_results(
    workflow: Workflow, rntuple_files: dict[str, RNTupleFile], schema: str
) -> None:
    data = workflow.root / "data"
    data.mkdir()
    converted, native = rntuple_files["dy_lzma"], rntuple_files["native_dy_zstd"]
    assert converted.twin == native.twin  # the same 4000 events
    files: dict[str, list[str]] = {"TTree": [], "Converted": [], "Native": []}
    for i in range(2):
        for name, src in (("TTree", converted.twin), ("Converted", converted.path), ("Native", native.path)):
            shutil.copy(src, data / f"{name}_{i}.root")
            files[name].append(str(data / f"{name}_{i}.root"))
    # chunks of ~500 events in clusters of ~300: chunk ends move onto cluster boundaries
    workflow.write(
        {"processor": DIMUON, "chunksize": 500, "events_per_job": 3000, "schema": schema},
        {name: {"files": f} for name, f in files.items()},
    )
    workflow.run()
    result = coffea_smk.load(workflow.root / "results" / "result.npz")
    assert result["cutflow"]["TTree"]["events"] == 8000 and result["cutflow"]["TTree"]["muons"] > 0
    for name in ("Converted", "Native"):
        assert result["cutflow"][name] == result["cutflow"]["TTree"], name
        for h in ("mass", "muon_pt", "jet_ht"):
            assert_same_result(result[h][{"dataset": name}], result[h][{"dataset": "TTree"}], f"{name} {h}")
    plans = {p.dataset: p for p in (Plan.read(f) for f in (workflow.root / "results").rglob("plan/*/*.json"))}
    for name in ("Converted", "Native"):
        plan = plans[name]
        chunks = [c for u in plan.units for c in u.chunks]
        assert len(chunks) >= 8 and len(plan.units) >= 2  # several chunks per file, files per unit
        for i, f in enumerate(plan.files):  # the TTree rule: an end within 10% moves onto a cluster
            clusters = [int(b) for b in _reader(Path(f.path)).input.boundaries]
            ends = sorted({c.stop for c in chunks if c.file == i} | {0})
            assert ends == chunk_boundaries(f.entries, 500, clusters), name
            assert set(ends[1:-1]) & set(clusters), name  # some did


def test_no_cluster_is_decompressed_twice(
    rntuple_files: dict[str, RNTupleFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks that end inside clusters: the reader keeps a cluster for the next chunk."""
    path = rntuple_files["dy_zstd"].path
    reads: list[tuple[int, int]] = []
    original = RNTupleInput.read_column

    def spy(self: RNTupleInput, column: int, clusters: range) -> np.ndarray:
        reads.extend((column, k) for k in clusters)
        return original(self, column, clusters)

    monkeypatch.setattr(RNTupleInput, "read_column", spy)
    entries = rntuple_files["dy_zstd"].entries
    ranges = [(b, min(b + 170, entries)) for b in range(0, entries, 170)]  # clusters of ~300
    with UnitReader(EventsOptions(schema="nanoaod")) as unit, open_file(str(path)) as opened:
        with unit.open(opened, UnplannedFile(path), ranges) as reader:
            for start, stop in ranges:
                with reader.chunk(start, stop, {}) as chunk:
                    assert float(ak.sum(chunk.events.Muon.pt)) >= 0
    assert reads and len(reads) == len(set(reads))  # every (column, cluster) once
