"""Finding a result's histograms, and each dataset's share of one (no plotting library needed)."""

from __future__ import annotations

from typing import Any

import hist

DATASET_AXIS = "dataset"
Hist = Any
"""A ``hist.Hist`` (hist's stubs reject its own idioms such as ``h[{axis: sum}]``)."""


def histograms(result: Any, prefix: str = "") -> dict[str, Hist]:
    """Every ``hist.Hist`` in a result (nested dicts), by its path (``a/b``)."""
    out: dict[str, Hist] = {}
    if isinstance(result, hist.Hist):
        out[prefix or "histogram"] = result
    elif isinstance(result, dict):
        for key, value in result.items():
            out.update(histograms(value, f"{prefix}/{key}" if prefix else str(key)))
    return out


def per_dataset(name: str, h: Hist, datasets: list[str], own: dict[str, Any]) -> dict[str, Hist]:
    """The histogram of each dataset: a slice of its dataset axis, or from the dataset's own result."""
    if DATASET_AXIS in h.axes.name:
        present = set(h.axes[DATASET_AXIS])
        return {d: h[{DATASET_AXIS: hist.loc(d)}] for d in datasets if d in present}
    out = {}
    for d in datasets:
        found = histograms(own.get(d)).get(name)
        if found is not None:
            out[d] = found
    return out
