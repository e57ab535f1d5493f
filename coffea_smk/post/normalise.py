"""Normalising simulation: cross section x luminosity / sum of generator weights, per dataset.

The sum of generator weights is computed by coffea_smk itself and stored in every
result's metadata (``meta["datasets"][name]["sumw"]``): from the ``Runs`` tree's
``genEventSumw`` (``genEventSumw_`` in older NanoAOD) when every file of the dataset has
one, else from ``genWeight`` of every processed event (``sumw_source`` says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coffea_smk.spec.stat import DATA_KEYS, is_data

__all__ = ["DATA_KEYS", "NormalisationError", "Sample", "is_data", "luminosity", "samples"]


class NormalisationError(ValueError):
    """A dataset cannot be normalised; the message names it and what to add."""


@dataclass(frozen=True)
class Sample:
    """A dataset of the result, as a plot or a statistical model sees it."""

    name: str
    is_data: bool
    xsec: float | None
    """Cross section in pb (simulation)."""
    sumw: float | None
    """Sum of generator weights (simulation)."""
    sumw_source: str | None
    scale: float
    """Factor applied to the dataset's histograms: 1 for data, xsec x lumi / sumw for simulation."""


def luminosity(meta: dict[str, Any], configured: float | None) -> float | None:
    """The configured luminosity (pb^-1), else the sum of the data datasets' ``lumi`` metadata."""
    if configured is not None:
        return configured
    found = [
        float(d["metadata"]["lumi"])
        for d in meta.get("datasets", {}).values()
        if is_data(d.get("metadata", {})) and "lumi" in d.get("metadata", {})
    ]
    return sum(found) if found else None


def samples(meta: dict[str, Any], lumi: float | None, *, where: str = "plots") -> list[Sample]:
    """Every dataset of a global result with its normalisation.

    Raises:
        NormalisationError: A simulated dataset has no ``xsec``, no sum of weights, a zero
            sum of weights, or there is no luminosity; the message says what to add.
    """
    out = []
    for name, d in meta.get("datasets", {}).items():
        md = d.get("metadata", {})
        if is_data(md):
            out.append(Sample(name, True, None, None, None, 1.0))
            continue
        if "xsec" not in md:
            raise NormalisationError(
                f"{where}: dataset {name!r} is simulation without a cross section: add "
                f"metadata: {{xsec: <pb>}} to it in the fileset, or is_data: true if it is data"
            )
        if lumi is None:
            raise NormalisationError(
                f"{where}: no luminosity to normalise {name!r}: set lumi (pb^-1) in analysis.yaml, "
                "or lumi in the metadata of the data datasets"
            )
        sumw = d.get("sumw")
        if sumw is None:
            raise NormalisationError(
                f"{where}: dataset {name!r} has no sum of generator weights (no Runs/genEventSumw "
                "and no genWeight branch): mark it is_data: true, or give its files generator weights"
            )
        if sumw == 0:
            raise NormalisationError(f"{where}: dataset {name!r} has a sum of generator weights of 0")
        xsec = float(md["xsec"])
        out.append(Sample(name, False, xsec, float(sumw), d.get("sumw_source"), xsec * lumi / float(sumw)))
    return out
