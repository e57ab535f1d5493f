"""Writing the analysis that a Python caller asked for, and starting ``coffea-smk run`` on it.

Everything goes through the ordinary workflow: an ``analysis.yaml`` and a ``fileset.json`` in
``<outdir>/python/`` (with any shipped processor), run by ``python -m coffea_smk run`` with
the chosen profile, so the keyed files, the profiles and ``coffea-smk status`` are the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coffea_smk.compute.ship import ProcessorRef
from coffea_smk.spec.config import parse_config

FOLDER = "python"


@dataclass(frozen=True)
class Settings:
    """What shapes the work besides the fileset and the processor (``analysis.yaml``'s keys)."""

    chunksize: int = 100_000
    events_per_job: int | None = None
    treename: str = "Events"
    schema: str = "auto"
    continue_on: tuple[str, ...] = ()
    retries: int = 2
    skip_bad_files: bool = False
    allow_pickle: bool = False
    version: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Further ``analysis.yaml`` keys, as they are written there."""


def _file_value(value: Any) -> str | dict[str, Any] | None:
    """A file's value as the workflow reads it: its tree, or ``{object_path, steps}``."""
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, Mapping):
        tree = value.get("object_path", value.get("treename"))
        steps = value.get("steps")
        if steps is None:
            return str(tree) if tree else None
        return {"object_path": str(tree) if tree else None, "steps": [[int(a), int(b)] for a, b in steps]}
    return None


def normalise_fileset(fileset: Mapping[str, Any], base: Path | None = None) -> dict[str, Any]:
    """coffea's fileset (either shape, or ``{dataset: [files]}``) as the workflow reads it, with
    absolute local paths (relative ones from ``base``, default: the working directory)."""
    base = base or Path.cwd()
    out: dict[str, Any] = {}
    for name, body in fileset.items():
        spec = body if isinstance(body, Mapping) else {"files": list(body)}
        tree = spec.get("treename")
        raw = spec["files"]
        entries = raw.items() if isinstance(raw, Mapping) else ((f, None) for f in raw)
        files: dict[str, str | dict[str, Any] | None] = {}
        for path, value in entries:
            text = str(path)
            if "://" not in text and not os.path.isabs(text):
                text = str((base / text).resolve())
            files[text] = _file_value(value)
        entry: dict[str, Any] = {"files": files}
        if tree:
            entry["treename"] = str(tree)
        if spec.get("metadata"):
            entry["metadata"] = dict(spec["metadata"])
        out[str(name)] = entry
    return out


def folder_of(outdir: str | os.PathLike[str]) -> Path:
    """Where the analysis of ``outdir`` (config, fileset, shipped processors) is written."""
    return Path(outdir).resolve() / FOLDER


def write_analysis(
    outdir: str | os.PathLike[str], fileset: Mapping[str, Any], processor: ProcessorRef, settings: Settings
) -> Path:
    """Write ``analysis.yaml`` and ``fileset.json`` for ``outdir``; the config's path.

    Raises:
        ConfigError: A setting is invalid (the message names it).
    """
    folder = folder_of(outdir)
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "fileset": "fileset.json",
        "processor": processor.spec,
        "outdir": str(Path(outdir).resolve()),
        "chunksize": settings.chunksize,
        "treename": settings.treename,
        "schema": settings.schema,
        "continue_on": list(settings.continue_on),
        "retries": settings.retries,
        "skip_bad_files": settings.skip_bad_files,
        "allow_pickle": settings.allow_pickle,
        "version": settings.version,
        **dict(settings.extra),
    }
    if settings.events_per_job is not None:
        config["events_per_job"] = settings.events_per_job
    parse_config(config)
    _write_if_changed(folder / "fileset.json", json.dumps(normalise_fileset(fileset), indent=1) + "\n")
    path = folder / "analysis.yaml"
    _write_if_changed(path, "# written by coffea_smk.compute\n" + yaml.safe_dump(config, sort_keys=False))
    _write_if_changed(folder / "pythonpath.json", json.dumps(list(processor.path)) + "\n")
    return path


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:  # an unchanged file keeps its date
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)


def command(configfile: Path, profile: str, cores: int, extra: Sequence[str] = ()) -> list[str]:
    """The ``coffea-smk run`` command line of an analysis."""
    return [
        sys.executable,
        "-m",
        "coffea_smk",
        "run",
        str(configfile),
        "--profile",
        str(profile),
        "--cores",
        str(cores),
        *extra,
    ]


def environment(configfile: Path) -> dict[str, str]:
    """The environment of the run: this one, with the processor's directories on the Python path."""
    env = dict(os.environ)
    listed = configfile.parent / "pythonpath.json"
    paths = json.loads(listed.read_text()) if listed.exists() else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    return env


def start(configfile: Path, profile: str, cores: int, extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """Start the run in the background; its output goes to ``run.log`` beside the config."""
    log = (configfile.parent / "run.log").open("wb")
    try:
        return subprocess.Popen(
            command(configfile, profile, cores, extra),
            cwd=configfile.parent,
            env=environment(configfile),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def running_pid(configfile: Path) -> int | None:
    """The process id of the run of ``configfile`` while it lives (``run.pid`` beside it), else None."""
    try:
        pid = int((configfile.parent / "run.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    proc = Path(f"/proc/{pid}")
    try:  # where /proc tells: not a finished child (a zombie) nor another program with a reused id
        if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
        if str(configfile).encode() not in proc.joinpath("cmdline").read_bytes():
            return None
    except (OSError, IndexError):
        pass
    return pid


class RunError(RuntimeError):
    """The workflow run failed; the message holds the end of its log."""


def failure(configfile: Path, code: int, lines: int = 40) -> RunError:
    """The error of a run that ended with ``code``, with the last lines of its log."""
    log = configfile.parent / "run.log"
    tail = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
    return RunError(
        f"coffea-smk run {configfile} failed (exit code {code}); the end of {log}:\n" + "\n".join(tail)
    )
