"""Failures: error policy, failure manifest, retries of only what failed, bad input, unsafe results."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import uproot
from conftest import Workflow, assert_same_result, run_coffea

import coffea_smk
from coffea_smk.examples.dimuon import DimuonProcessor
from coffea_smk.results import IncompleteResultWarning

pytestmark = pytest.mark.slow

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"


def _data(nanoaod: Path, root: Path, *names: str) -> list[str]:
    (root / "data").mkdir(exist_ok=True)
    for name in names:
        shutil.copy(nanoaod / name, root / "data" / name)
    return [f"data/{n}" for n in names]


def _npz_mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("partials/**/*.npz")}


def test_continue_on_records_failures_and_a_rerun_redoes_only_them(workflow: Workflow, nanoaod: Path) -> None:
    fileset = {
        "DY": {"files": _data(nanoaod, workflow.root, "nano_dy.root")},
        "DoubleMuon": {"files": _data(nanoaod, workflow.root, "nano_dimuon.root")},
    }
    marker = workflow.root / "fail-now"
    marker.touch()
    env = {"SMK_TEST_FAIL_MARKER": str(marker)}
    workflow.write(
        {
            "processor": "smk_test_processors:FailsWhileMarked",
            "chunksize": 10,
            "events_per_job": 20,
            "continue_on": ["ValueError"],
        },
        fileset,
    )
    proc = workflow.run(env=env)
    assert "INCOMPLETE" in proc.stderr and "30 of 40" not in proc.stderr
    results = workflow.root / "results"
    meta = coffea_smk.load_meta(results / "result.npz")
    assert meta["events"] == 70 and meta["events_expected"] == 80 and not meta["complete"]
    assert meta["failed_chunks"] == 1
    with pytest.warns(IncompleteResultWarning, match="INCOMPLETE"):
        partial_result = coffea_smk.load(results / "datasets" / "DY.npz")
    assert partial_result["cutflow"]["DY"]["events"] == 30

    # the manifest: machine-readable, one failed chunk with everything needed to find it
    manifests = list((results / "failures" / "DY").glob("*/*.json"))
    assert len(manifests) == 1
    (failed,) = json.loads(manifests[0].read_text())["failed"]
    assert failed["file"] == str(workflow.root / "data" / "nano_dy.root")
    assert (failed["entrystart"], failed["entrystop"]) == (20, 30)
    assert failed["exception"] == "builtins.ValueError" and "marker" in failed["message"]
    assert failed["attempts"] == 1 and "ValueError" in Path(failed["traceback_file"]).read_text()

    status = workflow.run(command="status", check=False)
    assert status.returncode == 1
    assert "entries 20-30" in status.stdout and "builtins.ValueError" in status.stdout
    dy_line = next(line for line in status.stdout.splitlines() if line.startswith("DY "))
    assert "3/1/0" in dy_line and "30/40" in dy_line and "INCOMPLETE" in dy_line

    # the cause is gone: a plain re-run processes that one chunk and the merges above it
    marker.unlink()
    before = _npz_mtimes(results)
    workflow.reset_openlog()
    workflow.run("--forceall", "-n")  # a dry run changes nothing
    workflow.run(env=env)
    after = _npz_mtimes(results)
    assert all(after[p] == t for p, t in before.items()), "no earlier partial is rewritten"
    new = sorted(set(after) - set(before))
    assert len(new) == 1 and new[0].endswith("-a1.npz")
    retry = coffea_smk.load_meta(results / new[0])
    assert retry["failed"] == [] and retry["attempt"] == 1
    assert [r for rs in retry["ranges"].values() for r in rs] == [[20, 40]]
    assert {Path(p).name for p in workflow.opened()} == {"nano_dy.root"}
    log = (results / "logs" / "process" / "DY").rglob(new[0].split("/")[-1].replace(".npz", ".log"))
    assert "1 of 2 chunks to process" in next(log).read_text()

    final = coffea_smk.load(results / "result.npz")
    meta = coffea_smk.load_meta(results / "result.npz")
    assert meta["complete"] and meta["events"] == meta["events_expected"] == 80
    assert_same_result(
        final,
        run_coffea(
            {k: {"files": [str(workflow.root / f) for f in v["files"]]} for k, v in fileset.items()},
            DimuonProcessor,
            10,
        ),
    )
    assert workflow.run(command="status").returncode == 0
    again = workflow.run()
    assert "Nothing to be done" in again.stdout + again.stderr


def test_without_continue_on_the_first_error_stops(workflow: Workflow, nanoaod: Path) -> None:
    marker = workflow.root / "fail-now"
    marker.touch()
    workflow.write(
        {"processor": "smk_test_processors:FailsWhileMarked", "chunksize": 10},
        {"DY": {"files": [str(nanoaod / "nano_dy.root")]}},
    )
    proc = workflow.run(env={"SMK_TEST_FAIL_MARKER": str(marker)}, check=False)
    assert proc.returncode != 0 and "entries 20-30" in proc.stderr
    assert "coffea-smk status" in proc.stderr
    assert not (workflow.root / "results" / "result.npz").exists()
    status = workflow.run(command="status", check=False)
    assert "failed jobs" in status.stdout and ".log" in status.stdout
    marker.unlink()
    workflow.run()
    assert coffea_smk.load_meta(workflow.root / "results" / "result.npz")["complete"]


def test_transient_io_errors_are_retried_in_the_job(workflow: Workflow, nanoaod: Path) -> None:
    workflow.write(
        {
            "processor": "smk_test_processors:TransientOSError",
            "chunksize": 40,
            "retries": 1,
            "retry_backoff": 0,
        },
        {"DY": {"files": [str(nanoaod / "nano_dy.root")]}},
    )
    workflow.run()
    results = workflow.root / "results"
    assert coffea_smk.load(results / "result.npz") == {"events": 40}
    (partial,) = results.rglob("partials/**/*.npz")
    assert coffea_smk.load_meta(partial)["chunks"][0]["retries"] == 1


def _truncated(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 3])


def test_bad_files_stop_the_run_with_a_clear_error(workflow: Workflow, nanoaod: Path) -> None:
    (workflow.root / "data").mkdir()
    truncated = workflow.root / "data" / "truncated.root"
    _truncated(nanoaod / "nano_dy.root", truncated)
    workflow.write({"processor": DIMUON}, {"DY": {"files": [str(truncated)]}})
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    assert str(truncated) in proc.stderr and "truncated or not a ROOT file" in proc.stderr

    not_root = workflow.root / "data" / "notes.root"
    not_root.write_text("these are my notes, not a ROOT file\n" * 20)
    workflow.write({"processor": DIMUON}, {"DY": {"files": [str(not_root)]}})
    proc = workflow.run(check=False)
    assert proc.returncode != 0 and str(not_root) in proc.stderr and "not a ROOT file" in proc.stderr


def test_skip_bad_files_lists_them_and_retries_them(workflow: Workflow, nanoaod: Path) -> None:
    good = _data(nanoaod, workflow.root, "nano_dimuon.root")[0]
    truncated = workflow.root / "data" / "truncated.root"
    _truncated(nanoaod / "nano_dy.root", truncated)
    not_root = workflow.root / "data" / "notes.root"
    not_root.write_text("not ROOT\n" * 100)
    missing = workflow.root / "data" / "missing.root"
    workflow.write(
        {"processor": DIMUON, "skip_bad_files": True},
        {"DY": {"files": [str(truncated), str(not_root), str(missing)]}, "DoubleMuon": {"files": [good]}},
    )
    proc = workflow.run()
    assert "INCOMPLETE" in proc.stderr
    meta = coffea_smk.load_meta(workflow.root / "results" / "result.npz")
    assert meta["bad_files"] == 3 and not meta["complete"]
    assert meta["datasets"]["DoubleMuon"]["complete"]
    bad = {b["path"] for b in meta["datasets"]["DY"]["bad_files"]}
    assert bad == {str(truncated), str(not_root), str(missing)}
    status = workflow.run(command="status", check=False).stdout
    assert "unreadable files" in status and str(missing) in status

    # repair the files: the next run picks them up
    shutil.copy(nanoaod / "nano_dy.root", truncated)
    not_root.unlink()
    shutil.copy(nanoaod / "nano_dy_empty.root", missing)
    workflow.write(
        {"processor": DIMUON, "skip_bad_files": True},
        {"DY": {"files": [str(truncated), str(missing)]}, "DoubleMuon": {"files": [good]}},
    )
    workflow.run()
    result = coffea_smk.load(workflow.root / "results" / "result.npz")
    assert result["cutflow"]["DY"]["muons"] == 18
    assert coffea_smk.load_meta(workflow.root / "results" / "result.npz")["complete"]


def test_same_file_in_two_datasets(workflow: Workflow, nanoaod: Path) -> None:
    path = str(nanoaod / "nano_dy.root")
    workflow.write({"processor": DIMUON, "chunksize": 15}, {"A": {"files": [path]}, "B": {"files": [path]}})
    workflow.run()
    result = coffea_smk.load(workflow.root / "results" / "result.npz")
    assert result["cutflow"]["A"] == result["cutflow"]["B"]
    assert result["cutflow"]["A"]["muons"] == 18
    assert coffea_smk.load(workflow.root / "results" / "datasets" / "B.npz")["cutflow"] == {
        "B": result["cutflow"]["B"]
    }
    assert len(list((workflow.root / "results" / "cache" / "files").rglob("*.json"))) == 1


def test_processor_import_errors(workflow: Workflow, nanoaod: Path) -> None:
    fileset = {"DY": {"files": [str(nanoaod / "nano_dy.root")]}}
    workflow.write({"processor": "no_such_module:P"}, fileset)
    proc = workflow.run(check=False)
    assert proc.returncode != 0 and "no module 'no_such_module'" in proc.stderr
    workflow.write({"processor": "broken_import:P"}, fileset)
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    assert "cannot import processor module 'broken_import'" in proc.stderr
    assert "this_module_does_not_exist" in proc.stderr


def test_result_type_changing_between_chunks(workflow: Workflow, nanoaod: Path) -> None:
    workflow.write(
        {"processor": "smk_test_processors:ChangesType", "chunksize": 10},
        {"DY": {"files": [str(nanoaod / "nano_dy.root")]}},
    )
    proc = workflow.run(check=False)
    assert proc.returncode != 0 and "changed type between chunks" in proc.stderr
    assert "entries 10-20" in proc.stderr


def test_damaged_or_planted_partials_are_never_merged(workflow: Workflow, nanoaod: Path) -> None:
    workflow.write(
        {"processor": DIMUON, "chunksize": 10, "events_per_job": 20},
        {"DY": {"files": [str(nanoaod / "nano_dy.root")]}},
    )
    workflow.run()
    results = workflow.root / "results"
    clean = coffea_smk.load(results / "result.npz")
    partials = sorted(results.rglob("partials/**/*.npz"))
    assert len(partials) == 2

    marker = workflow.root / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    header = {
        "format": "coffea_smk.result",
        "version": 1,
        "pickled": ["x"],
        "meta": {},
        "result": {"pickle": "a0"},
    }
    for damage in ("garbage", "truncated", "planted"):
        victim = partials[0]
        if damage == "garbage":
            victim.write_bytes(os.urandom(500))
        elif damage == "truncated":
            victim.write_bytes(victim.read_bytes()[:200] if victim.exists() else b"PK\x03\x04")
        else:
            with open(victim, "wb") as f:
                np.savez(
                    f,
                    __coffea_smk__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                    a0=np.frombuffer(pickle.dumps(Evil()), dtype=np.uint8),
                )
        for downstream in (results / "datasets" / "DY.npz", results / "result.npz"):
            downstream.unlink(missing_ok=True)
        proc = workflow.run(check=False)
        assert proc.returncode != 0, damage
        assert str(victim.relative_to(workflow.root)) in proc.stderr or str(victim) in proc.stderr
        assert "run again" in proc.stderr
        assert not victim.exists(), "a damaged input is removed so that it is redone"
        workflow.run()
        assert_same_result(coffea_smk.load(results / "result.npz"), clean)
        assert not marker.exists()


def test_corrupt_cache_record_is_redone(tmp_path: Path, nanoaod: Path) -> None:
    from coffea_smk.engine.preprocess import FileIdentity, preprocess_files, record_path
    from coffea_smk.spec.config import InputFile

    identity = FileIdentity.of(InputFile(str(nanoaod / "nano_dy.root"), "Events"))
    (first,), _ = preprocess_files([identity], tmp_path)
    path = record_path(tmp_path, identity)
    for damage in (b"", b"{not json", b'{"version": 1}'):
        path.write_bytes(damage)
        (again,), _ = preprocess_files([identity], tmp_path)
        assert again.model_dump(exclude={"seconds"}) == first.model_dump(exclude={"seconds"})
        assert json.loads(path.read_text())["entries"] == 40


def _patch_uuid(path: Path) -> None:
    """Give a ROOT file a new UUID without changing its size or modification time."""
    st = path.stat()
    old = uproot.open(path).file.uuid.bytes
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, uuid.uuid4().bytes))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def test_file_replaced_behind_the_cache_is_detected(workflow: Workflow, nanoaod: Path) -> None:
    files = _data(nanoaod, workflow.root, "nano_dy.root")
    workflow.write({"processor": DIMUON, "chunksize": 20}, {"DY": {"files": files}})
    workflow.run("--until", "plan")
    _patch_uuid(workflow.root / files[0])
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    assert "changed since it was preprocessed" in proc.stderr and files[0] in proc.stderr
    workflow.run()
    result = coffea_smk.load(workflow.root / "results" / "result.npz")
    assert result["cutflow"]["DY"]["muons"] == 18
    # the file's key changed, so did the plan's: the newest plan is the one used
    plans = (workflow.root / "results" / "plan" / "DY").glob("*.json")
    plan_path = max(plans, key=lambda p: p.stat().st_mtime_ns)
    plan = json.loads(plan_path.read_text())
    assert plan["files"][0]["uuid"] == str(uproot.open(workflow.root / files[0]).file.uuid)


def test_damaged_batch_and_plan_files_are_redone(workflow: Workflow, nanoaod: Path) -> None:
    workflow.write({"processor": DIMUON, "chunksize": 20}, {"DY": {"files": [str(nanoaod / "nano_dy.root")]}})
    workflow.run()
    results = workflow.root / "results"
    clean = coffea_smk.load(results / "result.npz")
    (plan,) = (results / "plan" / "DY").glob("*.json")
    plan.write_text('{"truncated": ')
    workflow.run("-n")  # a dry run reads it but neither removes nor rewrites it
    assert plan.read_text() == '{"truncated": '
    proc = workflow.run(check=False)
    assert proc.returncode != 0 and f"{plan.name} was corrupted" in proc.stderr and not plan.exists()
    workflow.run()  # the results were valid: nothing needs the plan again
    assert_same_result(coffea_smk.load(results / "result.npz"), clean)

    # a damaged preprocessing output is found when the plan is made again
    (batch,) = results.glob("preprocess/DY/*.json")
    batch.write_bytes(b"\x00\x01garbage")
    for path in [*results.glob("datasets/DY/*.npz"), *results.glob("global/*.npz")]:
        path.unlink()
    proc = workflow.run(check=False)
    assert proc.returncode != 0 and batch.name in proc.stderr and "corrupted" in proc.stderr
    assert not batch.exists()
    workflow.run()
    assert json.loads(plan.read_text())["expected_events"] == 40
    assert_same_result(coffea_smk.load(results / "result.npz"), clean)
