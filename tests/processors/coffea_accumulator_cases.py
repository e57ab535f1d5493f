"""A coffea processor in the style of older coffea analyses: accumulators with default factories
(nested, ``functools.partial``, an accumulator's ``identity``), and one histogram whose growing
category axes (process, variation, muon multiplicity) differ between chunks and datasets."""

from __future__ import annotations

import collections
import functools
from typing import Any

import awkward as ak
import hist
import numpy as np
from coffea import processor

CHUNK = 10
"""The chunk size the tests run this processor with (the variations depend on the chunk)."""


def empty_hist() -> hist.Hist:
    """Process x variation x muon multiplicity x MET, every category axis growing."""
    return hist.Hist(
        hist.axis.StrCategory([], growth=True, name="process"),
        hist.axis.StrCategory([], growth=True, name="variation"),
        hist.axis.IntCategory([], growth=True, name="nmu"),
        hist.axis.Regular(10, 0, 200, name="met"),
        storage=hist.storage.Weight(),
    )


def variations(dataset: str, entrystart: int) -> dict[str, float]:
    """The variations of a chunk and their weights (multiples of 1/4: sums exact in any order):
    "up" only in odd chunks, "dy_first" only in the first chunk of a DY dataset."""
    out = {"nominal": 1.0}
    if (entrystart // CHUNK) % 2:
        out["up"] = 1.25
    if dataset.startswith("DY") and entrystart == 0:
        out["dy_first"] = 0.5
    return out


def fill(h: hist.Hist, dataset: str, entrystart: int, nmu: Any, met: Any) -> None:
    for name, weight in variations(dataset, entrystart).items():
        h.fill(process=dataset, variation=name, nmu=nmu, met=met, weight=np.full(len(nmu), weight))


class OldStyle(processor.ProcessorABC):  # type: ignore[misc]
    def __init__(self) -> None:
        self.template = hist.Hist(hist.axis.Regular(10, 0, 200, name="met"))

    def process(self, events: Any) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        nmu = ak.to_numpy(ak.num(events.Muon, axis=1))
        met = ak.to_numpy(events.MET.pt)
        h = empty_hist()
        fill(h, dataset, events.metadata["entrystart"], nmu, met)
        cutflow = processor.defaultdict_accumulator(functools.partial(processor.defaultdict_accumulator, int))
        cutflow[dataset]["all"] += len(events)
        cutflow[dataset]["muons"] += int(nmu.sum())
        per_dataset = processor.defaultdict_accumulator(
            processor.dict_accumulator(
                {"n": processor.value_accumulator(int), "runs": processor.set_accumulator()}
            ).identity
        )
        per_dataset[dataset]["n"] += len(events)
        per_dataset[dataset]["runs"] += {int(r) for r in ak.to_numpy(events.run)}
        met_acc = processor.value_accumulator(self.template.copy)
        met_acc += self.template.copy().fill(met=met)
        sumw = processor.value_accumulator(float)
        sumw += 0.5 * len(events)
        return {
            "hist": h,
            "cutflow": cutflow,
            "per_dataset": per_dataset,
            "met": met_acc,
            "sumw": sumw,
            "multiplicity": collections.Counter(int(n) for n in nmu),
            "lumis": collections.defaultdict(
                set, {dataset: {int(x) for x in ak.to_numpy(events.luminosityBlock)}}
            ),
            "order": collections.OrderedDict([(dataset, len(events))]),
        }

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator
