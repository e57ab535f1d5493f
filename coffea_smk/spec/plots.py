"""The ``plots:`` section of ``analysis.yaml``: which histograms, how they are drawn."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Style(str, Enum):
    """The experiment style of the plots (mplhep's)."""

    CMS = "CMS"
    ATLAS = "ATLAS"
    LHCB = "LHCb"
    PLAIN = "plain"


class Scale(str, Enum):
    """The y axis: linear, logarithmic, or one plot of each."""

    LINEAR = "linear"
    LOG = "log"
    BOTH = "both"


class Categories(str, Enum):
    """What a categorical axis (other than ``dataset``) becomes."""

    EACH = "each"
    """One plot per value."""
    SUM = "sum"
    """One plot of the sum over its values."""


class PlotSettings(BaseModel):
    """How the workflow draws the result's histograms (rules/plots.smk)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    histograms: list[str] | None = Field(
        None,
        description="Histograms to draw, by their path in the result ('mass', 'hists/pt'); "
        "default: every hist.Hist in the result.",
    )
    per_dataset: bool = Field(True, description="One plot per histogram and dataset.")
    stack: bool = Field(
        True,
        description="One plot per histogram with simulation stacked by dataset (normalised to "
        "xsec x lumi / sum of generator weights), data overlaid with error bars and a data/MC ratio.",
    )
    yscale: Scale = Field(Scale.LINEAR, description="'linear', 'log' or 'both'.")
    rebin: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="Merge this many bins of the named axis (every histogram that has it), e.g. {mass: 2}.",
    )
    categories: dict[str, Categories] = Field(
        default_factory=dict,
        description="For a categorical axis (other than 'dataset'): 'each' (one plot per value, "
        "the default) or 'sum' (a sum over its values).",
    )
    style: Style = Field(Style.CMS, description="mplhep style: CMS, ATLAS, LHCb or plain.")
    label: str = Field("Preliminary", description="The text beside the experiment's name.")
    formats: list[Literal["png", "pdf", "svg"]] = Field(
        ["png", "pdf"], description="File formats written: png, pdf, svg."
    )
