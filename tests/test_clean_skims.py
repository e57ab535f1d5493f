"""`coffea-smk clean` and `status` with skims, on real runs of two selections.

The analysis is run with the dimuon skim, then with a tighter selection (a new processor: new
tags, dataset keys and analysis key). `clean` must list the first variant's skim pieces,
compacted skim folders and manifest folder with their sizes, keep what the published skim
fileset shows, and with `--yes` remove exactly them: a re-run has nothing to do and the
published fileset reads and lists existing files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROCESSORS, Workflow

from coffea_smk.smk.clean import ANY_TAG, Use, disk_use, human, variant_keys
from coffea_smk.smk.clean_skims import KINDS, PIECES, SKIMS
from coffea_smk.smk.layout import Layout

pytestmark = pytest.mark.slow

SETTINGS = {"chunksize": 10, "events_per_job": 20}
FIRST, NOW = "skim_processors:DimuonSkim", "skim_processors:ThreeMuonSkim"


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _cli(workflow: Workflow, command: str, *args: str) -> str:
    """``coffea-smk COMMAND analysis.yaml ARGS`` in the analysis directory; its output."""
    path = os.pathsep.join([str(workflow.hooks), str(PROCESSORS), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "coffea_smk", command, "analysis.yaml", *args],
        cwd=workflow.root,
        env={**os.environ, "PYTHONPATH": path},
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _outputs(workflow: Workflow, processor: str, fileset: dict[str, object]) -> dict[str, set[Path]]:
    """What the analysis with ``processor`` writes of skims (configured as the current one)."""
    workflow.write({"processor": processor, **SETTINGS}, fileset)
    layout = Layout.from_file(str(workflow.root / "analysis.yaml"))
    skims = workflow.root / "results" / "skims" / "dimuon"
    return {
        "pieces": {
            p
            for slug, k in layout.keys.items()
            for p in (skims.parents[1] / "partials" / slug / k.tag).glob("*.skim-*")
        },
        "folders": {skims / slug / k.result for slug, k in layout.keys.items()},
        "manifest": {skims / "manifests" / layout.analysis_key},
    }


@pytest.fixture
def fileset(nanoaod: Path) -> dict[str, object]:
    return {
        "DY": {"files": [str(nanoaod / "nano_dy.root")], "metadata": {"xsec": 2.5}},
        "Data": {"files": [str(nanoaod / "nano_dimuon.root")], "metadata": {"is_data": True}},
    }


def test_clean_removes_an_earlier_selections_skims_and_keeps_the_published_ones(
    workflow: Workflow, fileset: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workflow.root)
    monkeypatch.syspath_prepend(str(PROCESSORS))
    results = workflow.root / "results"
    published = results / "skims" / "dimuon" / "fileset.json"
    workflow.write({"processor": FIRST, **SETTINGS}, fileset)
    workflow.run()
    workflow.write({"processor": NOW, **SETTINGS}, fileset)
    workflow.run()
    now, first = _outputs(workflow, NOW, fileset), _outputs(workflow, FIRST, fileset)  # as first
    assert first["pieces"] and now["pieces"] and first["pieces"].isdisjoint(now["pieces"])
    assert all(p.is_dir() for p in first["folders"] | first["manifest"] | now["manifest"])
    assert any(p.is_dir() for p in now["folders"])

    # configured as the first selection again, before a run: the published skims (the tighter
    # selection's) are kept, a link or a copy, with every file they list
    usage = {
        workflow.root / e.path: e
        for e in disk_use(Layout.from_file(str(workflow.root / "analysis.yaml"))).entries
    }
    assert all(usage[p].use is Use.CURRENT for p in first["pieces"] | first["folders"] | first["manifest"])
    listed = {
        Path(f).parents[0] for spec in json.loads(published.read_text()).values() for f in spec["files"]
    }
    assert listed and all(usage[p].use is Use.KEPT for p in listed | now["manifest"])
    assert all(usage[p].use is Use.EARLIER and usage[p].kind == PIECES for p in now["pieces"])
    target = os.readlink(published)
    published.unlink()
    published.write_bytes((published.parent / target).read_bytes())  # where links are copies
    usage = {
        workflow.root / e.path: e
        for e in disk_use(Layout.from_file(str(workflow.root / "analysis.yaml"))).entries
    }
    assert all(usage[p].use is Use.KEPT for p in listed)
    published.unlink()
    published.symlink_to(target)

    # as configured now: the first selection's skims are an earlier variant's, with their sizes
    _outputs(workflow, NOW, fileset)
    usage_now = disk_use(Layout.from_file(str(workflow.root / "analysis.yaml")))
    entries = {workflow.root / e.path: e for e in usage_now.entries}
    under = [e for e in usage_now.entries if "skims" in e.path.parts and not e.path.is_symlink()]
    assert under and all(e.kind == SKIMS for e in under)  # no skim file is unknown
    mine = first["pieces"] | first["folders"] | first["manifest"]
    assert all(entries[p].use is Use.EARLIER and entries[p].variant for p in mine)
    assert all(entries[p].use is Use.CURRENT for p in now["pieces"] | now["manifest"])
    assert all(entries[p].size > 0 for p in first["folders"] | first["pieces"])
    (variant,) = usage_now.variants
    refs, _ = variant_keys(
        Layout.from_file(str(workflow.root / "analysis.yaml")), results / "global" / f"{variant.key}.npz"
    )
    tags = {r[2] for r in refs.refs if r[0] == "unit"}  # its own processor's, recomputed: not ANY_TAG
    assert tags == {p.parent.name for p in first["pieces"]} and ANY_TAG not in tags

    status = workflow.run(command="status").stdout.split("disk use of results:")[1]
    files, size = usage_now.total(Use.CURRENT, kinds=KINDS)
    earlier_files, earlier_size = usage_now.total(Use.EARLIER, Use.KEPT, kinds=KINDS)
    assert files and earlier_files
    assert f"(skims {human(size)} in {files} files)" in status
    assert f"; skims {human(earlier_size)} in {earlier_files} files)" in status
    listing = _cli(workflow, "clean")
    for kind in KINDS:
        n = sum(e.files for e in usage_now.removable if e.kind == kind)
        b = sum(e.size for e in usage_now.removable if e.kind == kind)
        assert f"{kind} {human(b)} in {n} files" in listing

    before = _files(results)
    removable = {workflow.root / e.path for e in usage_now.removable}
    assert "removed " in _cli(workflow, "clean", "--yes")
    after = _files(results)
    assert after == {p for p in before if not any(p == r or r in p.parents for r in removable)}
    assert not any(p.exists() for p in mine)
    assert all(p.exists() for p in now["pieces"] | now["manifest"] | listed)
    again = workflow.run("-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout + again.stderr
    files_now = json.loads(published.read_text())
    assert files_now and all(Path(f).is_file() for spec in files_now.values() for f in spec["files"])
    assert "nothing to remove" in _cli(workflow, "clean")
