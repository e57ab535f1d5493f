"""Skims' outputs for :mod:`coffea_smk.smk.clean`: which key each belongs to, and what the
published skims show.

- A piece, ``partials/<dataset>/<tag>/<unit>.skim-<name>.<ext>``, belongs to its work unit:
  it is kept or removed with the partial beside it.
- A dataset's compacted files, ``skims/<name>/<dataset>/<key>/`` (one output: the folder),
  belong to the per-dataset result with that key.
- A manifest folder, ``skims/<name>/manifests/<key>/``, belongs to the global result with that
  key (a dataset may be named ``manifests`` too: its folders are recognised by its result keys).
- The published ``skims/<name>/fileset.json`` (a link, or a copy where the file system has
  none) shows the files it lists: they are kept whatever variant made them, so that it always
  reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from coffea_smk.engine.meta import DatasetMeta
from coffea_smk.spec.skims import SkimSettings
from coffea_smk.util.hashing import key_of

__all__ = ["KINDS", "PIECES", "SKIMS", "holds", "published_files", "ref", "skim_folders_in", "tag_of"]

SKIMS = "skims"
"""The kind of a dataset's compacted skim folder or a manifest folder, in the listing."""
PIECES = "skim pieces"
"""The kind of a work unit's skim piece, in the listing."""
KINDS = (SKIMS, PIECES)
MANIFESTS = "manifests"


def skim_folders_in(rel: tuple[str, ...]) -> bool:
    """Whether each folder in ``rel`` (a path under outdir) is one skim output: the compacted
    files of a dataset result, or a manifest folder."""
    return len(rel) == 3 and rel[0] == SKIMS


def ref(parts: tuple[str, ...], key: str) -> tuple[str, tuple[str, ...]] | None:
    """The kind and key reference of a skim output by its path under outdir (``key``: its last
    part's leading key), or None when the path is no skim's."""
    if not key:
        return None
    if len(parts) == 4 and parts[0] == "partials" and ".skim-" in parts[3]:
        return PIECES, ("unit", parts[1], parts[2], key)
    if len(parts) == 4 and parts[0] == SKIMS:
        return SKIMS, ("skim", parts[2], key)
    return None


def holds(refs: set[tuple[str, ...]], skim: tuple[str, ...]) -> bool:
    """Whether the keys ``refs`` name a skim folder (``("skim", dataset or "manifests", key)``)."""
    _, folder, key = skim
    return ("dataset", folder, key) in refs or (folder == MANIFESTS and ("global", key) in refs)


def published_files(outdir: Path) -> set[Path]:
    """The files the published skim filesets list (resolved): what the next analysis reads."""
    out: set[Path] = set()
    for fileset in outdir.glob(f"{SKIMS}/*/fileset.json"):
        try:
            datasets = json.loads(fileset.read_text())
        except (OSError, ValueError):
            continue  # a broken link, or half a copy: it shows nothing
        out.update(Path(f).resolve() for f in _files(datasets))
    return out


def _files(datasets: object) -> Iterator[str]:
    if not isinstance(datasets, dict):
        return
    for spec in datasets.values():
        files = spec.get("files") if isinstance(spec, dict) else None
        if isinstance(files, (dict, list)):
            yield from (f for f in files if isinstance(f, str))


def tag_of(d: DatasetMeta, key: str) -> str | None:
    """The processor tag of an earlier per-dataset result (with key ``key``), recomputed from its
    meta as :meth:`coffea_smk.smk.layout.DatasetKeys.of` makes it (the skim settings are in it);
    None when the meta does not give its key back."""
    try:
        skims = SkimSettings.model_validate((d.config or {}).get("skims") or {})
    except ValidationError:
        return None
    tag = key_of("tag", d.processor_key, d.dataset, d.metadata, skims.model_dump(exclude={"target_size_mb"}))
    size = skims.target_size_mb
    # the default (512) and the same read back from a meta (512.0) hash apart: either may be the key's
    sizes = (size, int(size)) if float(size).is_integer() else (size,)
    return tag if any(key_of("dataset", tag, d.plan_key, s) == key for s in sizes) else None
