"""Crash safety: SIGKILL Snakemake, the whole run, or single jobs at many moments; re-run; same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import Workflow, assert_same_result

import coffea_smk

pytestmark = pytest.mark.slow

CONFIG = {
    "processor": "coffea_smk.examples.dimuon:DimuonProcessor",
    "chunksize": 20,
    "events_per_job": 40,
    "merge_fanin": 2,
    "files_per_preprocess_job": 1,
}


def _fileset(nanoaod: Path, root: Path, dy: Path | None = None) -> dict:
    """Two DY files (``nano_dy.root``, or ``dy``: its RNTuple twin) and a TT file."""
    data = root / "data"
    data.mkdir()
    for i in range(2):
        (data / f"dy{i}.root").write_bytes((dy or nanoaod / "nano_dy.root").read_bytes())
    (data / "tt.root").write_bytes((nanoaod / "nano_tt_v15.root").read_bytes())
    return {"DY": {"files": ["data/dy0.root", "data/dy1.root"]}, "TT": {"files": ["data/tt.root"]}}


def _procs(root: Path, match: Callable[[list[str]], bool]) -> list[int]:
    here = os.path.realpath(root)
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmd = [c.decode(errors="replace") for c in (entry / "cmdline").read_bytes().split(b"\0") if c]
            if match(cmd) and os.path.realpath(entry / "cwd") == here:
                out.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return out


def _is_snakemake(cmd: list[str]) -> bool:
    return "-m" in cmd[:3] and "snakemake" in cmd[:4]


def _is_job(step: str) -> Callable[[list[str]], bool]:
    return lambda cmd: cmd[1:5] == ["-m", "coffea_smk", "job", step]


def _any_job(cmd: list[str]) -> bool:
    return cmd[1:4] == ["-m", "coffea_smk", "job"]


@pytest.fixture(scope="module")
def reference(nanoaod: Path, tmp_path_factory: pytest.TempPathFactory) -> object:
    wf = Workflow(tmp_path_factory.mktemp("clean"))
    wf.write(CONFIG, _fileset(nanoaod, wf.root))
    wf.run()
    return coffea_smk.load(wf.root / "results" / "result.npz")


# (what appears under results/, how many, what is killed)
FILE_POINTS = [
    ("cache/files/*/*.json", 1, "snakemake"),
    ("preprocess/*/*.json", 1, "group"),
    ("preprocess/*/*.json", 3, "snakemake"),
    ("plan/*/*.json", 1, "group"),
    ("partials/*/*/*.npz", 1, "snakemake"),
    ("partials/*/*/*.npz", 4, "group"),
    ("merges/*/*/*.npz", 1, "snakemake"),
    ("datasets/*/*.npz", 1, "group"),
    ("datasets/*/*.npz", 2, "snakemake"),
]
JOB_POINTS = ["preprocess", "process", "merge", "dataset", "result"]


def _start(wf: Workflow) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(wf.hooks), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "--cores", "2"],
        cwd=wf.root,
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_idle(root: Path, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while _procs(root, _any_job) or _procs(root, _is_snakemake):
        assert time.monotonic() < end, "jobs of the killed run did not finish"
        time.sleep(0.05)


def _finish_and_compare(wf: Workflow, reference: object) -> None:
    results = wf.root / "results"
    # whatever the crash left is either complete and valid, or absent
    for path in results.rglob("*.npz"):
        if path.name.endswith(".baskets.npz"):  # a preprocessing basket map
            with np.load(path, allow_pickle=False) as npz:
                assert {"header", "seek", "nbytes", "entries"} <= set(npz.files)
        else:
            coffea_smk.load_meta(path)
    wf.run()
    assert_same_result(coffea_smk.load(results / "result.npz"), reference)
    meta = coffea_smk.load_meta(results / "result.npz")
    assert meta["complete"] and meta["events"] == meta["events_expected"] == 280
    again = wf.run()
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize(("pattern", "count", "victim"), FILE_POINTS)
def test_kill_snakemake_at_any_moment(
    workflow: Workflow, nanoaod: Path, reference: object, pattern: str, count: int, victim: str
) -> None:
    workflow.write(CONFIG, _fileset(nanoaod, workflow.root))
    results = workflow.root / "results"
    proc = _start(workflow)
    deadline = time.monotonic() + 300
    while len(list(results.glob(pattern))) < count:
        assert proc.poll() is None, f"the run ended before {count} x {pattern} appeared"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not (results / "result.npz").exists(), "the kill came too late"
    if victim == "group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        for pid in _procs(workflow.root, _is_snakemake):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _wait_idle(workflow.root)
    assert not (results / "result.npz").exists() or victim == "snakemake"
    _finish_and_compare(workflow, reference)


@pytest.mark.parametrize("step", JOB_POINTS)
def test_kill_a_single_job(workflow: Workflow, nanoaod: Path, reference: object, step: str) -> None:
    workflow.write(CONFIG, _fileset(nanoaod, workflow.root))
    proc = _start(workflow)
    deadline = time.monotonic() + 300
    killed = False
    while not killed:
        assert proc.poll() is None, f"the run ended before a {step} job was seen"
        assert time.monotonic() < deadline
        for pid in _procs(workflow.root, _is_job(step)):
            os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.005)
    assert proc.wait(timeout=300) != 0, "a killed job must fail the run visibly"
    _wait_idle(workflow.root)
    assert not (workflow.root / "results" / "result.npz").exists()
    _finish_and_compare(workflow, reference)


RNTUPLE_DY = Path(__file__).resolve().parents[2] / "shared" / "data" / "rntuple" / "nano_dy_rntuple.root"


@pytest.mark.parametrize("victim", ["process", "snakemake"])
def test_kill_on_rntuple_inputs(workflow: Workflow, nanoaod: Path, reference: object, victim: str) -> None:
    """The DY files as RNTuples (the same events): killed mid-run, resumed, the TTree run's result."""
    workflow.write(CONFIG, _fileset(nanoaod, workflow.root, RNTUPLE_DY))
    proc = _start(workflow)
    deadline = time.monotonic() + 300
    partials = workflow.root / "results" / "partials"
    while True:
        assert proc.poll() is None, f"the run ended before its {victim} was killed"
        assert time.monotonic() < deadline
        if victim == "process" and (pids := _procs(workflow.root, _is_job("process"))):
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            break
        if victim == "snakemake" and len(list(partials.glob("*/*/*.npz"))) >= 1:
            for pid in _procs(workflow.root, _is_snakemake):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=300)
    _wait_idle(workflow.root)
    _finish_and_compare(workflow, reference)
