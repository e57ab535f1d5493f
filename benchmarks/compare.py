"""coffea_smk against coffea's Runner and plain uproot, on the same files, in one invocation.

Builds (once, cached under DATA) a scaled dataset by replicating the real
events of ``../shared/data/nanoaod`` (``replicate.py``), then runs
in this order, on the same files with the same dimuon + jets processor:

0. the processor written two ways: a plain class (coffea_smk's own events) and a
   ``ProcessorABC`` subclass (``dimuon_ht_coffea.py``: coffea's NanoEvents);
1. plain uproot: 2 processes, each opening its files and reading the columns
   the processor touches (taken from coffea_smk's own metrics);
2. coffea's Runner with ``FuturesExecutor(workers=2)`` at several chunk sizes
   (its best is kept; every fresh Runner preprocesses again, as in coffea);
3. coffea_smk through ``coffea-smk run`` (local profile, 2 cores): cold (no
   cache), warm re-run (nothing changed: must open zero ROOT files) and
   incremental (one dataset added: only it runs);

checks that coffea_smk's histograms equal coffea's bin for bin, and prints
events/s, ratios, preprocessing cost per file (cold, cached), peak memory per
job and the share of wall time spent outside the jobs' own work.

    python benchmarks/compare.py DATA [--events 2000000] [--files 8] [--links 1]

Figures, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import replicate  # noqa: E402
from dimuon_ht import DimuonHT  # noqa: E402

AUDIT = textwrap.dedent(
    """
    import os, sys
    _log = os.environ.get("COFFEA_SMK_BENCH_OPENLOG")
    if _log:
        def _hook(event, args, _log=_log):
            if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
                if os.fsdecode(args[0]).endswith(".root"):
                    with open(_log, "a") as f:
                        f.write(os.fsdecode(args[0]) + "\\n")
        sys.addaudithook(_hook)
    """
)


def _read_columns(job: list[tuple[str, list[str]]]) -> int:
    import uproot

    n = 0
    for path, columns in job:
        with uproot.open(path) as f:
            tree = f["Events"]
            arrays = tree.arrays(columns, library="ak", how=dict)
            n += len(next(iter(arrays.values())))
    return n


def plain_uproot(files: list[tuple[str, list[str]]], workers: int = 2) -> float:
    """Events/s of opening every file and reading its columns with ``workers`` processes."""
    jobs = [files[i::workers] for i in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(_read_columns, [[]] * workers)  # start-up not counted
        t0 = time.perf_counter()
        n = sum(pool.map(_read_columns, jobs))
    return n / (time.perf_counter() - t0)


def coffea_runner(fileset: dict[str, Any], chunksize: int, workers: int = 2) -> tuple[float, Any]:
    import warnings

    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    class Wrapped(processor.ProcessorABC):  # type: ignore[misc]
        def __init__(self) -> None:
            self.inner = DimuonHT()

        def process(self, events: Any) -> Any:
            return self.inner.process(events)

        def postprocess(self, accumulator: Any) -> Any:
            return accumulator

    runner = processor.Runner(
        executor=processor.FuturesExecutor(workers=workers, status=False),
        schema=NanoAODSchema,
        chunksize=chunksize,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = runner(fileset, processor_instance=Wrapped(), treename="Events")
    return time.perf_counter() - t0, out


LAST_RUN: list[float] = [0.0, 0.0]  # epoch seconds: when the last run_smk started and ended


def run_smk(work: Path, *args: str) -> tuple[float, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(work / "_audit"), os.environ.get("PYTHONPATH", "")]),
        "COFFEA_SMK_BENCH_OPENLOG": str(work / "opened.log"),
    }
    LAST_RUN[0] = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "--cores", "2", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    dt = time.perf_counter() - t0
    LAST_RUN[1] = time.time()
    if proc.returncode != 0:
        sys.exit(f"coffea-smk run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return dt, proc.stdout + proc.stderr


def smk_cold(work: Path, fileset: dict[str, Any], processor: str, per_jobs: list[int]) -> tuple[float, int]:
    """The best cold ``coffea-smk run`` over work-unit sizes; its outputs are left in ``work``."""
    n_events = 0
    cold: list[tuple[float, int]] = []
    config: dict[str, Any] = {}
    for per_job in per_jobs:
        shutil.rmtree(work, ignore_errors=True)
        (work / "_audit").mkdir(parents=True)
        (work / "_audit" / "sitecustomize.py").write_text(AUDIT)
        (work / "fileset.json").write_text(json.dumps(fileset))
        config = {
            "fileset": str(work / "fileset.json"),
            "processor": processor,
            "basedir": str(HERE),
            "events_per_job": per_job,
        }
        (work / "analysis.yaml").write_text(json.dumps(config))
        t, _ = run_smk(work)
        if not n_events:
            import coffea_smk

            n_events = coffea_smk.load_meta(work / "results" / "result.npz")["totals"]["events"]
        print(
            f"coffea_smk cold run, {processor}, events_per_job {per_job}: {t:.1f} s, "
            f"{n_events / t:,.0f} events/s",
            flush=True,
        )
        cold.append((t, per_job))
    t_cold, best_per_job = min(cold)
    if best_per_job != cold[-1][1]:  # redo the best so that its outputs are the ones kept
        shutil.rmtree(work / "results", ignore_errors=True)
        shutil.rmtree(work / ".snakemake", ignore_errors=True)
        config["events_per_job"] = best_per_job
        (work / "analysis.yaml").write_text(json.dumps(config))
        run_smk(work)
    return t_cold, best_per_job


def busy_seconds(work: Path, leave_out: str = "") -> float:
    """Seconds the processing jobs of the run in ``work`` spent on their units."""
    import coffea_smk

    metas = [coffea_smk.load_meta(p) for p in (work / "results").rglob("partials/**/*.npz")]
    return float(sum(m["wall_s"] for m in metas if m["dataset"] != leave_out))


def run_breakdown(work: Path, started: float, ended: float) -> str:
    """Where the wall time of the last ``coffea-smk run`` in ``work`` went (its timeline), with the
    command's own start before Snakemake and its end after, and the units' own time inside their jobs."""
    from coffea_smk.smk.timeline import Phase, Timeline, breakdown, format_breakdown, latest

    found = latest(work / "results" / "logs" / "snakemake")
    if found is None:
        return "no timeline of the run found"
    t = Timeline.read(found)
    before = "coffea-smk run: its command and the job server, before Snakemake"
    after = "coffea-smk run: after Snakemake's log closed, until it exits"
    phases = [Phase(before, t.process_start - started), *breakdown(t), Phase(after, ended - (t.end or ended))]
    units = busy_seconds(work)
    jobs = sum(p.job_s for p in phases if p.name == "rule process")
    return (
        format_breakdown(phases)
        + f"\nprocess jobs {jobs:.2f} s summed, of which inside their units (their metrics) {units:.2f} s"
    )


def coffea_smk_result(work: Path) -> Any:
    import coffea_smk

    return coffea_smk.load(work / "results" / "result.npz")


def same_histograms(ours: dict[str, Any], theirs: dict[str, Any]) -> bool:
    import numpy as np

    for key, h in theirs.items():
        if not hasattr(h, "axes"):
            if ours.get(key) != h:
                return False
            continue
        for ds in h.axes["dataset"]:
            if not np.array_equal(
                ours[key][{"dataset": ds}].view(flow=True), h[{"dataset": ds}].view(flow=True)
            ):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="where the built files are cached")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--coffea-chunks", default="250000,500000")
    parser.add_argument(
        "--links",
        type=int,
        default=1,
        help="use each built file under this many names (hard links): --files 8 --links 12 "
        "is an analysis of 96 files without writing more data",
    )
    parser.add_argument(
        "--events-per-job", default="2000000,500000,250000", help="coffea_smk work-unit sizes to try"
    )
    parser.add_argument(
        "--processors",
        default="dimuon_ht:DimuonHT,dimuon_ht_coffea:DimuonHTCoffea",
        help="the same processor as a plain class (coffea_smk's events) and as a ProcessorABC "
        "(coffea's NanoEvents); the first is used for the warm and incremental runs",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="coffea_smk work directory (default DATA/work)"
    )
    a = parser.parse_args()

    files, extra_file = replicate.scaled_set(a.data, a.events, a.files, a.links)
    fileset: dict[str, Any] = {}
    for name, path, _ in files:
        fileset.setdefault(name, {"files": {}})["files"][str(path)] = "Events"
    n_events = sum(n for _, _, n in files)
    print(
        f"dataset: {len(files)} files, {n_events} events, "
        f"{sum(p.stat().st_size for _, p, _ in files) / 1e6:.0f} MB"
    )

    work = (a.work or a.data / "work").resolve()
    rows: list[tuple[str, float]] = []
    # each processor kind (a plain class: coffea_smk's events; a ProcessorABC: coffea's NanoEvents)
    # cold, at several work-unit sizes (as coffea gets several chunk sizes); the plain class's
    # best is kept (and run last) for the warm and incremental runs
    kinds = [k for k in a.processors.split(",") if k]
    results: dict[str, Any] = {}
    inside: dict[str, float] = {}
    breakdowns: dict[str, str] = {}
    for kind in reversed(kinds):
        t_cold, best_per_job = smk_cold(work, fileset, kind, [int(x) for x in a.events_per_job.split(",")])
        rows.insert(
            0, (f"coffea_smk cold run (2 cores), {kind}, events_per_job {best_per_job}", n_events / t_cold)
        )
        results[kind] = coffea_smk_result(work)
        inside[kind] = n_events / (busy_seconds(work) / 2)
        breakdowns[kind] = run_breakdown(work, *LAST_RUN)
    import coffea_smk

    meta = coffea_smk.load_meta(work / "results" / "result.npz")
    # the columns coffea_smk read of each dataset (e.g. genWeight for simulation only)
    columns = {name: sorted(d["columns"]) for name, d in meta["datasets"].items()}

    # coffea's Runner, same files and processor
    best = None
    for chunk in (int(c) for c in a.coffea_chunks.split(",")):
        dt, out = coffea_runner(fileset, chunk)
        print(
            f"coffea Runner Futures(2), chunksize {chunk}: {dt:.1f} s, {n_events / dt:,.0f} events/s",
            flush=True,
        )
        if best is None or dt < best[0]:
            best = (dt, out, chunk)
    assert best is not None
    coffea_rate = n_events / best[0]
    rows.append((f"coffea Runner Futures(2), chunksize {best[2]}", coffea_rate))
    identical = {kind: same_histograms(out, best[1]) for kind, out in results.items()}

    plain = plain_uproot([(str(p), columns[name]) for name, p, _ in files])
    widest = max(len(c) for c in columns.values())
    rows.append((f"plain uproot: open + read its {widest} columns (2 processes)", plain))

    # warm re-run: nothing changed
    (work / "opened.log").unlink(missing_ok=True)
    t_warm, out = run_smk(work)
    opened = (work / "opened.log").read_text().split() if (work / "opened.log").exists() else []
    assert "Nothing to be done" in out

    # incremental: one dataset added
    before = set((work / "results").rglob("partials/**/*.npz"))
    fileset["Added"] = {"files": {str(extra_file): "Events"}}
    (work / "fileset.json").write_text(json.dumps(fileset))
    t_inc, _ = run_smk(work)
    new = set((work / "results").rglob("partials/**/*.npz")) - before
    new_datasets = {p.parts[-3] for p in new}

    # preprocessing: cold seconds per file from the records; cached cost per file
    from coffea_smk.engine.preprocess import preprocess_files
    from coffea_smk.smk.layout import Layout

    records = [json.loads(p.read_text()) for p in (work / "results" / "cache" / "files").rglob("*.json")]
    cold_pre = sum(r["seconds"] for r in records) / len(records)
    os.chdir(work)
    layout = Layout.from_file("analysis.yaml")
    ids = [i for v in layout.identities.values() for i in v]
    t0 = time.perf_counter()
    for _ in range(20):
        preprocess_files(ids, layout.cache_dir)
    cached_job = (time.perf_counter() - t0) / 20 / len(ids)
    t0 = time.perf_counter()
    for _ in range(20):
        Layout.from_file("analysis.yaml")
    parse = (time.perf_counter() - t0) / 20 / len(ids)

    partials = list((work / "results").rglob("partials/**/*.npz"))
    metas = [coffea_smk.load_meta(p) for p in partials]
    peak = max(c["peak_rss_mb"] for m in metas for c in m["chunks"])
    busy = busy_seconds(work, leave_out="Added")

    print()
    print(f"{'':80} {'events/s':>12} {'vs coffea':>9}")
    for label, rate in rows:
        print(f"{label:80} {rate:12,.0f} {rate / coffea_rate:8.2f}x")
    print(f"coffea_smk ({kinds[0]}) / plain uproot: {rows[0][1] / plain:.2f}")
    for kind, rate in inside.items():
        print(
            f"coffea_smk inside its processing jobs, {kind} (events / their busy core-s x 2 cores): "
            f"{rate:,.0f} events/s = {rate / coffea_rate:.2f}x coffea, {rate / plain:.2f}x plain uproot"
        )
    print(f"results identical to coffea's (bin for bin): {identical}")
    print(
        f"cold run {t_cold:.1f} s; warm re-run {t_warm:.1f} s opening {len(opened)} ROOT files; "
        f"incremental (+1 dataset) {t_inc:.1f} s, new partials only in {sorted(new_datasets)}"
    )
    print(
        f"preprocessing per file: cold {1e3 * cold_pre:.0f} ms (open + metadata), "
        f"cached {1e3 * cached_job:.3f} ms "
        f"in a job, {1e3 * parse:.3f} ms when the workflow starts (stat + key)"
    )
    print(
        f"peak RSS of a processing job: {peak:.0f} MB; "
        f"process jobs busy {busy:.1f} s of {2 * t_cold:.1f} core-s "
        f"({100 * (1 - busy / (2 * t_cold)):.0f}% of the cold run's core time outside process jobs' work)"
    )
    for kind, text in breakdowns.items():
        print(f"\nwhere the wall time of the kept cold run went, {kind}:\n{text}")


if __name__ == "__main__":
    main()
