"""`coffea-smk init` and `coffea-smk profile install`, then plain `snakemake` in the analysis directory.

The cluster cases type literally `snakemake --profile uge` (and `slurm`) in a directory
made by `init`, with the profile installed by name into the user's config directory
(``XDG_CONFIG_HOME`` points at a temporary one), on the real schedulers of conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import assert_same_result

import coffea_smk
from coffea_smk.spec.config import AnalysisConfig, parse_config

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"
USER_RULE = """

rule cutflow:
    input:
        rules.all.input[0],
    output:
        "cutflow.txt",
    run:
        result = coffea_smk.load(input[0])
        with open(output[0], "w") as f:
            for name, flow in sorted(result["cutflow"].items()):
                print(name, flow["muons"], file=f)
"""


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coffea_smk", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        text=True,
        capture_output=True,
        timeout=120,
    )


def _snakemake(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        text=True,
        capture_output=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _coffea_preprocessed(nanoaod: Path, where: Path) -> Path:
    """A fileset as coffea.dataset_tools.preprocess writes it (relative paths, steps, uuid, form)."""
    data = where / "data"
    data.mkdir()
    for name in ("nano_dy.root", "nano_dimuon.root"):
        (data / name).write_bytes((nanoaod / name).read_bytes())
    fileset = {
        "DY": {
            "files": {
                "data/nano_dy.root": {
                    "object_path": "Events",
                    "steps": [[0, 40]],
                    "num_entries": 40,
                    "uuid": "x",
                }
            },
            "form": "compressed-form",
            "metadata": {"xsec": 6077.22, "is_data": False},
        },
        "DoubleMuon": {"files": {"data/nano_dimuon.root": "Events"}, "metadata": {"is_data": True}},
    }
    path = where / "preprocessed.json"
    path.write_text(json.dumps(fileset))
    return path


@pytest.fixture
def analysis_dir(tmp_path: Path, nanoaod: Path) -> Path:
    fileset = _coffea_preprocessed(nanoaod, tmp_path)
    proc = _cli("init", "--fileset", str(fileset), "--processor", DIMUON, "--dir", "ana", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "not kept from the fileset: form, num_entries, steps, uuid" in proc.stdout
    assert "snakemake --profile uge" in proc.stdout
    return tmp_path / "ana"


def test_init_writes_a_valid_commented_config(analysis_dir: Path) -> None:
    text = (analysis_dir / "analysis.yaml").read_text()
    cfg = parse_config(yaml.safe_load(text))
    assert cfg.processor == DIMUON and cfg.fileset == "fileset.json"
    # every setting is there with its description, defaults commented out
    for name, info in AnalysisConfig.model_fields.items():
        assert f"{info.alias or name}:" in text
    assert "# chunksize: 100000" in text and "Events per chunk" in text
    fileset = json.loads((analysis_dir / "fileset.json").read_text())
    (dy_file,) = fileset["DY"]["files"]
    assert Path(dy_file).is_absolute() and Path(dy_file).is_file()
    assert fileset["DY"]["files"][dy_file] == "Events"
    assert fileset["DY"]["metadata"] == {"xsec": 6077.22, "is_data": False}
    assert "form" not in fileset["DY"]


def test_plain_snakemake_runs_the_analysis_and_a_user_rule(analysis_dir: Path, tmp_path: Path) -> None:
    with (analysis_dir / "Snakefile").open("a") as f:
        f.write(USER_RULE)
    _snakemake("--cores", "2", cwd=analysis_dir)
    meta = coffea_smk.load_meta(analysis_dir / "results" / "result.npz")
    assert meta["complete"] and meta["events"] == 80
    _snakemake("--cores", "2", "cutflow", cwd=analysis_dir)
    assert (analysis_dir / "cutflow.txt").read_text().split() == ["DY", "18", "DoubleMuon", "84"]


def test_init_errors_name_what_to_fix(tmp_path: Path, nanoaod: Path) -> None:
    fileset = tmp_path / "fs.json"
    fileset.write_text(json.dumps({"DY": {"files": ["nope/missing.root", str(nanoaod / "nano_dy.root")]}}))
    proc = _cli("init", "--fileset", str(fileset), "--processor", DIMUON, "--dir", "a", cwd=tmp_path)
    assert proc.returncode == 2 and "1 input file(s)" in proc.stderr and "DY: " in proc.stderr
    assert str(tmp_path / "nope" / "missing.root") in proc.stderr and not (tmp_path / "a").exists()

    fileset.write_text(json.dumps({"DY": {"files": [str(nanoaod / "nano_dy.root")]}}))
    (tmp_path / "myproc.py").write_text("def count(events):\n    return {'n': len(events)}\n")
    proc = _cli("init", "--fileset", str(fileset), "--processor", "myproc:count", "--dir", "b", cwd=tmp_path)
    assert proc.returncode == 2 and "cannot import processor module 'myproc'" in proc.stderr
    assert "copy it there" in proc.stderr
    proc = _cli("init", "--fileset", str(fileset), "--processor", "myproc:count", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # in the directory where the module is
    # the same init again changes nothing; another one would overwrite: only with --force
    again = _cli("init", "--fileset", str(fileset), "--processor", "myproc:count", cwd=tmp_path)
    assert again.returncode == 0 and "wrote" not in again.stdout, again.stderr
    (tmp_path / "other.py").write_text("def count(events):\n    return {'n': len(events)}\n")
    other = _cli("init", "--fileset", str(fileset), "--processor", "other:count", cwd=tmp_path)
    assert other.returncode == 2 and "--force" in other.stderr and "analysis.yaml" in other.stderr
    assert "myproc:count" in (tmp_path / "analysis.yaml").read_text()
    forced = _cli("init", "--fileset", str(fileset), "--processor", "other:count", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and "other:count" in (tmp_path / "analysis.yaml").read_text()
    assert json.loads(fileset.read_text()) == {"DY": {"files": [str(nanoaod / "nano_dy.root")]}}


@pytest.mark.parametrize("how", [[], ["--dir", "."]])
def test_init_in_the_directory_of_a_valid_fileset_uses_it_in_place(
    tmp_path: Path, nanoaod: Path, how: list[str]
) -> None:
    """The most natural first command: the fileset is the input, not an earlier init's output."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "nano_dy.root").write_bytes((nanoaod / "nano_dy.root").read_bytes())
    text = '{"DY": {"files": ["data/nano_dy.root"], "metadata": {"xsec": 1.0}}}'
    (tmp_path / "fileset.json").write_text(text)
    args = ["init", "--fileset", "fileset.json", "--processor", DIMUON, *how]
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"kept {tmp_path / 'fileset.json'} (unchanged)" in proc.stdout
    assert (tmp_path / "fileset.json").read_text() == text  # byte for byte: never rewritten
    assert parse_config(yaml.safe_load((tmp_path / "analysis.yaml").read_text())).fileset == "fileset.json"
    again = _cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "wrote" not in again.stdout, again.stderr
    dry = _cli("run", "analysis.yaml", "-n", cwd=tmp_path)
    assert dry.returncode == 0 and "preprocess" in dry.stdout + dry.stderr, dry.stderr


def test_init_in_the_directory_of_coffeas_preprocess_output(tmp_path: Path, nanoaod: Path) -> None:
    """A fileset.json that needs converting is left as it is; the converted copy goes beside it."""
    written = _coffea_preprocessed(nanoaod, tmp_path)
    original = written.read_text()
    (tmp_path / "fileset.json").write_text(original)
    written.unlink()
    proc = _cli("init", "--fileset", "fileset.json", "--processor", DIMUON, "--dir", ".", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fileset.json").read_text() == original
    normalised = json.loads((tmp_path / "fileset.normalised.json").read_text())
    assert normalised["DY"]["files"] == {str(tmp_path / "data" / "nano_dy.root"): "Events"}
    config = parse_config(yaml.safe_load((tmp_path / "analysis.yaml").read_text()))
    assert config.fileset == "fileset.normalised.json"
    assert "fileset.json is left as it is" in proc.stdout
    forced = _cli(
        "init", "--fileset", "fileset.json", "--processor", DIMUON, "--force", cwd=tmp_path
    )  # --force overwrites init's files, never the input
    assert forced.returncode == 0 and (tmp_path / "fileset.json").read_text() == original
    _snakemake("--cores", "2", cwd=tmp_path)
    assert coffea_smk.load_meta(tmp_path / "results" / "result.npz")["events"] == 80


def test_profile_install_keeps_a_users_edits(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    proc = _cli("profile", "install", "uge", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    installed = tmp_path / "config" / "snakemake" / "uge"
    shipped = coffea_smk.profile_dir("uge")
    assert sorted(p.name for p in installed.iterdir()) == sorted(p.name for p in shipped.iterdir())
    assert "-q QUEUE" in proc.stdout and "mem_mb" in proc.stdout
    assert "already installed" in _cli("profile", "install", "uge", cwd=tmp_path, env=env).stdout
    config = installed / "config.v8+.yaml"
    config.write_text(config.read_text().replace("jobs: 200", "jobs: 50"))
    proc = _cli("profile", "install", "uge", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "config.v8+.yaml" in proc.stderr and "--force" in proc.stderr
    assert "jobs: 50" in config.read_text()
    assert _cli("profile", "install", "uge", "--force", cwd=tmp_path, env=env).returncode == 0
    assert "jobs: 200" in config.read_text()
    proc = _cli("profile", "install", "nosuch", cwd=tmp_path, env=env)
    assert proc.returncode == 2


# ---- literally `snakemake --profile NAME` on the real schedulers --------------------------
def _local_reference(analysis_dir: Path) -> Any:
    _snakemake("--cores", "2", cwd=analysis_dir)
    return coffea_smk.load(analysis_dir / "results" / "result.npz")


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("profile", "fast"),
    [
        ("uge", ["--seconds-between-status-checks", "2"]),
        (
            "slurm",
            ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1"],
        ),
    ],
)
def test_snakemake_profile_by_name_on_a_real_scheduler(
    request: pytest.FixtureRequest, tmp_path: Path, nanoaod: Path, profile: str, fast: list[str]
) -> None:
    request.getfixturevalue("sge" if profile == "uge" else "slurm")
    fileset = _coffea_preprocessed(nanoaod, tmp_path)
    for name in ("local_ana", "cluster_ana"):
        assert (
            _cli(
                "init", "--fileset", str(fileset), "--processor", DIMUON, "--dir", name, cwd=tmp_path
            ).returncode
            == 0
        )
    reference = _local_reference(tmp_path / "local_ana")

    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    assert _cli("profile", "install", profile, cwd=tmp_path, env=env).returncode == 0
    ana = tmp_path / "cluster_ana"
    with (ana / "Snakefile").open("a") as f:
        f.write(USER_RULE)
    proc = _snakemake("--profile", profile, *fast, cwd=ana, env=env)
    # the profile selects the progress view: its lines here, Snakemake's own log in the file
    assert "DY: done, files 1/1" in proc.stdout and "coffea-smk: done in" in proc.stdout, proc.stdout
    (log,) = (ana / "results" / "logs" / "snakemake").glob("*.log")
    submitted = "with external jobid" if profile == "uge" else "has been submitted with SLURM jobid"
    assert submitted in log.read_text() and submitted not in proc.stdout + proc.stderr
    assert_same_result(coffea_smk.load(ana / "results" / "result.npz"), reference)
    _snakemake("--profile", profile, *fast, "cutflow", cwd=ana, env=env)
    assert (ana / "cutflow.txt").read_text().split() == ["DY", "18", "DoubleMuon", "84"]
