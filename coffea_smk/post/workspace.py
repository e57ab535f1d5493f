"""A :class:`~coffea_smk.post.statmodel.Model` as a pyhf workspace (plain JSON; pyhf validates it).

The modifiers, and why:

- every signal sample: ``normfactor`` ``mu``, the parameter of interest;
- normalisation uncertainties (``lumi: 1.025`` included): ``normsys`` with ``hi = kappa``,
  ``lo = 1 / kappa``, the log-normal of Combine's ``lnN`` (pyhf's default exponential
  interpolation). The luminosity is one of them, not pyhf's ``lumi`` modifier, so both
  tools see the same nuisance parameter;
- shape uncertainties: ``histosys`` with the sample's Up and Down yields;
- statistical uncertainties of the simulation: one ``staterror`` per channel
  (``staterror_<channel>``) with each sample's sqrt(variance), signal included.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coffea_smk.post.statmodel import POI, Channel, Model, ModelSample

SCHEMA_VERSION = "1.0.0"


def _floats(a: np.ndarray) -> list[float]:
    return [float(x) for x in a]


def _modifiers(model: Model, c: Channel, x: ModelSample) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if x.signal:
        out.append({"name": POI, "type": "normfactor", "data": None})
    for name, kappa in x.norms.items():
        out.append({"name": name, "type": "normsys", "data": {"hi": kappa, "lo": 1.0 / kappa}})
    for v in x.shapes:
        out.append(
            {
                "name": v.name,
                "type": "histosys",
                "data": {"hi_data": _floats(v.up), "lo_data": _floats(v.down)},
            }
        )
    if model.mc_stat:
        out.append(
            {"name": f"staterror_{c.name}", "type": "staterror", "data": _floats(np.sqrt(x.variances))}
        )
    return out


def workspace(model: Model) -> dict[str, Any]:
    """The pyhf workspace specification of ``model`` (one measurement, named after the model)."""
    return {
        "channels": [
            {
                "name": c.name,
                "samples": [
                    {"name": x.name, "data": _floats(x.yields), "modifiers": _modifiers(model, c, x)}
                    for x in c.samples
                ],
            }
            for c in model.channels
        ],
        "observations": [{"name": c.name, "data": _floats(c.observed)} for c in model.channels],
        "measurements": [
            {
                "name": model.name,
                "config": {
                    "poi": POI,
                    "parameters": [{"name": POI, "bounds": [list(model.mu_bounds)], "inits": [1.0]}],
                },
            }
        ],
        "version": SCHEMA_VERSION,
    }
