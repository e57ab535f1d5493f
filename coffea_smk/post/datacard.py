"""A :class:`~coffea_smk.post.statmodel.Model` as a CMS Combine datacard and its shapes file.

The datacard reads every histogram from ``shapes.root`` (``$CHANNEL/$PROCESS``, and
``$CHANNEL/$PROCESS_$SYSTEMATIC{Up,Down}`` for the shape uncertainties) and states the
rates and the observation as numbers too. Normalisation uncertainties are ``lnN`` rows,
shape uncertainties ``shape`` rows, and the statistical uncertainties of the simulation
come from the histograms' errors through ``autoMCStats`` (signal included, as in the
pyhf workspace). The shapes are TH1D written with uproot, with sum-of-weights-squared
errors. Combine's ``shape`` interpolates differently from pyhf's ``histosys`` inside
one standard deviation; the nominal model is the same.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hist
import numpy as np
import uproot

from coffea_smk.post.statmodel import Model
from coffea_smk.spec.stat import SHAPES

DATA_OBS = "data_obs"


def _number(x: float) -> str:
    return repr(float(x))


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def datacard(model: Model, shapes: str = SHAPES) -> str:
    """The text of the datacard (it names ``shapes`` relative to its own folder)."""
    columns = [(c, x) for c in model.channels for x in c.samples]
    signals = [x.name for x in model.channels[0].samples if x.signal]
    backgrounds = [x.name for x in model.channels[0].samples if not x.signal]
    index = {n: i for i, n in enumerate(signals, start=1 - len(signals))} | {
        n: i for i, n in enumerate(backgrounds, start=1)
    }
    nuisances = len(model.norm_names) + len(model.shape_names)
    rule = "-" * 60
    data = "Asimov data set (expected yields at mu = 1)" if model.asimov else ", ".join(model.data)
    lines = [
        f"# CMS Combine datacard of model {model.name!r}, written by coffea_smk",
        f"# histogram {model.histogram!r}; data: {data}",
        f"imax {len(model.channels)} number of channels",
        f"jmax {len(index) - 1} number of processes minus 1",
        f"kmax {nuisances} number of nuisance parameters",
        rule,
        f"shapes * * {shapes} $CHANNEL/$PROCESS $CHANNEL/$PROCESS_$SYSTEMATIC",
        rule,
        *_table(
            [
                ["bin", *(c.name for c in model.channels)],
                ["observation", *(_number(c.observed.sum()) for c in model.channels)],
            ]
        ),
        rule,
    ]
    rows = [
        ["bin", "", *(c.name for c, _ in columns)],
        ["process", "", *(x.name for _, x in columns)],
        ["process", "", *(str(index[x.name]) for _, x in columns)],
        ["rate", "", *(_number(x.yields.sum()) for _, x in columns)],
    ]
    systematics = []
    for name in model.norm_names:
        systematics.append(
            [name, "lnN", *(_number(x.norms[name]) if name in x.norms else "-" for _, x in columns)]
        )
    for name in model.shape_names:
        has = [any(v.name == name for v in x.shapes) for _, x in columns]
        systematics.append([name, "shape", *("1" if h else "-" for h in has)])
    table = _table(rows + systematics)
    lines += [*table[:4], rule, *table[4:]]
    if model.mc_stat:
        lines.append("* autoMCStats 0 1")
    return "\n".join(lines) + "\n"


def _th1(edges: np.ndarray, values: np.ndarray, variances: np.ndarray) -> Any:
    h = hist.Hist(hist.axis.Variable(edges), storage=hist.storage.Weight())
    h.view()["value"] = values
    h.view()["variance"] = variances
    return h


def write_shapes(model: Model, path: str | Path) -> None:
    """Write every histogram the datacard names into a ROOT file (atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with uproot.recreate(tmp) as f:
            for c in model.channels:
                # data: Poisson counts, variance = counts (Asimov: the same convention)
                f[f"{c.name}/{DATA_OBS}"] = _th1(c.edges, c.observed, c.observed)
                for x in c.samples:
                    f[f"{c.name}/{x.name}"] = _th1(c.edges, x.yields, x.variances)
                    for v in x.shapes:
                        # the variation's statistical errors are the nominal's (autoMCStats reads the nominal)
                        f[f"{c.name}/{x.name}_{v.name}Up"] = _th1(c.edges, v.up, x.variances)
                        f[f"{c.name}/{x.name}_{v.name}Down"] = _th1(c.edges, v.down, x.variances)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
