"""The analysis configuration (``analysis.yaml``) and the fileset, as pydantic models.

These models are the one source of truth: ``workflow/schemas/config.schema.json``
is generated from :class:`AnalysisConfig` (``python -m coffea_smk schema``) and
a test keeps the two in sync.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coffea_smk.spec.plots import PlotSettings
from coffea_smk.spec.skims import SkimSettings
from coffea_smk.spec.stat import StatSettings, model_names

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_SCHEMA_CLASS = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*([.:][A-Za-z_]\w*)$")
T = TypeVar("T", bound=Sequence[str])


class ConfigError(ValueError):
    """The analysis config or the fileset is invalid; the message says where and how to fix it."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        """The config key the error is about, when the message does not say its line."""


def exception_names(value: T) -> T:
    """Check that every name of ``value`` could name an exception type (``OSError``, ``mod.MyError``)."""
    for name in value:
        if not re.fullmatch(r"[A-Za-z_][\w.]*", name):
            raise ValueError(f"{name!r} is not an exception type name")
    return value


def known_schema(value: str) -> str:
    """Check a ``schema`` setting: ``auto``, ``nanoaod``, ``coffea`` or a coffea schema class."""
    if value in ("auto", "nanoaod", "coffea") or _SCHEMA_CLASS.match(value):
        return value
    raise ValueError(
        f"unknown schema {value!r}; use 'auto', 'nanoaod', 'coffea' or a coffea schema class "
        "such as 'coffea.nanoevents.NanoAODSchema' or 'mymodule:MySchema'"
    )


class AnalysisConfig(BaseModel):
    """What the analysis is: inputs, processor and how work is cut into jobs.

    Where jobs run (threads, memory, queues) lives in Snakemake profiles, not here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fileset: str | dict[str, Any] = Field(
        description="Path to a JSON or YAML fileset in coffea's shape, or the fileset itself."
    )
    processor: str = Field(
        description=(
            "'module:attribute': a class with process(self, events) (coffea ProcessorABC style), "
            "an instance of one, or a callable f(events). The module is imported from the config "
            "file's directory or the Python path."
        ),
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
    )
    outdir: str = Field("results", description="Where results, partials, logs and the cache go.")
    chunksize: Annotated[int, Field(gt=0)] = Field(
        100_000, description="Events per chunk: one call of process()."
    )
    events_per_job: Annotated[int, Field(gt=0)] = Field(
        2_000_000,
        description="Target events per work unit (one Snakemake job); a unit reads consecutive "
        "chunks of as few files as possible.",
    )
    files_per_preprocess_job: Annotated[int, Field(gt=0)] = Field(
        20, description="Files preprocessed by one Snakemake job (each is opened at most once)."
    )
    merge_fanin: Annotated[int, Field(ge=2)] = Field(
        64, description="Inputs per merge job in the per-dataset merge tree."
    )
    treename: str = Field("Events", description="Default tree name when the fileset gives none.")
    align_chunks: bool = Field(
        True, description="Move chunk boundaries onto the file's cluster boundaries when close."
    )
    schema_: str = Field(
        "auto",
        alias="schema",
        description="Events the processor gets: 'nanoaod' (coffea_smk's own lazy NanoAOD events, "
        "vector behaviours), 'coffea' (coffea's NanoEvents with NanoAODSchema, virtual mode; needs "
        "coffea_smk[coffea]), a coffea schema class ('coffea.nanoevents.PHYSLITESchema', "
        "'module:Class'), or 'auto': coffea for coffea ProcessorABC processors, else 'nanoaod'.",
    )
    prefetch: bool = Field(
        True,
        description="Automatic prefetch: read the columns the processor touched in earlier chunks "
        "in background threads while it computes (results are identical either way).",
    )
    prefetch_threads: Annotated[int, Field(ge=1, le=64)] = Field(
        1, description="Threads of the automatic prefetch."
    )
    prefetch_max_mb: Annotated[int, Field(gt=0)] = Field(
        512, description="At most this many MB read ahead of the processor by the automatic prefetch."
    )
    version: str = Field(
        "",
        description="Free tag folded into the results' identity: change it to force re-processing "
        "(e.g. after editing a helper module the processor imports).",
    )
    skims: SkimSettings = Field(
        default_factory=SkimSettings,
        description="How the processor's coffea_smk.Skim outputs are written: format (parquet or "
        "root), compression, compression_level, target_size_mb (per compacted file), row_group_rows.",
    )
    allow_pickle: bool = Field(
        False,
        description="Store result types that have no safe form with cloudpickle (loading runs code).",
    )
    continue_on: list[str] = Field(
        default_factory=list,
        description="Exception types (names such as OSError, KeyError, or 'module.Class') that make a "
        "chunk fail alone when found anywhere in the error's exception chain (so OSError covers storage "
        "errors at file opens and reads): it is recorded in the failure manifest and retried on the next "
        "run, while the rest of the work unit goes on. Empty (default): the first error stops the job.",
    )
    retries: Annotated[int, Field(ge=0)] = Field(
        2,
        description="Retries of a file open or a chunk inside its job when the error's root cause is a "
        "transient I/O error (a reset, a timeout; not a missing file).",
    )
    retry_backoff: Annotated[float, Field(ge=0)] = Field(
        1.0, description="Seconds before the first in-job retry; doubled for each further retry."
    )
    skip_bad_files: bool = Field(
        False,
        description="A file that cannot be opened (missing, truncated, not ROOT, no such tree) is "
        "skipped and listed in the results, which are then flagged incomplete, instead of stopping the run.",
    )
    remote_identity: Literal["stat", "url"] = Field(
        "stat",
        description="What identifies a remote (root://, http(s)://) input file in the cache keys: 'stat' "
        "asks the storage for its size and modification time (XRootD stat, HTTP HEAD: all files at once, "
        "every time the workflow starts), so a file replaced at the same URL is preprocessed again before "
        "anything runs; 'url' trusts the cache (URL and tree only: no request at start), for storage where "
        "stat is expensive; a replaced file is then noticed by its UUID when a job opens it.",
    )
    basedir: str | None = Field(
        None,
        description="Directory that relative fileset/processor paths are taken from "
        "(default: the config file's directory).",
    )
    lumi: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description="Integrated luminosity in pb^-1 that simulation is normalised to (xsec x lumi / sum of "
        "generator weights); default: the sum of the 'lumi' metadata of the data datasets.",
    )
    plots: PlotSettings | None = Field(
        None,
        description="Plots of the result's histograms, made by the workflow under <outdir>/plots/ "
        "(see the README's 'Plots and the report'); {} for the defaults, absent for none.",
    )
    stat: StatSettings | None = Field(
        None,
        description="Statistical models by name: a pyhf workspace, a CMS Combine datacard with its "
        "shapes and a fit of each, under <outdir>/stat/<name>/ (see the README's 'Statistical "
        "models'); needs coffea_smk[stat].",
    )

    _exception_names = field_validator("continue_on")(exception_names)
    _known_schema = field_validator("schema_")(known_schema)
    _model_names = field_validator("stat")(model_names)


@dataclass(frozen=True)
class InputFile:
    """One input file of a dataset, as the workflow sees it."""

    path: str
    """Absolute local path or a remote URL (``root://``, ``https://`` ...)."""
    treename: str
    steps: tuple[tuple[int, int], ...] | None = None
    """Only these entry ranges ``[start, stop)`` (coffea's ``steps``); None: the whole file."""

    @property
    def is_remote(self) -> bool:
        return "://" in self.path and not self.path.startswith("file://")


@dataclass(frozen=True)
class Dataset:
    """A dataset of the fileset."""

    name: str
    """The user's dataset name (any string)."""
    slug: str
    """File-system safe name used in output paths."""
    files: tuple[InputFile, ...]
    metadata: dict[str, Any]


class _FileSpec(BaseModel):
    """A file's entry in coffea's object form (``num_entries``, ``uuid``... are coffea's own)."""

    model_config = ConfigDict(extra="ignore")

    object_path: str | None = None
    treename: str | None = None
    steps: list[tuple[int, int]] | None = None


def _step_problem(steps: Sequence[tuple[int, int]]) -> str | None:
    """What is wrong with a file's ``steps`` (None: ordered ranges that do not overlap)."""
    for i, (start, stop) in enumerate(steps):
        if not 0 <= start < stop:
            return f"step [{start}, {stop}] is not a range of entries (0 <= start < stop)"
        if i and start < steps[i - 1][1]:
            return f"step [{start}, {stop}] overlaps or precedes the step before it: sort them"
    return None


class _DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: dict[str, str | _FileSpec | None] | list[str]
    treename: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


def json_schema() -> dict[str, Any]:
    """The JSON schema of :class:`AnalysisConfig`, as shipped in ``workflow/schemas/``."""
    schema = AnalysisConfig.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def line_of(path: str | Path, loc: Sequence[str | int]) -> int | None:
    """The line (from 1) in the YAML or JSON file ``path`` where the entry at ``loc`` is written
    (a key of a mapping, an index of a list); of the deepest entry on the way that the file
    holds when it does not hold that one (a missing key: the mapping that lacks it); None
    when the file holds none of them."""
    try:
        node: yaml.Node | None = yaml.compose(Path(path).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def at_line(where: str, loc: Sequence[str | int], source: str | Path | None = None) -> str:
    """``where, line N`` when the file ``source`` (default: ``where`` itself) writes ``loc`` on line N."""
    line = line_of(source if source is not None else where, loc) if loc else None
    return where if line is None else f"{where}, line {line}"


def _message(e: Any, model: type[BaseModel] | None) -> str:
    """pydantic's message, or for an unknown key, what the known ones close to it are."""
    if e["type"] != "extra_forbidden":
        return str(e["msg"])
    known = [] if model is None else [f.alias or n for n, f in model.model_fields.items()]
    close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    if model is AnalysisConfig:
        return f"unknown setting{hint} (`coffea-smk schema` lists every setting)"
    return f"unknown key{hint}" + (f" (a dataset has: {', '.join(known)})" if model is _DatasetSpec else "")


def format_validation_error(
    where: str,
    err: ValidationError,
    source: str | Path | None = None,
    prefix: Sequence[str | int] = (),
    model: type[BaseModel] | None = None,
) -> str:
    """Render a pydantic error as ``where, line N: field 'a.b': message`` lines.

    Args:
        source: The file the validated mapping was read from, to find the line of each field
            (``prefix``: where the mapping is in it); without it, ``where`` when it is a file.
        model: The model validated at the top, to suggest a known key for an unknown one.
    """
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        top = model if len(e["loc"]) == 1 else None
        place = at_line(where, [*prefix, *e["loc"]], source)
        lines.append(f"{place}: field '{loc}': {_message(e, top)}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], where: str = "analysis config") -> AnalysisConfig:
    """Validate a config mapping, with an error that names the field (and its line, when ``where``
    is the config file) and the fix."""
    try:
        return AnalysisConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(where, err, model=AnalysisConfig)) from None


def read_mapping(path: Path) -> Any:
    """Read a JSON or YAML file."""
    text = path.read_text()
    if path.suffix.lower() == ".json":
        return json.loads(text)
    return yaml.safe_load(text)


def slugify(name: str) -> str:
    """A path-safe, unique stand-in for a dataset name."""
    if _SAFE_NAME.match(name) and len(name) <= 120:
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_.")[:80] or "dataset"
    return f"{cleaned}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def read_fileset_file(path: Path, named_by: str) -> Any:
    """The contents of a JSON or YAML fileset file.

    Raises:
        ConfigError: It does not exist or cannot be parsed (``named_by``: where its name came from).
    """
    if not path.is_file():
        raise ConfigError(f"fileset file {path} does not exist ({named_by})")
    try:
        return read_mapping(path)
    except Exception as err:
        raise ConfigError(f"fileset file {path} cannot be parsed: {err}") from None


def load_fileset(spec: str | dict[str, Any], basedir: Path, default_tree: str) -> list[Dataset]:
    """Read and validate a coffea-shaped fileset.

    Relative file paths are taken from the fileset file's directory first, then
    from ``basedir``; remote URLs are kept as given.

    Raises:
        ConfigError: The fileset cannot be read, or a dataset is malformed
            (the message names the dataset and the field).
    """
    if isinstance(spec, str):
        path = Path(os.path.expanduser(spec))
        if not path.is_absolute():
            path = basedir / path
        try:
            raw = read_fileset_file(path, "config key 'fileset'")
        except ConfigError as err:
            raise ConfigError(str(err), key="fileset") from None
        where, filebase = str(path), path.parent
    else:
        raw, where, filebase = spec, "inline fileset", basedir
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{where}: a fileset maps dataset names to {{'files': ...}}; found {type(raw).__name__}"
        )

    source = where if isinstance(spec, str) else None
    datasets: list[Dataset] = []
    slugs: dict[str, str] = {}
    for name, body in raw.items():
        try:
            ds = _DatasetSpec.model_validate(body)
        except ValidationError as err:
            message = format_validation_error(where, err, source, prefix=[name], model=_DatasetSpec)
            raise ConfigError(message.replace(": field", f": dataset {name!r}: field")) from None
        default = ds.treename or default_tree
        entries = ds.files.items() if isinstance(ds.files, dict) else ((f, None) for f in ds.files)
        files = []
        seen: dict[str, str] = {}
        for i, (raw_path, tree) in enumerate(entries):
            loc = [name, "files", raw_path if isinstance(ds.files, dict) else i]
            if not raw_path:
                raise ConfigError(
                    f"{at_line(where, loc, source)}: dataset {name!r}: field 'files' holds an empty path"
                )
            resolved = _resolve(raw_path, filebase, basedir)
            if resolved in seen:
                again = "" if seen[resolved] == raw_path else f" (as {seen[resolved]} and {raw_path})"
                raise ConfigError(
                    f"{at_line(where, loc, source)}: dataset {name!r} lists {raw_path} twice{again}: "
                    "remove one of them"
                )
            seen[resolved] = raw_path
            if isinstance(tree, _FileSpec):
                steps = None if tree.steps is None else tuple(tree.steps)
                problem = _step_problem(steps or ())
                if problem:
                    raise ConfigError(
                        f"{at_line(where, loc, source)}: dataset {name!r}: file {raw_path}: {problem}"
                    )
                files.append(InputFile(resolved, tree.object_path or tree.treename or default, steps))
            else:
                files.append(InputFile(resolved, tree or default))
        slug = slugify(str(name))
        if slug in slugs:
            raise ConfigError(f"{where}: datasets {slugs[slug]!r} and {name!r} map to the same output name")
        slugs[slug] = str(name)
        datasets.append(Dataset(str(name), slug, tuple(files), dict(ds.metadata)))
    return datasets


def _resolve(raw_path: str, filebase: Path, basedir: Path) -> str:
    if raw_path.startswith("file://"):
        raw_path = raw_path[len("file://") :]
    if "://" in raw_path:
        return raw_path
    p = Path(os.path.expanduser(raw_path))
    if p.is_absolute():
        return str(p)
    first = (filebase / p).resolve()
    if first.exists() or filebase == basedir:
        return str(first)
    second = (basedir / p).resolve()
    return str(second if second.exists() else first)
