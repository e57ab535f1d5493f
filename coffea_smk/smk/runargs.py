"""The Snakemake arguments ``coffea-smk run`` passes on, and what they say.

Shared by the CLI and the logger plugin (which reads the command line of the Snakemake it
runs in): which profile is meant, whether the jobs run here, whether Snakemake's own log is
asked for instead of the progress view, and the ``--config`` overrides to pass on to the
commands that read the outputs.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml

from coffea_smk.smk.paths import profile_dir


def resolve_profiles(args: list[str]) -> list[str]:
    """Map ``--profile NAME`` to a shipped profile when NAME is not a directory; default to ``local``."""
    out = list(args)
    has_profile = False
    for i, arg in enumerate(out):
        value = None
        if arg == "--profile" and i + 1 < len(out):
            value, index = out[i + 1], i + 1
        elif arg.startswith("--profile="):
            value, index = arg.split("=", 1)[1], i
        if value is None:
            continue
        has_profile = True
        shipped = profile_dir(value)
        if not Path(value).is_dir() and shipped is not None:
            out[index] = str(shipped) if arg == "--profile" else f"--profile={shipped}"
    if not has_profile and "--executor" not in out and not any(a.startswith("--executor=") for a in out):
        local = profile_dir("local")
        if local is not None:
            out = ["--profile", str(local), *out]
    return out


def config_args(args: list[str]) -> str:
    """The ``--config KEY=VALUE ...`` part of Snakemake arguments, for a command that reads the outputs."""
    entries: list[str] = []
    taking = False
    for arg in args:
        if arg in ("--config", "-C") or arg.startswith("--config="):
            taking = True
            if arg.startswith("--config="):
                entries.append(arg.removeprefix("--config="))
        elif taking and not arg.startswith("-"):
            entries.append(arg)
        else:
            taking = False
    return " --config " + " ".join(shlex.quote(e) for e in entries) if entries else ""


def runs_locally(args: list[str]) -> bool:
    """Whether the resolved Snakemake arguments run jobs on this machine."""
    for i, arg in enumerate(args):
        value = None
        if arg in ("--executor", "-e") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--executor="):
            value = arg.split("=", 1)[1]
        if value is not None and value not in ("local", "dryrun", "touch"):
            return False
        if arg == "--profile" and i + 1 < len(args):
            for name in ("config.v8+.yaml", "config.yaml"):
                path = Path(args[i + 1]) / name
                if path.is_file():
                    settings = yaml.safe_load(path.read_text()) or {}
                    if settings.get("executor", "local") not in ("local", "dryrun", "touch"):
                        return False
                    break
    return True


# Snakemake options after which `coffea-smk run` prints Snakemake's own log (as before the view):
# more detail asked for, or a command that runs no jobs and prints something else.
_RAW_LOG = {
    "--verbose", "--printshellcmds", "-p", "--debug", "--debug-dag", "--logger",
    "-n", "--dry-run", "--dryrun", "--unlock", "--lint", "--touch", "-t", "--summary", "-S",
    "--detailed-summary", "-D", "--dag", "--rulegraph", "--filegraph", "--d3dag", "--report",
    "--archive", "--cleanup-metadata", "--cm", "--cleanup-shadow", "--containerize", "--export-cwl",
    "--print-compilation", "--list-rules", "--list", "-l", "--list-target-rules", "--lt",
    "--list-changes", "--lc", "--list-input-changes", "--li", "--list-params-changes", "--lp",
    "--list-code-changes", "--list-untracked", "--lu", "--version", "-v", "--help", "-h",
}  # fmt: skip


def wants_raw_log(args: list[str]) -> bool:
    """Whether Snakemake arguments ``args`` (or ``COFFEA_SMK_PROGRESS=off`` in the environment) ask
    for Snakemake's own log instead of the progress view (the logger plugin asks this too)."""
    if os.environ.get("COFFEA_SMK_PROGRESS", "").lower() in ("off", "0", "no", "false"):
        return True
    for a in args:
        short = a[1:] if a[:1] == "-" and a[1:2] != "-" and a[1:].isalpha() else ""
        if a.split("=", 1)[0] in _RAW_LOG or any(f"-{c}" in _RAW_LOG for c in short):
            return True
    return False


def with_progress_view(args: list[str]) -> list[str]:
    """Select the progress view (Snakemake logger plugin ``coffea-smk``) unless ``args`` ask otherwise
    (:func:`wants_raw_log`); the shipped profiles select it as well."""
    return args if wants_raw_log(args) else ["--logger=coffea-smk", *args]
