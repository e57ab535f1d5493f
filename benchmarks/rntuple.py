"""RNTuple against TTree, coffea's Runner against coffea_smk: the same events, one invocation.

Takes the TTree replicas of ``replicate.py`` (8 files x 250k events under DATA, built if
missing), converts each into an RNTuple with ROOT's ``RNTupleImporter`` (in a subprocess:
this process never imports ROOT; the originals' compression, ROOT's default cluster size,
~128 MB zipped, unless ``--cluster-mb``; cached under ``DATA/rntuple/`` beside a JSON note
of the source it came from), then runs, cold, in this order, the same processor
(``coffea_smk.examples.dimuon:DimuonProcessor``: a cutflow and three histograms):

1. coffea's ``processor.Runner`` (``FuturesExecutor(workers=2)``, NanoAODSchema, an empty
   metadata cache: its preprocessing included) on the RNTuple files;
2. the same on the TTree files;
3. ``coffea-smk run --cores 2`` in a fresh directory on the RNTuple files;
4. the same on the TTree files;

checks that the four results are equal (cutflow exactly, histograms bin for bin), prints
wall times, events/s and the ratios against their targets, and the preprocessing cost per
RNTuple file (and per TTree file, for reference): coffea_smk's (cold: its records' own
time; cached: a processing job's lookup of the record) against coffea's (the Runner's
metadata fetch with a fresh cache, then again with the cache filled; the same with
``align_clusters``; ``coffea.dataset_tools``' per-file step ``get_steps``, run without dask).

The files are in the OS page cache for every run (the conversion has just read or written
them; 24 GiB of RAM): "cold" means no cache of coffea's or coffea_smk's own.

    python benchmarks/rntuple.py [DATA] [--only coffea|smk] [--cluster-mb 128] [--chunksize 500000]

Figures, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import replicate  # noqa: E402

PROCESSOR = "coffea_smk.examples.dimuon:DimuonProcessor"
TARGET_VS_COFFEA = 3.5
"""coffea_smk on RNTuple at least this many times faster than coffea's Runner on RNTuple."""
TARGET_VS_TTREE = 1.0
"""coffea_smk on RNTuple at most this wall time, relative to coffea_smk on the TTree files."""

_IMPORT = textwrap.dedent(
    """
    import json, sys, time, warnings
    warnings.filterwarnings("ignore", category=UserWarning)  # "This distribution of ROOT is in alpha stage"
    import ROOT

    src, dst, compression, zipped = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    t0 = time.perf_counter()
    importer = ROOT.Experimental.RNTupleImporter.Create(src, "Events", dst)
    options = ROOT.RNTupleWriteOptions()
    options.SetCompression(compression)
    if zipped:
        options.SetApproxZippedClusterSize(zipped)
    importer.SetWriteOptions(options)
    importer.SetIsQuiet(True)
    importer.Import()
    seconds = time.perf_counter() - t0
    reader = ROOT.RNTupleReader.Open("Events", dst)
    clusters = reader.GetDescriptor().GetNClusters()
    print(json.dumps({"entries": int(reader.GetNEntries()), "clusters": int(clusters), "seconds": seconds}))
    """
)


# ---- the RNTuple files ----------------------------------------------------------------------


def _note(source: Path, compression: int, zipped: int) -> dict[str, Any]:
    st = source.stat()
    return {
        "source": str(source),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "compression": compression,
        "zipped_cluster_size": zipped,
    }


def convert(sources: list[Path], folder: Path, cluster_mb: float, parallel: int = 2) -> list[dict[str, Any]]:
    """Each TTree file of ``sources`` as an RNTuple in ``folder`` (converted once; again if its
    source or the options changed): the notes, with entries, clusters and conversion seconds."""
    import uproot

    folder.mkdir(parents=True, exist_ok=True)
    zipped = int(cluster_mb * (1 << 20)) if cluster_mb else 0
    todo: list[tuple[Path, Path, dict[str, Any]]] = []
    notes: dict[Path, dict[str, Any]] = {}
    for source in sources:
        with uproot.open(source) as f:
            compression = int(f.file.fCompress)  # ROOT's 100 * algorithm + level, e.g. 101 = ZLIB 1
        out = folder / source.name
        note = _note(source, compression, zipped)
        sidecar = out.with_suffix(".json")
        if out.exists() and sidecar.exists():
            old = json.loads(sidecar.read_text())
            if {k: old.get(k) for k in note} == note:
                notes[out] = {**old, "path": str(out), "cached": True}
                continue
        todo.append((source, out, note))
    running: list[tuple[subprocess.Popen[str], Path, dict[str, Any], Path]] = []

    def finish(proc: subprocess.Popen[str], out: Path, note: dict[str, Any], tmp: Path) -> None:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"RNTupleImporter failed on {note['source']}:\n{stderr[-3000:]}")
        tmp.replace(out)
        info = {**note, **json.loads(stdout.strip().splitlines()[-1])}
        out.with_suffix(".json").write_text(json.dumps(info, indent=1))
        notes[out] = {**info, "path": str(out), "cached": False}
        print(
            f"  converted {out.name}: {info['entries']} entries, {info['clusters']} clusters, "
            f"{out.stat().st_size / 1e6:.0f} MB in {info['seconds']:.0f} s",
            flush=True,
        )

    env = {**os.environ, "PYTHONWARNINGS": "ignore::UserWarning"}
    for source, out, note in todo:
        while len(running) >= parallel:
            finish(*running.pop(0))
        tmp = out.with_name(out.name + ".tmp")
        tmp.unlink(missing_ok=True)  # the importer updates an existing file: start from none
        cmd = [sys.executable, "-c", _IMPORT, str(source), str(tmp), str(note["compression"]), str(zipped)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        running.append((proc, out, note, tmp))
    while running:
        finish(*running.pop(0))
    return [notes[folder / s.name] for s in sources]


# ---- the runs ---------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet() -> Any:
    """coffea's progress bars (drawn even with ``status=False``) and schema warnings kept off
    the figures; its worker processes are told by ``PYTHONWARNINGS`` (see ``main``)."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


def load_processor(spec: str) -> Callable[[], Any]:
    module, _, name = spec.partition(":")
    factory: Callable[[], Any] = getattr(importlib.import_module(module), name)
    return factory


def coffea_run(
    fileset: dict[str, Any], processor_spec: str, chunksize: int, workers: int = 2
) -> tuple[float, Any]:
    """coffea's Runner, Futures(workers), cold (a fresh metadata cache): wall seconds, result."""
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    factory = load_processor(processor_spec)

    class Wrapped(processor.ProcessorABC):  # type: ignore[misc]
        def __init__(self) -> None:
            self.inner = factory()

        def process(self, events: Any) -> Any:
            return self.inner.process(events)

        def postprocess(self, accumulator: Any) -> Any:
            return accumulator

    runner = processor.Runner(
        executor=processor.FuturesExecutor(workers=workers, status=False),
        schema=NanoAODSchema,
        chunksize=chunksize,
        metadata_cache={},
    )
    t0 = time.perf_counter()
    with quiet():
        out = runner(fileset, processor_instance=Wrapped(), treename="Events")
    return time.perf_counter() - t0, out


def smk_run(work: Path, fileset: dict[str, Any], processor_spec: str, per_job: int) -> tuple[float, str]:
    """A cold ``coffea-smk run --cores 2`` in ``work`` (emptied first): wall seconds and, if it
    failed, the end of its output (else "")."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "fileset.json").write_text(json.dumps(fileset))
    config = {
        "fileset": str(work / "fileset.json"),
        "processor": processor_spec,
        "basedir": str(HERE),
        "events_per_job": per_job,
    }
    (work / "analysis.yaml").write_text(json.dumps(config))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "--cores", "2"],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "COFFEA_SMK_PROGRESS": "off"},
    )
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        return dt, (proc.stdout[-2500:] + "\n" + proc.stderr[-2500:]).strip()
    return dt, ""


def smk_result(work: Path) -> Any:
    import coffea_smk

    return coffea_smk.load(work / "results" / "result.npz")


def busy_seconds(work: Path) -> float:
    """Seconds the processing jobs of the run in ``work`` spent on their units."""
    import coffea_smk

    return float(
        sum(coffea_smk.load_meta(p)["wall_s"] for p in (work / "results").rglob("partials/**/*.npz"))
    )


def differences(ours: Any, theirs: Any, where: str = "") -> list[str]:
    """Where two results differ: histograms bin for bin (per category), the rest exactly."""
    import numpy as np

    if hasattr(theirs, "axes"):
        if not hasattr(ours, "axes") or [a.name for a in ours.axes] != [a.name for a in theirs.axes]:
            return [f"{where}: not the same histogram"]
        if "dataset" not in [a.name for a in theirs.axes]:
            same = np.array_equal(ours.view(flow=True), theirs.view(flow=True))
            return [] if same else [where]
        if sorted(ours.axes["dataset"]) != sorted(theirs.axes["dataset"]):
            return [f"{where}: datasets differ"]
        return [
            f"{where}[{ds}]"
            for ds in theirs.axes["dataset"]
            if not np.array_equal(
                ours[{"dataset": ds}].view(flow=True), theirs[{"dataset": ds}].view(flow=True)
            )
        ]
    if isinstance(theirs, dict):
        if not isinstance(ours, dict) or set(ours) != set(theirs):
            return [f"{where}: keys differ"]
        return [d for k in theirs for d in differences(ours[k], theirs[k], f"{where}[{k!r}]")]
    return [] if ours == theirs else [f"{where}: {ours!r} != {theirs!r}"]


# ---- preprocessing per file ------------------------------------------------------------------


def coffea_preprocessing(paths: list[Path], chunksize: int) -> dict[str, tuple[float, float]]:
    """Seconds per file, (cold, cached), of coffea's preprocessing of each file alone."""
    import awkward as ak
    from coffea import processor
    from coffea.dataset_tools.preprocess import get_steps
    from coffea.nanoevents import NanoAODSchema

    labels = {
        False: "coffea Runner metadata fetch (fresh cache; filled)",
        True: "coffea Runner, align_clusters (fresh cache; filled)",
    }
    steps_label = "coffea.dataset_tools get_steps (no dask; its output)"
    out: dict[str, list[tuple[float, float]]] = {**{v: [] for v in labels.values()}, steps_label: []}
    with quiet():
        for path in paths:
            fileset = {"d": {"files": {str(path): "Events"}}}
            for align, label in labels.items():
                runner = processor.Runner(
                    executor=processor.IterativeExecutor(status=False),
                    schema=NanoAODSchema,
                    chunksize=chunksize,
                    metadata_cache={},
                    align_clusters=align,
                )
                t0 = time.perf_counter()
                list(runner.preprocess(fileset, treename="Events"))
                t1 = time.perf_counter()
                list(runner.preprocess(fileset, treename="Events"))  # its metadata cache filled
                out[label].append((t1 - t0, time.perf_counter() - t1))
            # preprocess()'s per-file task (dask schedules one per file); given its own output
            # back, it opens the file again but keeps the steps (UUID unchanged)
            files = ak.Array([{"file": str(path), "object_path": "Events", "steps": None, "uuid": None}])
            t0 = time.perf_counter()
            steps = get_steps(files, step_size=chunksize, save_form=False)
            t1 = time.perf_counter()
            get_steps(steps, step_size=chunksize, save_form=False)
            out[steps_label].append((t1 - t0, time.perf_counter() - t1))
    return {k: (sum(c for c, _ in v) / len(v), sum(w for _, w in v) / len(v)) for k, v in out.items()}


def smk_preprocessing(work: Path) -> tuple[float, float]:
    """coffea_smk's seconds per file in the run in ``work``: cold (the records' own time) and
    cached (a job's lookup of the record, as ``compare.py`` measures it)."""
    from coffea_smk.engine.preprocess import preprocess_files
    from coffea_smk.smk.layout import Layout

    records = [json.loads(p.read_text()) for p in (work / "results" / "cache" / "files").rglob("*.json")]
    cold = sum(r["seconds"] for r in records) / len(records)
    here = Path.cwd()
    os.chdir(work)
    try:
        layout = Layout.from_file("analysis.yaml")
        ids = [i for v in layout.identities.values() for i in v]
        t0 = time.perf_counter()
        for _ in range(20):
            preprocess_files(ids, layout.cache_dir)
        cached = (time.perf_counter() - t0) / 20 / len(ids)
    finally:
        os.chdir(here)
    return cold, cached


# ---- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, nargs="?", default=Path("/work/bench_data"))
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument(
        "--cluster-mb",
        type=float,
        default=0,
        help="RNTuple clusters of about this many zipped MB (default 0: ROOT's own, 128 MiB)",
    )
    parser.add_argument("--chunksize", type=int, default=500_000, help="coffea's Runner chunk size")
    parser.add_argument("--events-per-job", type=int, default=500_000, help="coffea_smk's work-unit size")
    parser.add_argument("--processor", default=PROCESSOR)
    parser.add_argument("--only", choices=["coffea", "smk"], default=None, help="run only these two runs")
    parser.add_argument(
        "--work", type=Path, default=None, help="coffea_smk work directory (DATA/work/rntuple)"
    )
    a = parser.parse_args()
    os.environ["PYTHONWARNINGS"] = "ignore::RuntimeWarning"  # coffea's schema warnings, in its workers

    files, _ = replicate.scaled_set(a.data, a.events, a.files)
    ttrees = [p for _, p, _ in files]
    suffix = f"_c{a.cluster_mb:g}MB" if a.cluster_mb else ""
    notes = convert(ttrees, a.data / f"rntuple{suffix}", a.cluster_mb)
    rntuples = [Path(n["path"]) for n in notes]
    n_events = sum(n for _, _, n in files)

    def fileset(paths: list[Path]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (name, _, _), path in zip(files, paths, strict=True):
            out.setdefault(name, {"files": {}})["files"][str(path)] = "Events"
        return out

    def gb(paths: list[Path]) -> float:
        return sum(p.stat().st_size for p in paths) / 1e9

    clusters = sorted({n["clusters"] for n in notes})
    conv = [n["seconds"] for n in notes]
    print(
        f"dataset: {len(files)} files, {n_events:,} events; TTree {gb(ttrees):.2f} GB, RNTuple "
        f"{gb(rntuples):.2f} GB (compression {notes[0]['compression']}, clusters per file {clusters}); "
        f"RNTupleImporter {sum(conv) / len(conv):.0f} s per file"
        + (" (cached)" if all(n["cached"] for n in notes) else ""),
        flush=True,
    )

    runs: dict[str, tuple[float, Any]] = {}
    failed: dict[str, str] = {}
    kinds = (("RNTuple", rntuples), ("TTree", ttrees))
    if a.only != "smk":
        for kind, paths in kinds:
            dt, out = coffea_run(fileset(paths), a.processor, a.chunksize)
            runs[f"coffea {kind}"] = (dt, out)
            print(f"coffea Runner Futures(2), chunksize {a.chunksize}, {kind}: {dt:.1f} s", flush=True)
    work = (a.work or a.data / "work" / "rntuple").resolve()
    busy: dict[str, float] = {}
    if a.only != "coffea":
        for kind, paths in kinds:
            dt, error = smk_run(work / kind.lower(), fileset(paths), a.processor, a.events_per_job)
            if error:
                failed[f"coffea_smk {kind}"] = error
                print(f"coffea_smk cold, {kind}: FAILED after {dt:.1f} s:\n{textwrap.indent(error, '    ')}")
                continue
            runs[f"coffea_smk {kind}"] = (dt, smk_result(work / kind.lower()))
            busy[kind] = busy_seconds(work / kind.lower())
            print(
                f"coffea_smk cold (2 cores, events_per_job {a.events_per_job}), {kind}: {dt:.1f} s",
                flush=True,
            )

    print()
    print(f"{'run (cold)':58} {'wall s':>7} {'events/s':>11}")
    for label, (dt, _) in runs.items():
        print(f"{label:58} {dt:7.1f} {n_events / dt:11,.0f}")
    for label in failed:
        print(f"{label:58} {'failed':>7}")
    for kind, seconds in busy.items():
        rate = n_events / (seconds / 2)
        print(
            f"  coffea_smk {kind}: its processing jobs busy {seconds:.1f} s ({rate:,.0f} events/s on 2 cores)"
        )

    def ratio(label: str, num: str, den: str, target: str) -> None:
        if num in runs and den in runs:
            print(f"{label}: {runs[num][0] / runs[den][0]:.2f}x ({target})")

    speedup, slowdown = f"target >= {TARGET_VS_COFFEA}x", f"target <= {TARGET_VS_TTREE}x"
    ratio("coffea_smk RNTuple speed-up over coffea RNTuple", "coffea RNTuple", "coffea_smk RNTuple", speedup)
    ratio(
        "coffea_smk RNTuple wall time / coffea_smk TTree", "coffea_smk RNTuple", "coffea_smk TTree", slowdown
    )
    ratio(
        "coffea RNTuple wall time / coffea TTree",
        "coffea RNTuple",
        "coffea TTree",
        "coffea's own cost of RNTuple",
    )
    ratio("coffea_smk TTree speed-up over coffea TTree", "coffea TTree", "coffea_smk TTree", "for reference")
    reference = "coffea TTree" if "coffea TTree" in runs else next(iter(runs), None)
    if reference:
        for label, (_, out) in runs.items():
            if label != reference:
                diff = differences(out, runs[reference][1])
                verdict = "equal (cutflow, histograms bin for bin)" if not diff else f"DIFFER at {diff[:5]}"
                print(f"{label} vs {reference}: {verdict}")

    print()
    print(f"preprocessing per file, mean over {len(files)} files (ms)       {'RNTuple':>17} {'TTree':>17}")
    print(f"{'':58} {'cold':>8} {'cached':>8} {'cold':>8} {'cached':>8}")
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    for kind, paths in kinds:
        if f"coffea_smk {kind}" in runs:
            try:
                rows.setdefault("coffea_smk (its records; a job's lookup)", {})[kind] = smk_preprocessing(
                    work / kind.lower()
                )
            except Exception as err:  # internals the RNTuple reader is changing: report, go on
                print(f"  coffea_smk preprocessing of {kind}: not measured ({type(err).__name__}: {err})")
        for label, cost in coffea_preprocessing(paths, a.chunksize).items():
            rows.setdefault(label, {})[kind] = cost
    for label, by_kind in rows.items():
        cells = []
        for kind, _ in kinds:
            cold, cached = by_kind.get(kind, (float("nan"), float("nan")))
            cells.append(f"{1e3 * cold:8.1f} {1e3 * cached:8.3f}")
        print(f"{label:58} {' '.join(cells)}")


if __name__ == "__main__":
    main()
