"""Config and fileset validation: clear errors naming the field, schema in sync."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coffea_smk.smk.paths import snakefile
from coffea_smk.spec.config import ConfigError, json_schema, load_fileset, parse_config, slugify

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
