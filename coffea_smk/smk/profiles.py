"""``coffea-smk profile install NAME``: a shipped profile where Snakemake finds it by name.

Snakemake looks a ``--profile NAME`` up in the working directory, in the user's
config directory (``$XDG_CONFIG_HOME/snakemake``, by default ``~/.config/snakemake``)
and in ``/etc/xdg/snakemake``. Installing copies the shipped profile to the user's
config directory, so that ``snakemake --profile uge`` works in any analysis directory.
A profile already there is never overwritten without ``force`` unless it is identical.
"""

from __future__ import annotations

import filecmp
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from coffea_smk.smk.paths import profile_dir

SHIPPED = ("local", "uge", "slurm", "htcondor")

# What a site usually edits, per profile: shown after installing.
SITE_EDITS = {
    "local": ["cores: how many cores the run may use (default: all)"],
    "uge": [
        "cluster-generic-submit-cmd: add -q QUEUE, -P PROJECT; h_vmem may be m_mem_free at your site",
        "default-resources / set-resources: mem_mb and runtime (minutes) per rule",
        "jobs: how many jobs may be queued or running at once",
    ],
    "slurm": [
        "default-resources: add slurm_partition and slurm_account for your site",
        "default-resources / set-resources: mem_mb and runtime (minutes) per rule",
        "slurm-status-command: squeue on a cluster without accounting (no sacct)",
        "jobs: how many jobs may be queued or running at once",
    ],
    "htcondor": [
        "default-resources / set-resources: htcondor_request_mem_mb, htcondor_request_disk_mb and "
        "runtime per rule; add the site's accounting group or requirements there",
        "htcondor-jobdir: where HTCondor's own job logs go",
        "jobs: how many jobs may be queued or running at once",
    ],
}
# The executor plugin each profile needs, and the extra that installs it.
PLUGINS = {
    "uge": ("snakemake_executor_plugin_cluster_generic", "sge"),
    "slurm": ("snakemake_executor_plugin_slurm", "slurm"),
    "htcondor": ("snakemake_executor_plugin_htcondor", "htcondor"),
}


class ProfileError(ValueError):
    """The profile cannot be installed; the message says why and what to do."""


@dataclass(frozen=True)
class Installed:
    name: str
    path: Path
    changed: bool
    """False when an identical copy was there already."""
    edits: tuple[str, ...]
    missing_plugin: str | None
    """``pip install ...`` for the profile's executor plugin, when it is not installed."""


def user_profiles() -> Path:
    """Where Snakemake looks for the user's profiles by name."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "snakemake"


def _differences(shipped: Path, target: Path) -> list[str]:
    out = []
    for src in sorted(p for p in shipped.rglob("*") if p.is_file()):
        rel = src.relative_to(shipped)
        dst = target / rel
        if not dst.is_file() or not filecmp.cmp(src, dst, shallow=False):
            out.append(str(rel))
    return out


def install(name: str, to: str | None = None, *, force: bool = False) -> Installed:
    """Copy the shipped profile ``name`` to ``to`` (default: the user's profile directory).

    Raises:
        ProfileError: No such profile, or the target holds another version of it and
            ``force`` is off.
    """
    shipped = profile_dir(name)
    if shipped is None:
        raise ProfileError(f"no shipped profile {name!r}: choose one of {', '.join(SHIPPED)}")
    target = Path(to).expanduser().resolve() if to else user_profiles() / name
    plugin = PLUGINS.get(name)
    missing = None
    if plugin is not None and importlib.util.find_spec(plugin[0]) is None:
        missing = f"pip install 'coffea_smk[{plugin[1]}]'"
    edits = tuple(SITE_EDITS.get(name, ()))
    if target.exists():
        differ = _differences(shipped, target)
        if not differ:
            return Installed(name, target, False, edits, missing)
        if not force:
            raise ProfileError(
                f"{target} holds another version of profile {name!r} (differs in {', '.join(differ)}); "
                "keep your edits, or overwrite them with --force"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(shipped, target, dirs_exist_ok=True)
    return Installed(name, target, True, edits, missing)
