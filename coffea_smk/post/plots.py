"""Drawing a result's histograms: per dataset, and stacked (simulation by dataset, data on top, ratio).

A histogram with a ``dataset`` category axis (the coffea habit) is split by it; one
without is taken from each dataset's own result. Every other category axis gives one
plot per value, or a sum over it (``plots.categories``). Simulation is normalised to
xsec x lumi / sum of generator weights (:mod:`coffea_smk.post.normalise`).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hist
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import mplhep

from coffea_smk.post.hists import DATASET_AXIS, Hist, histograms, per_dataset
from coffea_smk.post.manifest import MANIFEST, Plot
from coffea_smk.post.normalise import Sample
from coffea_smk.spec.plots import Categories, PlotSettings, Scale, Style


class PlotError(ValueError):
    """A histogram cannot be drawn as configured; the message names it and what to fix."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "h"


def _category_axes(h: Hist) -> list[str]:
    return [
        ax.name
        for ax in h.axes
        if ax.name != DATASET_AXIS and isinstance(ax, (hist.axis.StrCategory, hist.axis.IntCategory))
    ]


def _selections(h: Hist, settings: PlotSettings) -> Iterator[tuple[str, Hist]]:
    """``(label, histogram)`` for each combination of category values (or their sums)."""
    for name, n in settings.rebin.items():
        if name in h.axes.name:
            h = h[{name: hist.rebin(n)}]
    sums = {
        a: sum for a in _category_axes(h) if settings.categories.get(a, Categories.EACH) is Categories.SUM
    }
    if sums:
        h = h[sums]
    yield from _selections_of(h, _category_axes(h))


def _selections_of(h: Hist, axes: list[str]) -> Iterator[tuple[str, Hist]]:
    if not axes:
        yield "", h
        return
    first, rest = axes[0], axes[1:]
    for value in h.axes[first]:
        for label, inner in _selections_of(h[{first: hist.loc(value)}], rest):
            yield ",".join(x for x in (f"{first}={value}", label) if x), inner


class _Canvas:
    """Style, labels and saving, in one place."""

    def __init__(self, settings: PlotSettings, folder: Path, lumi: float | None) -> None:
        self.settings = settings
        self.folder = folder
        self.lumi = lumi

    def label(self, ax: Any, data: bool) -> None:
        s = self.settings
        lumi = None if self.lumi is None else round(self.lumi / 1000.0, 3)  # fb^-1
        if s.style is Style.CMS:
            mplhep.cms.label(s.label, ax=ax, data=data, lumi=lumi)
        elif s.style is Style.ATLAS:
            mplhep.atlas.label(s.label, ax=ax, data=data, lumi=lumi)
        elif s.style is Style.LHCB:
            mplhep.lhcb.label(s.label, ax=ax, data=data, lumi=lumi)

    def save(self, fig: Any, stem: str) -> tuple[str, ...]:
        files = []
        for fmt in self.settings.formats:
            rel = f"{stem}.{fmt}"
            (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(self.folder / rel, dpi=110, bbox_inches="tight")
            files.append(rel)
        plt.close(fig)
        return tuple(files)

    def scales(self) -> list[str]:
        y = self.settings.yscale
        return ["linear", "log"] if y is Scale.BOTH else [y.value]


def _style(settings: PlotSettings) -> Any:
    styles = {Style.CMS: mplhep.style.CMS, Style.ATLAS: mplhep.style.ATLAS, Style.LHCB: mplhep.style.LHCb2}
    return plt.style.context(styles.get(settings.style, "default"))


def _draw_one(c: _Canvas, h: Hist, title: str, yscale: str, data: bool) -> Any:
    fig, ax = plt.subplots(figsize=(8, 6.5))
    if h.ndim == 1:
        var = h.variances()
        err = np.sqrt(h.values() if var is None else var)  # zero where the bin is empty
        mplhep.histplot(h, ax=ax, histtype="errorbar" if data else "step", label=title, yerr=err)
        ax.set_xlabel(h.axes[0].label or h.axes[0].name)
        ax.set_ylabel("Events")
        ax.legend()
        ax.set_yscale(yscale)
        if yscale == "log":
            ax.set_ylim(bottom=max(_positive_min(h.values()), 1e-3) * 0.5)
    else:
        mplhep.hist2dplot(h, ax=ax)
        ax.set_title(title)
    c.label(ax, data)
    return fig


def _positive_min(values: np.ndarray) -> float:
    positive = values[values > 0]
    return float(positive.min()) if positive.size else 1.0


def _draw_stack(c: _Canvas, mc: dict[str, Hist], data: Hist | None, yscale: str) -> Any:
    order = sorted(mc, key=lambda d: float(mc[d].values().sum()))  # the largest on top
    if data is not None:
        fig, (ax, rax) = plt.subplots(
            2, 1, figsize=(8, 8), gridspec_kw={"height_ratios": (3, 1)}, sharex=True
        )
    else:
        fig, ax = plt.subplots(figsize=(8, 6.5))
        rax = None
    axis = next(iter(mc.values()), data).axes[0]  # type: ignore[union-attr]
    if order:
        mplhep.histplot([mc[d] for d in order], ax=ax, stack=True, histtype="fill", label=order)
    total = sum((mc[d] for d in order[1:]), mc[order[0]]) if order else None
    if total is not None:
        var = total.variances()
        if var is not None:
            err = np.sqrt(var)
            ax.stairs(
                total.values() + err, axis.edges, baseline=total.values() - err,
                fill=True, alpha=0.3, color="grey", hatch="///", label="MC stat. unc.",
            )  # fmt: skip
    if data is not None:
        err = np.sqrt(data.values())  # Poisson, sqrt(N): the same with or without scipy installed
        mplhep.histplot(data, ax=ax, histtype="errorbar", color="black", label="Data", yerr=err)
    ax.set_ylabel("Events")
    ax.set_yscale(yscale)
    ax.legend()
    if yscale == "log":
        ax.set_ylim(
            bottom=0.5 * min(_positive_min(h.values()) for h in [*mc.values(), *([data] if data else [])])
        )
    if rax is not None and data is not None and total is not None:
        mc_values = total.values()
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(mc_values > 0, data.values() / mc_values, np.nan)
            err = np.where(mc_values > 0, np.sqrt(data.values()) / mc_values, np.nan)
        rax.errorbar(axis.centers, ratio, yerr=err, fmt="o", color="black", markersize=3)
        rax.axhline(1.0, color="grey", linestyle="--")
        rax.set_ylim(0.0, 2.0)
        rax.set_ylabel("Data / MC")
        rax.set_xlabel(axis.label or axis.name)
        ax.set_xlabel("")
    else:
        ax.set_xlabel(axis.label or axis.name)
    c.label(ax, data is not None)
    return fig


def draw(
    result: Any,
    own: dict[str, Any],
    samples: list[Sample] | None,
    settings: PlotSettings,
    folder: Path,
    lumi: float | None,
) -> list[Plot]:
    """Write every configured plot under ``folder`` and its manifest (``plots.json``).

    Args:
        result: The global result.
        own: Each dataset's own result (for histograms without a ``dataset`` axis).
        samples: The datasets with their normalisation (None: stacked plots are not drawn).
        settings: The ``plots:`` section.
        folder: Where the plots go.
        lumi: The luminosity (pb^-1) for the labels.

    Raises:
        PlotError: A configured histogram is not in the result.
    """
    found = histograms(result)
    for d in own.values():
        for name, h in histograms(d).items():
            found.setdefault(name, h)
    names = settings.histograms if settings.histograms is not None else sorted(found)
    missing = [n for n in names if n not in found]
    if missing:
        raise PlotError(
            f"plots.histograms: {', '.join(missing)} not in the result "
            f"(its histograms: {', '.join(sorted(found)) or 'none'})"
        )
    datasets = list(own) if samples is None else [s.name for s in samples]
    data_names = {s.name for s in samples or [] if s.is_data}
    c = _Canvas(settings, folder, lumi)
    written: list[Plot] = []
    with _style(settings), warnings.catch_warnings():
        # mplhep's note that it would use Garwood intervals with scipy: errors are given explicitly here
        warnings.filterwarnings("ignore", message="Integer weights indicate poissonian data")
        for name in names:
            by_dataset = per_dataset(name, found[name], datasets, own)
            if settings.per_dataset:
                for d, h in by_dataset.items():
                    for sel, sub in _selections(h, settings):
                        for y in c.scales():
                            stem = f"{_slug(name)}/{_slug(d)}{'__' + _slug(sel) if sel else ''}_{y}"
                            fig = _draw_one(c, sub, f"{d} {sel}".strip(), y, d in data_names)
                            written.append(Plot(name, "dataset", d, sel, y, c.save(fig, stem)))
            if settings.stack and samples is not None:
                written.extend(_stacks(c, name, by_dataset, samples, settings))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(json.dumps([asdict(p) for p in written], indent=1))
    return written


def _stacks(
    c: _Canvas, name: str, by_dataset: dict[str, Hist], samples: list[Sample], settings: PlotSettings
) -> list[Plot]:
    scaled: dict[str, dict[str, Hist]] = {}  # selection -> dataset -> scaled histogram
    for s in samples:
        h = by_dataset.get(s.name)
        if h is None:
            continue
        for sel, sub in _selections(h, settings):
            scaled.setdefault(sel, {})[s.name] = sub if s.is_data else sub * s.scale
    out = []
    data_names = {s.name for s in samples if s.is_data}
    for sel, hs in scaled.items():
        if next(iter(hs.values())).ndim != 1:
            continue  # stacking is for one-dimensional histograms
        mc = {d: h for d, h in hs.items() if d not in data_names}
        data_hs = [h for d, h in hs.items() if d in data_names]
        data = sum(data_hs[1:], data_hs[0]) if data_hs else None
        for y in c.scales():
            stem = f"{_slug(name)}/stack{'__' + _slug(sel) if sel else ''}_{y}"
            out.append(Plot(name, "stack", None, sel, y, c.save(_draw_stack(c, mc, data, y), stem)))
    return out
