"""The Snakemake glue without a Snakemake run: job names, no writes while parsing, timers, damaged files."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from coffea_smk.engine.damaged import DamagedFileError, discard
from coffea_smk.smk.analysis import Analysis, _scheduler_timers
from coffea_smk.smk.layout import Kind
from coffea_smk.smk.names import attempt_name, split_attempt

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"
KEY = "0123456789abcdef"


def test_job_names_and_attempts() -> None:
    assert split_attempt(KEY) == (KEY, 0) and split_attempt(f"{KEY}-a3") == (KEY, 3)
    assert attempt_name(KEY, 0) == KEY and attempt_name(KEY, 2) == f"{KEY}-a2"
    with pytest.raises(ValueError, match="not a job name"):
        split_attempt("plan.json")


def _analysis(tmp_path: Path, nanoaod: Path) -> Analysis:
    config = {
        "fileset": {"DY": {"files": [str(nanoaod / "nano_dy.root")]}},
        "processor": DIMUON,
        "outdir": str(tmp_path / "results"),
    }
    layout_plans: dict[str, str] = {}

    def get(dataset: str, plan: str) -> SimpleNamespace:
        return SimpleNamespace(output=[layout_plans[dataset]])

    analysis = Analysis(config, [], SimpleNamespace(plan=SimpleNamespace(get=get)))
    layout_plans["DY"] = analysis.layout.plan_path("DY")
    return analysis


def test_a_damaged_plan_is_left_for_the_job_that_reads_it(tmp_path: Path, nanoaod: Path) -> None:
    """Parsing (and a dry run's DAG) writes and deletes nothing: the dataset job removes the plan."""
    analysis = _analysis(tmp_path, nanoaod)
    plan = Path(analysis.layout.plan_path("DY"))
    plan.parent.mkdir(parents=True)
    plan.write_text('{"truncated": ')
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    wildcards = SimpleNamespace(dataset="DY", node=KEY)
    assert analysis.get_dataset_inputs(wildcards) == [] and analysis.get_merge_inputs(wildcards) == []
    assert plan.read_text() == '{"truncated": '
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert analysis.path(Kind.PLAN) == analysis.path("plan")


def test_end_of_run_cancels_only_snakemakes_scheduler_timers() -> None:
    ours = threading.Timer(60, lambda: None)
    # a function defined where Snakemake's job scheduler is
    code = compile(
        "def wake():\n    pass\n", "/x/site-packages/snakemake/scheduling/job_scheduler.py", "exec"
    )
    namespace: dict[str, object] = {}
    exec(code, namespace)
    theirs = threading.Timer(60, namespace["wake"])  # type: ignore[arg-type]
    ours.start()
    theirs.start()
    try:
        found = _scheduler_timers()
        assert theirs in found and ours not in found
    finally:
        ours.cancel()
        theirs.cancel()


def test_a_damaged_file_is_removed_with_one_wording(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{")
    err = discard(path, f"{path} is corrupted (EOF)", DamagedFileError)
    assert not path.exists() and isinstance(err, DamagedFileError)
    assert str(err) == f"{path} is corrupted (EOF)\nRemoved {path}: run again and it is redone."
    assert isinstance(discard(path, "gone already", KeyError), KeyError)  # a missing file is fine
