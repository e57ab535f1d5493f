"""coffea_smk from Python, as in a notebook: coffea's Runner and the coffea.compute-style backend.

Run it as a script (``python examples/notebook_api.py [NANOAOD_DIR]``) or paste the cells into a
notebook. The processor is defined here, in ``__main__``, so the jobs get it through cloudpickle.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import awkward as ak
import hist

import coffea_smk
from coffea_smk.compute import DataGroup, ErrorPolicy, SnakemakeBackend

DATA = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared/data/nanoaod")
fileset = {
    "DY": {"files": {str(DATA / "nano_dy.root"): "Events"}, "metadata": {"xsec": 6077.2}},
    "Mu": [str(DATA / "nano_dimuon.root")],
}


class MuonPt:
    """Histograms the muon pT of each dataset (a notebook-defined class: shipped with cloudpickle)."""

    def __init__(self, bins: int = 40) -> None:
        self.bins = bins

    def process(self, events: Any) -> dict[str, Any]:
        h = hist.Hist.new.Reg(self.bins, 0.0, 100.0, name="pt").Double()
        h.fill(pt=ak.flatten(events.Muon.pt))
        return {"pt": h, "events": len(events)}

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return accumulator


# %% the classic interface: one changed line from coffea's processor.Runner
out = coffea_smk.Runner(chunksize=10, outdir="example_out", cores=2)(fileset, processor_instance=MuonPt())
print("Runner:", out["events"], "events, pt histogram sum", out["pt"].sum())

# %% coffea.compute's protocol: a non-blocking task, grouped by dataset
group = DataGroup.from_fileset(fileset)
with SnakemakeBackend(outdir="example_out", cores=2, chunksize=10) as backend:
    task = backend.compute(group.map_steps(MuonPt()), error_policy=ErrorPolicy(continue_on=(OSError,)))
    print("started; done:", task.done())
    task.watch()  # a live bar (a widget in Jupyter with ipywidgets) until the run ends
    print(task.progress)
    part, rest = task.partial_result()
    print("per dataset:", {name: result["events"] for name, result in part.items()}, "left:", rest)

# %% per-file work: a function of each file's uproot directory, summed per dataset
with SnakemakeBackend(outdir="example_out", cores=2, chunksize=10) as backend:
    entries = backend.compute(group.map_files(lambda f: {"entries": f["Events"].num_entries})).result()
    print("entries per dataset:", {name: result["entries"] for name, result in entries.items()})
