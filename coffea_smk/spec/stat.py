"""The ``stat:`` section of ``analysis.yaml``: statistical models built from the result's histograms.

Each named model becomes a pyhf workspace, a CMS Combine datacard with its shapes
file, and a fit (rules/stat.smk). What can be checked without the result (names,
which dataset is what) is checked here and when the workflow starts; what needs the
histograms is checked by the job (:mod:`coffea_smk.post.statmodel`).
"""

from __future__ import annotations

import importlib.util
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DATA_KEYS = ("is_data", "isData", "isRealData")
"""Metadata keys that mark a dataset as data (any of them true)."""
MODEL_NAME = r"^[A-Za-z][A-Za-z0-9_.+-]*$"
"""A model's name: it names a folder, so no separator; never a 16-hex content key."""
INSTALL = "pip install 'coffea_smk[stat]'"
WORKSPACE, DATACARD, SHAPES, FIT = "workspace.json", "datacard.txt", "shapes.root", "fit.json"
FILES = (WORKSPACE, DATACARD, SHAPES, FIT)
"""What the stat job writes into a model's folder: the pyhf workspace, the Combine datacard and
its shapes, the fit's record."""

Kappa = Annotated[float, Field(gt=0)]
Groups = dict[str, list[str]] | list[str]


class StatUnavailableError(ImportError):
    """pyhf is not installed; the message says how to install it."""


def require_pyhf(where: str = "stat") -> None:
    """Check that pyhf can be imported (without importing it: ~1 s).

    Raises:
        StatUnavailableError: It is not installed.
    """
    if importlib.util.find_spec("pyhf") is None:
        raise StatUnavailableError(
            f"{where}: statistical models need pyhf, which is not installed: {INSTALL} "
            "(or remove the stat: section from analysis.yaml)"
        )


def is_data(metadata: dict[str, Any]) -> bool:
    """Whether a dataset's metadata marks it as data."""
    return any(bool(metadata.get(k)) for k in DATA_KEYS)


def groups(value: Groups) -> dict[str, list[str]]:
    """``[a, b]`` (one sample per dataset) or ``{name: [datasets]}`` as ``{sample: [datasets]}``."""
    return {d: [d] for d in value} if isinstance(value, list) else dict(value)


class StatModel(BaseModel):
    """One statistical model: a histogram, which datasets are signal, background and data,
    and the uncertainties."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    histogram: str = Field(description="The histogram, by its path in the result ('mass', 'hists/pt').")
    channels: str | None = Field(
        None,
        description="A categorical axis of the histogram whose every value is a channel "
        "(e.g. 'channel': ee, mumu); default: one channel named after the model.",
    )
    select: dict[str, str | int] = Field(
        default_factory=dict,
        description="Categorical axes fixed to one value, e.g. {region: signal}.",
    )
    sum: list[str] = Field(default_factory=list, description="Categorical axes summed over, e.g. [charge].")
    rebin: Annotated[int, Field(ge=1)] = Field(1, description="Merge this many bins of the observable.")
    range: tuple[float, float] | None = Field(
        None,
        description="[low, high]: keep the observable's bins inside this range (bin edges "
        "rounded outwards); default: every bin (under- and overflow are never used).",
    )
    signal: Groups = Field(
        description="Signal datasets: a list (one sample each) or {sample: [datasets]} (grouped). "
        "Scaled by the signal strength 'mu', the parameter of interest."
    )
    backgrounds: Groups = Field(
        description="Background datasets: a list (one sample each) or {sample: [datasets]} (grouped)."
    )
    data: list[str] | None = Field(
        None,
        description="Datasets summed into the observed data; default: every dataset with "
        "is_data: true. With none ([] or no data datasets): an Asimov data set, the sum of the "
        "expected samples at mu = 1 and every nuisance parameter at its nominal value.",
    )
    normalisation: dict[str, Kappa | dict[str, Kappa]] = Field(
        default_factory=dict,
        description="Normalisation uncertainties (log-normal; pyhf normsys, Combine lnN): name -> "
        "kappa for every simulated sample (e.g. lumi: 1.025), or name -> {sample: kappa} "
        "(e.g. xsec_tt: {TT: 1.05}); a kappa of 1.05 is +-5%.",
    )
    syst_axis: str = Field(
        "syst",
        description="The categorical axis of shape variations: values '<name>Up' and '<name>Down' "
        "beside the nominal one.",
    )
    nominal: str = Field("nominal", description="The value of syst_axis that holds the nominal histogram.")
    shapes: list[str] | None = Field(
        None,
        description="Shape uncertainties (pyhf histosys, Combine shape) to take from syst_axis; "
        "default: every '<name>Up'/'<name>Down' pair on it (none if the histogram has no such axis).",
    )
    mc_stat: bool = Field(
        True,
        description="Statistical uncertainties of the simulation from the histograms' variances "
        "(Barlow-Beeston lite: pyhf staterror, Combine autoMCStats; signal included).",
    )
    mu_bounds: tuple[float, float] | None = Field(
        None,
        description="[low, high] of the signal strength; default: [0, a bound well above the "
        "expected limit, at least 10].",
    )

    @field_validator("range", "mu_bounds")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"[low, high] with low < high; found {list(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StatModel:
        signal, backgrounds = groups(self.signal), groups(self.backgrounds)
        if not signal or any(not v for v in signal.values()):
            raise ValueError("signal: name at least one dataset for every sample")
        if not backgrounds or any(not v for v in backgrounds.values()):
            raise ValueError("backgrounds: name at least one dataset for every sample")
        both = sorted(set(signal) & set(backgrounds))
        if both:
            raise ValueError(f"sample(s) {', '.join(both)} are both signal and background: rename one")
        used = [d for ds in [*signal.values(), *backgrounds.values(), self.data or []] for d in ds]
        twice = sorted({d for d in used if used.count(d) > 1})
        if twice:
            raise ValueError(f"dataset(s) {', '.join(twice)} listed more than once: each has one role")
        samples = {*signal, *backgrounds}
        for name, value in self.normalisation.items():
            unknown = sorted(set(value) - samples) if isinstance(value, dict) else []
            if unknown:
                raise ValueError(
                    f"normalisation.{name}: no sample {', '.join(unknown)} "
                    f"(the samples: {', '.join(sorted(samples))})"
                )
        axes = [a for a in (self.channels, *self.select, *self.sum) if a is not None]
        if self.syst_axis in axes or len(set(axes)) != len(axes):
            raise ValueError("each categorical axis goes in one of channels, select, sum (or is syst_axis)")
        return self

    @property
    def signal_samples(self) -> dict[str, list[str]]:
        return groups(self.signal)

    @property
    def background_samples(self) -> dict[str, list[str]]:
        return groups(self.backgrounds)


StatSettings = dict[Annotated[str, Field(pattern=MODEL_NAME)], StatModel]
"""The ``stat:`` section: models by name."""


def model_names(value: StatSettings | None) -> StatSettings | None:
    """Check that no model is named like a content key (its published link would shadow one)."""
    for name in value or {}:
        if re.fullmatch(r"[0-9a-f]{16}", name):
            raise ValueError(f"stat: model name {name!r} looks like a content key: choose another")
    return value


def dataset_problems(settings: StatSettings, metadata: dict[str, dict[str, Any]]) -> list[str]:
    """What is wrong with the datasets the models name, given the fileset's (name -> metadata)."""
    out = []
    known = ", ".join(metadata)
    for name, m in settings.items():
        roles = [("signal", d) for ds in m.signal_samples.values() for d in ds]
        roles += [("backgrounds", d) for ds in m.background_samples.values() for d in ds]
        roles += [("data", d) for d in m.data or []]
        for role, d in roles:
            if d not in metadata:
                out.append(f"stat.{name}.{role}: no dataset {d!r} in the fileset (its datasets: {known})")
            elif role == "data" and not is_data(metadata[d]):
                out.append(
                    f"stat.{name}.data: dataset {d!r} is simulation: mark it is_data: true in the "
                    "fileset, or list it under signal or backgrounds"
                )
            elif role != "data" and is_data(metadata[d]):
                out.append(f"stat.{name}.{role}: dataset {d!r} is data (is_data: true): list it under data")
    return out
