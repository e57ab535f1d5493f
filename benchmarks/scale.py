"""Orchestration at scale: planning, dry-run and no-op re-run times for synthetic analyses.

Synthesises an analysis of N input files with E events each (real empty files
on disk so that they can be statted, preprocessing records written straight
into the cache, tiny valid partial results), then times what Snakemake and
coffea_smk do around the physics:

- ``plan``: a run that has to make the plans (preprocessing records cached);
- ``dry-run``: ``-n`` with everything planned (the full DAG is built);
- ``no-op``: a re-run with every output present (must open no ROOT file).

Usage:
    python benchmarks/scale.py --files 1000 --entries 1000000 --workdir /tmp/scale1k
    python benchmarks/scale.py --files 10000 --entries 1000000 --workdir /tmp/scale10k
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from coffea_smk.engine.meta import UnitMeta
from coffea_smk.engine.preprocess import RECORD_VERSION, record_path
from coffea_smk.io.basketmap import READER_VERSION
from coffea_smk.smk.layout import Layout
from coffea_smk.util.atomic import write_json

PROCESSOR = """
def count(events):
    return {"events": len(events)}
"""


def synthesise(work: Path, n_files: int, entries: int, n_datasets: int) -> Layout:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    fileset: dict[str, dict] = {}
    for i in range(n_files):
        path = data / f"f{i:06d}.root"
        if not path.exists():
            path.touch()
        fileset.setdefault(f"ds{i % n_datasets:03d}", {"files": []})["files"].append(str(path))
    (work / "fileset.json").write_text(json.dumps(fileset))
    (work / "counting.py").write_text(PROCESSOR)
    config = {"fileset": "fileset.json", "processor": "counting:count", "outdir": "results"}
    (work / "analysis.yaml").write_text(yaml.safe_dump(config))
    layout = Layout.from_file(str(work / "analysis.yaml"))
    os.chdir(work)
    for slug in layout.datasets:
        for batch, ids in layout.batches(slug).items():
            out = Path(layout.path("preprocess", dataset=slug, batch=batch))
            if out.exists():
                continue
            records = []
            for identity in ids:
                rp = record_path(layout.cache_dir, identity)
                record = {
                    "version": RECORD_VERSION,
                    "reader": READER_VERSION,
                    "path": identity.path,
                    "treename": identity.treename,
                    "size": identity.size,
                    "mtime_ns": identity.mtime_ns,
                    "replaced": identity.replaced,
                    "key": identity.key,
                    "uuid": identity.key,
                    "entries": entries,
                    "clusters": [0, entries],
                    "nbranches": 1,
                    "branches_hash": "x",
                    "seconds": 0.0,
                }
                write_json(rp, record)
                records.append({**record, "record_path": str(rp)})
            write_json(out, {"records": records})
    return layout


def snakemake(work: Path, *args: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "--cores", "2", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return dt, proc.stdout + proc.stderr


def fake_outputs(work: Path, layout: Layout) -> int:
    """Valid tiny results for every unit, so that the whole DAG exists on disk."""
    from coffea_smk import results as storage

    n = 0
    for slug in layout.datasets:
        plan = layout.read_plan(slug)
        assert plan is not None
        for unit in plan.units:
            path = Path(layout.path("partial", dataset=slug, tag=layout.keys[slug].tag, unit=unit.id))
            if not path.exists():
                ranges: dict[str, list] = {}
                for fi, a, b in unit.chunks:
                    ranges.setdefault(plan.files[fi].key, []).append((a, b))
                meta = UnitMeta(
                    dataset=plan.dataset,
                    unit=unit.id,
                    attempt=0,
                    events=unit.events,
                    ranges={k: tuple(v) for k, v in ranges.items()},
                    chunks=(),
                    failed=(),
                )
                storage.save(path, {"events": unit.events}, meta.model_dump(mode="json"))
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--datasets", type=int, default=10)
    parser.add_argument("--workdir", type=Path, required=True)
    a = parser.parse_args()
    work = a.workdir.resolve()
    t0 = time.perf_counter()
    layout = synthesise(work, a.files, a.entries, a.datasets)
    print(f"synthesised {a.files} files x {a.entries} events in {time.perf_counter() - t0:.1f} s", flush=True)

    t_plan, out = snakemake(work, "--until", "plan")
    plans = [layout.read_plan(s) for s in layout.datasets]
    chunks = sum(len(u.chunks) for p in plans if p for u in p.units)
    units = sum(len(p.units) for p in plans if p)
    print(
        f"plan (records synthesised; DAG + {len(plans)} plan jobs): {t_plan:.1f} s "
        f"-> {units} units, {chunks} chunks",
        flush=True,
    )

    n = fake_outputs(work, layout)
    t_dry, out = snakemake(work, "-n", "--quiet", "rules")
    print(f"dry-run of the full DAG (partials present, merges due): {t_dry:.1f} s", flush=True)
    t_merge, _ = snakemake(work)
    print(f"merges of {n} partials (all merge jobs + dataset + result): {t_merge:.1f} s", flush=True)
    t_noop, out = snakemake(work)
    assert "Nothing to be done" in out, out[-2000:]
    print(f"no-op re-run: {t_noop:.1f} s", flush=True)


if __name__ == "__main__":
    main()
