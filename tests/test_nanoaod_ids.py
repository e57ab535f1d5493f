"""NanoAOD id properties on coffea_smk's own events: equal to coffea's, lazy, and the
AttributeErrors for what only coffea's NanoEvents have."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import awkward as ak
import pytest
import uproot

from coffea_smk.buffers import FileBuffers
from coffea_smk.events import behaviors
from coffea_smk.events.nanoevents import TreeLayout

FILES = ["nano_dy.root", "nano_dimuon.root", "nano_tt_v15.root"]

IDS = {
    "Jet": ("isLoose", "isTight", "isTightLeptonVeto"),
    "FatJet": ("isLoose", "isTight", "isTightLeptonVeto"),
    "Electron": ("isVeto", "isLoose", "isMedium", "isTight"),
    "Photon": ("isLoose", "isMedium", "isTight"),
}
NEEDS = {"Jet": {"Jet_jetId"}, "FatJet": {"FatJet_jetId"}, "Electron": {"Electron_cutBased"}}

SCHEMA_HINT = "`schema: coffea`"


@functools.cache
def _layout(path: Path) -> tuple[TreeLayout, int]:
    tree = uproot.open(path)["Events"]
    return TreeLayout(tree), tree.num_entries


def _events(path: Path) -> tuple[Any, FileBuffers]:
    """Fresh lazy events of the whole file, and the store that counts what they read."""
    layout, n = _layout(path)
    store = FileBuffers(layout)
    return layout.events(0, n, {"dataset": "d"}, store=store), store


def _columns(store: FileBuffers, events: Any) -> set[str]:
    return set(store.stats(0, len(events)).columns)


@pytest.fixture(scope="module")
def coffea_events(nanoaod: Path) -> dict[str, Any]:
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in FILES:
            out[name] = NanoEventsFactory.from_root(
                {str(nanoaod / name): "Events"}, schemaclass=NanoAODSchema, mode="virtual"
            ).events()
    return out


def _coffea_value(events: Any, coll: str, prop: str) -> Any:
    try:
        return getattr(events[coll], prop)
    except AttributeError:
        return None


@pytest.mark.parametrize("name", FILES)
def test_ids_equal_coffea_and_read_only_their_branch(
    nanoaod: Path, coffea_events: dict[str, Any], name: str
) -> None:
    compared = 0
    for coll, props in IDS.items():
        for prop in props:
            ours, store = _events(nanoaod / name)  # fresh events: count this property's reads
            theirs = _coffea_value(coffea_events[name], coll, prop)
            if theirs is None:  # coffea has no value here (NanoAOD v15 has no jetId): nor have we
                with pytest.raises(AttributeError, match=rf"{coll}\.{prop} needs the branch {coll}_jetId"):
                    getattr(ours[coll], prop)
                assert not hasattr(ours[coll], prop)
                continue
            value = getattr(ours[coll], prop)
            assert ak.to_list(value) == ak.to_list(theirs), f"{name}: {coll}.{prop}"
            assert str(ak.type(value)) == str(ak.type(ak.without_parameters(theirs))), f"{coll}.{prop}"
            photon = "cutBased" if "cutBased" in ours.Photon.fields else "cutBasedBitmap"
            needed = NEEDS.get(coll, {f"Photon_{photon}"})
            assert _columns(store, ours) == {f"n{coll}", *needed}, f"{coll}.{prop}"
            compared += 1
    assert compared == (7 if name == "nano_tt_v15.root" else 13)


def test_photon_ids_use_the_bitmap_before_nanoaod_v9(nanoaod: Path) -> None:
    ours, store = _events(nanoaod / "nano_dy.root")
    assert "cutBased" not in ours.Photon.fields and "cutBasedBitmap" in ours.Photon.fields
    assert int(ak.sum(ours.Photon.isTight)) > 0
    assert _columns(store, ours) == {"nPhoton", "Photon_cutBasedBitmap"}
    v15, _ = _events(nanoaod / "nano_tt_v15.root")
    assert "cutBased" in v15.Photon.fields and int(ak.sum(v15.Photon.isMedium)) > 0


@pytest.mark.parametrize("name", ["nano_dy.root", "nano_tt_v15.root"])
def test_gen_flags_vertex_positions_and_sv_p4_equal_coffea(
    nanoaod: Path, coffea_events: dict[str, Any], name: str
) -> None:
    ours, store = _events(nanoaod / name)
    theirs = coffea_events[name]
    for flags in (["isPrompt"], ["isLastCopy", "fromHardProcess"], ["isPrompt", "isHardProcess"]):
        assert ak.to_list(ours.GenPart.hasFlags(*flags)) == ak.to_list(theirs.GenPart.hasFlags(*flags))
        assert ak.to_list(ours.GenPart.hasFlags(flags)) == ak.to_list(theirs.GenPart.hasFlags(flags))
    assert _columns(store, ours) == {"nGenPart", "GenPart_statusFlags"}
    with pytest.raises(ValueError, match="unknown status flag 'isPromt'"):
        ours.GenPart.hasFlags("isPromt")
    for c in "xyz":
        assert ak.to_list(ours.PV.pos[c]) == ak.to_list(theirs.PV.pos[c])
    for q in ("pt", "eta", "phi", "mass", "energy"):
        assert ak.to_list(getattr(ours.SV.p4, q)) == ak.to_list(getattr(theirs.SV.p4, q)), q
    assert ak.to_list(ours.SV.pos.x) == ak.to_list(theirs.SV.pos.x)


def test_collections_carry_coffea_class_names(nanoaod: Path) -> None:
    ours, _ = _events(nanoaod / "nano_dy.root")
    v15, _ = _events(nanoaod / "nano_tt_v15.root")
    named = {
        "Jet": "Jet", "FatJet": "FatJet", "Electron": "Electron", "Muon": "Muon", "Tau": "Tau",
        "Photon": "Photon", "GenPart": "GenParticle", "MET": "MissingET", "PV": "Vertex",
        "SV": "SecondaryVertex", "GenJet": "PtEtaPhiMCollection",
    }  # fmt: skip
    for coll, record in named.items():
        assert ours[coll].layout.purelist_parameter("__record__") == record, coll
    # v15 photons have no mass: ids, but no 4-vector
    assert v15.Photon.layout.purelist_parameter("__record__") == "Photon_NoVector"
    assert behaviors.record_name("Photon", {"pt", "eta", "phi", "mass", "charge"}) == "Photon"
    assert behaviors.record_name("Jet", {"pt", "eta", "phi", "mass", "charge"}) == "Jet_PtEtaPhiMCandidate"
    assert behaviors.record_name("boostedTau", {"pt", "eta", "phi", "mass", "charge"}) == "PtEtaPhiMCandidate"
    assert behaviors.record_name("HLT", {"IsoMu24"}) == "NanoCollection"
    # the vector behaviours are unchanged: sums of cartesian components, charges for candidates
    mu1, mu2 = ak.unzip(ak.combinations(ours.Muon, 2))
    assert ak.to_list(ak.flatten((mu1 + mu2).charge)) == ak.to_list(ak.flatten(mu1.charge + mu2.charge))
    j1, j2 = ak.unzip(ak.combinations(ours.Jet[ours.Jet.isTight], 2))
    assert len(ak.flatten((j1 + j2).mass)) > 0 and ak.all(ak.flatten(j1.isTight))
    assert len(ak.flatten(v15.SV.x)) > 0  # SV (x, y and pt, phi) used to be refused by vector
    first = ours.Jet[ak.num(ours.Jet) > 0][0][0]  # one jet, a record
    assert bool(first.isTight) == bool(first.jetId & 2) and first.TIGHTLEPVETO == 2


def _message(obj: Any, attr: str) -> str:
    with pytest.raises(AttributeError) as info:
        getattr(obj, attr)
    return str(info.value)


@pytest.mark.parametrize(
    ("coll", "attr"),
    [
        ("Muon", "matched_gen"),
        ("Muon", "matched_jet"),
        ("Electron", "matched_photon"),
        ("Jet", "matched_gen"),
        ("Jet", "matched_muons"),
        ("Jet", "constituents"),
        ("Jet", "charge"),
        ("FatJet", "subjets"),
        ("Tau", "matched_jet"),
        ("GenPart", "parent"),
        ("GenPart", "children"),
        ("Muon", "nearest"),
        ("Jet", "metric_table"),
        ("Muon", "jetIdxG"),
        ("Muon", "systematics"),
        ("MET", "r"),
        ("TrigObj", "mass"),
    ],
)
def test_coffea_only_attributes_name_schema_coffea(nanoaod: Path, coll: str, attr: str) -> None:
    ours, store = _events(nanoaod / "nano_dy.root")
    msg = _message(ours[coll], attr)
    assert msg.startswith(f"{coll}.{attr} is only in coffea's NanoEvents"), msg
    assert SCHEMA_HINT in msg and "ProcessorABC" in msg
    # on one event's collection too (a record for MET), reading nothing but the structure
    assert f"{coll}.{attr} is only in coffea's" in _message(ours[coll][0], attr)
    assert all(c.startswith("n") for c in _columns(store, ours))


def test_events_attributes_and_typos(nanoaod: Path) -> None:
    ours, store = _events(nanoaod / "nano_dy.root")
    msg = _message(ours, "describe_variations")
    assert msg.startswith("events.describe_variations is only in coffea's NanoEvents") and SCHEMA_HINT in msg
    assert _message(ours, "Jets") == "events has no field or property 'Jets'; did you mean 'Jet', 'nJet'?"
    assert _message(ours.Muon, "ptt") == "Muon has no field or property 'ptt'; did you mean 'pt'?"
    assert _message(ours.HLT, "IsoMu24x").startswith("HLT has no field or property 'IsoMu24x'; did you mean")
    assert _message(ours.Muon, "fooBar") == "Muon has no field or property 'fooBar'"
    assert SCHEMA_HINT not in _message(ours.Jet, "ptRaw")
    assert _columns(store, ours) == set()  # explaining reads nothing
    # fields and the library's own attributes are untouched
    assert ak.to_list(ours.Muon.tightId) == ak.to_list(ours.Muon["tightId"])
    assert ours.metadata == {"dataset": "d"} and isinstance(ours.Jet.fields, list)


def test_missing_jetid_in_nanoaod_v15_names_the_branch(nanoaod: Path) -> None:
    ours, store = _events(nanoaod / "nano_tt_v15.root")
    for coll in ("Jet", "FatJet"):
        for prop in IDS[coll]:
            msg = _message(ours[coll], prop)
            assert msg.startswith(
                f"{coll}.{prop} needs the branch {coll}_jetId, which this file does not have"
            )
            assert "NanoAOD v15 stores no jetId" in msg and "coffea's NanoEvents do not" in msg
    assert _columns(store, ours) == set()
