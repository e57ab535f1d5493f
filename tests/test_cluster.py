"""The shipped cluster profiles on real schedulers (Slurm, Grid Engine) and on no pool (HTCondor).

The schedulers come from Debian packages through ``.ci/schedulers/start-*.sh``
(session fixtures ``slurm`` and ``sge`` in conftest.py). Each test runs the
small real-file analysis through ``coffea-smk run --profile NAME`` exactly as a
user would; only status polling is made faster, and Slurm, which has no
accounting database here, is asked through squeue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PROCESSORS, Workflow, assert_same_result

import coffea_smk

pytestmark = pytest.mark.cluster

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"
# Few jobs: two files of 40 events, one work unit per file.
CONFIG = {"processor": DIMUON, "chunksize": 20, "events_per_job": 40}

# This Slurm has no slurmdbd: sacct knows no job, squeue does (MinJobAge=600).
SLURM = (
    "--profile",
    "slurm",
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "1",
)
UGE = ("--profile", "uge", "--seconds-between-status-checks", "2")


@pytest.fixture(autouse=True)
def raw_snakemake_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read Snakemake's own submission and error lines: no progress view."""
    monkeypatch.setenv("COFFEA_SMK_PROGRESS", "off")


def two_datasets(nanoaod: Path) -> dict[str, Any]:
    return {
        "DY": {"files": [str(nanoaod / "nano_dy.root")]},
        "DoubleMuon": {"files": [str(nanoaod / "nano_dimuon.root")]},
    }


@pytest.fixture(scope="module")
def local_result(tmp_path_factory: pytest.TempPathFactory, nanoaod: Path) -> Any:
    """The same analysis run with the local profile: the reference for every cluster run."""
    wf = Workflow(tmp_path_factory.mktemp("local"))
    wf.write(CONFIG, two_datasets(nanoaod))
    wf.run()
    return coffea_smk.load(wf.root / "results" / "result.npz")


def _job_logs(root: Path) -> set[str]:
    return {
        str(p.relative_to(root / "results" / "logs")).split("/")[0]
        for p in root.glob("results/logs/**/*.log")
    }


def _run_cluster(workflow: Workflow, args: tuple[str, ...]) -> str:
    start = time.monotonic()
    proc = workflow.run(*args, cores=1)
    print(f"{' '.join(args[:2])}: {time.monotonic() - start:.1f} s")
    return proc.stdout + proc.stderr


def _check_result(root: Path, local_result: Any) -> None:
    assert_same_result(coffea_smk.load(root / "results" / "result.npz"), local_result)
    meta = coffea_smk.load_meta(root / "results" / "result.npz")
    assert meta["complete"] and meta["events"] == meta["events_expected"] == 80
    # every job wrote its own log under <outdir>/logs/<step>/
    assert _job_logs(root) == {"preprocess", "plan", "process", "dataset", "result", "report", "publish.log"}


def test_slurm_run_equals_local(slurm: None, workflow: Workflow, nanoaod: Path, local_result: Any) -> None:
    workflow.write(CONFIG, two_datasets(nanoaod))
    out = _run_cluster(workflow, SLURM)
    assert "has been submitted with SLURM jobid" in out
    # both files' preprocessing went to Slurm as one group job
    assert out.count("slurm_logs/group_preprocess") == 1
    _check_result(workflow.root, local_result)


def test_uge_run_equals_local(sge: None, workflow: Workflow, nanoaod: Path, local_result: Any) -> None:
    workflow.write(CONFIG, two_datasets(nanoaod))
    out = _run_cluster(workflow, UGE)
    assert "with external jobid" in out
    qsub_logs = sorted(p.name for p in (workflow.root / ".snakemake" / "uge_logs").iterdir())
    assert len([n for n in qsub_logs if n.startswith("smk.preprocess")]) == 1, qsub_logs
    _check_result(workflow.root, local_result)


# ---- a job cancelled mid-run ----------------------------------------------------------

HELD = '''
"""The dimuon processor, held in the first chunk of DoubleMuon while a file `hold` exists."""

import json
import os
import time
from pathlib import Path

from coffea_smk.examples.dimuon import DimuonProcessor

HERE = Path(__file__).resolve().parent


class HeldDimuon(DimuonProcessor):
    def process(self, events):
        meta = events.metadata
        if meta["dataset"] == "DoubleMuon" and meta["entrystart"] == 0 and (HERE / "hold").exists():
            ids = {k: os.environ.get(k) for k in ("SLURM_JOB_ID", "JOB_ID")}
            (HERE / "held.json").write_text(json.dumps(ids))
            deadline = time.time() + 600
            while (HERE / "hold").exists() and time.time() < deadline:
                time.sleep(0.5)
        return super().process(events)
'''


def _outputs(root: Path) -> dict[str, int]:
    """Every output file but the logs and the column hints (cache/columns/: rewritten by any unit
    that learns other columns, they change no result), with its mtime."""
    results = root / "results"
    return {
        str(p.relative_to(results)): p.stat().st_mtime_ns
        for p in results.rglob("*")
        if p.is_file()
        and p.suffix in (".npz", ".json")
        and "logs" not in p.parts
        and p.parent.parent.name != "columns"
    }


def _cancel_one_job(
    workflow: Workflow,
    nanoaod: Path,
    local_result: Any,
    args: tuple[str, ...],
    id_var: str,
    cancel: str,
    reported: str,
) -> None:
    """Cancel the job that processes DoubleMuon's entries 0-20 while it runs; the run
    fails naming it (``reported``, formatted with the scheduler's job id), a re-run redoes it."""
    root = workflow.root
    (root / "held_dimuon.py").write_text(HELD)
    workflow.write(
        {**CONFIG, "processor": "held_dimuon:HeldDimuon", "events_per_job": 20}, two_datasets(nanoaod)
    )
    (root / "hold").touch()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROCESSORS), os.environ.get("PYTHONPATH", "")])}
    # no retry: it would be held again (work units are not grouped: one unit, one job)
    cmd = [
        sys.executable,
        "-m",
        "coffea_smk",
        "run",
        "analysis.yaml",
        *args,
        "--cores",
        "1",
        "--retries",
        "0",
    ]
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 300
        while not (root / "held.json").exists():
            assert proc.poll() is None, f"the run ended before the job was held:\n{proc.communicate()[0]}"
            assert time.monotonic() < deadline, "no job was held within 300 s"
            time.sleep(0.5)
        time.sleep(0.5)
        job = json.loads((root / "held.json").read_text())[id_var]
        subprocess.run([cancel, job], check=True, capture_output=True, timeout=60)
        out, _ = proc.communicate(timeout=600)
    finally:
        (root / "hold").unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    # the cancelled job fails the run, visibly, and the rest went on (keep-going)
    assert proc.returncode != 0, out
    assert "Error in rule process" in out and reported.format(job=job) in out, out
    assert "Exiting because a job execution failed" in out, out
    first = _outputs(root)
    partials = {name for name in first if name.startswith("partials/")}
    assert len([p for p in partials if p.startswith("partials/DY/")]) == 2
    assert len([p for p in partials if p.startswith("partials/DoubleMuon/")]) == 1
    assert any(name.startswith("datasets/DY/") for name in first)
    assert not any(name.startswith(("datasets/DoubleMuon/", "global/")) for name in first)
    assert "result.npz" not in first

    # the next run redoes that job and the merges it feeds, nothing else
    proc2 = workflow.run(*args, cores=1)
    second = _outputs(root)
    assert {k: v for k, v in second.items() if k in first} == first, "an output that existed was redone"
    redone = set(second) - set(first)
    links = {"datasets/DY.npz", "datasets/DoubleMuon.npz", "result.npz"}  # published once all is done
    assert links < redone, redone
    computed = redone - links
    assert len(computed) == 3 and {n.split("/")[0] for n in computed} == {"partials", "datasets", "global"}
    (new_partial,) = [n for n in computed if n.startswith("partials/")]
    assert new_partial.startswith("partials/DoubleMuon/")
    assert "preprocess" not in proc2.stdout + proc2.stderr.replace("results/preprocess", "")
    assert_same_result(coffea_smk.load(root / "results" / "result.npz"), local_result)


def test_slurm_cancelled_job_fails_and_is_redone_alone(
    slurm: None, workflow: Workflow, nanoaod: Path, local_result: Any
) -> None:
    _cancel_one_job(
        workflow,
        nanoaod,
        local_result,
        SLURM,
        "SLURM_JOB_ID",
        "scancel",
        "SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'",
    )


def test_uge_deleted_job_fails_and_is_redone_alone(
    sge: None, workflow: Workflow, nanoaod: Path, local_result: Any
) -> None:
    _cancel_one_job(workflow, nanoaod, local_result, UGE, "JOB_ID", "qdel", "external_jobid: {job}")


# ---- HTCondor: no pool here, so a dry run and the submit description ------------------

# Replaces htcondor2.Schedd in the Snakemake process: each submission is written
# to $CAPTURE as JSON and then refused, as a pool-less machine would.
CAPTURE_SCHEDD = """
import json, os
import htcondor2

class _Schedd:
    def submit(self, description, *args, **kwargs):
        with open(os.environ["CAPTURE"], "a") as f:
            f.write(json.dumps(dict(description)) + "\\n")
        raise RuntimeError("no HTCondor pool on this machine (test)")

htcondor2.Schedd = _Schedd
"""


def _htcondor_env(root: Path) -> dict[str, str]:
    hooks = root / "_schedd"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(CAPTURE_SCHEDD)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
        "CAPTURE": str(root / "submitted.jsonl"),
        "CONDOR_CONFIG": "/dev/null",  # no pool configuration on this machine
    }


def test_htcondor_profile_dry_run(workflow: Workflow, nanoaod: Path) -> None:
    workflow.write(CONFIG, two_datasets(nanoaod))
    cmd = [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "--profile", "htcondor", "-n"]
    proc = subprocess.run(
        cmd, cwd=workflow.root, env=_htcondor_env(workflow.root), text=True, capture_output=True
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Group job preprocess" in out and "htcondor_request_mem_mb=2000" in out, out
    assert not (workflow.root / "submitted.jsonl").exists()


def test_htcondor_submit_description(workflow: Workflow, nanoaod: Path) -> None:
    workflow.write(CONFIG, two_datasets(nanoaod))
    cmd = [
        sys.executable,
        "-m",
        "coffea_smk",
        "run",
        "analysis.yaml",
        "--profile",
        "htcondor",
        "--retries",
        "0",
    ]
    proc = subprocess.run(
        cmd, cwd=workflow.root, env=_htcondor_env(workflow.root), text=True, capture_output=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "no HTCondor pool on this machine (test)" in out, out
    (submitted,) = [json.loads(line) for line in (workflow.root / "submitted.jsonl").read_text().splitlines()]

    # both files' preprocessing as one job, one core, in sequence: the group's
    # memory is the maximum of its jobs', run by this very interpreter
    assert submitted["executable"] == sys.executable
    args = submitted["arguments"]
    assert args.startswith("-m snakemake ") and "--cores 1" in args
    assert "preprocess:dataset=DY," in args and "preprocess:dataset=DoubleMuon," in args
    assert submitted["request_cpus"] == "1"
    assert submitted["request_memory"] == "2000MB"
    assert submitted["request_disk"] == str(2000 * 1024)  # KiB
    assert submitted["getenv"] == "true"  # a boolean, not a list of variable names
    # shared file system: nothing is transferred, logs go to the job directory
    assert "should_transfer_files" not in submitted
    assert submitted["log"] == ".snakemake/htcondor/snakemake-rules.log"
    assert submitted["output"].startswith(".snakemake/htcondor/")
    assert submitted["error"].startswith(".snakemake/htcondor/")
