"""The Python API (issue 23): ``coffea_smk.Runner`` and ``coffea_smk.compute`` on real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PROCESSORS, REPO, assert_same_result, run_coffea

import coffea_smk
from coffea_smk.examples.dimuon import DimuonProcessor


def _fileset(nanoaod: Path) -> dict[str, dict[str, dict[str, str]]]:
    return {
        "DY": {
            "files": {str(nanoaod / "nano_dy.root"): "Events", str(nanoaod / "nano_tt_v15.root"): "Events"}
        },
        "Mu": {"files": {str(nanoaod / "nano_dimuon.root"): "Events"}},
    }


def test_runner_equals_coffeas_runner_bin_for_bin(nanoaod: Path, tmp_path: Path) -> None:
    fileset = _fileset(nanoaod)
    runner = coffea_smk.Runner(chunksize=30, outdir=tmp_path / "out", cores=2, events_per_job=90)
    ours = runner(fileset, processor_instance=DimuonProcessor(), treename="Events")
    assert_same_result(ours, run_coffea(fileset, DimuonProcessor, 30))
    config = (tmp_path / "out" / "python" / "analysis.yaml").read_text()
    assert "processor: coffea_smk.examples.dimuon:DimuonProcessor" in config  # by name, not pickled


def test_a_coffea_processor_instance_runs_as_in_coffea(nanoaod: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(PROCESSORS))
    try:
        from coffea_test_processors import MuonPairs  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(PROCESSORS))
    fileset = {"DY": [str(nanoaod / "nano_dy.root")], "Mu": [str(nanoaod / "nano_dimuon.root")]}
    ours = coffea_smk.Runner(chunksize=13, outdir=tmp_path / "out")(fileset, processor_instance=MuonPairs())
    coffeas = {name: {"files": {files[0]: "Events"}} for name, files in fileset.items()}
    assert_same_result(ours, run_coffea(coffeas, MuonPairs(), 13))


_SCRIPT = """
import json, sys
import awkward as ak
import coffea_smk

SCALE = float(sys.argv[2])


class Sums:  # defined in __main__: the jobs cannot import it, so it is shipped with cloudpickle
    def process(self, events):
        return {"events": len(events), "pt": float(ak.sum(events.Muon.pt)) * SCALE}

    def postprocess(self, accumulator):
        accumulator["post"] = True
        return accumulator


out = coffea_smk.Runner(chunksize=9, outdir=sys.argv[1], cores=2)(
    {"DY": [sys.argv[3]]}, processor_instance=Sums()
)
print(json.dumps(out))
"""


def _script(tmp_path: Path, scale: float, nanoaod: Path) -> dict[str, object]:
    script = tmp_path / "analysis_script.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out"), str(scale), str(nanoaod / "nano_dy.root")],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def _partials(outdir: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (outdir / "partials").rglob("*.npz")}


def test_a_processor_from_main_is_shipped_resumed_in_a_new_process_and_rekeyed(
    nanoaod: Path, tmp_path: Path
) -> None:
    first = _script(tmp_path, 1.0, nanoaod)
    assert first["events"] == 40 and first["post"] is True
    folder = tmp_path / "out" / "python"
    assert len(list(folder.glob("processor_*.pkl"))) == 1
    before = _partials(tmp_path / "out")
    assert len(before) >= 1

    again = _script(tmp_path, 1.0, nanoaod)  # a new process: the same pickled bytes, the same keys
    assert again == first
    assert _partials(tmp_path / "out") == before
    assert "Nothing to be done" in (folder / "run.log").read_text()

    changed = _script(tmp_path, 2.0, nanoaod)  # another function: another key, no old output reused
    assert changed["pt"] == pytest.approx(2 * float(str(first["pt"])))
    assert len(list(folder.glob("processor_*.pkl"))) == 2
    after = _partials(tmp_path / "out")
    assert set(before) < set(after)
    assert all(after[p] == t for p, t in before.items())


def test_a_pickle_from_another_python_version_says_so(tmp_path: Path) -> None:
    from coffea_smk.spec.pickled import load_pickled
    from coffea_smk.spec.processor import ProcessorError

    with pytest.raises(ProcessorError, match=r"Python 2\.7.*same Python version"):
        load_pickled(str(tmp_path / "m.py"), "p.pkl", sha256="0" * 64, python="2.7")


def test_compute_returns_at_once_and_gives_the_runners_result(nanoaod: Path, tmp_path: Path) -> None:
    from coffea_smk.compute import DataGroup, SnakemakeBackend

    fileset = {"DY": [str(nanoaod / "nano_dy.root")], "Mu": [str(nanoaod / "nano_dimuon.root")]}
    group = DataGroup.from_fileset(fileset)
    with SnakemakeBackend(outdir=tmp_path / "out", cores=2, chunksize=11) as backend:
        began = time.monotonic()
        task = backend.compute(group.map_steps(DimuonProcessor()))
        assert time.monotonic() - began < 5 and not task.done()
        assert task.progress.running
        assert task.wait(timeout=600)
        grouped = task.result()
    assert task.progress.done == 2 and not task.progress.running
    assert set(grouped) == {"DY", "Mu"}
    for name in fileset:
        theirs = run_coffea({name: {"files": {fileset[name][0]: "Events"}}}, DimuonProcessor, 11)
        assert_same_result(grouped[name], theirs, name)
    attached = SnakemakeBackend.attach(tmp_path / "out")
    assert attached.done()
    assert set(attached.result()) == {"DY", "Mu"}


def test_continue_on_partial_result_and_the_rest_after_the_fix(nanoaod: Path, tmp_path: Path) -> None:
    from coffea_smk.compute import DataGroup, ErrorPolicy, File, IncompleteResultError, SnakemakeBackend

    sys.path.insert(0, str(PROCESSORS))
    try:
        from compute_processors import BrokenWhileFlagged  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(PROCESSORS))
    flag = tmp_path / "broken.flag"
    flag.write_text("")
    tt = str(nanoaod / "nano_tt_v15.root")  # 200 entries: chunks of 15, those from entry 100 on fail
    fileset = {"DY": [str(nanoaod / "nano_dy.root"), tt], "Mu": [str(nanoaod / "nano_dimuon.root")]}
    group = DataGroup.from_fileset(fileset)
    processor = BrokenWhileFlagged(str(flag), "nano_tt", from_entry=100)
    policy = ErrorPolicy(continue_on=(OSError, ValueError), retries=0)
    with SnakemakeBackend(outdir=tmp_path / "out", cores=2, chunksize=15, events_per_job=60) as backend:
        task = backend.compute(group.map_steps(processor), error_policy=policy)
        with pytest.raises(IncompleteResultError, match=r"(?s)DY.*nano_tt.*partial_result"):
            task.result()
        part, rest = task.partial_result()
        assert set(part) == {"DY", "Mu"}  # the finished chunks of DY too
        assert part["DY"]["events"] == 40 + 105  # nano_dy, and nano_tt up to the first broken chunk
        assert rest is not None and rest.dataset_names == ("DY",)
        assert rest.data.datasets[0].files == (File(path=tt, tree="Events", steps=((105, 200),)),)
        flag.unlink()  # the input is fixed
        more = backend.compute(rest, error_policy=policy).result()
        assert more["DY"]["events"] == 95
        assert task.partial_result() == (part, rest)  # the first task still reads its own results
    with SnakemakeBackend(outdir=tmp_path / "full", cores=2, chunksize=15) as backend:
        full = backend.compute(group.map_steps(processor)).result()
    assert coffea_smk.accumulate([part, more]) == full  # no event twice, none lost


def test_a_cancelled_task_resumes_without_redoing_a_finished_unit(nanoaod: Path, tmp_path: Path) -> None:
    from coffea_smk.compute import DataGroup, SnakemakeBackend

    fileset = {"TT": [str(nanoaod / "nano_tt_v15.root")]}
    group = DataGroup.from_fileset(fileset)
    outdir = tmp_path / "out"
    with SnakemakeBackend(outdir=outdir, cores=1, chunksize=20, events_per_job=20) as backend:
        task = backend.compute(group.map_steps(DimuonProcessor()))
        deadline = time.monotonic() + 300
        while len(_partials(outdir)) < 2 and time.monotonic() < deadline and not task.done():
            time.sleep(0.1)
        task.cancel()
        # one job at a time: every unit but the newest had finished (the newest's job may not have)
        before = dict(sorted(_partials(outdir).items(), key=lambda item: item[1])[:-1])
        assert before, "no work unit finished before the cancel"
        grouped = backend.compute(group.map_steps(DimuonProcessor())).result()
    after = _partials(outdir)
    assert all(after[p] == t for p, t in before.items())  # finished units are not redone
    assert grouped["TT"]["cutflow"]["TT"]["events"] == 200


def test_the_example_script_runs(nanoaod: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "notebook_api.py"), str(nanoaod)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "per dataset: {'DY': 40, 'Mu': 40} left: None" in proc.stdout
    assert "entries per dataset: {'DY': 40, 'Mu': 40}" in proc.stdout


def test_a_lambda_is_a_processor_and_one_run_at_a_time(nanoaod: Path, tmp_path: Path) -> None:
    from coffea_smk.compute import DataGroup, SnakemakeBackend

    fileset = {"DY": [str(nanoaod / "nano_dy.root")]}
    out = coffea_smk.Runner(chunksize=15, outdir=tmp_path / "out")(
        fileset, processor_instance=lambda events: {"n": len(events)}
    )
    assert out == {"n": 40}
    with SnakemakeBackend(outdir=tmp_path / "out", chunksize=15) as backend:
        computable = DataGroup.from_fileset(fileset).map_steps(lambda events: {"n": 2 * len(events)})
        task = backend.compute(computable)
        with pytest.raises(RuntimeError, match="still running"):
            backend.compute(computable)
        assert task.result() == {"DY": {"n": 80}}


_STARTER = """
import sys, time
from pathlib import Path
from typing import Any
from coffea_smk.compute import DataGroup, SnakemakeBackend
from coffea_smk.examples.dimuon import DimuonProcessor

group = DataGroup.from_fileset({"TT": [sys.argv[2]], "DY": [sys.argv[3]]})
backend = SnakemakeBackend(outdir=sys.argv[1], cores=1, chunksize=20, events_per_job=20)
task = backend.compute(group.map_steps(DimuonProcessor()))
print("started", flush=True)
time.sleep(600)  # killed before this ends
"""


def test_a_killed_python_process_leaves_a_task_that_a_new_one_attaches_to(
    nanoaod: Path, tmp_path: Path
) -> None:
    from coffea_smk.compute import DataGroup, SnakemakeBackend

    outdir = tmp_path / "out"
    files = [str(nanoaod / "nano_tt_v15.root"), str(nanoaod / "nano_dy.root")]
    script = tmp_path / "starter.py"
    script.write_text(textwrap.dedent(_STARTER))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kernel = subprocess.Popen(
        [sys.executable, str(script), str(outdir), *files], cwd=tmp_path, env=env, stdout=subprocess.PIPE
    )
    try:
        assert kernel.stdout is not None and kernel.stdout.readline() == b"started\n"
        deadline = time.monotonic() + 300
        while not _partials(outdir) and time.monotonic() < deadline:
            time.sleep(0.05)
        kernel.kill()  # the kernel dies (SIGKILL); the run it started goes on
    finally:
        kernel.kill()
        kernel.wait()
    task = SnakemakeBackend.attach(outdir)
    assert not task.done(), "the run did not outlive the process that started it"
    group = DataGroup.from_fileset({"TT": [files[0]], "DY": [files[1]]})
    with SnakemakeBackend(outdir=outdir, cores=1, chunksize=20, events_per_job=20) as backend:
        with pytest.raises(RuntimeError, match=r"another Python process.*attach"):
            backend.compute(group.map_steps(DimuonProcessor()))
        assert task.wait(timeout=600) and task.done()
        first = task.result()
        before = _partials(outdir)
        again = backend.compute(group.map_steps(DimuonProcessor())).result()
    assert _partials(outdir) == before  # nothing redone
    assert "Nothing to be done" in (outdir / "python" / "run.log").read_text()
    assert set(first) == set(again) == {"TT", "DY"}
    for name, path in (("TT", files[0]), ("DY", files[1])):
        assert_same_result(again[name], run_coffea({name: {"files": {path: "Events"}}}, DimuonProcessor, 20))
        assert_same_result(first[name], again[name], name)


def test_map_files_calls_a_function_once_per_file_with_entries(nanoaod: Path, tmp_path: Path) -> None:
    import uproot

    from coffea_smk.compute import DataGroup, SnakemakeBackend

    fileset = {
        "DY": [str(nanoaod / "nano_dy.root"), str(nanoaod / "nano_tt_v15.root")],
        "Mu": [str(nanoaod / "nano_dimuon.root")],
    }
    seen = "defined in the test: shipped with cloudpickle, with this closure"

    def per_file(directory: Any) -> dict[str, Any]:
        tree = directory["Events"]
        return {"files": 1, "entries": tree.num_entries, "branches": len(tree.keys()), "note": {seen: 1}}

    with SnakemakeBackend(outdir=tmp_path / "out", chunksize=7, events_per_job=14) as backend:
        grouped = backend.compute(DataGroup.from_fileset(fileset).map_files(per_file)).result()
    assert set(grouped) == {"DY", "Mu"}
    for name, paths in fileset.items():
        trees = [uproot.open(p)["Events"] for p in paths]
        assert grouped[name]["files"] == len(paths)  # once per file, though each has several chunks
        assert grouped[name]["entries"] == sum(t.num_entries for t in trees)
        assert grouped[name]["branches"] == sum(len(t.keys()) for t in trees)
        assert grouped[name]["note"] == {seen: len(paths)}
    units = list((tmp_path / "out" / "partials").rglob("*.npz"))
    assert len(units) > 3  # several units: the first chunk of a file is in one of them only


def test_progress_counts_events_and_watch_draws_a_bar_to_the_end(nanoaod: Path, tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from coffea_smk.compute import DataGroup, SnakemakeBackend

    group = DataGroup.from_fileset(
        {"TT": [str(nanoaod / "nano_tt_v15.root")], "DY": [str(nanoaod / "nano_dy.root")]}
    )
    with SnakemakeBackend(outdir=tmp_path / "out", cores=1, chunksize=20, events_per_job=40) as backend:
        task = backend.compute(group.map_steps(DimuonProcessor()))
        seen = []
        while not task.done() and len(seen) < 200:
            p = task.progress
            seen.append(p.events_done)
            assert p.events_expected in (None, 240) and p.events_done <= 240
            assert p.running or task.done()
            time.sleep(0.05)
        assert seen == sorted(seen)  # never backwards
        screen = io.StringIO()
        last = task.watch(interval=0.1, console=Console(file=screen, width=120))
    assert not last.running and last.events_done == last.events_expected == 240 and last.fraction == 1.0
    assert last.chunks_done == 12 and last.chunks_pending == 0 and last.failed_chunks == 0
    assert last.done == 2 and "240 events, 0 failed chunks" in screen.getvalue()
    assert "100%" in str(task.progress) and "datasets 2/2 done" in str(task.progress)
