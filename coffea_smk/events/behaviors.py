"""Behaviours of NanoAOD collections: Lorentz vectors built on scikit-hep ``vector``, and
the NanoAOD ids.

Records named ``PtEtaPhiMCandidate`` (pt, eta, phi, mass, charge),
``PtEtaPhiMLorentzVector`` (pt, eta, phi, mass), ``LorentzVector`` (x, y, z, t),
``Candidate`` (x, y, z, t, charge) and ``PolarTwoVector`` (pt, phi) get all of
``vector``'s properties (``.mass``, ``.pt``, ``.eta``, ``.energy`` ...) plus the
coffea spellings ``delta_r``, ``delta_phi`` and ``sum``. Adding two vectors sums
their cartesian components (and charges, for candidates), as coffea does, so
masses and angles agree with coffea's to the last bit.

A collection that coffea's NanoAODSchema gives a class of its own (``Jet``,
``Electron``, ``GenPart`` as ``GenParticle``, ``MET`` as ``MissingET`` ...) gets a record
of that name, which adds that class's id properties
(:mod:`coffea_smk.events.nanoaod_ids`) to the vector behaviour its fields allow; when its
fields are not the usual ones (a ``Photon`` without ``mass``), the name says which
behaviour it got instead (``Photon_NoVector``). Every record explains a missing
attribute: coffea-only ones name ``schema: coffea``, typos list close field names.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np
import vector
from vector.backends.awkward import MomentumAwkward2D, MomentumAwkward4D

from coffea_smk.events import nanoaod_ids
from coffea_smk.events.nanoaod_ids import NanoCollection

behavior: dict[Any, Any] = dict(vector.backends.awkward.behavior)


@ak.mixin_class(behavior)
class PolarTwoVector(NanoCollection, MomentumAwkward2D):
    """A transverse vector (pt, phi), e.g. MET."""

    def delta_phi(self, other: Any) -> Any:
        """Azimuthal difference in [-pi, pi)."""
        return self.deltaphi(other)


@ak.mixin_class(behavior)
class LorentzVector(NanoCollection, MomentumAwkward4D):
    """A cartesian Lorentz vector (x, y, z, t)."""

    def delta_r(self, other: Any) -> Any:
        """Distance in the (eta, phi) plane."""
        return self.deltaR(other)

    def delta_r2(self, other: Any) -> Any:
        """Squared distance in the (eta, phi) plane."""
        return self.deltaR2(other)

    def delta_phi(self, other: Any) -> Any:
        """Azimuthal difference in [-pi, pi)."""
        return self.deltaphi(other)

    def sum(self, axis: int = -1) -> Any:
        """Sum vectors along ``axis`` through their cartesian components."""
        return _zip_cartesian(self, axis=axis)


@ak.mixin_class(behavior)
class PtEtaPhiMLorentzVector(LorentzVector):
    """A Lorentz vector given by pt, eta, phi and mass (jets, leptons)."""


@ak.mixin_class(behavior)
class Candidate(LorentzVector):
    """A cartesian Lorentz vector with a charge."""

    def sum(self, axis: int = -1) -> Any:
        return _zip_cartesian(self, axis=axis, charge=True)


@ak.mixin_class(behavior)
class PtEtaPhiMCandidate(Candidate, PtEtaPhiMLorentzVector):
    """A charged particle given by pt, eta, phi, mass and charge."""


def _zip_cartesian(
    v: Any, *, axis: int | None = None, charge: bool = False, other: Any = None, sign: int = 1
) -> Any:
    def comp(name: str) -> Any:
        a = getattr(v, name)
        if other is not None:
            return a + getattr(other, name) if sign > 0 else a - getattr(other, name)
        return ak.sum(a, axis=axis)

    fields = {name: comp(name) for name in ("x", "y", "z", "t")}
    if charge:
        fields["charge"] = comp("charge")
    return ak.zip(fields, with_name="Candidate" if charge else "LorentzVector", behavior=behavior)


_KINDS: dict[str | None, tuple[type, ...]] = {
    None: (),
    "PolarTwoVector": (PolarTwoVector,),
    "PtEtaPhiMLorentzVector": (PtEtaPhiMLorentzVector,),
    "PtEtaPhiMCandidate": (PtEtaPhiMCandidate,),
}
"""The vector behaviours a record can get, by name."""

COFFEA_CLASSES: dict[str, str] = {
    **dict.fromkeys(
        ("CaloMET", "ChsMET", "GenMET", "MET", "METFixEE2017", "PuppiMET", "RawMET",
         "RawPuppiMET", "TkMET"),
        "MissingET",
    ),
    **dict.fromkeys(
        ("IsoTrack", "SoftActivityJet", "TrigObj", "GenDressedLepton", "GenIsolatedPhoton",
         "GenJet", "GenJetAK8", "LHEPart", "SubGenJetAK8", "SubJet", "CorrT1METJet"),
        "PtEtaPhiMCollection",
    ),
    **{name: name for name in ("Jet", "FatJet", "Electron", "LowPtElectron", "Muon", "Photon",
                               "FsrPhoton", "Tau", "GenVisTau")},
    "GenPart": "GenParticle",
    "PV": "Vertex",
    "SV": "SecondaryVertex",
}  # fmt: skip
"""NanoAOD collection -> the class coffea's NanoAODSchema gives it (as in coffea 2026.9)."""

_NATURAL: dict[str, tuple[type[NanoCollection], str | None]] = {
    "Jet": (nanoaod_ids.Jet, "PtEtaPhiMLorentzVector"),
    "FatJet": (nanoaod_ids.FatJet, "PtEtaPhiMLorentzVector"),
    "GenParticle": (nanoaod_ids.GenParticle, "PtEtaPhiMLorentzVector"),
    "PtEtaPhiMCollection": (NanoCollection, "PtEtaPhiMLorentzVector"),
    "Electron": (nanoaod_ids.Electron, "PtEtaPhiMCandidate"),
    "Photon": (nanoaod_ids.Photon, "PtEtaPhiMCandidate"),
    "LowPtElectron": (NanoCollection, "PtEtaPhiMCandidate"),
    "Muon": (NanoCollection, "PtEtaPhiMCandidate"),
    "Tau": (NanoCollection, "PtEtaPhiMCandidate"),
    "GenVisTau": (NanoCollection, "PtEtaPhiMCandidate"),
    "FsrPhoton": (NanoCollection, None),
    "MissingET": (NanoCollection, "PolarTwoVector"),
    "Vertex": (nanoaod_ids.Vertex, None),
    "SecondaryVertex": (nanoaod_ids.SecondaryVertex, None),
}
"""coffea class -> (its properties, the vector behaviour NanoAOD's fields usually give it)."""


def _class_name(coffea_class: str, kind: str | None) -> str:
    natural = _NATURAL[coffea_class][1]
    return coffea_class if kind == natural else f"{coffea_class}_{kind or 'NoVector'}"


def _make_collection_classes() -> tuple[list[str], list[str]]:
    # One class per (coffea class, vector kind): a record name has one class, and
    # vector refuses records whose fields are not its coordinates.
    lorentz, charged = [], []
    for coffea_class, (props, _) in _NATURAL.items():
        mixin = props
        if props is NanoCollection:  # no properties, only coffea's name for the messages
            mixin = type(f"_{coffea_class}", (NanoCollection,), {"coffea_class": coffea_class})
        for kind, bases in _KINDS.items():
            name = _class_name(coffea_class, kind)
            cls = type(name, (mixin, *bases), {"__module__": __name__, "__doc__": props.__doc__})
            ak.mixin_class(behavior)(cls)
            if kind in ("PtEtaPhiMLorentzVector", "PtEtaPhiMCandidate"):
                lorentz.append(name)
            if kind == "PtEtaPhiMCandidate":
                charged.append(name)
    return lorentz, charged


# A collection or group without a class of its own (HLT, Flag) still explains.
ak.mixin_class(behavior)(type("NanoCollection", (NanoCollection,), {"__module__": __name__}))
_collection_lorentz, _collection_charged = _make_collection_classes()
_LORENTZ = ("LorentzVector", "PtEtaPhiMLorentzVector", "Candidate", "PtEtaPhiMCandidate",
            *_collection_lorentz)  # fmt: skip
_CHARGED = ("Candidate", "PtEtaPhiMCandidate", *_collection_charged)


def _binary(charged: bool, sign: int) -> Any:
    def op(a: Any, b: Any) -> Any:
        return _zip_cartesian(a, other=b, charge=charged and sign > 0, sign=sign)

    return op


for _lhs in _LORENTZ:
    for _rhs in _LORENTZ:
        _both = _lhs in _CHARGED and _rhs in _CHARGED
        behavior[np.add, _lhs, _rhs] = _binary(_both, +1)
        behavior[np.subtract, _lhs, _rhs] = _binary(False, -1)


def _wire_vector_classes() -> None:
    # vector looks these up on the array/record classes to wrap its results.
    vb = vector.backends.awkward
    polar = [_class_name(c, "PolarTwoVector") for c in _NATURAL]
    for name in ("PolarTwoVector", *polar, *_LORENTZ):
        array_cls, record_cls = behavior["*", name], behavior[name]
        for cls, kind in ((array_cls, "Array"), (record_cls, "Record")):
            cls.ProjectionClass2D = getattr(vb, f"Momentum{kind}2D")
            cls.ProjectionClass3D = getattr(vb, f"Momentum{kind}3D")
            cls.ProjectionClass4D = getattr(vb, f"Momentum{kind}4D")
            cls.MomentumClass = cls


_wire_vector_classes()

# vector's names for coordinates (vector._methods): a record with two names for one
# coordinate (SV has x, y and pt, phi) is not a vector.
_COORDINATES = frozenset(
    ("x", "px", "y", "py", "rho", "pt", "phi", "z", "pz", "theta", "eta",
     "t", "E", "e", "energy", "tau", "M", "m", "mass")
)  # fmt: skip


def _vector_kind(fields: set[str]) -> str | None:
    coordinates = {f for f in fields if f in _COORDINATES}
    if coordinates == {"pt", "eta", "phi", "mass"}:
        return "PtEtaPhiMCandidate" if "charge" in fields else "PtEtaPhiMLorentzVector"
    if coordinates == {"pt", "phi"}:
        return "PolarTwoVector"
    return None


def record_name(collection: str, fields: set[str]) -> str:
    """The behaviour a NanoAOD collection (or group: ``MET``) with these fields gets.

    Args:
        collection: Its name in the events (``"Jet"``, ``"MET"``).
        fields: Its fields.
    """
    kind = _vector_kind(fields)
    coffea_class = COFFEA_CLASSES.get(collection)
    if coffea_class is None:
        return kind or "NanoCollection"
    return _class_name(coffea_class, kind)
