"""Publishing: the fixed names users read (``result.npz``, ``datasets/<dataset>.npz``,
``report.html``, ``plots/latest``, ``skims/<name>/fileset.json``) switched to the outputs of
the analysis as configured now."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from coffea_smk.smk.outputs import SKIM_MANIFEST

SKIM_FILES = ("fileset.json", "lumi.json", "lineage.json")
"""What a skim's manifest folder holds (``skims/<name>/manifests/<analysis key>/``), each
published as ``skims/<name>/<file>``."""


def skim_aliases(outdir: str, analysis_key: str) -> dict[str, str]:
    """The fixed names of the skims the analysis wrote (none before its global result exists)."""
    out = {}
    for folder in Path(outdir).glob(SKIM_MANIFEST.format(name="*", key=analysis_key)):
        for name in SKIM_FILES:
            if (folder / name).exists():
                out[str(folder.parent.parent / name)] = str(folder / name)
    return out


def publish(outdir: str, aliases: dict[str, str]) -> list[str]:
    """Point every fixed name (``aliases``: name -> the current analysis's output) at its
    target (each switch is atomic).

    Links of datasets no longer in the analysis are removed (their results
    stay under ``datasets/<dataset>/``). Where the file system has no
    symbolic links, the result is copied.

    Returns:
        What was changed, a line each.
    """
    done = []
    for alias, target in aliases.items():
        if not links_to(alias, target):
            _link(alias, target)
            done.append(f"{alias} -> {target}")
    folder = Path(outdir) / "datasets"
    for entry in folder.glob("*.npz") if folder.is_dir() else []:
        if str(entry) not in aliases and entry.is_symlink() and (folder / entry.stem).is_dir():
            entry.unlink()
            done.append(f"{entry} removed (no longer in the analysis)")
    stale = [*(Path(outdir) / "stat").glob("*"), *(Path(outdir) / "skims").glob("*/*.json")]
    for entry in stale:  # links of statistical models no longer configured, skims no longer written
        if str(entry) not in aliases and entry.is_symlink():
            entry.unlink()
            done.append(f"{entry} removed (no longer in the analysis)")
    return done


def links_to(alias: str, target: str) -> bool:
    try:
        return os.readlink(alias) == os.path.relpath(target, os.path.dirname(alias))
    except OSError:
        return False


def _link(alias: str, target: str) -> None:
    tmp = f"{alias}.tmp-{os.getpid()}"
    Path(tmp).unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(target, os.path.dirname(alias)), tmp)
    except OSError:  # no symbolic links here: a copy
        if os.path.isdir(target):
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(target, tmp)
            shutil.rmtree(alias, ignore_errors=True)
        else:
            shutil.copyfile(target, tmp)
    os.replace(tmp, alias)
