"""Where the shipped workflow, rules and profiles are, installed or in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


def _root() -> Path:
    installed = _PACKAGE / "_workflow"
    if (installed / "workflow" / "Snakefile").is_file():
        return installed
    return _PACKAGE.parent  # a checkout, or an editable install


def snakefile() -> str:
    """Path of the coffea_smk Snakefile, for ``snakemake -s`` or ``module ...: snakefile:``."""
    return str(_root() / "workflow" / "Snakefile")


def profile_dir(name: str) -> Path | None:
    """The shipped profile called ``name`` (``local``, ``uge``, ``slurm``, ``htcondor``), if any."""
    path = _root() / "profiles" / name
    return path if path.is_dir() else None
