"""The shipped profiles: found by name (checkout and installed wheel), consistent with the rules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import PROCESSORS, REPO, Workflow

from coffea_smk.smk.paths import profile_dir, snakefile
from coffea_smk.smk.runargs import resolve_profiles as _resolve_profiles

PROFILES = ("local", "uge", "slurm", "htcondor")
CLUSTER = ("uge", "slurm", "htcondor")


def _profile(name: str) -> dict:
    return yaml.safe_load((REPO / "profiles" / name / "config.v8+.yaml").read_text())


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_are_found_by_name(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = profile_dir(name)
    assert shipped is not None and (shipped / "config.v8+.yaml").is_file()
    assert _resolve_profiles(["--profile", name, "-n"]) == ["--profile", str(shipped), "-n"]
    assert _resolve_profiles([f"--profile={name}"]) == [f"--profile={shipped}"]
    # a directory of that name in the working directory wins: it is the user's own
    (tmp_path / name).mkdir()
    assert _resolve_profiles(["--profile", name]) == ["--profile", name]


def test_local_is_the_default_unless_an_executor_is_given() -> None:
    assert _resolve_profiles([]) == ["--profile", str(profile_dir("local"))]
    assert _resolve_profiles(["--executor", "slurm"]) == ["--executor", "slurm"]


def _rule_names() -> set[str]:
    text = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    return set(re.findall(r"^(?:rule|checkpoint) (\w+):", text, re.MULTILINE))


def _local_rules() -> set[str]:
    """Rules that always run on the machine where Snakemake runs (``localrule: True``)."""
    text = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    blocks = re.split(r"^(?=(?:rule|checkpoint) )", text, flags=re.MULTILINE)
    return {b.split()[1].rstrip(":") for b in blocks if "localrule: True" in b and b.split()[0] != "#"}


@pytest.mark.parametrize("name", CLUSTER)
def test_cluster_profiles_name_real_rules(name: str) -> None:
    profile = _profile(name)
    rules = _rule_names()
    assert set(profile["set-resources"]) <= rules
    assert set(profile["groups"]) <= rules
    # every remote rule has memory and runtime; the retry doubles the memory
    assert _local_rules() == {"plan", "publish", "report"}
    assert set(profile["set-resources"]) == rules - _local_rules()
    for resources in profile["set-resources"].values():
        assert str(resources["mem_mb"]).endswith("* attempt") and int(resources["runtime"]) > 0
    for key in ("jobs", "latency-wait", "retries", "rerun-incomplete", "keep-going", "scheduler"):
        assert key in profile, key
    assert profile["scheduler"] == "greedy" and profile["cores"] == 1
    # work units come after the plan checkpoint: grouping them is broken in Snakemake 9
    assert "process" not in profile["groups"] and "merge" not in profile["groups"]


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_select_the_progress_view(name: str) -> None:
    """Plain `snakemake --profile NAME` shows what `coffea-smk run` shows."""
    assert _profile(name)["logger"] == "coffea-smk"
    text = (REPO / "profiles" / name / "config.v8+.yaml").read_text()
    assert "COFFEA_SMK_PROGRESS=off" in text.split("logger: coffea-smk")[0].rsplit("\n\n", 1)[-1]


def _plain(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Plain `snakemake --profile <shipped local profile> ARGS` in ``root``."""
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(REPO / "profiles" / "local"), *args]
    env = {**os.environ, "PYTHONPATH": str(PROCESSORS), **(env or {})}
    return subprocess.run(cmd, cwd=root, env=env, text=True, capture_output=True, timeout=600)


USER_SNAKEFILE = """configfile: "analysis.yaml"


module cs:
    snakefile:
        {snakefile!r}
    config:
        config


use rule * from cs
"""


@pytest.mark.slow
def test_plain_snakemake_with_a_profile_shows_the_view_where_config_outdir_says(
    tmp_path: Path, nanoaod: Path
) -> None:
    wf = Workflow(tmp_path)
    fileset = {"DY": {"files": [str(nanoaod / "nano_dy.root")]}}
    wf.write({"processor": "coffea_smk.examples.dimuon:DimuonProcessor", "chunksize": 20}, fileset)
    (tmp_path / "Snakefile").write_text(USER_SNAKEFILE.format(snakefile=snakefile()))
    elsewhere = ("--config", "outdir=elsewhere")
    proc = _plain(tmp_path, "--cores", "2", *elsewhere)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DY: done, files 1/1, units 1/1 (0 running, 0 failed), events 40/40" in proc.stdout, proc.stdout
    assert f"coffea-smk: full log: {tmp_path / 'elsewhere' / 'logs' / 'snakemake'}" in proc.stdout
    assert "rule process" not in proc.stdout + proc.stderr  # Snakemake's own log is in the file
    assert (tmp_path / "elsewhere" / "result.npz").exists() and not (tmp_path / "results").exists()

    # a failure: the failure line of `coffea-smk run`, with the job's log
    wf.write({"processor": "smk_test_processors:Failing", "chunksize": 10}, fileset)
    proc = _plain(tmp_path, "--cores", "2", *elsewhere)
    assert proc.returncode != 0
    assert "FAILED DY: " in proc.stdout and "entries 20-30: ZeroDivisionError" in proc.stdout, proc.stdout
    assert "(log: elsewhere/logs/process/DY/" in proc.stdout

    # a command that runs no workflow, and COFFEA_SMK_PROGRESS=off: Snakemake's own output
    rules = _plain(tmp_path, "--list-rules")
    assert rules.returncode == 0 and "process" in rules.stdout.split(), rules.stdout + rules.stderr
    raw = _plain(tmp_path, "--cores", "2", *elsewhere, env={"COFFEA_SMK_PROGRESS": "off"})
    assert "rule process" in raw.stdout + raw.stderr and "full log:" not in raw.stdout


# ---- the Grid Engine status script, against stand-ins for qstat and qacct ----------------


def _status(tmp_path: Path, qstat: str, qacct: str | None) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool, body in (("qstat", qstat), ("qacct", qacct)):
        path = bin_dir / tool
        path.unlink(missing_ok=True)
        if body is not None:
            path.write_text(f"#!/bin/bash\n{body}\n")
            path.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    script = REPO / "profiles" / "uge" / "uge-status.sh"
    proc = subprocess.run([str(script), "42"], env=env, text=True, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_uge_status_script(tmp_path: Path) -> None:
    assert os.access(REPO / "profiles" / "uge" / "uge-status.sh", os.X_OK)
    accounting = "printf 'jobnumber    42\\nfailed       %s\\nexit_status  %s\\n'"
    assert _status(tmp_path, "echo 'job_number: 42'", None) == "running"
    assert _status(tmp_path, "echo 'job_number: 42'; echo 'error reason 1: can not open'", None) == "failed"
    assert _status(tmp_path, "exit 1", accounting % (0, 0)) == "success"
    assert _status(tmp_path, "exit 1", accounting % (0, 1)) == "failed"
    # deleted with qdel: killed by a signal, failed 100
    assert _status(tmp_path, "exit 1", accounting % ("100 : assumedly after job", 137)) == "failed"
    # left qstat, accounting not written yet: ask again later
    assert _status(tmp_path, "exit 1", "exit 1") == "running"


# ---- a non-editable install: the wheel carries the workflow and the profiles ------------


@pytest.mark.slow
def test_installed_wheel_finds_every_profile_by_name(tmp_path: Path, nanoaod: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("coffea_smk-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        status = archive.getinfo("coffea_smk/_workflow/profiles/uge/uge-status.sh")
    for name in PROFILES:
        assert f"coffea_smk/_workflow/profiles/{name}/config.v8+.yaml" in names
    assert status.external_attr >> 16 & 0o111, "uge-status.sh lost its executable bit"

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    installed = site / "coffea_smk" / "_workflow"
    assert os.access(installed / "profiles" / "uge" / "uge-status.sh", os.X_OK)

    wf = Workflow(tmp_path / "analysis")
    wf.write(
        {"processor": "coffea_smk.examples.dimuon:DimuonProcessor"},
        {"DY": {"files": [str(nanoaod / "nano_dy.root")]}},
    )
    env = {**os.environ, "PYTHONPATH": str(site), "CONDOR_CONFIG": "/dev/null"}
    for name in PROFILES:
        proc = subprocess.run(
            [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "--profile", name, "-n"],
            cwd=wf.root,
            env=env,
            text=True,
            capture_output=True,
            timeout=300,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert f"Using profile {installed / 'profiles' / name} " in out, out
        assert str(installed / "workflow" / "Snakefile") in out
