"""The Python API on the real schedulers (issue 23): ``coffea_smk.Runner`` on Slurm with a
processor defined in ``__main__`` (shipped with cloudpickle), and ``SnakemakeBackend`` on
Grid Engine with ``continue_on``, ``partial_result()`` and the rest computed after the fix.

The schedulers are the session fixtures ``slurm`` and ``sge`` of conftest.py; as in
tests/test_cluster.py, Slurm (no accounting here) is asked through squeue.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import PROCESSORS, REPO, assert_same_result, run_coffea

import coffea_smk
from coffea_smk.examples.dimuon import DimuonProcessor

pytestmark = pytest.mark.cluster

SLURM_ARGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1"]

_SCRIPT = """
import pickle, sys
import coffea_smk
from coffea_smk.examples.dimuon import DimuonProcessor


class Mine(DimuonProcessor):  # in __main__: the jobs cannot import it, so it is shipped
    pass


runner = coffea_smk.Runner(
    chunksize=20, events_per_job=40, outdir=sys.argv[1], profile="slurm", cores=1,
    snakemake_args=sys.argv[4:],
)
out = runner({"DY": [sys.argv[2]], "Mu": [sys.argv[3]]}, processor_instance=Mine())
with open(sys.argv[1] + ".pkl", "wb") as f:
    pickle.dump(out, f)
"""


def test_runner_on_slurm_ships_a_main_processor_and_equals_coffea(
    slurm: None, nanoaod: Path, tmp_path: Path
) -> None:
    import pickle

    dy, mu = str(nanoaod / "nano_dy.root"), str(nanoaod / "nano_dimuon.root")
    script = tmp_path / "analysis.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    outdir = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COFFEA_SMK_PROGRESS": "off"}
    proc = subprocess.run(
        [sys.executable, str(script), str(outdir), dy, mu, *SLURM_ARGS],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=900,
        check=False,
    )
    log = (outdir / "python" / "run.log").read_text() if (outdir / "python" / "run.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    assert "has been submitted with SLURM jobid" in log
    assert len(list((outdir / "python").glob("processor_*.pkl"))) == 1
    ours = pickle.loads(Path(f"{outdir}.pkl").read_bytes())
    assert_same_result(
        ours,
        run_coffea({"DY": {"files": {dy: "Events"}}, "Mu": {"files": {mu: "Events"}}}, DimuonProcessor, 20),
    )


def test_backend_on_grid_engine_continue_on_and_the_rest(
    sge: None, nanoaod: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coffea_smk.compute import DataGroup, ErrorPolicy, SnakemakeBackend

    sys.path.insert(0, str(PROCESSORS))
    try:
        from compute_processors import BrokenWhileFlagged  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(PROCESSORS))
    flag = tmp_path / "broken.flag"
    flag.write_text("")
    tt = str(nanoaod / "nano_tt_v15.root")
    group = DataGroup.from_fileset({"DY": [str(nanoaod / "nano_dy.root"), tt]})
    processor = BrokenWhileFlagged(str(flag), "nano_tt", from_entry=100)
    policy = ErrorPolicy(continue_on=(ValueError,), retries=0)
    uge = dict(profile="uge", cores=1, chunksize=25, events_per_job=100)
    args = ["--seconds-between-status-checks", "2"]
    monkeypatch.setenv("COFFEA_SMK_PROGRESS", "off")  # Snakemake's own lines in run.log
    with SnakemakeBackend(outdir=tmp_path / "out", snakemake_args=args, **uge) as backend:
        task = backend.compute(group.map_steps(processor), error_policy=policy)
        assert task.wait(timeout=900)
        part, rest = task.partial_result()
        assert part["DY"]["events"] == 40 + 100 and rest is not None
        assert rest.data.datasets[0].files[0].steps == ((100, 200),)
        flag.unlink()
        more = backend.compute(rest, error_policy=policy).result()
    assert "with external jobid" in (tmp_path / "out" / "python" / "run.log").read_text()
    full = coffea_smk.Runner(chunksize=25, outdir=tmp_path / "full")(
        {"DY": [str(nanoaod / "nano_dy.root"), tt]}, processor
    )
    assert coffea_smk.accumulate([part, more])["DY"] == full
