"""Lazy NanoAOD events: structure, laziness, and numerics equal to coffea's NanoEvents."""

from __future__ import annotations

import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from coffea_smk.buffers import FileBuffers
from coffea_smk.events.nanoevents import TreeLayout


def _events(path: Path, start: int = 0, stop: int | None = None, tree: str = "Events"):  # type: ignore[no-untyped-def]
    f = uproot.open(path)
    layout = TreeLayout(f[tree])
    stop = f[tree].num_entries if stop is None else stop
    store = FileBuffers(layout)
    return layout.events(start, stop, {"dataset": "d"}, store=store), store.stats(start, stop)


def _coffea_events(path: Path, start: int = 0, stop: int | None = None):  # type: ignore[no-untyped-def]
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NanoEventsFactory.from_root(
            {str(path): "Events"},
            schemaclass=NanoAODSchema,
            entry_start=start,
            entry_stop=stop,
            mode="virtual",
        ).events()


def test_only_touched_columns_are_read(nanoaod: Path) -> None:
    events, stats = _events(nanoaod / "nano_dimuon.root")
    assert stats.columns == set() and stats.bytes_compressed == 0
    assert int(ak.sum(ak.num(events.Muon, axis=1))) == 84
    assert stats.columns == {"nMuon"}
    _ = events.Muon.pt + 1
    _ = events.Muon.pt * 2
    assert stats.columns == {"nMuon", "Muon_pt"}
    assert 0 < stats.bytes_compressed and 0 < stats.bytes_uncompressed
    assert events.metadata == {"dataset": "d"}


@pytest.mark.parametrize("name", ["nano_dy.root", "nano_dimuon.root", "nano_tt_v15.root"])
def test_kinematics_equal_coffea(nanoaod: Path, name: str) -> None:
    ours, _ = _events(nanoaod / name, 3, 37)
    theirs = _coffea_events(nanoaod / name, 3, 37)
    for coll in ("Muon", "Jet", "Electron"):
        for field in ("pt", "eta", "phi", "mass"):
            assert ak.to_list(ours[coll][field]) == ak.to_list(theirs[coll][field]), f"{coll}.{field}"
    a1, b1 = ak.unzip(ak.combinations(ours.Muon, 2))
    a2, b2 = ak.unzip(ak.combinations(theirs.Muon, 2))
    for quantity in ("mass", "pt", "eta", "phi"):
        x = ak.to_numpy(ak.flatten(getattr(a1 + b1, quantity)))
        y = ak.to_numpy(ak.flatten(getattr(a2 + b2, quantity)))
        assert np.array_equal(x, y), quantity
    assert ak.to_list(ak.flatten(a1.delta_r(b1))) == ak.to_list(ak.flatten(a2.delta_r(b2)))
    assert ak.to_list(ak.flatten((a1 + b1).charge)) == ak.to_list(ak.flatten((a2 + b2).charge))
    met = "MET" if "MET" in theirs.fields else "PFMET"
    assert ak.to_list(ours[met].pt) == ak.to_list(theirs[met].pt)
    assert ak.to_list(ours.event) == ak.to_list(theirs.event)


def test_empty_tree_and_other_tree(nanoaod: Path) -> None:
    events, _ = _events(nanoaod / "nano_dy_empty.root")
    assert len(events) == 0 and len(ak.flatten(events.Muon.pt)) == 0
    special, _ = _events(nanoaod / "nano_dy_SpecialTree.root", tree="NotEvents")
    assert int(ak.sum(ak.num(special.Muon, axis=1))) == 18
