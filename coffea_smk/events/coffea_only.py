"""What coffea's NanoEvents have and coffea_smk's own events do not, and the messages that say so.

An attribute coffea alone provides (the cross-references such as ``matched_gen``,
methods such as ``nearest``, the systematics machinery, fields coffea adds such as
``Jet.charge``) is an ``AttributeError`` that names it and says that ``schema:
coffea`` gives coffea's NanoEvents, which have it; a name that is neither reads as a
missing field, with the closest names the collection has.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import awkward as ak
from vector.backends.awkward import MomentumAwkward2D, MomentumAwkward4D

__all__ = ["COFFEA_HINT", "coffea_only", "collection_name", "explain"]

COFFEA_HINT = (
    "coffea_smk's own events do not provide it; `schema: coffea` in the config (or a "
    "processor subclassing coffea.processor.ProcessorABC) gives coffea's NanoEvents, "
    "which do"
)


def collection_name(obj: Any) -> str:
    """The collection ``obj`` is (or is from): ``"Jet"``, ``"MET"``; else its record's name."""
    layout = obj.layout
    if isinstance(layout, ak.record.Record):
        layout = layout.array
    for key in ("collection_name", "__record__"):
        name = layout.purelist_parameter(key)
        if isinstance(name, str):
            return name
    return type(obj).__name__


# ---- what coffea's NanoEvents have and coffea_smk's do not ------------------------------

_SYSTEMATICS = dict.fromkeys(
    ("systematics", "add_systematic", "describe_variations", "explodes_how", "add_kind"),
    "part of the systematics machinery",
)
_SYSTEMATIC_CLASSES = {
    "NanoEvents", "Electron", "LowPtElectron", "Muon", "Tau", "Photon", "Jet", "FatJet",
    "MissingET",
}  # fmt: skip


def _ref(target: str, branch: str, verb: str = "points") -> str:
    return f"a cross-reference to the {target} that {branch} {verb} to"


def _zeros(field: str) -> str:
    return f"a field of zeros, added when the file has no {field}"


_LORENTZ_METHODS = {
    "nearest": "a method giving the closest object of another collection",
    "metric_table": "a method giving a metric (delta_r by default) against another collection",
    "boostvec": "what vector calls .to_beta3()",
    "pvec": "what vector calls .to_Vector3D()",
    "absolute": "the mass of a Lorentz vector",
    "multiply": "the product with a number (coffea_smk's vectors only add and subtract)",
    "divide": "the division by a number (coffea_smk's vectors only add and subtract)",
    "negative": "the negated vector (coffea_smk's vectors only add and subtract)",
}
_TWO_VECTOR_METHODS = {
    "r": "what vector calls .rho",
    "r2": "what vector calls .rho2",
    "absolute": "what vector calls .rho",
    "multiply": _LORENTZ_METHODS["multiply"],
    "divide": _LORENTZ_METHODS["divide"],
    "negative": _LORENTZ_METHODS["negative"],
    "sum": "the vector sum of a MissingET collection",
}

COFFEA_ONLY: Mapping[str, Mapping[str, str]] = {
    "GenParticle": {
        "parent": _ref("GenPart", "genPartIdxMother"),
        "children": "a cross-reference to the GenPart whose genPartIdxMother is this one",
        "distinctParent": "a cross-reference to the first mother with another pdgId",
        "distinctChildren": "a cross-reference to the children with another pdgId",
        "distinctChildrenDeep": "a cross-reference to the descendants with another pdgId",
    },
    "GenVisTau": {"parent": _ref("GenPart", "genPartIdxMother")},
    "Electron": {
        "matched_gen": _ref("GenPart", "genPartIdx"),
        "matched_jet": _ref("Jet", "jetIdx"),
        "matched_photon": _ref("Photon", "photonIdx"),
    },
    "LowPtElectron": {
        "matched_gen": _ref("GenPart", "genPartIdx"),
        "matched_electron": _ref("Electron", "electronIdx"),
        "matched_photon": _ref("Photon", "photonIdx"),
    },
    "Muon": {
        "matched_gen": _ref("GenPart", "genPartIdx"),
        "matched_jet": _ref("Jet", "jetIdx"),
        "matched_fsrPhoton": _ref("FsrPhoton", "fsrPhotonIdx"),
    },
    "Tau": {
        "matched_gen": _ref("GenPart", "genPartIdx"),
        "matched_jet": _ref("Jet", "jetIdx"),
    },
    "Photon": {
        "matched_gen": _ref("GenPart", "genPartIdx"),
        "matched_jet": _ref("Jet", "jetIdx"),
        "matched_electron": _ref("Electron", "electronIdx"),
        "mass": _zeros("Photon_mass"),
        "charge": _zeros("Photon_charge"),
    },
    "FsrPhoton": {
        "matched_muon": _ref("Muon", "muonIdx"),
        "mass": _zeros("FsrPhoton_mass"),
        "charge": _zeros("FsrPhoton_charge"),
    },
    "Jet": {
        "matched_gen": _ref("GenJet", "genJetIdx"),
        "matched_electrons": _ref("Electrons", "electronIdx1 and electronIdx2", "point"),
        "matched_muons": _ref("Muons", "muonIdx1 and muonIdx2", "point"),
        "constituents": "a cross-reference to the PF candidates (PFNano only)",
        "charge": _zeros("Jet_charge"),
    },
    "FatJet": {
        "matched_gen": _ref("GenJetAK8", "genJetAK8Idx"),
        "subjets": _ref("SubJets", "subJetIdx1 and subJetIdx2", "point"),
        "constituents": "a cross-reference to the PF candidates (PFNano only)",
        "charge": _zeros("FatJet_charge"),
    },
}
"""Per coffea class: the attributes coffea's NanoAOD classes define and coffea_smk's lack."""

_COLLECTION_FIELDS = {
    ("TrigObj", "mass"): _zeros("TrigObj_mass"),
    ("IsoTrack", "mass"): _zeros("IsoTrack_mass"),
    ("SoftActivityJet", "mass"): _zeros("SoftActivityJet_mass"),
    ("CorrT1METJet", "mass"): "an alias of CorrT1METJet.rawMass",
    ("CorrT1METJet", "pt"): "an alias of CorrT1METJet.rawPt",
}


def coffea_only(obj: Any, where: str) -> str | None:
    """What ``where`` is on coffea's counterpart of ``obj``, if coffea alone has it."""
    cls = type(obj).coffea_class
    known = COFFEA_ONLY.get(cls, {}).get(where)
    if known is None:
        known = _COLLECTION_FIELDS.get((collection_name(obj), where))
    if known is None and cls in _SYSTEMATIC_CLASSES:
        known = _SYSTEMATICS.get(where)
    if known is None and isinstance(obj, MomentumAwkward4D):
        known = _LORENTZ_METHODS.get(where)
    if known is None and isinstance(obj, MomentumAwkward2D):
        known = _TWO_VECTOR_METHODS.get(where)
    if known is None and where.endswith("IdxG") and where[:-1] in obj.fields:
        known = f"the global index for {where[:-1]} (an index into the whole chunk)"
    return known


def explain(obj: Any, where: str) -> str:
    """The message of the ``AttributeError`` for ``obj.where``."""
    coll = collection_name(obj)
    coffea = coffea_only(obj, where)
    if coffea is not None:
        return f"{coll}.{where} is only in coffea's NanoEvents, where it is {coffea}. {COFFEA_HINT}."
    names = [*obj.fields, *(n for n in dir(type(obj)) if not n.startswith("_"))]
    close = difflib.get_close_matches(where, names, n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(repr(c) for c in dict.fromkeys(close))}?" if close else ""
    return f"{coll} has no field or property {where!r}{hint}"
