"""What a skim costs and what it buys, measured in one invocation on the same files.

1. the selected dimuon analysis over the originals (cold: no cache);
2. the same analysis also writing a skim (~10% of events, 20 columns): the extra wall time;
3. the analysis over the skim (its manifest as the fileset), cold, against 1.;
checks that 3. gives the histograms of 1. bin for bin, and prints the skim's size.

    python benchmarks/skim.py DATA [--events 2000000] [--files 8] [--format parquet]

Figures, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import replicate  # noqa: E402


def run(work: Path, fileset: Any, processor: str, fmt: str) -> float:
    """A cold ``coffea-smk run`` in ``work`` (emptied first); its wall time."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = {
        "fileset": fileset if isinstance(fileset, str) else str(work / "fileset.json"),
        "processor": processor,
        "basedir": str(HERE),
        "events_per_job": 500_000,
        "skims": {"format": fmt},
    }
    if not isinstance(fileset, str):
        (work / "fileset.json").write_text(json.dumps(fileset))
    (work / "analysis.yaml").write_text(json.dumps(config))
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "--cores", "2"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"coffea-smk run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return dt


def job_seconds(work: Path) -> tuple[float, float]:
    """The processing jobs' wall time (summed over units) and the per-dataset jobs' (from their logs)."""
    import datetime

    import coffea_smk

    results = work / "results"
    units = sum(coffea_smk.load_meta(p)["wall_s"] for p in results.glob("partials/*/*/*.npz"))
    datasets = 0.0
    for log in results.glob("logs/dataset/*/*.log"):
        stamps = [line[:23] for line in log.read_text().splitlines() if line[:4].isdigit()]
        if stamps:
            first, last = (
                datetime.datetime.strptime(x, "%Y-%m-%d %H:%M:%S,%f") for x in (stamps[0], stamps[-1])
            )
            datasets += (last - first).total_seconds()
    return units, datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--format", default="parquet", choices=["parquet", "root"])
    args = parser.parse_args()

    import coffea_smk

    files, _ = replicate.scaled_set(args.data, args.events, args.files)
    fileset: dict[str, Any] = {}
    for name, path, _ in files:
        fileset.setdefault(name, {"files": {}})["files"][str(path)] = "Events"
    work = args.data / "work" / "skim"
    t_plain = run(work / "plain", fileset, "dimuon_skim:SelectedDimuon", args.format)
    t_skim = run(work / "skim", fileset, "dimuon_skim:SkimmingDimuon", args.format)
    manifest = work / "skim" / "results" / "skims" / "dimuon" / "fileset.json"
    t_after = run(work / "after", str(manifest), "dimuon_skim:SelectedDimuon", args.format)

    plain = coffea_smk.load(work / "plain" / "results" / "result.npz")
    after = coffea_smk.load(work / "after" / "results" / "result.npz")
    skim = coffea_smk.load(work / "skim" / "results" / "result.npz")["dimuon"]
    same = all((plain[h].view(flow=True) == after[h].view(flow=True)).all() for h in ("mass", "ht"))
    size = sum(f.bytes for f in skim.files)
    print(
        f"events {skim.events:,}; skim keeps {skim.rows:,} ({100 * skim.rows / skim.events:.1f}%), "
        f"{len(skim.columns)} columns, {len(skim.files)} files, {size / 1e6:.1f} MB ({args.format})"
    )
    print(f"analysis over the originals, cold:            {t_plain:6.1f} s")
    extra = 100 * (t_skim / t_plain - 1)
    print(f"the same writing the skim, cold:              {t_skim:6.1f} s  (+{extra:.0f}%, target <= +25%)")
    speed = t_plain / t_after
    print(
        f"the analysis over the skim, cold:             {t_after:6.1f} s  ({speed:.1f}x faster, target >= 5x)"
    )
    for label, run_dir in (("originals", "plain"), ("writing the skim", "skim"), ("over the skim", "after")):
        units, datasets = job_seconds(work / run_dir)
        print(f"  inside the jobs, {label:17}: processing {units:5.1f} s (sum over units), ", end="")
        print(f"per-dataset jobs {datasets:4.1f} s")
    u_plain, _ = job_seconds(work / "plain")
    u_skim, _ = job_seconds(work / "skim")
    u_after, _ = job_seconds(work / "after")
    extra_jobs, speed_jobs = 100 * (u_skim / u_plain - 1), u_plain / u_after
    print(f"  processing with the skim written: +{extra_jobs:.0f}%; over the skim: {speed_jobs:.1f}x faster")
    print(f"histograms over the skim equal the originals' bin for bin: {same}")


if __name__ == "__main__":
    main()
