"""Parquet files as inputs: twins of the real NanoAOD files give the ROOT files' results bin for bin.

The twins are NanoAOD-flat (``run``, ``MET_pt``, list columns ``Muon_pt``), written in row
groups of 10 events, with and without the ``nX`` counter columns.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import awkward as ak
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot
from conftest import UnplannedFile, Workflow, assert_same_result

import coffea_smk
from coffea_smk.engine.preprocess import preprocess_files
from coffea_smk.engine.reading import UnitReader
from coffea_smk.engine.records import FileIdentity, Plan, PreprocessedFile
from coffea_smk.io.files import InputFileError, open_file
from coffea_smk.io.parquet import ParquetInput, is_parquet
from coffea_smk.spec.config import InputFile
from coffea_smk.spec.settings import EventsOptions

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"
ROW_GROUP = 10


def _write_twin(src: Path, dst: Path, *, counters: bool) -> None:
    """``src``'s Events tree as a NanoAOD-flat Parquet file (row groups of :data:`ROW_GROUP`)."""
    arrays = uproot.open(src)["Events"].arrays(library="ak", how=dict)
    jagged = {name.partition("_")[0] for name, a in arrays.items() if a.ndim == 2}
    columns = {}
    for name, array in arrays.items():
        if not counters and name.startswith("n") and name[1:] in jagged:
            continue
        columns[name] = ak.to_arrow(array, extensionarray=False)
    pq.write_table(pa.table(columns), dst, row_group_size=ROW_GROUP)


@pytest.fixture(scope="session")
def twins(nanoaod: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Parquet twins of ``nano_dy.root``: ``counters`` (with ``nMuon`` ...) and ``lists`` (without)."""
    folder = tmp_path_factory.mktemp("twins")
    out = {"counters": folder / "dy.parquet", "lists": folder / "dy_lists.parquet"}
    _write_twin(nanoaod / "nano_dy.root", out["counters"], counters=True)
    _write_twin(nanoaod / "nano_dy.root", out["lists"], counters=False)
    return out


def _copies(src: Path, folder: Path, stem: str, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        dst = folder / f"{stem}_{i}{src.suffix}"
        shutil.copy(src, dst)
        out.append(str(dst))
    return out


def _fileset(workflow: Workflow, nanoaod: Path, twins: dict[str, Path]) -> dict[str, Any]:
    data = workflow.root / "data"
    parquet = _copies(twins["counters"], data, "dy", 2) + _copies(twins["lists"], data, "dy_lists", 2)
    return {
        "ROOT": {"files": _copies(nanoaod / "nano_dy.root", data, "dy", 4)},
        "Parquet": {"files": parquet},
    }


def _plans(workflow: Workflow) -> dict[str, Plan]:
    plans = [Plan.read(p) for p in (workflow.root / "results").rglob("plan/*/*.json")]
    return {p.dataset: p for p in plans}


def _assert_datasets_agree(result: dict[str, Any]) -> None:
    """The dimuon processor's output for dataset ``Parquet`` is that for ``ROOT``, bin for bin."""
    assert result["cutflow"]["Parquet"] == result["cutflow"]["ROOT"]
    assert result["cutflow"]["ROOT"]["muons"] == 4 * 18  # coffea's own count in nano_dy.root
    for name in ("mass", "muon_pt", "jet_ht"):
        assert_same_result(result[name][{"dataset": "Parquet"}], result[name][{"dataset": "ROOT"}], name)


@pytest.mark.parametrize("schema", ["nanoaod", "coffea"])
def test_parquet_twins_give_the_root_results(
    workflow: Workflow, nanoaod: Path, twins: dict[str, Path], schema: str
) -> None:
    # chunks of one row group, units of two files: several chunks per file, files per unit
    workflow.write(
        {"processor": DIMUON, "chunksize": ROW_GROUP, "events_per_job": 80, "schema": schema},
        _fileset(workflow, nanoaod, twins),
    )
    workflow.run()
    _assert_datasets_agree(coffea_smk.load(workflow.root / "results" / "result.npz"))
    plan = _plans(workflow)["Parquet"]
    assert [f.entries for f in plan.files] == [40] * 4
    assert len(plan.units) == 2 and all(len({c.file for c in u.chunks}) == 2 for u in plan.units)
    assert {(c.start, c.stop) for u in plan.units for c in u.chunks} == {
        (0, 10),
        (10, 20),
        (20, 30),
        (30, 40),
    }


def test_preprocessing_records_row_groups_and_footer_identity(twins: dict[str, Path], tmp_path: Path) -> None:
    path = str(twins["lists"])
    identity = FileIdentity.of(InputFile(path, "Events"))
    (record,), bad = preprocess_files([identity], tmp_path)
    assert not bad and isinstance(record, PreprocessedFile)
    assert record.entries == 40 and record.clusters == (0, 10, 20, 30, 40)
    assert record.gen_sumw is None  # no Runs tree: processing sums genWeight instead
    with open_file(path) as opened:
        assert isinstance(opened, ParquetInput) and record.uuid == opened.file.uuid
        assert record.nbranches == len(opened.schema)
    # another footer, another identity; the key of a Parquet file is not that of a ROOT file
    with open_file(str(twins["counters"])) as other:
        assert other.uuid != record.uuid
    root_named = FileIdentity(path.replace(".parquet", ".root"), "Events", identity.size, identity.mtime_ns)
    assert root_named.key != identity.key
    (again,), _ = preprocess_files([identity], tmp_path)  # from the cache
    assert isinstance(again, PreprocessedFile)
    assert again.uuid == record.uuid and again.seconds == record.seconds


def test_format_is_found_by_suffix_or_magic(twins: dict[str, Path], nanoaod: Path, tmp_path: Path) -> None:
    unnamed = tmp_path / "skim.dat"
    shutil.copy(twins["counters"], unnamed)
    assert is_parquet(str(twins["counters"])) and is_parquet(str(unnamed))
    assert not is_parquet(str(nanoaod / "nano_dy.root"))
    with open_file(str(unnamed)) as opened:
        assert isinstance(opened, ParquetInput) and opened.entries == 40


@pytest.mark.parametrize("kind", ["counters", "lists"])
def test_only_the_touched_columns_are_read_per_row_group(
    twins: dict[str, Path], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[tuple[int, ...], tuple[str, ...]]] = []
    original = pq.ParquetFile.read_row_groups

    def spy(self: Any, row_groups: Any, columns: Any = None, **kwargs: Any) -> Any:
        reads.append((tuple(row_groups), tuple(columns)))
        return original(self, row_groups, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    with UnitReader(EventsOptions(schema="nanoaod")) as unit, open_file(str(twins[kind])) as opened:
        file = UnplannedFile(twins[kind])
        with unit.open(opened, file, [(10, 30)]) as reader, reader.chunk(10, 30, {}) as chunk:
            events = chunk.events
            pt = ak.sum(events.Muon.pt) + ak.sum(events.MET.pt)
            assert float(pt) > 0 and ak.all(events.run == 1)
    columns = [c for _, (c,) in reads]
    assert all(groups == (1, 2) for groups, _ in reads)  # entries 10-30: row groups 1 and 2
    assert len(columns) == len(set(columns))  # each column once
    if kind == "counters":
        assert set(columns) == {"nMuon", "Muon_pt", "MET_pt", "run"}
    else:  # the muon counter comes from the list lengths of one muon column
        assert {"Muon_pt", "MET_pt", "run"} <= set(columns) and len(columns) <= 5
        assert all(c in ("Muon_pt", "MET_pt", "run") or c.startswith("Muon_") for c in columns)


def test_events_have_the_root_events_structure(twins: dict[str, Path], nanoaod: Path) -> None:
    with UnitReader(EventsOptions(schema="nanoaod")) as unit:
        root_file = open_file(str(nanoaod / "nano_dy.root"))
        with open_file(str(twins["lists"])) as opened, root_file:
            root_reader = unit.open(root_file, UnplannedFile(nanoaod / "nano_dy.root"), [(5, 35)])
            with unit.open(opened, UnplannedFile(twins["lists"]), [(5, 35)]) as reader, root_reader:
                with reader.chunk(5, 35, {"dataset": "DY"}) as ours, root_reader.chunk(5, 35, {}) as theirs:
                    a, b = ours.events, theirs.events
                    assert type(a) is type(b) and type(a.Muon) is type(b.Muon)
                    assert sorted(a.fields) == sorted(b.fields)
                    assert a.metadata == {"dataset": "DY"}
                    assert ak.array_equal(a.nMuon, b.nMuon) and a.nMuon.type == b.nMuon.type
                    for x, y in [(a.Muon.pt, b.Muon.pt), (a.MET.pt, b.MET.pt), (a.run, b.run)]:
                        assert ak.array_equal(x, y)
                    pairs = [ak.unzip(ak.combinations(e.Muon, 2)) for e in (a, b)]
                    assert ak.array_equal((pairs[0][0] + pairs[0][1]).mass, (pairs[1][0] + pairs[1][1]).mass)


def test_a_damaged_parquet_file_stops_the_run_naming_it(
    workflow: Workflow, twins: dict[str, Path], tmp_path: Path
) -> None:
    data = workflow.root / "data"
    data.mkdir()
    truncated = data / "truncated.parquet"
    whole = twins["counters"].read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputFileError, match=f"{truncated}.*truncated or not a Parquet file"):
        open_file(str(truncated))
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("not a Parquet file\n" * 10)
    with pytest.raises(InputFileError, match=f"{not_parquet}.*no Parquet magic"):
        open_file(str(not_parquet))

    workflow.write({"processor": DIMUON}, {"DY": {"files": [str(truncated)]}})
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    assert str(truncated) in proc.stderr and "truncated or not a Parquet file" in proc.stderr
