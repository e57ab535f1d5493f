"""The basket map and reader: equal to uproot on every branch, every file, every cut."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from coffea_smk.engine.records import PreprocessedFile
from coffea_smk.io.allowlist import unreadable
from coffea_smk.io.basketmap import OTHER, BasketMapError, BasketReadError, TreeMap, map_path
from coffea_smk.io.reader import BasketReader, local_fetch, source_fetch, uproot_fallback

SAMPLES = ["nano_dy.root", "nano_dimuon.root", "nano_tt_v15.root", "nano_dy_empty.root"]


def _uproot_values(tree: Any, name: str, start: int, stop: int) -> np.ndarray:
    array = tree[name].array(entry_start=start, entry_stop=stop, library="ak")
    return np.asarray(ak.flatten(array) if array.ndim > 1 else array)


def _assert_reads_like_uproot(
    path: Path, ranges: list[tuple[int, int]], names: list[str] | None = None
) -> None:
    with uproot.open(path) as f:
        tree = f["Events"]
        tmap = TreeMap.read(f, str(path), "Events", str(f.file.uuid))
        reader = BasketReader(tmap, source_fetch(f), str(path))
        for name in names or [n for n, t in tmap.types.items() if t.kind != OTHER]:
            for start, stop in ranges:
                got, _, _ = reader.read(name, start, stop)
                expected = _uproot_values(tree, name, start, stop)
                assert got.dtype == expected.dtype.newbyteorder("=")
                np.testing.assert_array_equal(got, expected, err_msg=f"{path.name} {name} [{start}, {stop})")


@pytest.mark.parametrize("sample", SAMPLES)
def test_map_equals_uproots_view_of_the_tree(nanoaod: Path, sample: str) -> None:
    path = nanoaod / sample
    with uproot.open(path) as f:
        tree = f["Events"]
        fast = TreeMap.read(f, str(path), "Events")
        slow = TreeMap.from_tree(tree, by_uproot=True)
        assert fast.entries == tree.num_entries
        assert fast.types == slow.types
        assert {t.kind for t in fast.types.values()} <= {"flat", "jagged"}  # all of NanoAOD is mapped
        for name in fast.types:
            a, b = fast.branch(name), slow.branch(name)
            np.testing.assert_array_equal(a.seek, tree[name].member("fBasketSeek")[: len(a.seek)])
            assert np.array_equal(a.seek, b.seek) and np.array_equal(a.nbytes, b.nbytes)
            assert np.array_equal(a.entries, b.entries)
        expected = [int(x) for x in tree.common_entry_offsets()] if tree.num_entries else [0]
        assert (fast.clusters() if fast.entries else [0]) == expected


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_branch_reads_like_uproot(nanoaod: Path, sample: str) -> None:
    path = nanoaod / sample
    n = uproot.open(path)["Events"].num_entries
    _assert_reads_like_uproot(path, [(0, n), (n // 3, n // 2 + 1), (min(1, n), max(n - 1, min(1, n)))])


def _write_multibasket(path: Path, source: Path, compression: Any, rounds: int = 4) -> int:
    """A NanoAOD-like file with ``rounds`` baskets per branch (flat, jagged, bool, small ints)."""
    with uproot.open(source) as f:
        tree = f["Events"]
        arrays = tree.arrays(
            [
                "run",
                "event",
                "nMuon",
                "Muon_pt",
                "Muon_charge",
                "Muon_tightId",
                "nJet",
                "Jet_pt",
                "HLT_IsoMu24",
            ],
            library="ak",
        )
    parts: dict[str, Any] = {k: ak.to_numpy(arrays[k]) for k in ["run", "event", "HLT_IsoMu24"]}
    parts["Muon"] = ak.zip({k: arrays[f"Muon_{k}"] for k in ["pt", "charge", "tightId"]})
    parts["Jet"] = ak.zip({"pt": arrays["Jet_pt"]})
    types = {k: v.dtype if isinstance(v, np.ndarray) else v.type.content for k, v in parts.items()}
    with uproot.recreate(path, compression=compression) as out:
        tree = out.mktree("Events", types)
        for _ in range(rounds):
            tree.extend(parts)  # one basket per branch and call
    return rounds * len(arrays)


@pytest.mark.parametrize(
    "compression",
    [uproot.ZLIB(1), uproot.LZMA(2), uproot.LZ4(1), uproot.ZSTD(3), None],
    ids=["zlib", "lzma", "lz4", "zstd", "none"],
)
def test_ranges_that_cut_baskets_and_every_compression(
    nanoaod: Path, tmp_path: Path, compression: Any
) -> None:
    path = tmp_path / "multi.root"
    n = _write_multibasket(path, nanoaod / "nano_dimuon.root", compression)
    with uproot.open(path) as f:
        assert f["Events"]["Muon_pt"].num_baskets == 4
    ranges = [(0, n), (0, 1), (3, 77), (39, 41), (40, 80), (55, 155), (n - 1, n), (7, 7)]
    _assert_reads_like_uproot(path, ranges)


def test_consecutive_ranges_reuse_the_shared_basket(nanoaod: Path, tmp_path: Path) -> None:
    path = tmp_path / "multi.root"
    n = _write_multibasket(path, nanoaod / "nano_dimuon.root", uproot.ZLIB(1))
    with uproot.open(path) as f:
        tmap = TreeMap.read(f, str(path), "Events")
    fetch, close = local_fetch(str(path))
    reads: list[int] = []

    def counting(offset: int, size: int) -> bytes:
        reads.append(offset)
        return fetch(offset, size)

    reader = BasketReader(tmap, counting, str(path))
    pieces = [reader.read("Muon_pt", a, min(a + 30, n))[0] for a in range(0, n, 30)]
    close()
    assert len(reads) == 4  # each basket fetched once although chunks cut them
    np.testing.assert_array_equal(
        np.concatenate(pieces), _uproot_values(uproot.open(path)["Events"], "Muon_pt", 0, n)
    )


def test_saved_map_round_trips_and_refuses_another_file(nanoaod: Path, tmp_path: Path) -> None:
    path = nanoaod / "nano_dimuon.root"
    with uproot.open(path) as f:
        uuid = str(f.file.uuid)
        tmap = TreeMap.read(f, str(path), "Events", uuid)
    target = map_path(tmp_path / "abc.json")
    assert target.name == "abc.baskets.npz"
    tmap.save(target, "abc")
    loaded = TreeMap.load(target, "abc", uuid)
    assert loaded.types == tmap.types and loaded.entries == tmap.entries
    for name in ["Muon_pt", "nMuon", "HLT_IsoMu24"]:
        a, b = loaded.branch(name), tmap.branch(name)
        assert np.array_equal(a.seek, b.seek) and np.array_equal(a.entries, b.entries)
    with pytest.raises(BasketMapError, match="not for this file"):
        TreeMap.load(target, "abc", "another-uuid")
    with pytest.raises(BasketMapError, match="not for this file"):
        TreeMap.load(target, "another-key", uuid)
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(BasketMapError, match="damaged"):
        TreeMap.load(target, "abc", uuid)
    with pytest.raises(BasketMapError, match="no basket map"):
        TreeMap.load(tmp_path / "missing.npz", "abc", uuid)


def test_branches_the_map_cannot_read_go_through_uproot(nanoaod: Path) -> None:
    path = nanoaod / "nano_dimuon.root"
    with uproot.open(path) as f:
        tree = f["Events"]
        tmap = TreeMap.from_tree(tree)
        tmap._built["Muon_pt"] = unreadable(tmap.branch("Muon_pt"))
        tmap.types["Muon_pt"] = tmap._built["Muon_pt"].type
        with pytest.raises(BasketMapError, match="Muon_pt"):
            BasketReader(tmap, source_fetch(f), str(path)).read("Muon_pt", 0, 40)
        reader = BasketReader(tmap, source_fetch(f), str(path), uproot_fallback(lambda: tree))
        got, _, _ = reader.read("Muon_pt", 5, 30)
        np.testing.assert_array_equal(got, _uproot_values(tree, "Muon_pt", 5, 30))


def test_a_damaged_basket_names_file_branch_and_basket(nanoaod: Path, tmp_path: Path) -> None:
    path = tmp_path / "multi.root"
    _write_multibasket(path, nanoaod / "nano_dimuon.root", uproot.ZLIB(1))
    with uproot.open(path) as f:
        tmap = TreeMap.read(f, str(path), "Events")
    b = tmap.branch("Muon_pt")
    data = bytearray(path.read_bytes())
    at = int(b.seek[1]) + int(b.nbytes[1]) - 20
    data[at : at + 10] = b"\xff" * 10
    path.write_bytes(bytes(data))
    fetch, close = local_fetch(str(path))
    with pytest.raises(OSError, match=r"branch Muon_pt, basket 1"):
        BasketReader(tmap, fetch, str(path)).read("Muon_pt", 0, 160)
    close()


# ---- in the processing step ---------------------------------------------------------------


def test_jobs_read_through_the_map_and_never_decode_the_tree(
    nanoaod: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import assert_same_result
    from test_buffers import OFF, make_plans, run_all

    from coffea_smk.examples.dimuon import DimuonProcessor
    from coffea_smk.io import files as io_files

    files = [nanoaod / "nano_dy.root", nanoaod / "nano_dimuon.root"]
    plans = make_plans(files, tmp_path / "cache", 13)
    maps = sorted((tmp_path / "cache").rglob("*.baskets.npz"))
    assert len(maps) == 2  # one map per preprocessed file, beside its record

    reference, _ = run_all(plans, DimuonProcessor().process, OFF)  # with the maps

    def no_tree(*args: Any) -> Any:
        raise AssertionError("a processing job decoded the tree's metadata")

    monkeypatch.setattr(io_files, "tree_of", no_tree)
    result, chunks = run_all(plans, DimuonProcessor().process, OFF)
    assert_same_result(result, reference)
    assert sum(c["events"] for c in chunks) == 40 + 40
    # the fast path is taken for ordinary NanoAOD branches: nothing falls back to uproot
    assert all("Muon_pt" in c["columns"] and c["fallbacks"] == 0 for c in chunks)
    assert all(c["fallback_branches"] == [] for c in chunks)
    assert result["cutflow"]["nano_dimuon"]["muons"] == 84

    # without the maps (deleted, damaged): a warning, the branch list read from
    # the file instead, the same result
    monkeypatch.undo()
    maps[0].unlink()
    maps[1].write_bytes(b"not a map")
    with pytest.MonkeyPatch.context() as m:
        import logging

        records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda rec: records.append(rec.getMessage())  # type: ignore[method-assign]
        logging.getLogger("coffea_smk.engine.reading").addHandler(handler)
        m.setattr(logging.getLogger("coffea_smk.engine.reading"), "level", logging.WARNING)
        try:
            again, _ = run_all(plans, DimuonProcessor().process, OFF)
        finally:
            logging.getLogger("coffea_smk.engine.reading").removeHandler(handler)
    assert_same_result(again, reference)
    assert any("no basket map" in r for r in records) and any("damaged basket map" in r for r in records)


def test_a_basket_of_several_compression_blocks(tmp_path: Path) -> None:
    # ROOT compresses a basket in blocks of at most 16 MiB: a 40 MB basket has three
    path = tmp_path / "big.root"
    rng = np.random.default_rng(5)
    values = rng.normal(size=5_000_000)
    with uproot.recreate(path, compression=uproot.ZLIB(1)) as f:
        f.mktree("Events", {"x": values.dtype}).extend({"x": values})
    with uproot.open(path) as f:
        assert f["Events"]["x"].num_baskets == 1
        tmap = TreeMap.read(f, str(path), "Events")
        got, _, uncompressed = BasketReader(tmap, source_fetch(f), str(path)).read("x", 10, 4_999_990)
    assert uncompressed > 2 * 16 * 2**20
    np.testing.assert_array_equal(got, values[10:4_999_990])


# ---- what the reader does not trust ---------------------------------------------------------


def _record(path: Path, treename: str, cache: Path) -> PreprocessedFile:
    """Preprocess ``path`` as the workflow does: its record, with the map beside it."""
    from coffea_smk.engine.preprocess import FileIdentity, inspect_file, record_path

    st = path.stat()
    identity = FileIdentity(str(path), treename, st.st_size, st.st_mtime_ns)
    rpath = record_path(cache, identity)
    return PreprocessedFile(**inspect_file(identity, map_path(rpath)).model_dump(), record_path=str(rpath))


def test_a_map_of_another_reader_version_is_never_trusted(
    nanoaod: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import io
    import json
    import zipfile

    from coffea_smk.engine.preprocess import FileIdentity, read_record, record_path
    from coffea_smk.engine.reading import _basket_map
    from coffea_smk.io import basketmap as baskets

    path = nanoaod / "nano_dy.root"
    record = _record(path, "Events", tmp_path)
    assert record.reader == baskets.READER_VERSION
    target = map_path(record.record_path)
    assert _basket_map(record) is not None

    # the map as an older reader wrote it (no reader version): treated as missing
    with zipfile.ZipFile(target) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    with np.load(target) as npz:
        header = json.loads(npz["header"].tobytes())
    for old in [None, baskets.READER_VERSION - 1]:
        header["reader"] = old
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
        with zipfile.ZipFile(target, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, buf.getvalue() if name == "header.npy" else data)
        with pytest.raises(BasketMapError, match="another reader"):
            TreeMap.load(target, record.key, record.uuid)
        with caplog.at_level(logging.WARNING, logger="coffea_smk.engine.reading"):
            assert _basket_map(record) is None  # the job decodes the tree's metadata instead
        assert "another reader" in caplog.text

    # a preprocessing record of another reader is rebuilt (with its map)
    st = path.stat()
    identity = FileIdentity(str(path), "Events", st.st_size, st.st_mtime_ns)
    rpath = record_path(tmp_path, identity)
    rpath.write_text(record.model_dump_json(exclude={"record_path"}))
    assert read_record(rpath, identity) is not None
    older = {**record.model_dump(exclude={"record_path"}), "reader": baskets.READER_VERSION - 1}
    rpath.write_text(json.dumps(older))
    assert read_record(rpath, identity) is None


def test_an_lz4_checksum_mismatch_is_an_error_naming_file_and_branch(nanoaod: Path, tmp_path: Path) -> None:
    path = tmp_path / "multi.root"
    _write_multibasket(path, nanoaod / "nano_dimuon.root", uproot.LZ4(1))
    with uproot.open(path) as f:
        tmap = TreeMap.read(f, str(path), "Events")
    b = tmap.branch("Jet_pt")
    data = bytearray(path.read_bytes())
    at = int(b.seek[2]) + int(b.nbytes[2]) - 5  # inside the LZ4 block, after its checksum
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    fetch, close = local_fetch(str(path))
    reader = BasketReader(tmap, fetch, str(path), uproot_fallback(lambda: uproot.open(path)["Events"]))
    with pytest.raises(BasketReadError, match=r"multi.root: branch Jet_pt, basket 2 .*checksum mismatch"):
        reader.read("Jet_pt", 0, 160)
    assert reader.fallbacks(0, 160) == []  # damaged bytes are an error, not a fallback
    close()


def test_a_basket_in_an_unproven_layout_falls_back_visibly(
    nanoaod: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "multi.root"
    n = _write_multibasket(path, nanoaod / "nano_dimuon.root", None)
    with uproot.open(path) as f:
        tmap = TreeMap.read(f, str(path), "Events")
    b = tmap.branch("Muon_pt")
    data = bytearray(path.read_bytes())
    keylen = int.from_bytes(data[int(b.seek[1]) + 14 : int(b.seek[1]) + 16], "big")  # fKeylen
    at = int(b.seek[1]) + keylen - 19  # the TBasket header's version (3)
    assert data[at : at + 2] == b"\x00\x03"
    data[at + 1] = 7
    path.write_bytes(bytes(data))
    fetch, close = local_fetch(str(path))
    tree = uproot.open(path)["Events"]
    reader = BasketReader(tmap, fetch, str(path), uproot_fallback(lambda: tree))
    with caplog.at_level(logging.INFO, logger="coffea_smk.io.reader"):
        got, _, _ = reader.read("Muon_pt", 0, n)
        again, _, _ = reader.read("Muon_pt", 10, 20)
    close()
    np.testing.assert_array_equal(got, _uproot_values(tree, "Muon_pt", 0, n))
    np.testing.assert_array_equal(again, _uproot_values(tree, "Muon_pt", 10, 20))
    assert reader.slow == {"Muon_pt": "TBasket version 7"}
    assert reader.fallbacks(0, n) == reader.fallbacks(10, 20) == ["Muon_pt"]
    assert reader.fallbacks(0, 10) == []
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"{path}: branch Muon_pt is read by uproot: TBasket version 7"]  # once


def test_fallbacks_are_counted_in_the_chunk_metrics(rootfiles: Path, tmp_path: Path) -> None:
    from coffea_smk.engine.metrics import report
    from coffea_smk.engine.reading import EventsOptions, UnitReader
    from coffea_smk.io.files import open_file

    path = rootfiles / "uproot-issue513.root"
    record = _record(path, "Delphes", tmp_path)
    with UnitReader(EventsOptions(schema="nanoaod", prefetch=False)) as unit:
        rootfile = open_file(str(path))
        with rootfile, unit.open(rootfile, record, [(0, 4), (4, 10)]) as reader:
            with reader.chunk(0, 4, {}) as run:
                assert ak.sum(run.events.Particle_size) == 2519 + 2580 + 1992 + 1848  # the first of the two
                assert ak.sum(run.events.Event_size) == 4
            first = run.metrics(1.0, 1.0)
            with reader.chunk(4, 10, {}) as run:
                assert ak.sum(run.events.Event_size) == 6
            second = run.metrics(1.0, 1.0)
    assert first.fallbacks == 1 and first.fallback_branches == ("Particle_size",)
    assert second.fallbacks == 0 and second.fallback_branches == ()
    table = report({"dataset": "delphes", "chunks": [first.model_dump(), second.model_dump()]})
    assert "fallbacks" in table.splitlines()[0]
    assert table.splitlines()[-1] == "branches read by uproot instead of the basket reader: Particle_size"
