"""Processors that return coffea's accumulator types and other typed containers."""

from __future__ import annotations

import collections
from typing import Any

import awkward as ak
import hist
from coffea import processor


class Accumulators(processor.ProcessorABC):  # type: ignore[misc]
    """Each of coffea's accumulators (but column_accumulator), a Counter and a defaultdict,
    filled from the muons of each chunk, and a histogram with a growing category axis."""

    def process(self, events: Any) -> Any:
        dataset = events.metadata["dataset"]
        nmu = ak.num(events.Muon, axis=1)
        h = hist.Hist(
            hist.axis.StrCategory([], growth=True, name="dataset"), hist.axis.Regular(5, 0, 5, name="n")
        )
        h.fill(dataset=dataset, n=nmu)
        return {
            "sumw": processor.value_accumulator(float, float(ak.sum(nmu))),
            "events": processor.defaultdict_accumulator(int, {dataset: len(events)}),
            "by_mult": processor.dict_accumulator(
                {f"n{k}": processor.value_accumulator(int, int(ak.sum(nmu == k))) for k in range(3)}
            ),
            "runs": processor.set_accumulator({int(r) for r in events.run}),
            "counter": collections.Counter({f"{dataset}_mu": int(ak.sum(nmu))}),
            "lumis": collections.defaultdict(set, {dataset: {int(x) for x in events.luminosityBlock}}),
            "nmu": h,
        }

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


class Opaque:
    """A user type with its own addition: no safe stored form (needs allow_pickle)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __add__(self, other: Opaque) -> Opaque:
        return Opaque(self.n + other.n)


class WithOpaque:
    def process(self, events: Any) -> Any:
        h = hist.Hist(hist.axis.Regular(5, 0, 5, name="n"))
        h.fill(n=ak.num(events.Muon, axis=1))
        return {"opaque": Opaque(len(events)), "nmu": h}
