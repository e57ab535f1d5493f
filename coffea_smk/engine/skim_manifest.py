"""A skim's manifest: the fileset of the next analysis, with what normalisation needs.

The global step writes, per skim, a folder ``skims/<name>/manifests/<analysis key>/`` with

- ``fileset.json``: coffea's fileset shape (``{dataset: {"files": {path: "Events"},
  "metadata": {...}}}``), usable as the ``fileset:`` of another analysis. Each dataset's
  metadata is the source dataset's, plus ``skim``: the pre-skim totals over all chunks
  (``events``, ``sumw``, ``sumw2`` of ``genWeight``), the rows kept, the rows per file, and
  where it comes from (dataset result key, processor, coffea_smk version).
- ``lumi.json``: for data (datasets without ``genWeight``), the luminosity sections
  processed (every event, selected or not) over all data datasets, as a CMS lumi JSON; each
  dataset's is beside its files.
- ``lineage.json``: per dataset, the source files with their identities and the config.

The publish step points ``skims/<name>/<file>`` at the current analysis's folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from coffea_smk.engine.meta import DatasetMeta, Provenance
from coffea_smk.skim import SkimOutput, lumi_json
from coffea_smk.spec.skims import SkimSettings
from coffea_smk.util.atomic import write_json

__all__ = ["SkimManifests"]

log = logging.getLogger("coffea_smk.skim")


class SkimManifests:
    """The skims of the datasets of a global result, gathered dataset by dataset."""

    def __init__(self) -> None:
        self._by_name: dict[str, list[tuple[DatasetMeta, SkimOutput]]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def add(self, meta: DatasetMeta, skims: dict[str, SkimOutput]) -> None:
        """A dataset's result (its meta) and its skims."""
        for name, skim in skims.items():
            self._by_name.setdefault(name, []).append((meta, skim))

    def write(self, folder: str, settings: SkimSettings, provenance: Provenance | None) -> dict[str, str]:
        """Write each skim's manifest folder (``folder``: a template with ``{name}``)."""
        out = {}
        for name, entries in self._by_name.items():
            target = Path(folder.format(name=name))
            fileset, lineage = {}, {}
            for meta, skim in entries:
                lineage[meta.dataset] = _lineage(meta, skim)
                if not skim.files:
                    log.warning(
                        "skim %r: dataset %r kept no event (left out of the fileset)", name, meta.dataset
                    )
                    continue
                fileset[meta.dataset] = {
                    "files": {str(Path(f.path).resolve()): "Events" for f in skim.files},
                    "treename": "Events",
                    "metadata": {
                        **meta.metadata,
                        "skim": _skim_metadata(name, meta, skim, settings, provenance),
                    },
                }
            write_json(str(target / "fileset.json"), fileset)
            write_json(
                str(target / "lineage.json"),
                {"skim": name, "provenance": _provenance(provenance), "datasets": lineage},
            )
            lumis = [skim.lumis for _, skim in entries if len(skim.lumis) and skim.sumw is None]  # data
            if lumis:
                write_json(str(target / "lumi.json"), lumi_json(np.concatenate(lumis)))
            out[name] = str(target)
        return out


def _skim_metadata(
    name: str, meta: DatasetMeta, skim: SkimOutput, settings: SkimSettings, provenance: Provenance | None
) -> dict[str, Any]:
    return {
        "name": name,
        "source_dataset": meta.dataset,
        "events": skim.events,
        "sumw": skim.sumw,
        "sumw2": skim.sumw2,
        "rows": skim.rows,
        "entries": {str(Path(f.path).resolve()): f.rows for f in skim.files},
        "format": settings.format,
        "dataset_key": meta.analysis_key,
        "processor": None if provenance is None else provenance.config.get("processor"),
        "coffea_smk_version": None if provenance is None else provenance.coffea_smk_version,
    }


def _lineage(meta: DatasetMeta, skim: SkimOutput) -> dict[str, Any]:
    return {
        "dataset_key": meta.analysis_key,
        "events": skim.events,
        "rows": skim.rows,
        "complete": meta.complete,
        "source_files": [f.model_dump(mode="json") for f in meta.input_files],
        "files": [{"path": f.path, "rows": f.rows, "bytes": f.bytes} for f in skim.files],
    }


def _provenance(provenance: Provenance | None) -> dict[str, Any] | None:
    return None if provenance is None else provenance.model_dump(mode="json")
