"""Skim io: NanoAOD-flat branches of events (ours and coffea's) and the skim files.

The oracle is uproot reading the source file directly with the same selection; files
written are read back by uproot, by ``ak.from_parquet`` and by coffea's NanoEvents.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot

from coffea_smk.buffers import FileBuffers
from coffea_smk.events.nanoevents import TreeLayout
from coffea_smk.io.skimfiles import SkimSchemaError, compact, read_branches, write_piece
from coffea_smk.io.skimtable import SkimColumnError, skim_branches
from coffea_smk.spec.skims import SkimSettings

IDS = ("run", "luminosityBlock", "event")


def _ours(path: Path) -> tuple[Any, FileBuffers]:
    tree = uproot.open(path)["Events"]
    layout = TreeLayout(tree)
    store = FileBuffers(layout)
    return layout.events(0, tree.num_entries, {"dataset": "d"}, store=store), store


def _coffea(path: Path, mode: str = "virtual") -> Any:
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NanoEventsFactory.from_root(
            {str(path): "Events"}, schemaclass=NanoAODSchema, mode=mode
        ).events()


def _source(path: Path, names: list[str], mask: Any = None) -> dict[str, ak.Array]:
    arrays = uproot.open(path)["Events"].arrays(names)
    if mask is not None:
        arrays = arrays[np.asarray(mask)]
    return {name: arrays[name] for name in names}


def _equal(a: ak.Array, b: ak.Array) -> bool:
    return bool(ak.array_equal(a, b, dtype_exact=True, equal_nan=True, check_parameters=False))


def _counters(path: Path) -> set[str]:
    tree = uproot.open(path)["Events"]
    return {b.count_leaf.member("fName") for b in tree.branches if b.count_leaf is not None}


# ---- skim_branches --------------------------------------------------------------------------
def test_own_events_selection_reads_only_what_is_asked(nanoaod: Path) -> None:
    path = nanoaod / "nano_dy.root"
    events, store = _ours(path)
    mask = ak.num(events.Muon) >= 1
    out = skim_branches(events[mask], ("Muon", "Jet_pt", "MET_*", *IDS), "sel")
    muon = [k for k in uproot.open(path)["Events"].keys() if k.startswith("Muon_")]
    met = [k for k in uproot.open(path)["Events"].keys() if k.startswith("MET_")]
    assert list(out) == [*muon, "Jet_pt", *met, *IDS]
    expected = _source(path, list(out), mask)
    for name, values in out.items():
        assert _equal(values, expected[name]), name
        assert not ak.parameters(values) and values.layout.is_equal_to(ak.to_packed(values).layout)
    assert len(out["run"]) == int(ak.sum(mask)) == 12
    read = {c.removesuffix("/offsets") for c in store.stats(0, 40).columns}
    assert {"Muon_pt", "Jet_pt", "run"} <= read <= {*out, "nMuon", "nJet"}, read - {*out, "nMuon", "nJet"}


def test_own_events_every_branch(nanoaod: Path) -> None:
    path = nanoaod / "nano_dy.root"
    events, _ = _ours(path)
    out = skim_branches(events, None, "all")
    tree = uproot.open(path)["Events"]
    skipped = set(TreeLayout(tree).skipped)
    assert set(out) == set(tree.keys()) - _counters(path) - skipped
    assert not any(name.startswith("n") and name[1:] + "_pt" in out for name in out)
    assert _equal(out["LHEPdfWeight"], tree["LHEPdfWeight"].array())


@pytest.mark.parametrize(("sample", "mode"), [("nano_tt_v15.root", "virtual"), ("nano_dy.root", "eager")])
def test_coffea_events_equal_uproot(nanoaod: Path, sample: str, mode: str) -> None:
    path = nanoaod / sample
    events = _coffea(path, mode)
    mask = (ak.num(events.Jet) >= 4) & (ak.num(events.Electron) >= 1)
    out = skim_branches(events[mask], ("Electron", "Jet_*", "genWeight", "event"), "tt")
    branches = set(uproot.open(path)["Events"].keys())
    assert not [n for n in out if re.search(r"Idx\w*G$", n)]  # coffea's global indices are not data
    assert set(out) - branches == {"Jet_charge"}  # a field coffea's schema adds (zeros)
    assert {n for n in branches if n.startswith(("Jet_", "Electron_"))} <= set(out)
    names = [n for n in out if n in branches]
    expected = _source(path, names, mask)
    for name in names:
        assert _equal(out[name], expected[name]), name
    assert 0 < len(out["event"]) < 200


def test_collections_records_plain_and_computed(nanoaod: Path) -> None:
    path = nanoaod / "nano_dy.root"
    events = _coffea(path)
    source = _source(path, ["Muon_pt", "Muon_eta", "MET_pt", "nMuon", "nJet"])
    muons = skim_branches(events.Muon, None, "ignored")
    assert "Muon_pt" in muons and not [n for n in muons if not n.startswith("Muon_")]
    assert _equal(muons["Muon_pt"], source["Muon_pt"]) and _equal(muons["Muon_eta"], source["Muon_eta"])
    assert _equal(skim_branches(events.MET, ("MET_pt",), "x")["MET_pt"], source["MET_pt"])
    assert list(skim_branches(events.Muon.pt, None, "mupt")) == ["mupt"]
    plain = skim_branches(np.arange(40, dtype=np.int16), None, "index")
    assert plain["index"].type.content.primitive == "int16" and len(plain["index"]) == 40
    events["dimuon_pt"] = ak.sum(events.Muon.pt, axis=1)
    events["Muon", "pt2"] = events.Muon.pt * 2
    out = skim_branches(events, ("dimuon_pt", "Muon_pt2", "nMuon", "nJet"), "x")
    assert list(out) == ["dimuon_pt", "Muon_pt2", "nMuon", "nJet"]
    assert np.allclose(ak.to_numpy(out["dimuon_pt"]), ak.to_numpy(ak.sum(source["Muon_pt"], axis=1)))
    assert _equal(out["Muon_pt2"], source["Muon_pt"] * 2)
    assert ak.to_list(out["nMuon"]) == ak.to_list(source["nMuon"])
    assert ak.to_list(out["nJet"]) == ak.to_list(source["nJet"])
    zipped = ak.zip({"met": events.MET.pt, "mu": events.Muon.pt}, depth_limit=1)
    assert list(skim_branches(zipped, None, "z")) == ["met", "mu"]
    assert "Muon_matched_gen" not in skim_branches(events, ("Muon_*",), "x")


def test_unknown_column_names_it_and_the_branches(nanoaod: Path) -> None:
    events, _ = _ours(nanoaod / "nano_dy.root")
    with pytest.raises(SkimColumnError, match=r"'Muonn'.*closest: .*Muon_") as err:
        skim_branches(events, ("Muon", "Muonn"), "x")
    assert "MET_*" in str(err.value) and "run" in str(err.value)
    with pytest.raises(SkimColumnError, match=r"'Nope_\*'.*the branches are: Muon_pt"):
        skim_branches(ak.zip({"Muon_pt": events.Muon.pt}, depth_limit=1), ("Nope_*",), "x")


# ---- skim files ------------------------------------------------------------------------------
@functools.cache
def _dy_branches(path: Path) -> dict[str, ak.Array]:
    events, _ = _ours(path)
    return skim_branches(events, ("Muon", "Jet", "MET", "LHEPdfWeight", *IDS), "dy")


def _dy_piece(nanoaod: Path, start: int, stop: int) -> dict[str, ak.Array]:
    return {name: values[start:stop] for name, values in _dy_branches(nanoaod / "nano_dy.root").items()}


def test_root_piece_reads_back_in_coffea_and_uproot(nanoaod: Path, tmp_path: Path) -> None:
    path = nanoaod / "nano_dy.root"
    events, _ = _ours(path)
    mask = ak.num(events.Muon) >= 2
    branches = skim_branches(events[mask], ("Muon", "Jet", "MET", "LHEPdfWeight", *IDS), "dy")
    done = write_piece(str(tmp_path / "piece.root"), branches, SkimSettings(format="root", row_group_rows=2))
    assert done.rows == int(ak.sum(mask)) and done.bytes == os.path.getsize(done.path)
    tree = uproot.open(done.path)["Events"]
    leaves = {b.name: b.count_leaf for b in tree.branches}
    assert leaves["Muon_pt"].member("fName") == leaves["Muon_eta"].member("fName") == "nMuon"
    assert leaves["LHEPdfWeight"].member("fName") == "nLHEPdfWeight" and leaves["MET_pt"] is None
    assert tree["Muon_pt"].num_baskets == -(-done.rows // 2)
    back = read_branches(done.path)
    assert list(back) == list(branches)
    expected = _source(path, list(branches), mask)
    for name in branches:
        assert _equal(back[name], expected[name]), name
    theirs = _coffea(Path(done.path))
    for coll, field in [
        ("Muon", "pt"),
        ("Muon", "charge"),
        ("Muon", "tightId"),
        ("Jet", "eta"),
        ("MET", "pt"),
    ]:
        assert _equal(theirs[coll][field], expected[f"{coll}_{field}"]), f"{coll}.{field}"
    assert _equal(theirs.event, expected["event"])
    assert ak.to_list(ak.num(ak.combinations(theirs.Muon, 2))) == ak.to_list(
        ak.num(ak.combinations(events[mask].Muon, 2))
    )


def test_parquet_piece_reads_back(nanoaod: Path, tmp_path: Path) -> None:
    branches = _dy_piece(nanoaod, 5, 38)
    settings = SkimSettings(format="parquet", row_group_rows=10, compression="zstd", compression_level=3)
    done = write_piece(str(tmp_path / "piece.parquet"), branches, settings)
    table = ak.from_parquet(done.path)
    assert table.fields == list(branches) and "nMuon" not in table.fields and done.rows == 33
    back = read_branches(done.path)
    for name, values in branches.items():
        assert _equal(table[name], values) and _equal(back[name], values), name
    meta = pq.ParquetFile(done.path).metadata
    assert meta.num_row_groups == 4 and meta.row_group(0).column(0).compression == "ZSTD"
    assert [p.name for p in tmp_path.iterdir()] == ["piece.parquet"]  # no temporary file left


@pytest.mark.parametrize("fmt", ["parquet", "root"])
def test_compact_into_several_files_in_order(nanoaod: Path, tmp_path: Path, fmt: str) -> None:
    settings = SkimSettings(format=fmt, target_size_mb=0.001, row_group_rows=4)
    bounds = [(0, 9), (9, 9), (9, 30), (30, 40)]
    pieces = [
        write_piece(str(tmp_path / f"piece{i}{settings.suffix}"), _dy_piece(nanoaod, a, b), settings).path
        for i, (a, b) in enumerate(bounds)
    ]
    runs = uproot.open(nanoaod / "nano_dy.root")["Runs"].arrays(library="np")
    parts = compact(pieces, str(tmp_path / "out"), settings, runs=runs)
    assert [Path(p.path).name for p in parts] == [f"part-000{i}{settings.suffix}" for i in range(3)]
    assert sorted(os.listdir(tmp_path / "out")) == [Path(p.path).name for p in parts]
    assert [p.rows for p in parts] == [9, 21, 10]
    whole = _dy_piece(nanoaod, 0, 40)
    back = [read_branches(p.path) for p in parts]
    for name, values in whole.items():
        assert _equal(ak.concatenate([b[name] for b in back]), values), name
    if fmt == "root":
        first, second = (uproot.open(p.path) for p in parts[:2])
        assert "Runs" in first and "Runs" not in second
        assert first["Runs"]["genEventSumw_"].array(library="np").tolist() == runs["genEventSumw_"].tolist()
        assert first["Runs"]["LHEScaleSumw_"].count_leaf.member("fName") == "nLHEScaleSumw_"
    one = compact(pieces, str(tmp_path / "one"), settings.model_copy(update={"target_size_mb": 100}))
    assert [p.rows for p in one] == [40]


def _tiny(path: Path, settings: SkimSettings, **branches: Any) -> str:
    data = {"run": ak.Array(np.arange(3, dtype=np.uint32)), **{k: ak.Array(v) for k, v in branches.items()}}
    return write_piece(str(path), data, settings).path


@pytest.mark.parametrize("fmt", ["parquet", "root"])
def test_compact_widens_types(tmp_path: Path, fmt: str) -> None:
    settings = SkimSettings(format=fmt)
    ext = settings.suffix
    a = _tiny(tmp_path / f"a{ext}", settings, x=np.array([1, 2, 3], np.int32), Jet_pt=[[1.0], [], [2.0]])
    b = _tiny(
        tmp_path / f"b{ext}",
        settings,
        x=np.array([2**40, 5, 6], np.int64),
        Jet_pt=ak.values_astype(ak.Array([[3.5, 4.5], [], []]), np.float32),
    )
    (part,) = compact([a, b], str(tmp_path / "out"), settings)
    back = read_branches(part.path)
    assert back["x"].type.content.primitive == "int64" and back["x"].tolist() == [1, 2, 3, 2**40, 5, 6]
    assert str(back["Jet_pt"].type) == "6 * var * float64"
    assert back["Jet_pt"].tolist() == [[1.0], [], [2.0], [3.5, 4.5], [], []]


def test_parquet_unifies_missing_and_optional_branches(tmp_path: Path) -> None:
    settings = SkimSettings(format="parquet")
    a = _tiny(tmp_path / "a.parquet", settings, x=[1.0, 2.0, 3.0])
    b = _tiny(tmp_path / "b.parquet", settings, x=[1.0, None, 3.0], y=[[1], [2], []])
    (part,) = compact([a, b], str(tmp_path / "out"), settings)
    back = read_branches(part.path)
    assert back["x"].tolist() == [1.0, 2.0, 3.0, 1.0, None, 3.0]
    assert back["y"].tolist() == [None, None, None, [1], [2], []]


@pytest.mark.parametrize("fmt", ["parquet", "root"])
def test_compact_refuses_what_does_not_unify(tmp_path: Path, fmt: str) -> None:
    settings = SkimSettings(format=fmt, target_size_mb=0.001)
    ext = settings.suffix
    a = _tiny(tmp_path / f"a{ext}", settings, x=[1, 2, 3])
    b = _tiny(tmp_path / f"b{ext}", settings, x=[1, 2, 3])
    c = _tiny(tmp_path / f"c{ext}", settings, x=[1.5, 2.0, 3.0])
    with pytest.raises(SkimSchemaError, match=rf"'x' is int64 in .*a{ext} but float64 in .*c{ext}"):
        compact([a, b, c], str(tmp_path / "out"), settings)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    d = _tiny(tmp_path / f"d{ext}", settings, x=[1, 2, 3], z=[0.5, 1.0, 2.0])
    if fmt == "root":
        with pytest.raises(SkimSchemaError, match=rf"'z' is in .*d{ext} but not in .*a{ext}"):
            compact([a, d], str(tmp_path / "out"), settings)
    with pytest.raises(SkimSchemaError, match="ROOT has no missing values"):
        _tiny(tmp_path / "e.root", SkimSettings(format="root"), x=[1.0, None, 2.0])
    assert not (tmp_path / "e.root").exists() and not list(tmp_path.glob(".e.root.tmp-*"))


def test_root_counters_shared_by_a_collection(tmp_path: Path) -> None:
    settings = SkimSettings(format="root")
    with pytest.raises(SkimSchemaError, match=r"'Jet_a' and 'Jet_b' differ in their lengths"):
        _tiny(tmp_path / "a.root", settings, Jet_a=[[1], [], []], Jet_b=[[1], [2], []])
    path = _tiny(tmp_path / "b.root", settings, nJet=np.array([1, 0, 2], np.int32), Jet_a=[[1], [], [2, 3]])
    assert set(uproot.open(path)["Events"].keys()) == {"run", "nJet", "Jet_a"}
    with pytest.raises(SkimSchemaError, match="'nJet' is not the counter"):
        _tiny(tmp_path / "c.root", settings, nJet=np.array([1, 1, 2], np.int32), Jet_a=[[1], [], [2, 3]])


@pytest.mark.parametrize("fmt", ["parquet", "root"])
def test_zero_row_pieces(nanoaod: Path, tmp_path: Path, fmt: str) -> None:
    settings = SkimSettings(format=fmt)
    empty = {name: values[:0] for name, values in _dy_piece(nanoaod, 0, 40).items()}
    done = write_piece(str(tmp_path / f"empty{settings.suffix}"), empty, settings)
    assert done.rows == 0
    back = read_branches(done.path)
    assert list(back) == list(empty) and all(len(v) == 0 for v in back.values())
    assert str(back["Muon_pt"].type) == "0 * var * float32"
    if fmt == "root":
        assert len(_coffea(Path(done.path)).Muon.pt) == 0
    full = write_piece(str(tmp_path / f"full{settings.suffix}"), _dy_piece(nanoaod, 0, 5), settings).path
    (part,) = compact([done.path, done.path], str(tmp_path / "only_empty"), settings)
    assert part.rows == 0 and read_branches(part.path)["run"].tolist() == []
    parts = compact([done.path, full, done.path], str(tmp_path / "mixed"), settings)
    assert [p.rows for p in parts] == [5]
    assert compact([], str(tmp_path / "none"), settings) == []
