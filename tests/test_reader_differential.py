"""coffea_smk's basket reader against uproot: every numeric branch of every file we can reach.

Each file goes through coffea_smk's own path: preprocessing builds its record
and basket map, then a processing job's :class:`~coffea_smk.engine.reading.UnitReader`
opens it and reads branches through the map. Every branch that uproot reads as
numbers (flat or jagged) is read at whole and partial entry ranges (ranges that
start and stop inside baskets, empty ones, and a job's consecutive chunks), and
must equal ``tree[branch].array(entry_start=..., entry_stop=...)`` exactly,
whether the reader took its fast path or fell back to uproot.

The files: the real NanoAOD samples, two real non-NanoAOD files that broke an
earlier reader (``../shared/data/rootfiles``), and files written here by
uproot in every layout it can produce.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from coffea_smk.engine.preprocess import FileIdentity, inspect_file, record_path
from coffea_smk.engine.reading import EventsOptions, UnitReader
from coffea_smk.engine.records import PreprocessedFile
from coffea_smk.io.basketmap import OTHER, TreeMap, map_path
from coffea_smk.io.files import open_file
from coffea_smk.io.reader import BasketReader

TYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float32",
    "float64",
]

# compression (and level), entries written per `extend` call (one basket per branch and call)
LAYOUTS: dict[str, tuple[Any, list[int]]] = {
    "none": (None, [5, 0, 3, 50, 1, 17]),
    "zlib1": (uproot.ZLIB(1), [5, 0, 3, 50, 1, 17]),
    "zlib9": (uproot.ZLIB(9), [40, 40, 0, 40]),
    "lzma1": (uproot.LZMA(1), [5, 0, 3, 50, 1, 17]),
    "lzma9": (uproot.LZMA(9), [40, 40, 0, 40]),
    "lz4-1": (uproot.LZ4(1), [5, 0, 3, 50, 1, 17]),
    "lz4-9": (uproot.LZ4(9), [40, 40, 0, 40]),
    "zstd1": (uproot.ZSTD(1), [5, 0, 3, 50, 1, 17]),
    "zstd9": (uproot.ZSTD(9), [40, 40, 0, 40]),
    "tiny-baskets": (uproot.ZLIB(4), [3] * 40),
    "basket-per-entry": (uproot.LZ4(4), [1] * 30),
    "big-basket": (uproot.ZSTD(5), [40_000]),
    "empty-lists": (uproot.ZLIB(1), [10, 10, 10]),
    "no-entries": (uproot.ZLIB(1), []),
    "empty-baskets-only": (uproot.LZ4(1), [0, 0]),
}


def _values(rng: np.random.Generator, dtype: np.dtype[Any], n: int) -> np.ndarray:
    """``n`` values of ``dtype`` that reach its extremes (and NaN, infinities, -0 for floats)."""
    if dtype.kind == "b":
        return rng.integers(0, 2, n).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        out = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        out[: min(n, 2)] = [info.min, info.max][: min(n, 2)]
        return out
    out = rng.normal(scale=1e3, size=n).astype(dtype)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(dtype).max], dtype=dtype)
    out[: min(n, len(specials))] = specials[: min(n, len(specials))]
    return out


def _batch(rng: np.random.Generator, n: int, empty_lists: bool) -> dict[str, Any]:
    """One `extend` call: flat branches of every type, a collection of jagged branches of
    every type with a shared counter (``nObj``), a jagged branch with its own counter, and
    a fixed-size array per entry."""
    counts = np.zeros(n, dtype=np.int64) if empty_lists else rng.choice([0, 0, 1, 2, 5], n)
    out: dict[str, Any] = {f"flat_{t}": _values(rng, np.dtype(t), n) for t in TYPES}
    fields = {t: ak.unflatten(_values(rng, np.dtype(t), int(counts.sum())), counts) for t in TYPES}
    out["Obj"] = ak.zip(fields)
    lone = rng.choice([0, 3], n)
    out["lone"] = ak.unflatten(_values(rng, np.dtype("float32"), int(lone.sum())), lone)
    out["fixed"] = _values(rng, np.dtype("float64"), 3 * n).reshape(n, 3)  # not on the allow-list
    return out


def _write(path: Path, compression: Any, sizes: list[int], empty_lists: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sample = _batch(rng, 1, empty_lists)
    types = {
        k: np.dtype((v.dtype, v.shape[1:])) if isinstance(v, np.ndarray) else v.type.content
        for k, v in sample.items()
    }
    with uproot.recreate(path, compression=compression) as f:
        tree = f.mktree("tree", types)
        for n in sizes:
            tree.extend(_batch(rng, n, empty_lists))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """uproot-written files in every layout of :data:`LAYOUTS`."""
    folder = tmp_path_factory.mktemp("written")
    out = {}
    for i, (name, (compression, sizes)) in enumerate(LAYOUTS.items()):
        out[name] = folder / f"{name}.root"
        _write(out[name], compression, sizes, empty_lists=name == "empty-lists", seed=i)
    return out


# ---- the way preprocessing and a processing job read a file ---------------------------------


@contextmanager
def _job_reader(path: Path, treename: str, cache: Path) -> Iterator[BasketReader]:
    """Preprocess ``path`` (record and basket map), then open it as a processing job does."""
    st = os.stat(path)
    identity = FileIdentity(str(path), treename, st.st_size, st.st_mtime_ns)
    rpath = record_path(cache, identity)
    record = PreprocessedFile(**inspect_file(identity, map_path(rpath)).model_dump(), record_path=str(rpath))
    TreeMap.load(map_path(rpath), record.key, record.uuid)  # the job will find the map
    with UnitReader(EventsOptions(schema="nanoaod", prefetch=False)) as unit:
        rootfile = open_file(str(path))
        with rootfile, unit.open(rootfile, record, [(0, record.entries)]) as reader:
            yield reader.source.reader


def _ranges(n: int, boundaries: list[int]) -> list[tuple[int, int]]:
    """Whole, partial, empty, and crossing-a-basket-boundary entry ranges of ``n`` entries."""
    out = {(0, n), (n // 2, n // 2)}
    if n > 2:
        out |= {(1, n - 1), (n // 3, 2 * n // 3 + 1), (n - 1, n), (0, 1)}
    inner = [b for b in boundaries if 0 < b < n]
    for b in inner[:: max(1, len(inner) // 4)][:4]:
        out |= {(b - 1, min(n, b + 1)), (b, min(n, b + 2)), (max(0, b - 7), min(n, b + 9))}
    return sorted(out)


def _chunks(n: int) -> list[tuple[int, int]]:
    """A job's consecutive chunks of uneven size (chunks end inside baskets)."""
    step = max(1, n // 3 + 1)
    return [(a, min(a + step, n)) for a in range(0, n, step)] or [(0, 0)]


def _flat(array: Any) -> np.ndarray:
    return np.asarray(ak.flatten(array, axis=None) if array.ndim > 1 else array)


def _expected(tree: Any, names: list[str], start: int, stop: int) -> dict[str, Any]:
    """uproot's values of ``names`` in ``[start, stop)`` (one call for all, else one per branch)."""
    try:
        arrays = tree.arrays(names, entry_start=start, entry_stop=stop, library="ak", how=dict)
        return {name: _flat(arrays[name]) for name in names}
    except Exception:
        out: dict[str, Any] = {}
        for name in names:
            try:
                out[name] = _flat(tree[name].array(entry_start=start, entry_stop=stop, library="ak"))
            except Exception as err:  # uproot cannot read it: checked against its baskets below
                out[name] = err
        return out


def _from_uproot_baskets(branch: Any, start: int, stop: int) -> np.ndarray:
    """A jagged branch's values from uproot's decompressed baskets and its counter's values,
    for branches whose ``array()`` fails (a counter whose baskets do not line up)."""
    dtype = branch.interpretation.content.from_dtype
    data = np.concatenate([np.frombuffer(branch.basket(i).data, dtype) for i in range(branch.num_baskets)])
    counts = branch.count_branch.array(library="np").astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return data[offsets[start] : offsets[stop]].astype(dtype.newbyteorder("="))


def _check_file(path: Path, treename: str, cache: Path) -> tuple[int, int, dict[str, str]]:
    """Every numeric branch at every range; returns (branches, reads, fallbacks and why)."""
    with uproot.open(path) as f, _job_reader(path, treename, cache) as reader:
        tree = f[treename]
        n = int(tree.num_entries)
        assert reader.map.entries == n
        names = [name for name, t in reader.map.types.items() if t.kind != OTHER]
        assert set(names) | {n for n, t in reader.map.types.items() if t.kind == OTHER} == set(
            tree.keys(recursive=False)
        )
        boundaries = sorted({int(e) for name in names for e in reader.map.branch(name).entries})
        reads = 0
        fell_back: dict[str, str] = {}
        for start, stop in _ranges(n, boundaries) + _chunks(n):
            expected = _expected(tree, names, start, stop)
            for name in names:
                got, _, _ = reader.read(name, start, stop)
                want = expected[name]
                if isinstance(want, Exception):
                    want = _from_uproot_baskets(tree[name], start, stop)
                where = f"{path.name}:{treename} {name} [{start}, {stop})"
                assert got.dtype == want.dtype.newbyteorder("="), where
                np.testing.assert_array_equal(got, want, err_msg=where, strict=True)
                reads += 1
            for name in reader.fallbacks(start, stop):
                fell_back[name] = reader.slow.get(name) or reader.map.slow[name]
        return len(names), reads, fell_back


# ---- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_uproot_written_layouts_read_exactly_and_fast(
    written: dict[str, Path], tmp_path: Path, layout: str
) -> None:
    branches, reads, fell_back = _check_file(written[layout], "tree", tmp_path)
    assert branches == 2 * len(TYPES) + 3  # flat_*, Obj_*, lone, and the counters nObj, nlone
    assert reads >= branches
    assert fell_back == {}  # every layout uproot writes is on the fast path
    with uproot.open(written[layout]) as f:
        tmap = TreeMap.read(f, str(written[layout]), "tree")
    # a fixed-size array is not in the events (coffea_smk's form has no place for it)
    assert tmap.types["fixed"].kind == OTHER and tmap.slow == {"fixed": "a fixed-size array of 3 per entry"}


NANOAOD_TREES = [
    ("nano_dy.root", "Events"),
    ("nano_dy.root", "Runs"),
    ("nano_dimuon.root", "Events"),
    ("nano_dimuon.root", "Runs"),
    ("nano_tt_v15.root", "Events"),
    ("nano_dy_empty.root", "Events"),
    ("nano_dy_SpecialTree.root", "Events"),
    ("nano_dy_SpecialTree.root", "NotEvents"),
]


@pytest.mark.parametrize(("sample", "treename"), NANOAOD_TREES)
def test_nanoaod_reads_exactly_and_fast(nanoaod: Path, tmp_path: Path, sample: str, treename: str) -> None:
    branches, _, fell_back = _check_file(nanoaod / sample, treename, tmp_path)
    assert branches > 0
    assert fell_back == {}  # NanoAOD is the fast path's whole point


def test_delphes_counters_fall_back(
    rootfiles: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # TClonesArray counters are TBranchElements; the tree also has two branches named
    # Particle and two named Particle_size (uproot, like ROOT, reads the first)
    path = rootfiles / "uproot-issue513.root"
    with caplog.at_level(logging.INFO, logger="coffea_smk.io.reader"):
        branches, _, fell_back = _check_file(path, "Delphes", tmp_path)
    assert branches == 16
    elements = [
        "Event",
        "Particle",
        "Track",
        "EFlowTrack",
        "EFlowPhoton",
        "EFlowNeutralHadron",
        "Jet",
        "GenJet",
    ]
    assert set(fell_back) == {*elements, "Particle_size"}
    assert all(fell_back[name] == "a TBranchElement" for name in elements)
    assert "named 'Particle_size'" in fell_back["Particle_size"]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(str(path) in m and "Particle_size" in m and "read by uproot" in m for m in logged)


def test_baskets_without_entry_offsets_rebuild_them_from_the_counter(rootfiles: Path, tmp_path: Path) -> None:
    # written with kGenerateOffsetMap: no offsets in the jagged baskets; Jet_pt's baskets
    # do not line up with nJet's (uproot's array() fails on them; checked against its baskets)
    path = rootfiles / "uproot-small-dy-nooffsets.root"
    branches, _, fell_back = _check_file(path, "tree", tmp_path)
    assert branches == 8 and fell_back == {}
