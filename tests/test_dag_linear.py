"""The DAG is linear in the number of files: no input function keys the whole fileset per job."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import coffea_smk.engine.records
import coffea_smk.smk.analysis
import coffea_smk.smk.layout
from coffea_smk.io.remote import DOWN_ENV
from coffea_smk.smk.analysis import STATS_ENV, Analysis
from coffea_smk.util.hashing import key_of

FILES = 2000


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every ``key_of`` call of the layout, the file identities and the glue."""
    calls = [0]

    def counted(*parts: Any) -> str:
        calls[0] += 1
        return key_of(*parts)

    for module in (coffea_smk.engine.records, coffea_smk.smk.layout, coffea_smk.smk.analysis):
        monkeypatch.setattr(module, "key_of", counted)
    return calls


def test_asking_every_preprocess_job_keys_each_file_a_bounded_number_of_times(
    tmp_path: Path, nanoaod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, each preprocessing job's input function keyed every file and batch of its dataset
    again: 100 jobs x 1,050 files and batches here, ~105,000 keys; now each is keyed a few times."""
    monkeypatch.setenv(STATS_ENV, "")  # set by the Analysis: restored after the test
    monkeypatch.setenv(DOWN_ENV, "")
    data = tmp_path / "data"
    data.mkdir()
    fileset: dict[str, dict[str, list[str]]] = {"A": {"files": []}, "B": {"files": []}}
    for i in range(FILES):
        link = data / f"f{i:05d}.root"
        link.symlink_to(nanoaod / "nano_dy.root")
        fileset["AB"[i % 2]]["files"].append(str(link))
    config = {
        "fileset": fileset,
        "processor": "coffea_smk.examples.dimuon:DimuonProcessor",
        "outdir": str(tmp_path / "results"),
    }
    calls = _counting(monkeypatch)
    checkpoints = SimpleNamespace(plan=SimpleNamespace(get=None))
    analysis = Analysis(config, [], checkpoints)
    ask: list[tuple[Callable[[Any], Any], SimpleNamespace]] = []
    for slug in analysis.layout.datasets:
        ask.append((analysis.get_plan_inputs, SimpleNamespace(dataset=slug)))
        ask.append((analysis.get_provenance, SimpleNamespace(dataset=slug)))
        for batch in analysis.layout.batch_names(slug):
            ask.append((analysis.get_preprocess_files, SimpleNamespace(dataset=slug, batch=batch)))
    asked = [function(wildcards) for function, wildcards in ask]
    jobs = FILES // analysis.cfg.files_per_preprocess_job
    assert len(ask) == jobs + 4
    assert sum(len(json.loads(a)) for a in asked if isinstance(a, str)) == FILES
    # parsing keys each file twice (plan key, batch key) and each batch once: O(files), not O(files x jobs)
    assert calls[0] <= 3 * FILES, f"{calls[0]} keys for {FILES} files and {jobs} preprocessing jobs"
