"""The plots and report jobs: from result files to the files a physicist opens."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from coffea_smk import results
from coffea_smk.post.manifest import NOTES
from coffea_smk.post.normalise import NormalisationError, luminosity, samples
from coffea_smk.post.report import Failure, render
from coffea_smk.spec.plots import PlotSettings
from coffea_smk.util.atomic import atomic_open


def _own(dataset_paths: list[str], allow_pickle: bool) -> dict[str, Any]:
    """Each dataset's own result, by dataset name."""
    out = {}
    for path in dataset_paths:
        stored = results.load_stored(path, allow_pickle=allow_pickle)
        out[str(stored.meta["dataset"])] = stored.result
    return out


def make_plots(
    global_path: str,
    dataset_paths: list[str],
    settings: PlotSettings,
    lumi: float | None,
    out: str,
    *,
    allow_pickle: bool = False,
) -> list[str]:
    """Draw the plots into the folder ``out`` (written whole or not at all).

    Returns:
        Notes for the log and the report: what was not drawn, and why.
    """
    from coffea_smk.post.plots import draw  # noqa: PLC0415  matplotlib (1-2 s): the report job needs none of it

    stored = results.load_stored(global_path, allow_pickle=allow_pickle)
    notes: list[str] = []
    lumi = luminosity(stored.meta, lumi)
    try:
        normalised = samples(stored.meta, lumi)
    except NormalisationError as err:
        normalised = None
        if settings.stack:
            notes.append(f"no stacked plots: {err}")
    final = Path(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        draw(stored.result, _own(dataset_paths, allow_pickle), normalised, settings, tmp, lumi)
        (tmp / NOTES).write_text(json.dumps(notes))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return notes


def failures(dataset_paths: list[str]) -> list[Failure]:
    """The failed chunks and unreadable files of each dataset, from its result's meta."""
    out = []
    for path in dataset_paths:
        meta = results.load_meta(path)
        name = str(meta["dataset"])
        for f in meta.get("failed", []):
            out.append(
                Failure(
                    name,
                    f["file"],
                    f"{f['entrystart']}-{f['entrystop']}",
                    f"{f['exception']}: {f['message']}",
                )
            )
        for f in meta.get("bad_files", []):
            out.append(Failure(name, f["path"], "", f.get("error", "")))
    return out


def make_report(
    global_path: str,
    dataset_paths: list[str],
    plots: str | None,
    out: str,
    fits: list[str] | None = None,
    *,
    allow_pickle: bool = False,
) -> None:
    """Write the HTML report to ``out`` (``fits``: the ``fit.json`` of each statistical model)."""
    stored = results.load_stored(global_path, allow_pickle=allow_pickle)
    models = [json.loads(Path(f).read_text()) for f in fits or []]
    config = yaml.safe_dump(stored.meta.get("config") or {}, sort_keys=False)
    page = render(
        stored.meta,
        stored.result,
        Path(plots) if plots else None,
        failures(dataset_paths),
        config,
        f"coffea_smk report: {stored.meta.get('configfile') or global_path}",
        models,
    )
    with atomic_open(out, "w") as handle:
        handle.write(page)
