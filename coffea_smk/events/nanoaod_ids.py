"""NanoAOD id properties that are plain functions of branches, and what is coffea's alone.

The mixins here give coffea_smk's own collections the properties coffea's NanoAOD
classes define from a collection's own branches (coffea 2026.9,
``coffea.nanoevents.methods.nanoaod``), with the same definitions:

- ``Jet`` and ``FatJet``: ``isLoose``, ``isTight``, ``isTightLeptonVeto`` (bits 0, 1, 2 of
  ``jetId``);
- ``Electron``: ``isVeto``, ``isLoose``, ``isMedium``, ``isTight`` (``cutBased`` >= 1, 2, 3,
  4);
- ``Photon``: ``isLoose``, ``isMedium``, ``isTight`` (``cutBased`` >= 1, 2, 3; files older
  than NanoAOD v9 have only ``cutBasedBitmap``, whose bits 0, 1, 2 are used instead);
- ``GenParticle`` (``GenPart``): ``hasFlags(...)`` on ``statusFlags``;
- ``Vertex`` (``PV``): ``pos``; ``SecondaryVertex`` (``SV``): ``pos`` and ``p4``.

A property reads only the branches it is computed from. When one is missing (NanoAOD
v15 stores no ``jetId``), reading the property is an ``AttributeError`` naming the branch.

Every other attribute that coffea's NanoEvents have and coffea_smk's do not (the
cross-references such as ``matched_gen``, methods such as ``nearest``, the systematics
machinery, fields coffea adds such as ``Jet.charge``) is an ``AttributeError`` that names
it and says that ``schema: coffea`` gives coffea's NanoEvents, which have it. A name
that is neither reads as a missing field, with the closest names the collection has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import awkward as ak

from coffea_smk.events.coffea_only import COFFEA_HINT, collection_name, explain

__all__ = [
    "COFFEA_HINT",
    "BranchProperty",
    "Electron",
    "FatJet",
    "GenParticle",
    "Jet",
    "NanoCollection",
    "NanoEventsAttributes",
    "Photon",
    "SecondaryVertex",
    "Vertex",
    "needs",
]


class BranchProperty:
    """A read-only property computed from some fields of the collection it is on.

    Args:
        fn: Computes the value from the collection.
        needs: Alternatives, each a tuple of fields; the property exists when all the
            fields of one alternative do.
        note: Appended to the message when the fields are missing.
    """

    def __init__(self, fn: Callable[[Any], Any], needs: tuple[tuple[str, ...], ...], note: str = "") -> None:
        self.fn = fn
        self.needs = needs
        self.note = note
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if self.missing(obj):
            raise AttributeError(self.message(obj))
        return self.fn(obj)

    def missing(self, obj: Any) -> bool:
        """Whether none of the alternatives has all its fields in ``obj``."""
        fields = set(obj.fields)
        return not any(set(alt) <= fields for alt in self.needs)

    def message(self, obj: Any) -> str:
        coll = collection_name(obj)
        branches = " or ".join(
            " and ".join(f"{coll}_{f}" for f in alt if f not in obj.fields) for alt in self.needs
        )
        what = "the branch" if all(len(alt) == 1 for alt in self.needs) else "the branches"
        note = f" ({self.note})" if self.note else ""
        return f"{coll}.{self.name} needs {what} {branches}, which this file does not have{note}"


def needs(*alternatives: str | tuple[str, ...], note: str = "") -> Callable[[Callable[[Any], Any]], Any]:
    """Make a method a :class:`BranchProperty` computed from these fields.

    Each argument is a field, or a tuple of fields that are needed together; the
    property exists when one argument's fields all exist.
    """
    alts = tuple((a,) if isinstance(a, str) else tuple(a) for a in alternatives)

    def wrap(fn: Callable[[Any], Any]) -> BranchProperty:
        return BranchProperty(fn, alts, note)

    return wrap


class NanoCollection:
    """Base of coffea_smk's NanoAOD records: a missing attribute says what it is."""

    coffea_class: ClassVar[str] = "NanoCollection"
    """The class coffea's NanoAODSchema gives this collection."""

    def __getattr__(self, where: str) -> Any:
        # Called only when normal lookup failed: a field (awkward serves those
        # here), or a property of ours that raised AttributeError.
        if where.startswith("_"):
            return super().__getattr__(where)  # type: ignore[misc]
        prop = getattr(type(self), where, None)
        if isinstance(prop, BranchProperty):
            if prop.missing(self):
                raise AttributeError(prop.message(self))
            return prop.fn(self)  # raises what went wrong inside it
        if where in self.fields:
            return super().__getattr__(where)  # type: ignore[misc]
        raise AttributeError(explain(self, where))


class NanoEventsAttributes(NanoCollection):
    """The events record: a missing collection or coffea-only method says what it is."""

    coffea_class: ClassVar[str] = "NanoEvents"


# ---- the id properties ------------------------------------------------------------------

_JETID_NOTE = (
    "NanoAOD v15 stores no jetId; JME's recipe computes the jet id from the jet's energy "
    "fractions and multiplicities, with its correctionlib JetID file. coffea's NanoEvents "
    "do not compute it either"
)


class Jet(NanoCollection):
    """NanoAOD narrow jets: ``isLoose``, ``isTight``, ``isTightLeptonVeto`` from ``jetId``."""

    coffea_class: ClassVar[str] = "Jet"
    LOOSE: ClassVar[int] = 0
    """jetId bit of the loose id (never set from 2017 on)."""
    TIGHT: ClassVar[int] = 1
    """jetId bit of the tight id."""
    TIGHTLEPVETO: ClassVar[int] = 2
    """jetId bit of the tight id with lepton veto."""

    @needs("jetId", note=_JETID_NOTE)
    def isLoose(self) -> Any:
        """Jets passing the loose id (``jetId`` bit 0)."""
        return (self.jetId & (1 << self.LOOSE)) != 0

    @needs("jetId", note=_JETID_NOTE)
    def isTight(self) -> Any:
        """Jets passing the tight id (``jetId`` bit 1)."""
        return (self.jetId & (1 << self.TIGHT)) != 0

    @needs("jetId", note=_JETID_NOTE)
    def isTightLeptonVeto(self) -> Any:
        """Jets passing the tight id with lepton veto (``jetId`` bit 2)."""
        return (self.jetId & (1 << self.TIGHTLEPVETO)) != 0


class FatJet(Jet):
    """NanoAOD large-radius jets: the same ``jetId`` bits as :class:`Jet`."""

    coffea_class: ClassVar[str] = "FatJet"


class Electron(NanoCollection):
    """NanoAOD electrons: the cut-based ids from ``cutBased`` (0 fail ... 4 tight)."""

    coffea_class: ClassVar[str] = "Electron"
    FAIL: ClassVar[int] = 0
    VETO: ClassVar[int] = 1
    LOOSE: ClassVar[int] = 2
    MEDIUM: ClassVar[int] = 3
    TIGHT: ClassVar[int] = 4

    @needs("cutBased")
    def isVeto(self) -> Any:
        """Electrons passing the cut-based veto id."""
        return self.cutBased >= self.VETO

    @needs("cutBased")
    def isLoose(self) -> Any:
        """Electrons passing the cut-based loose id."""
        return self.cutBased >= self.LOOSE

    @needs("cutBased")
    def isMedium(self) -> Any:
        """Electrons passing the cut-based medium id."""
        return self.cutBased >= self.MEDIUM

    @needs("cutBased")
    def isTight(self) -> Any:
        """Electrons passing the cut-based tight id."""
        return self.cutBased >= self.TIGHT


class Photon(NanoCollection):
    """NanoAOD photons: the cut-based ids from ``cutBased`` (0 fail ... 3 tight).

    Files older than NanoAOD v9 have ``cutBasedBitmap`` instead (bit ``level - 1`` set
    when the photon passes that level), which is used when ``cutBased`` is absent.
    """

    coffea_class: ClassVar[str] = "Photon"
    FAIL: ClassVar[int] = 0
    LOOSE: ClassVar[int] = 1
    MEDIUM: ClassVar[int] = 2
    TIGHT: ClassVar[int] = 3

    def _passes(self, level: int) -> Any:
        if "cutBased" in self.fields:
            return self.cutBased >= level
        return (self.cutBasedBitmap & (1 << (level - 1))) != 0

    @needs("cutBased", "cutBasedBitmap")
    def isLoose(self) -> Any:
        """Photons passing the cut-based loose id."""
        return self._passes(self.LOOSE)

    @needs("cutBased", "cutBasedBitmap")
    def isMedium(self) -> Any:
        """Photons passing the cut-based medium id."""
        return self._passes(self.MEDIUM)

    @needs("cutBased", "cutBasedBitmap")
    def isTight(self) -> Any:
        """Photons passing the cut-based tight id."""
        return self._passes(self.TIGHT)


class GenParticle(NanoCollection):
    """NanoAOD generator particles: ``hasFlags`` on the bits of ``statusFlags``."""

    coffea_class: ClassVar[str] = "GenParticle"
    FLAGS: ClassVar[tuple[str, ...]] = (
        "isPrompt",
        "isDecayedLeptonHadron",
        "isTauDecayProduct",
        "isPromptTauDecayProduct",
        "isDirectTauDecayProduct",
        "isDirectPromptTauDecayProduct",
        "isDirectHadronDecayProduct",
        "isHardProcess",
        "fromHardProcess",
        "isHardProcessTauDecayProduct",
        "isDirectHardProcessTauDecayProduct",
        "fromHardProcessBeforeFSR",
        "isFirstCopy",
        "isLastCopy",
        "isLastCopyBeforeFSR",
    )
    """The meaning of the bits of ``statusFlags``, bit 0 first."""

    def hasFlags(self, *flags: str | list[str]) -> Any:
        """Whether all the given status flags are set (names from :attr:`FLAGS`).

        Args:
            flags: Flag names, or one list of them.
        """
        names = flags[0] if flags and isinstance(flags[0], list) else flags
        if not names:
            raise ValueError("hasFlags needs at least one flag, from GenParticle.FLAGS")
        mask = 0
        for name in names:
            if name not in self.FLAGS:
                raise ValueError(f"unknown status flag {name!r}; known: {', '.join(self.FLAGS)}")
            mask |= 1 << self.FLAGS.index(str(name))
        return (self.statusFlags & mask) == mask


class Vertex(NanoCollection):
    """NanoAOD primary vertices: ``pos``, the position as a 3-vector."""

    coffea_class: ClassVar[str] = "Vertex"

    @needs(("x", "y", "z"))
    def pos(self) -> Any:
        """The vertex position (``x``, ``y``, ``z``) as a scikit-hep ``vector`` 3-vector."""
        return ak.zip(
            {"x": self.x, "y": self.y, "z": self.z},
            with_name="Vector3D",
            behavior=self.behavior,
        )


class SecondaryVertex(Vertex):
    """NanoAOD secondary vertices: ``pos``, and ``p4``, the tracks' 4-momentum."""

    coffea_class: ClassVar[str] = "SecondaryVertex"

    @needs(("pt", "eta", "phi", "mass"))
    def p4(self) -> Any:
        """The 4-momentum of the vertex's tracks, a ``PtEtaPhiMLorentzVector``."""
        return ak.zip(
            {"pt": self.pt, "eta": self.eta, "phi": self.phi, "mass": self.mass},
            with_name="PtEtaPhiMLorentzVector",
            behavior=self.behavior,
        )
