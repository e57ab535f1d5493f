"""Config and fileset validation: clear errors naming the field, schema in sync."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import Workflow
from pydantic import AfterValidator, BaseModel, ValidationError

from coffea_smk import cli
from coffea_smk.smk.analysis import CONFIG_ERROR_EXIT
from coffea_smk.smk.paths import snakefile
from coffea_smk.spec.config import (
    AnalysisConfig,
    ConfigError,
    json_schema,
    load_fileset,
    parse_config,
    slugify,
)
from coffea_smk.spec.settings import ErrorPolicy, EventsOptions, PlanSettings

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_unknown_keys() -> None:
    cfg = parse_config({"fileset": "f.json", "processor": "m:P"})
    assert cfg.chunksize == 100_000 and cfg.outdir == "results" and cfg.merge_fanin == 64
    assert cfg.events_per_job == 2_000_000
    with pytest.raises(ConfigError, match=r"field 'chunksiz'"):
        parse_config({"fileset": "f.json", "processor": "m:P", "chunksiz": 5})
    with pytest.raises(ConfigError, match=r"field 'chunksize'.*greater than 0"):
        parse_config({"fileset": "f.json", "processor": "m:P", "chunksize": 0})
    with pytest.raises(ConfigError, match="field 'processor'"):
        parse_config({"fileset": "f.json", "processor": "no colon"})
    with pytest.raises(ConfigError, match="field 'fileset'"):
        parse_config({"processor": "m:P"})


def test_shipped_json_schema_is_generated_from_the_model() -> None:
    shipped = json.loads((REPO / "workflow" / "schemas" / "config.schema.json").read_text())
    assert shipped == json_schema(), "run: python -m coffea_smk schema > workflow/schemas/config.schema.json"
    assert Path(snakefile()).is_file()


def test_fileset_shapes(tmp_path: Path) -> None:
    (tmp_path / "a.root").write_bytes(b"")
    fs = {
        "A": {"files": {"a.root": "Events"}, "metadata": {"xs": 1.5}},
        "B": {"files": ["a.root", "root://host//store/x.root"], "treename": "T"},
        "/Store/Like/Name": {"files": ["a.root"]},
    }
    (tmp_path / "fs.json").write_text(json.dumps(fs))
    ds = {d.name: d for d in load_fileset("fs.json", tmp_path, "Events")}
    assert ds["A"].files[0].path == str(tmp_path / "a.root") and ds["A"].metadata == {"xs": 1.5}
    assert [f.treename for f in ds["B"].files] == ["T", "T"] and ds["B"].files[1].is_remote
    assert ds["/Store/Like/Name"].slug != "/Store/Like/Name" and "/" not in ds["/Store/Like/Name"].slug
    assert slugify("DY_M-50") == "DY_M-50"


@pytest.mark.parametrize(
    ("fileset", "message"),
    [
        ({"A": {"file": ["x.root"]}}, r"dataset 'A': field 'files'"),
        ({"A": {"files": "x.root"}}, r"dataset 'A': field 'files"),
        ({"A": {"files": ["x.root"], "metadata": 3}}, r"dataset 'A': field 'metadata'"),
        ({"A": {"files": ["x.root", "x.root"]}}, r"dataset 'A' lists x.root twice"),
        ([], r"maps dataset names"),
    ],
)
def test_bad_filesets_name_dataset_and_field(tmp_path: Path, fileset: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_fileset(fileset if isinstance(fileset, dict) else _write(tmp_path, fileset), tmp_path, "Events")


def _write(tmp_path: Path, obj: object) -> str:
    (tmp_path / "fs.json").write_text(json.dumps(obj))
    return "fs.json"


SETTINGS = [ErrorPolicy, EventsOptions, PlanSettings]
CHANGED = {
    "continue_on": ["OSError", "mymod.MyError"],
    "retries": 5,
    "retry_backoff": 0.25,
    "schema": "coffea",
    "prefetch": False,
    "prefetch_threads": 3,
    "prefetch_max_mb": 64,
    "chunksize": 7,
    "events_per_job": 70,
    "merge_fanin": 3,
    "align_chunks": False,
}


@pytest.mark.parametrize("model", SETTINGS)
def test_settings_are_the_configs_by_name(model: type[BaseModel]) -> None:
    """One definition per setting: the config's name, constraints and default, parsed back by the job."""
    minimal = parse_config({"fileset": "f.json", "processor": "m:P"})
    assert model.from_config(minimal) == model()  # type: ignore[attr-defined]
    changed = parse_config({"fileset": "f.json", "processor": "m:P", **CHANGED})
    settings = model.from_config(changed)  # type: ignore[attr-defined]
    for name, field in model.model_fields.items():
        config_field = AnalysisConfig.model_fields[name]
        assert field.alias == config_field.alias, name
        assert [m for m in field.metadata if not isinstance(m, AfterValidator)] == config_field.metadata, name
        value = getattr(changed, name)
        assert getattr(settings, name) == (tuple(value) if isinstance(value, list) else value), name
        assert (
            getattr(model(), name) == config_field.get_default(call_default_factory=True)
            or name == "continue_on"
        )
    assert model.from_json(settings.to_json()) == settings  # type: ignore[attr-defined]
    assert set(settings.model_dump(by_alias=True)) <= set(CHANGED)


def test_settings_reject_what_the_config_rejects() -> None:
    with pytest.raises(ValidationError, match="chunksize"):
        PlanSettings(chunksize=0)
    with pytest.raises(ValidationError, match="not an exception type name"):
        ErrorPolicy(continue_on=("no spaces",))
    with pytest.raises(ValidationError, match="unknown schema"):
        EventsOptions(schema="nano aod")
    with pytest.raises(ValidationError, match="backoff"):
        ErrorPolicy.from_json('{"continue_on": [], "retries": 0, "backoff": 0}')  # the old name


# ---- configuration errors through both entry points: the message alone, exit code 2 ------------
def _bad_inputs(root: Path, nanoaod: Path) -> dict[str, tuple[dict[str, object], list[str]]]:
    """``{case: (analysis.yaml, what stderr must say)}``: every bad input stopped while parsing."""
    dy = str(nanoaod / "nano_dy.root")
    (root / "fileset.json").write_text(json.dumps({"DY": {"files": [dy]}}))
    (root / "twice.json").write_text(json.dumps({"DY": {"files": [dy, dy]}}, indent=1))
    (root / "missing.json").write_text(json.dumps({"DY": {"files": [dy, str(root / "nope.root")]}}))
    (root / "malformed.json").write_text(json.dumps({"DY": {"file": [dy]}}, indent=1))
    ok = {"fileset": "fileset.json", "processor": "coffea_smk.examples.dimuon:DimuonProcessor"}
    config = str(root / "analysis.yaml")
    return {
        "file listed twice": (
            {**ok, "fileset": "twice.json"},
            [f"{root / 'twice.json'}, line 5: dataset 'DY' lists {dy} twice: remove one of them"],
        ),
        "missing input file": (
            {**ok, "fileset": "missing.json"},
            [f"input file {root / 'nope.root'} of dataset 'DY' does not exist", "skip_bad_files"],
        ),
        "missing fileset file": (
            {**ok, "fileset": "nosuch.json"},
            [f"{config}, line 1: fileset file {root / 'nosuch.json'} does not exist"],
        ),
        "malformed dataset": (
            {**ok, "fileset": "malformed.json"},
            [
                f"{root / 'malformed.json'}, line 3: dataset 'DY': field 'file': unknown key; "
                "did you mean 'files'?",
                f"{root / 'malformed.json'}, line 2: dataset 'DY': field 'files': Field required",
            ],
        ),
        "unknown setting": (
            {**ok, "chunksiz": 5},
            [f"{config}, line 1: field 'chunksiz': unknown setting; did you mean 'chunksize'?"],
        ),
        "bad value": ({**ok, "chunksize": 0}, [f"{config}, line 1: field 'chunksize'", "greater than 0"]),
        "no such processor module": (
            {**ok, "processor": "no_such_module:Proc"},
            [f"{config}, line 2: processor 'no_such_module:Proc': no module 'no_such_module'"],
        ),
        "no such processor": (
            {**ok, "processor": "coffea_smk.examples.dimuon:NoSuchProcessor"},
            [f"{config}, line 2: processor", "NoSuchProcessor"],
        ),
    }


SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", snakefile()]


def _assert_config_error(proc: subprocess.CompletedProcess[str], expected: list[str]) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "coffea-smk: configuration error:\n" in proc.stderr, out
    for text in expected:
        assert text in proc.stderr, out
    for noise in ("Traceback", 'File "', "WorkflowError", "failed jobs", "logs/", "full log"):
        assert noise not in out, out


@pytest.mark.parametrize(
    "case",
    [
        "file listed twice",
        "missing input file",
        "missing fileset file",
        "malformed dataset",
        "unknown setting",
        "bad value",
        "no such processor module",
        "no such processor",
    ],
)
def test_configuration_errors_print_the_message_alone(workflow: Workflow, nanoaod: Path, case: str) -> None:
    config, expected = _bad_inputs(workflow.root, nanoaod)[case]
    (workflow.root / "analysis.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    _assert_config_error(workflow.run(check=False), expected)
    plain = subprocess.run(
        [*SNAKEMAKE, "--configfile", "analysis.yaml", "--cores", "1"],
        cwd=workflow.root,
        text=True,
        capture_output=True,
        timeout=300,
    )
    _assert_config_error(plain, expected)
    assert not (workflow.root / "results").exists()  # nothing was written


def test_a_config_that_does_not_parse(workflow: Workflow) -> None:
    """Snakemake loads config files before the workflow: `coffea-smk run` checks them first."""
    (workflow.root / "analysis.yaml").write_text("fileset: fileset.json\nprocessor: [unclosed\n")
    expected = ["analysis.yaml cannot be parsed", 'in "analysis.yaml", line 2']
    _assert_config_error(workflow.run(check=False), expected)
    (workflow.root / "analysis.yaml").write_text("- a list\n")
    _assert_config_error(workflow.run(check=False), ["analysis.yaml: an analysis config is a mapping"])


def test_no_config_and_internal_errors(tmp_path: Path) -> None:
    plain = subprocess.run(
        [*SNAKEMAKE, "--cores", "1"],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=300,
    )
    _assert_config_error(plain, ["no analysis config: pass --configfile analysis.yaml"])
    assert CONFIG_ERROR_EXIT == cli.CONFIG_ERROR_EXIT == 2
