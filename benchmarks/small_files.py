"""Many small files: where a file's time goes, for coffea_smk and coffea's Runner.

Skims and rare signal samples come as many small files. This makes N hard links
of the real ``nano_dy.root`` (40 events, ~1,500 branches) under DATA, then

1. runs ``coffea-smk run --cores 2`` cold on all of them (dimuon + HT processor)
   and prints the wall time and the *core time per file* (preprocessing jobs
   and processing jobs, from their own records and metrics);
2. times, in this process, the steps a processing job takes per file (open,
   UUID check, basket-map load, building the events and running the processor)
   and preprocessing per file, so the README can say where a file's time goes;
3. runs coffea's Runner (Futures, 2 workers) on the first ``--coffea-files`` of them.

    python benchmarks/small_files.py DATA [--files 2000] [--coffea-files 200]

Figures, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare import coffea_runner  # noqa: E402
from remote import run_smk  # noqa: E402

SOURCE = HERE.parent.parent / "shared" / "data" / "nanoaod" / "nano_dy.root"


def links(data: Path, n: int) -> list[Path]:
    folder = data / "small"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"dy_{i:05d}.root"
        if not path.exists():
            os.link(SOURCE, path)
        out.append(path)
    return out


def core_seconds(work: Path) -> tuple[float, float]:
    """Preprocessing seconds (from the records) and processing seconds (the units' wall time)."""
    import coffea_smk

    results = work / "results"
    pre = sum(json.loads(p.read_text())["seconds"] for p in (results / "cache" / "files").rglob("*.json"))
    units = sum(coffea_smk.load_meta(p)["wall_s"] for p in results.rglob("partials/**/*.npz"))
    return pre, units


def steps(work: Path, n: int) -> dict[str, float]:
    """Milliseconds per file of each step of a processing job, on ``n`` files of the run's plan."""
    from coffea_smk.engine.process import _open
    from coffea_smk.engine.reading import UnitReader
    from coffea_smk.engine.records import Plan
    from coffea_smk.io.files import open_file
    from coffea_smk.spec.processor import load_processor

    os.chdir(work)  # the plan's record paths are relative to the analysis's directory
    (plan_path,) = (work / "results" / "plan").rglob("*.json")
    plan = Plan.read(plan_path)
    processor = load_processor("dimuon_ht:DimuonHT", str(HERE))
    files = plan.files[:n]
    t: dict[str, float] = {"open + UUID": 0.0, "map load + reader": 0.0, "events + processor": 0.0}
    with UnitReader() as reader:
        for f in files:
            t0 = time.perf_counter()
            rootfile = open_file(f.path)
            str(rootfile.file.uuid)
            t1 = time.perf_counter()
            source = reader.open(rootfile, f, [(0, 40)])
            t2 = time.perf_counter()
            with source.chunk(0, 40, {"dataset": "DY"}) as run:
                processor.process(run.events)
            t3 = time.perf_counter()
            source.close()
            rootfile.close()
            t["open + UUID"] += t1 - t0
            t["map load + reader"] += t2 - t1
            t["events + processor"] += t3 - t2
    t0 = time.perf_counter()
    for f in files:
        _, src = _open(reader, f, [(0, 40)])
        src.close()
    t["(whole open, as the unit does)"] = time.perf_counter() - t0
    return {k: 1e3 * v / len(files) for k, v in t.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--coffea-files", type=int, default=200)
    parser.add_argument("--steps-only", action="store_true", help="only time the steps, on the last run")
    a = parser.parse_args()
    os.environ["PYTHONWARNINGS"] = "ignore"
    files = links(a.data.resolve(), a.files)
    work = a.data.resolve() / "work-small"
    if not a.steps_only:
        fileset = {"DY": {"files": {str(p): "Events" for p in files}, "metadata": {"xsec": 1.0}}}
        wall, _ = run_smk(work, fileset, per_job=2_000_000, chunksize=None)  # the default unit size
        pre, proc = core_seconds(work)
        print(f"coffea_smk, {len(files)} files of 40 events, cold, 2 cores: {wall:.1f} s")
        print(
            f"  core time per file: {1e3 * (pre + proc) / len(files):.1f} ms (preprocessing "
            f"{1e3 * pre / len(files):.1f} ms, processing jobs {1e3 * proc / len(files):.1f} ms); "
            f"wall x 2 cores per file: {2e3 * wall / len(files):.1f} ms"
        )
    for step, ms in steps(work, min(200, len(files))).items():
        print(f"  {step:32} {ms:6.1f} ms per file")
    if a.steps_only:
        return
    fileset: dict[str, Any] = {"DY": {"files": {str(p): "Events" for p in files[: a.coffea_files]}}}
    dt, _ = coffea_runner(fileset, 100_000)
    print(
        f"coffea Runner Futures(2), first {a.coffea_files} files: {dt:.1f} s = "
        f"{2e3 * dt / a.coffea_files:.0f} ms of core time per file"
    )


if __name__ == "__main__":
    main()
