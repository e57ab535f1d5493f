"""``coffea-smk init``: an analysis directory from a fileset and a processor.

It writes three files: ``fileset.json`` (the datasets in coffea_smk's shape; the user's
own fileset is used in place when it is in the analysis directory and already in that shape),
``analysis.yaml`` (every setting, commented from the config model itself, so the
comments never drift from what is validated) and a ``Snakefile`` that imports the
shipped workflow as a Snakemake ``module``, so that plain ``snakemake --profile NAME``
runs the analysis there and the user's own rules can follow it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from coffea_smk.spec.config import AnalysisConfig, ConfigError, load_fileset, parse_config, read_fileset_file

SNAKEFILE = """\
# The coffea_smk workflow of this analysis, written by `coffea-smk init`.
# Run it here with plain Snakemake:
#   snakemake --cores all              (on this machine)
#   snakemake --profile uge            (after `coffea-smk profile install uge`; or slurm, htcondor)
# or with `coffea-smk run analysis.yaml [--profile NAME]`.
import coffea_smk


configfile: "analysis.yaml"


module coffea_smk_workflow:
    snakefile:
        coffea_smk.snakefile()
    config:
        config


use rule * from coffea_smk_workflow


# Your own rules go here. The analysis's result is the input of the workflow's
# `all` rule; for example:
#
# rule cutflow:
#     input:
#         rules.all.input[0],
#     output:
#         "cutflow.txt",
#     run:
#         result = coffea_smk.load(input[0])
#         ...
"""


@dataclass
class Scaffold:
    """What ``init`` wrote and what it noticed on the way."""

    directory: Path
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    """Files left as they were: the input fileset used in place, files already as ``init`` writes them."""
    notes: list[str] = field(default_factory=list)


def convert_fileset(raw: Any, where: str) -> tuple[dict[str, Any], list[str]]:
    """A fileset in coffea_smk's shape from a plain coffea fileset or the output of
    ``coffea.dataset_tools.preprocess``; and notes on what was dropped.

    Kept: file paths, tree names (``object_path``), ``treename``, ``metadata``.
    Dropped: ``steps``, ``num_entries``, ``uuid``, ``form`` and anything else coffea
    computed: coffea_smk's own preprocessing finds them again (once, then cached).

    Raises:
        ConfigError: Not a fileset; the message names the dataset.
    """
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: a fileset maps dataset names to {{'files': ...}}")
    out: dict[str, Any] = {}
    dropped: set[str] = set()
    for name, body in raw.items():
        if not isinstance(body, dict) or "files" not in body:
            raise ConfigError(f"{where}: dataset {name!r} has no 'files'")
        files = body["files"]
        converted: dict[str, str | None] | list[str]
        if isinstance(files, dict):
            trees: dict[str, str | None] = {}
            for path, value in files.items():
                if isinstance(value, dict):  # coffea.dataset_tools.preprocess output
                    trees[path] = value.get("object_path")
                    dropped.update(k for k in value if k != "object_path")
                elif value is None or isinstance(value, str):
                    trees[path] = value
                else:
                    raise ConfigError(
                        f"{where}: dataset {name!r}: file {path} maps to {type(value).__name__}; "
                        "expected a tree name or coffea's {'object_path': ...}"
                    )
            converted = trees
        elif isinstance(files, list):
            converted = [str(f) for f in files]
        else:
            raise ConfigError(f"{where}: dataset {name!r}: 'files' must be a list or a mapping")
        entry: dict[str, Any] = {"files": converted}
        for key in ("treename", "metadata"):
            if key in body:
                entry[key] = body[key]
        dropped.update(k for k in body if k not in ("files", "treename", "metadata"))
        out[str(name)] = entry
    notes = []
    if dropped:
        notes.append(
            f"not kept from the fileset: {', '.join(sorted(dropped))} "
            "(coffea_smk's preprocessing reads entries, clusters and UUIDs itself, once per file)"
        )
    return out, notes


def _absolute(fileset: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative local paths made absolute (from the original fileset's directory)."""

    def fix(path: str) -> str:
        if "://" in path and not path.startswith("file://"):
            return path
        p = Path(path.removeprefix("file://")).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())

    out = {}
    for name, body in fileset.items():
        files = body["files"]
        fixed = {fix(p): t for p, t in files.items()} if isinstance(files, dict) else [fix(p) for p in files]
        out[name] = {**body, "files": fixed}
    return out


def commented_config(values: dict[str, Any]) -> str:
    """``analysis.yaml`` with every setting of :class:`AnalysisConfig`: the given values set,
    the others commented out at their defaults, each under its description."""
    lines = [
        "# coffea_smk analysis, written by `coffea-smk init`. Every setting is listed with its",
        "# description; those commented out keep their default. `coffea-smk schema` prints the",
        "# JSON schema this file is validated against.",
        "",
    ]
    for name, info in AnalysisConfig.model_fields.items():
        key = info.alias or name
        for text in textwrap.wrap(info.description or "", 86):
            lines.append(f"# {text}")
        if key in values:
            lines.append(yaml.safe_dump({key: values[key]}, default_flow_style=False).strip())
        else:
            default = info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):  # a block of settings (skims:)
                default = default.model_dump(mode="json")
            text = yaml.safe_dump({key: default}, default_flow_style=False).strip()
            lines.extend(f"# {line}" for line in text.splitlines())
        lines.append("")
    return "\n".join(lines)


def missing_files(fileset: dict[str, Any]) -> list[str]:
    """``dataset: path`` of every local file that does not exist."""
    out = []
    for name, body in fileset.items():
        for path in body["files"]:
            if "://" not in path and not Path(path).exists():
                out.append(f"{name}: {path}")
    return out


def processor_problem(processor: str, directory: Path) -> str | None:
    """Why ``processor`` does not load as a job in ``directory`` would load it, or None.

    Checked in a fresh interpreter started there: this process's own path (the
    directory ``init`` was called from) must not make it look importable.
    """
    code = "import sys; from coffea_smk.spec.processor import load_processor; load_processor(*sys.argv[1:])"
    with tempfile.TemporaryDirectory() as empty:
        where = directory if directory.is_dir() else Path(empty)
        proc = subprocess.run(
            [sys.executable, "-c", code, processor, str(where)], cwd=where, capture_output=True, text=True
        )
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if "ProcessorError:" in line), len(lines) - 1)
    return "\n".join(lines[start:]).split("ProcessorError: ", 1)[-1]


NORMALISED = "fileset.normalised.json"
"""Where ``init`` writes the converted fileset when the user's own ``fileset.json``, in the
analysis directory, is the input and is not in coffea_smk's shape (it is left as it is)."""


def _valid_as_is(source: Path, directory: Path) -> bool:
    """Whether the fileset file ``source`` is read by the workflow as it is (coffea_smk's shape)."""
    try:
        load_fileset(str(source), directory, "Events")
    except ConfigError:
        return False
    return True


def _inside(path: Path, directory: Path) -> bool:
    return path.parent == directory or directory in path.parents


def init(fileset_path: str, processor: str, directory: str, *, force: bool = False) -> Scaffold:
    """Write ``fileset.json``, ``analysis.yaml`` and ``Snakefile`` into ``directory``.

    Run where the fileset is (the natural first command), the input is no earlier output:
    a fileset in the analysis directory that the workflow reads as it is is used in place
    (``analysis.yaml`` names it); one that needs converting (coffea's preprocess output) is
    left as it is and the converted copy written beside it. A file that already holds
    exactly what ``init`` would write is kept; only one with other contents needs ``force``.

    Raises:
        ConfigError: The fileset cannot be read or converted, files are missing, the
            processor does not import, or a file would be overwritten without ``force``.
    """
    source = Path(fileset_path).expanduser().resolve()
    raw = read_fileset_file(source, "--fileset")
    fileset, notes = convert_fileset(raw, str(source))
    fileset = _absolute(fileset, source.parent)
    missing = missing_files(fileset)
    if missing:
        shown = "\n  ".join(missing[:20]) + (
            f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        )
        raise ConfigError(f"{len(missing)} input file(s) of {source} do not exist:\n  {shown}")

    out = Scaffold(Path(directory).resolve(), notes=notes)
    in_place = _inside(source, out.directory) and _valid_as_is(source, out.directory)
    fileset_name = (
        source.relative_to(out.directory).as_posix()
        if in_place
        else NORMALISED
        if source == out.directory / "fileset.json"
        else "fileset.json"
    )
    values = {"processor": processor, "fileset": fileset_name}
    contents = {
        "analysis.yaml": commented_config(values),
        "Snakefile": SNAKEFILE,
        **({} if in_place else {fileset_name: json.dumps(fileset, indent=2) + "\n"}),
    }
    targets = {name: out.directory / name for name in contents}
    different = [str(p) for name, p in targets.items() if p.exists() and _read(p) != contents[name]]
    if different and not force:
        raise ConfigError(
            f"{', '.join(different)} exist already with other contents (an earlier init's, or "
            "your own): use --force to overwrite them"
        )
    problem = processor_problem(processor, out.directory)
    if problem:
        top = processor.partition(":")[0].split(".")[0]
        here = [p for p in (Path.cwd() / f"{top}.py", Path.cwd() / top) if p.exists()]
        hint = (
            f"\n{here[0]} is not in {out.directory}, where the jobs import it from: copy it there"
            if here and Path.cwd().resolve() != out.directory
            else ""
        )
        raise ConfigError(f"{problem}{hint}")

    parse_config(values, "the written analysis.yaml")
    load_fileset(fileset, out.directory, "Events")  # the same checks as a run's
    out.directory.mkdir(parents=True, exist_ok=True)
    if in_place:
        out.kept.append(source)
        out.notes.append(f"{source.name} is read as it is: analysis.yaml names it")
    elif fileset_name == NORMALISED:
        out.notes.append(
            f"{source.name} is left as it is; {NORMALISED} is it converted (absolute paths, "
            "coffea_smk's shape), and analysis.yaml names that"
        )
    for name, path in targets.items():
        if path.exists() and _read(path) == contents[name]:
            out.kept.append(path)
            continue
        path.write_text(contents[name])
        out.written.append(path)
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
