"""Many small datasets (hundreds of MC samples, or an analysis of skims): coffea_smk against coffea.

Makes ``--datasets`` datasets of ``--files`` hard links each of the real shared NanoAOD files
(``nano_dy.root`` and ``nano_dimuon.root``, 40 events each, in turn) under DATA, then, with the
dimuon + jet HT processor (``dimuon_ht.py``):

1. ``coffea-smk run --cores 2`` cold (fresh outdir and cache): wall time, Snakemake jobs per
   rule and where the wall time went (the run's timeline);
2. the same again: the no-op re-run;
3. coffea's Runner, ``FuturesExecutor(workers=2)``, on the same fileset;

checks that the histograms are equal bin for bin and prints the ratio (coffea's time / coffea_smk's).

    python benchmarks/many_datasets.py DATA [--datasets 200] [--files 2]

Figures, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare import LAST_RUN, coffea_runner, run_breakdown, run_smk, same_histograms  # noqa: E402

NANOAOD = HERE.parent.parent / "shared" / "data" / "nanoaod"
SOURCES = [NANOAOD / "nano_dy.root", NANOAOD / "nano_dimuon.root"]


def fileset_of(data: Path, datasets: int, files: int) -> dict[str, Any]:
    folder = data / "many"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for d in range(datasets):
        paths = []
        for f in range(files):
            path = folder / f"ds{d:04d}_{f:03d}.root"
            if not path.exists():
                os.link(SOURCES[(d + f) % len(SOURCES)], path)
            paths.append(str(path))
        out[f"ds{d:04d}"] = {"files": {p: "Events" for p in paths}, "metadata": {"xsec": 1.0 + d}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--config", default="{}", help="more analysis settings, as JSON")
    a = parser.parse_args()
    os.environ["PYTHONWARNINGS"] = "ignore"
    data = a.data.resolve()
    fileset = fileset_of(data, a.datasets, a.files)
    work = data / "work-many"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "fileset.json").write_text(json.dumps(fileset))
    config = {
        "fileset": str(work / "fileset.json"),
        "processor": "dimuon_ht:DimuonHT",
        "basedir": str(HERE),
        **json.loads(a.config),
    }
    (work / "analysis.yaml").write_text(json.dumps(config))
    n_files = a.datasets * a.files
    print(f"{a.datasets} datasets x {a.files} files of 40 events: {n_files} files, {40 * n_files} events")

    cold, _ = run_smk(work)
    breakdown = run_breakdown(work, *LAST_RUN)
    noop, out = run_smk(work)
    assert "Nothing to be done" in out, out[-2000:]
    import coffea_smk

    ours = coffea_smk.load(work / "results" / "result.npz")
    t_coffea, theirs = coffea_runner(fileset, 100_000)
    print(f"coffea_smk cold run, --cores 2: {cold:.1f} s; no-op re-run {noop:.1f} s")
    print(f"coffea Runner Futures(2): {t_coffea:.1f} s")
    print(f"ratio coffea / coffea_smk (cold): {t_coffea / cold:.2f}")
    print(f"results identical to coffea's (bin for bin): {same_histograms(ours, theirs)}")
    print(f"\nwhere the wall time of the cold run went:\n{breakdown}")


if __name__ == "__main__":
    main()
