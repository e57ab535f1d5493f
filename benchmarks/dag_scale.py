"""How the Snakemake DAG grows with the number of input files: dry-run time, peak memory, jobs.

Makes N symbolic links to the one shared ``nano_dy.root`` (40 events;
``../shared/data/nanoaod`` or ``$COFFEA_SMK_NANOAOD``) in a temporary folder,
split over two datasets, writes an ``analysis.yaml`` (the dimuon example
processor, default settings: 20 files per preprocessing job), and times
``python -m coffea_smk run analysis.yaml -n`` on it: the dry run builds the DAG
up to the plan checkpoints (one preprocessing job per batch, one plan per
dataset), stats every file and opens none. For each N it prints the wall time,
the peak RSS of the dry run (``resource.getrusage(RUSAGE_CHILDREN)``, the N in
ascending order), the number of jobs Snakemake lists and the time per file.
Above the start-up (a few seconds of imports), a DAG linear in the number of
files takes the same time per file at every N; a quadratic one, N times more.

    python benchmarks/dag_scale.py                      # N = 1,000 and 10,000
    python benchmarks/dag_scale.py --files 1000 10000 100000
    python benchmarks/dag_scale.py --keep /tmp/dag      # keep the folders (job lists in dry-run.txt)

Figures, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

NANOAOD = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nanoaod"
SOURCE = Path(os.environ.get("COFFEA_SMK_NANOAOD") or NANOAOD) / "nano_dy.root"
PROCESSOR = "coffea_smk.examples.dimuon:DimuonProcessor"
DATASETS = ("DY", "DoubleMuon")


def synthesise(work: Path, n: int) -> None:
    """``n`` links to :data:`SOURCE` in two datasets, the fileset and the analysis config."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    fileset: dict[str, dict[str, object]] = {
        d: {"files": [], "metadata": {"is_mc": i == 0}} for i, d in enumerate(DATASETS)
    }
    for i in range(n):
        path = data / f"f{i:06d}.root"
        if not path.is_symlink():
            path.symlink_to(SOURCE)
        files = fileset[DATASETS[i % len(DATASETS)]]["files"]
        assert isinstance(files, list)
        files.append(str(path))
    (work / "fileset.json").write_text(json.dumps(fileset))
    config = {"fileset": "fileset.json", "processor": PROCESSOR, "treename": "Events"}
    (work / "analysis.yaml").write_text(yaml.safe_dump(config))


def dry_run(work: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) and the number of jobs of ``coffea-smk run analysis.yaml -n``."""
    cmd = [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "-n"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB; the largest child so far
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = proc.stdout + proc.stderr
    (work / "dry-run.txt").write_text(out)
    m = re.search(r"^total\s+(\d+)", out, re.MULTILINE)
    jobs = int(m[1]) if m else -1
    if peak <= before:
        print("  (peak RSS not above an earlier run's: the figure is a lower bound)", file=sys.stderr)
    return seconds, max(peak, before) / 1024, jobs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, nargs="+", default=[1000, 10_000], help="the N to run, in order")
    parser.add_argument("--keep", type=Path, default=None, help="make the folders here and keep them")
    a = parser.parse_args()
    if not SOURCE.exists():
        sys.exit(f"{SOURCE} not found")
    with tempfile.TemporaryDirectory(prefix="dag-scale-") as tmp:
        root = a.keep or Path(tmp)
        print(f"{'files':>8} {'jobs':>6} {'dry run s':>10} {'peak RSS MiB':>13} {'ms/file':>8}", flush=True)
        for n in sorted(a.files):  # ascending: RUSAGE_CHILDREN's peak is then this run's
            work = root / f"n{n}"
            synthesise(work, n)
            seconds, rss, jobs = dry_run(work)
            print(f"{n:>8} {jobs:>6} {seconds:>10.2f} {rss:>13.0f} {1000 * seconds / n:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
