"""The stat job: from the result files to a model's workspace, datacard, shapes and fit.

Writes into one folder: ``workspace.json`` (pyhf), ``datacard.txt`` and ``shapes.root``
(CMS Combine), and ``fit.json`` (the best-fit signal strength and the upper limits,
with a summary of the model that the report shows). Each file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coffea_smk import results
from coffea_smk.post.datacard import datacard, write_shapes
from coffea_smk.post.fit import fit, validate
from coffea_smk.post.hists import DATASET_AXIS, histograms
from coffea_smk.post.normalise import NormalisationError, luminosity, samples
from coffea_smk.post.statmodel import Model, StatError, build
from coffea_smk.post.workspace import workspace
from coffea_smk.spec.stat import DATACARD, FIT, SHAPES, WORKSPACE, StatModel, is_data, require_pyhf
from coffea_smk.util.atomic import atomic_open


def _data(name: str, s: StatModel, datasets: dict[str, Any]) -> list[str]:
    """The model's data datasets: as configured, else every data dataset of the result."""
    if s.data is not None:
        return list(s.data)
    return [d for d, v in datasets.items() if is_data(v.get("metadata", {}))]


def load_model(
    global_path: str,
    dataset_paths: list[str],
    name: str,
    s: StatModel,
    lumi: float | None,
    *,
    allow_pickle: bool = False,
) -> Model:
    """Build model ``name`` from a global result (and the per-dataset ones, if its histogram needs them).

    Raises:
        StatError: The model cannot be built; the message names it and what to fix.
    """
    stored = results.load_stored(global_path, allow_pickle=allow_pickle)
    meta = stored.meta
    where = f"stat.{name}"
    datasets = meta.get("datasets", {})
    data = _data(name, s, datasets)
    roles = {**s.signal_samples, **s.background_samples}
    used = [d for ds in roles.values() for d in ds] + data
    missing = [d for d in used if d not in datasets]
    if missing:
        raise StatError(
            f"{where}: dataset(s) {', '.join(missing)} not in the result "
            f"(its datasets: {', '.join(datasets)}): fix the dataset names in {where}"
        )
    lumi = luminosity(meta, lumi)
    try:
        normalised = {
            x.name: x for x in samples({"datasets": {d: datasets[d] for d in used}}, lumi, where=where)
        }
    except NormalisationError as err:
        raise StatError(str(err)) from None
    for d in data:
        if not normalised[d].is_data:
            raise StatError(
                f"{where}: data dataset {d!r} is simulation: mark it is_data: true in the fileset"
            )
    found = histograms(stored.result)
    own: dict[str, Any] = {}
    if s.histogram not in found or DATASET_AXIS not in found[s.histogram].axes.name:
        for path in dataset_paths:
            one = results.load_stored(path, allow_pickle=allow_pickle)
            own[str(one.meta["dataset"])] = one.result
            for hname, h in histograms(one.result).items():
                found.setdefault(hname, h)
    return build(name, s, found, own, normalised, data, lumi)


def summary(model: Model) -> dict[str, Any]:
    """What the report shows of a model: channels, samples and their total yields, the data."""
    return {
        "model": model.name,
        "histogram": model.histogram,
        "data": list(model.data) or "asimov",
        "lumi": model.lumi,
        "channels": [
            {
                "name": c.name,
                "bins": len(c.edges) - 1,
                "range": [float(c.edges[0]), float(c.edges[-1])],
                "observed": float(c.observed.sum()),
                "samples": {x.name: float(x.yields.sum()) for x in c.samples},
                "signal": [x.name for x in c.samples if x.signal],
            }
            for c in model.channels
        ],
        "normalisation": model.norm_names,
        "shapes": model.shape_names,
        "mc_stat": model.mc_stat,
    }


def make_stat(
    global_path: str,
    dataset_paths: list[str],
    name: str,
    s: StatModel,
    lumi: float | None,
    out: str,
    *,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Write a model's files into the folder ``out``; returns the fit's record (also in ``fit.json``)."""
    where = f"stat.{name}"
    require_pyhf(where)
    model = load_model(global_path, dataset_paths, name, s, lumi, allow_pickle=allow_pickle)
    spec = workspace(model)
    validate(spec, where)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_open(folder / WORKSPACE, "w") as handle:
        json.dump(spec, handle, indent=1, allow_nan=False)
    with atomic_open(folder / DATACARD, "w") as handle:
        handle.write(datacard(model))
    write_shapes(model, folder / SHAPES)
    record = {**summary(model), **fit(spec, asimov=model.asimov, where=where)}
    with atomic_open(folder / FIT, "w") as handle:
        json.dump(record, handle, indent=1, allow_nan=False)
    return record
