"""`coffea-smk clean` and the disk use in `coffea-smk status`, on real runs of variants.

One analysis directory is run as configured, then as three earlier variants (two chunk
sizes through `--config`, a processor version, a dataset's metadata), then as configured
again. `clean` must list exactly the variants' outputs, keep the most recent ones with
`--keep`, remove nothing the current analysis uses (a re-run after it has nothing to do and
the result is byte for byte the same), and refuse while a run holds the lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import Workflow

import coffea_smk
from coffea_smk.smk.clean import Use, disk_use, human
from coffea_smk.smk.layout import Layout

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _cli(workflow: Workflow, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``coffea-smk COMMAND analysis.yaml ARGS`` in the analysis directory (no --cores)."""
    return subprocess.run(
        [sys.executable, "-m", "coffea_smk", command, "analysis.yaml", *args],
        cwd=workflow.root,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(workflow.hooks), os.environ.get("PYTHONPATH", "")]),
        },
        text=True,
        capture_output=True,
        timeout=300,
    )


def _clean(workflow: Workflow, *args: str) -> str:
    proc = _cli(workflow, "clean", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def variants(nanoaod: Path, tmp_path_factory: pytest.TempPathFactory) -> Workflow:
    """An analysis run as configured, as three earlier variants (chunk sizes through --config, a
    processor version, a dataset's metadata and files), and as configured again."""
    wf = Workflow(tmp_path_factory.mktemp("clean"))
    files = {"DY": [str(nanoaod / "nano_dy.root")], "Mu": [str(nanoaod / "nano_dimuon.root")]}
    config = {"processor": DIMUON, "chunksize": 25}
    wf.write(config, {name: {"files": f} for name, f in files.items()})
    wf.run()
    wf.run("--config", "chunksize=10")
    wf.run("--config", "chunksize=7", "version=v2")
    copy = wf.root / "dy_copy.root"  # another file: other preprocessing batches and records
    copy.write_bytes((nanoaod / "nano_dy.root").read_bytes())
    dy = {"files": [*files["DY"], str(copy)], "metadata": {"xsec": 2.0}}
    wf.write(config, {"DY": dy, "Mu": {"files": files["Mu"]}})
    wf.run()
    wf.write(config, {name: {"files": f} for name, f in files.items()})
    wf.run()  # as configured: nothing to process, the fixed names published again
    return wf


def test_status_shows_disk_use_of_current_and_earlier_variants(
    variants: Workflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(variants.root)  # outdir is taken from the analysis's directory, as a run does
    proc = _cli(variants, "status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    usage = disk_use(Layout.from_file(str(variants.root / "analysis.yaml")))
    files, size = usage.total(Use.CURRENT)
    earlier_files, earlier_size = usage.total(Use.EARLIER, Use.KEPT)
    assert files > 0 and earlier_files > files and earlier_size > 0
    text = proc.stdout.split("disk use of results:")[1]
    assert f"current analysis:  {human(size)} in {files} files" in text
    assert f"earlier variants:  {human(earlier_size)} in {earlier_files} files (3 finished variants" in text


def test_clean_lists_then_removes_only_earlier_variants(
    variants: Workflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(variants.root)
    root, results = variants.root, variants.root / "results"
    layout = Layout.from_file(str(root / "analysis.yaml"))
    usage = disk_use(layout)
    assert len(usage.variants) == 3 and not usage.unplanned
    changes = [v.changes for v in usage.variants]  # the most recent first
    assert "same settings" in changes[0]  # the metadata variant: only the fileset changed
    assert "chunksize: 7 (now 25); version: 'v2' (now '')" in changes[1]
    assert changes[2] == "chunksize: 10 (now 25)"
    current = {root / e.path for e in usage.entries if e.use is Use.CURRENT}
    removable = {root / e.path for e in usage.removable}
    kinds = {e.kind for e in usage.removable}
    assert {"preprocessing", "plans", "units", "results", "logs", "cache"} <= kinds
    # the current analysis: every output its keys and plans name, nothing of the variants
    for slug in layout.datasets:
        assert root / layout.dataset_result(slug) in current and root / layout.plan_path(slug) in current
    assert root / layout.result in current
    assert not any(p.name.endswith(".npz") and "partials" in p.parts for p in current & removable)

    before = _files(results)
    listed = _clean(variants)
    assert "would be removed: `coffea-smk clean analysis.yaml --yes`" in listed
    assert _files(results) == before  # listing removes nothing
    kept = _clean(variants, "--keep", "1")
    assert f"{usage.variants[0].key}" in kept and "kept (--keep)" in kept
    assert _files(results) == before

    result = (results / "result.npz").resolve().read_bytes()
    removed = _clean(variants, "--yes")
    assert "removed " in removed
    after = _files(results)
    assert after == before - removable
    assert current <= after
    again = variants.run("-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout + again.stderr
    variants.run()
    new = _files(results) - after
    assert all(p.parent == results / "logs" / "snakemake" for p in new), new  # the run's log alone
    assert (results / "result.npz").resolve().read_bytes() == result
    assert coffea_smk.load_meta(results / "result.npz")["complete"]
    assert "nothing to remove" in _clean(variants)


def test_clean_refuses_while_a_run_holds_the_lock(workflow: Workflow, nanoaod: Path) -> None:
    workflow.write({"processor": DIMUON, "chunksize": 20}, {"DY": {"files": [str(nanoaod / "nano_dy.root")]}})
    workflow.run()
    workflow.run("--config", "chunksize=10")
    locks = workflow.root / ".snakemake" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    (locks / "0.input.lock").write_text(str(workflow.root / "results" / "x") + "\n")
    before = _files(workflow.root / "results")
    proc = _cli(workflow, "clean", "--yes")
    assert proc.returncode == 1 and "nothing removed: a Snakemake run holds a lock" in proc.stderr
    assert "--unlock" in proc.stderr
    assert _files(workflow.root / "results") == before
    (locks / "0.input.lock").unlink()
    # what the storage said at an earlier run's start: a run with the storage down takes files on it
    table = workflow.root / "results" / "cache" / "remote" / "0123456789abcdef.json"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text("{}")
    assert "removed " in _clean(workflow, "--yes")
    assert table.exists()


def test_a_dataset_not_planned_yet_keeps_every_unit_it_may_reuse(
    workflow: Workflow, nanoaod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before its plan exists, which of the processor's units the current analysis reuses is not
    known: all are kept (other plans may name the same chunks)."""
    workflow.write({"processor": DIMUON, "chunksize": 20}, {"DY": {"files": [str(nanoaod / "nano_dy.root")]}})
    workflow.run()
    workflow.write({"processor": DIMUON, "chunksize": 40}, {"DY": {"files": [str(nanoaod / "nano_dy.root")]}})
    monkeypatch.chdir(workflow.root)
    usage = disk_use(Layout.from_file(str(workflow.root / "analysis.yaml")))
    assert usage.unplanned == ["DY"]
    units = [e for e in usage.entries if e.kind == "units" and e.path.suffix == ".npz"]
    assert units and all(e.use is Use.CURRENT for e in units)
    text = _clean(workflow)
    assert "every work unit and merge of DY" in text and "not planned yet" in text


def test_status_and_clean_find_the_outputs_where_config_outdir_put_them(
    workflow: Workflow, nanoaod: Path
) -> None:
    workflow.write({"processor": DIMUON, "chunksize": 20}, {"DY": {"files": [str(nanoaod / "nano_dy.root")]}})
    workflow.run("--config", "outdir=elsewhere")
    assert not (workflow.root / "results").exists()
    status = _cli(workflow, "status", "--config", "outdir=elsewhere")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "global result: elsewhere/global/" in status.stdout and "(complete" in status.stdout
    assert "disk use of elsewhere:" in status.stdout
    assert "nothing to remove in elsewhere" in _clean(workflow, "--config", "outdir=elsewhere")
    report = workflow.run("--config", "outdir=elsewhere", command="report")
    assert "elsewhere/report.html" in report.stdout
    bad = _cli(workflow, "status", "--config", "chunksiz=5")
    assert bad.returncode == 2 and "unknown setting; did you mean 'chunksize'?" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_overrides_are_read_as_snakemake_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDOR_CONFIG", "/dev/null")  # snakemake.cli loads every executor plugin
    from snakemake.cli import parse_config  # only here: the reference
    from snakemake.utils import update_config

    from coffea_smk.smk.overrides import merge, parse_entries, split_overrides

    entries = [
        "outdir=x/y",
        "chunksize=5",
        "lumi=1.5",
        "align_chunks=False",
        "version=",
        "plots={'stack': 1}",
    ]
    assert parse_entries(entries) == parse_config(entries)
    args = ["--cores", "2", "--config", "outdir=a", "chunksize=3", "-n", "--config=version=v"]
    assert split_overrides(args) == (["--cores", "2", "-n"], {"outdir": "a", "chunksize": 3, "version": "v"})
    base = {"plots": {"stack": True, "yscale": "log"}, "outdir": "r"}
    ours, theirs = json.loads(json.dumps(base)), json.loads(json.dumps(base))
    update_config(theirs, {"plots": {"stack": False}, "outdir": "s"})
    assert merge(ours, {"plots": {"stack": False}, "outdir": "s"}) == theirs
    assert yaml.safe_load(yaml.safe_dump(theirs)) == theirs
