"""Lorentz-vector behaviours for NanoAOD collections, built on scikit-hep ``vector``.

Records named ``PtEtaPhiMCandidate`` (pt, eta, phi, mass, charge),
``PtEtaPhiMLorentzVector`` (pt, eta, phi, mass), ``LorentzVector`` (x, y, z, t),
``Candidate`` (x, y, z, t, charge) and ``PolarTwoVector`` (pt, phi) get all of
``vector``'s properties (``.mass``, ``.pt``, ``.eta``, ``.energy`` ...) plus the
coffea spellings ``delta_r``, ``delta_phi`` and ``sum``. Adding two vectors sums
their cartesian components (and charges, for candidates), as coffea does, so
masses and angles agree with coffea's to the last bit.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np
import vector
from vector.backends.awkward import MomentumAwkward2D, MomentumAwkward4D

behavior: dict[Any, Any] = dict(vector.backends.awkward.behavior)


@ak.mixin_class(behavior)
class PolarTwoVector(MomentumAwkward2D):
    """A transverse vector (pt, phi), e.g. MET."""

    def delta_phi(self, other: Any) -> Any:
        """Azimuthal difference in [-pi, pi)."""
        return self.deltaphi(other)


@ak.mixin_class(behavior)
class LorentzVector(MomentumAwkward4D):
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


_LORENTZ = ("LorentzVector", "PtEtaPhiMLorentzVector", "Candidate", "PtEtaPhiMCandidate")
_CHARGED = ("Candidate", "PtEtaPhiMCandidate")


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
    for name in ("PolarTwoVector", *_LORENTZ):
        array_cls, record_cls = behavior["*", name], behavior[name]
        for cls, kind in ((array_cls, "Array"), (record_cls, "Record")):
            cls.ProjectionClass2D = getattr(vb, f"Momentum{kind}2D")
            cls.ProjectionClass3D = getattr(vb, f"Momentum{kind}3D")
            cls.ProjectionClass4D = getattr(vb, f"Momentum{kind}4D")
            cls.MomentumClass = cls


_wire_vector_classes()


def record_name(fields: set[str]) -> str | None:
    """The behaviour a NanoAOD collection with these fields gets, if any."""
    if {"pt", "eta", "phi", "mass"} <= fields:
        return "PtEtaPhiMCandidate" if "charge" in fields else "PtEtaPhiMLorentzVector"
    if {"pt", "phi"} <= fields and "eta" not in fields:
        return "PolarTwoVector"
    return None
