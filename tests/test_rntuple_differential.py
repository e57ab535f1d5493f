"""coffea_smk's RNTuple reader against uproot: every numeric field of every layout uproot writes.

Each file is written here by uproot (``mkrntuple`` then ``extend``: one cluster per call) with
numbers of every type, one per entry and in vectors, and a collection of records, under every
compression uproot writes. Preprocessing must record the clusters uproot sees; every flat branch
the reader shows must equal uproot's field at whole and partial entry ranges (inside clusters,
across them, empty, and a job's consecutive chunks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from coffea_smk.engine.preprocess import FileIdentity, inspect_file
from coffea_smk.io.files import open_file, rntuple_of
from coffea_smk.io.rntuple import RNTupleReader

TYPES = [
    *("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
    *("float32", "float64"),
]
COMPRESSIONS: dict[str, Any] = {
    "none": None,
    "zlib": uproot.ZLIB(4),
    "lzma": uproot.LZMA(2),
    "lz4": uproot.LZ4(4),
    "zstd": uproot.ZSTD(5),
}
CLUSTERS = [5, 3, 50, 1, 17]  # entries written per extend call


def _values(dtype: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if dtype == "bool":
        return rng.random(n) < 0.5
    if dtype.startswith("float"):
        return rng.normal(0, 1e3, n).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)


def _batch(n: int, rng: np.random.Generator) -> ak.Array:
    counts = rng.integers(0, 4, n)
    columns: dict[str, Any] = {}
    for dtype in TYPES:
        columns[f"flat_{dtype}"] = _values(dtype, n, rng)
        columns[f"vec_{dtype}"] = ak.unflatten(_values(dtype, int(counts.sum()), rng), counts)
    muons = int(counts.sum())
    columns["Muon"] = ak.unflatten(
        ak.zip({"pt": _values("float32", muons, rng), "charge": _values("int32", muons, rng)}), counts
    )
    return ak.Array(columns)


@pytest.fixture(scope="module", params=sorted(COMPRESSIONS))
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rntuple") / f"{request.param}.root"
    rng = np.random.default_rng(len(request.param))
    with uproot.recreate(path, compression=COMPRESSIONS[request.param]) as f:
        ntuple = f.mkrntuple("ntuple", _batch(CLUSTERS[0], rng))
        for n in CLUSTERS[1:]:
            ntuple.extend(_batch(n, rng))
    return path


def _expected(ntuple: Any, branch: str, start: int, stop: int) -> np.ndarray:
    """What uproot reads for a flat branch name: a field, a record's field, or a list's length."""
    if branch.startswith("Muon_"):
        array = ntuple["Muon"].array(entry_start=start, entry_stop=stop)[branch.removeprefix("Muon_")]
    elif branch.startswith("n"):
        array = ak.num(ntuple[branch[1:]].array(entry_start=start, entry_stop=stop))
    else:
        array = ntuple[branch].array(entry_start=start, entry_stop=stop)
    return np.asarray(ak.flatten(array) if array.ndim > 1 else array)


def test_every_field_reads_exactly(written: Path, tmp_path: Path) -> None:
    record = inspect_file(_identity(written))
    bounds = list(np.cumsum([0, *CLUSTERS]))
    assert record.format == "rntuple" and list(record.clusters) == bounds and record.entries == sum(CLUSTERS)
    ntuple = uproot.open(written)["ntuple"]
    opened = open_file(str(written))
    rinput = rntuple_of(opened, str(written), "ntuple")
    assert rinput is not None
    with rinput:
        reader = RNTupleReader(rinput)
        expected_names = {f"{k}_{t}" for k in ("flat", "vec") for t in TYPES} | {f"nvec_{t}" for t in TYPES}
        assert reader.map.types.keys() == expected_names | {"nMuon", "Muon_pt", "Muon_charge"}
        assert not reader.map.skipped
        n = record.entries
        ranges = [(0, n), (0, 2), (1, 4), (4, 9), (7, 60), (8, 8), (60, n), (n - 1, n)]
        chunks = [(b, min(b + 6, n)) for b in range(0, n, 6)]  # a job's consecutive chunks
        for start, stop in ranges + chunks:
            for branch, t in reader.map.types.items():
                values, _, _ = reader.read(branch, start, stop)
                expected = _expected(ntuple, branch, start, stop)
                if t.kind.value == "flat" and branch.startswith("n"):
                    assert values.dtype == np.uint32, branch  # as NanoAOD's TTree counters
                    expected = expected.astype(np.uint32)
                else:
                    assert values.dtype == expected.dtype, branch
                assert np.array_equal(values, expected), (branch, start, stop)
            reader.forget(stop)


def _identity(path: Path) -> FileIdentity:
    st = path.stat()
    return FileIdentity(str(path), "ntuple", st.st_size, st.st_mtime_ns)
