"""Chunks, work units and merge trees."""

from __future__ import annotations

from itertools import pairwise

import pytest

from coffea_smk.engine.plan import PlanSettings, chunk_boundaries, make_plan, merge_tree
from coffea_smk.engine.records import PLAN_VERSION, RECORD_VERSION, Plan, PreprocessedFile


def test_chunks_cover_entries_once() -> None:
    for entries in (0, 1, 40, 41, 999, 100_000):
        for size in (1, 7, 40, 100_000):
            b = chunk_boundaries(entries, size)
            assert b[0] == 0 and b[-1] == entries
            assert all(x < y for x, y in pairwise(b))
            assert all(y - x <= size for x, y in pairwise(b))


def test_chunks_snap_to_clusters() -> None:
    clusters = [*range(0, 1000, 98), 1000]
    b = chunk_boundaries(1000, 200, clusters)
    assert b[0] == 0 and b[-1] == 1000
    assert set(b[1:-1]) <= set(clusters)


def _record(key: str, entries: int) -> PreprocessedFile:
    return PreprocessedFile(
        version=RECORD_VERSION,
        reader=1,
        path=f"/{key}.root",
        treename="Events",
        size=1,
        mtime_ns=1,
        replaced=None,
        key=key,
        uuid=key,
        entries=entries,
        clusters=(0, entries),
        nbranches=1,
        branches_hash="x",
        seconds=0.0,
        record_path=f"/cache/{key}.json",
    )


def test_units_pack_small_files_and_split_large_ones() -> None:
    records = [_record("a", 30), _record("b", 30), _record("c", 250), _record("d", 0), _record("e", 10)]
    plan = make_plan("ds", "ds", {}, records, PlanSettings(chunksize=50, events_per_job=100, merge_fanin=2))
    assert plan.expected_events == 320 and plan.empty_files == ("/d.root",)
    covered = sorted((c.file, c.start, c.stop) for u in plan.units for c in u.chunks)
    assert sum(stop - start for _, start, stop in covered) == 320
    # small files a and b share a unit; every unit stays within events_per_job
    files_of = [{c.file for c in u.chunks} for u in plan.units]
    assert {0, 1} in files_of
    assert all(u.events <= 100 for u in plan.units)
    assert len({u.id for u in plan.units}) == len(plan.units)


def test_unit_ids_are_stable_when_another_file_changes() -> None:
    s = PlanSettings(chunksize=50, events_per_job=100, merge_fanin=4)
    base = [_record("a", 100), _record("b", 100), _record("c", 100)]
    changed = [_record("a", 100), _record("b2", 100), _record("c", 100)]
    ids1 = [u.id for u in make_plan("d", "d", {}, base, s).units]
    ids2 = [u.id for u in make_plan("d", "d", {}, changed, s).units]
    assert ids1[0] == ids2[0] and ids1[2] == ids2[2] and ids1[1] != ids2[1]


def test_merge_tree_respects_fanin() -> None:
    leaves = [f"{i:016x}" for i in range(37)]
    nodes, top = merge_tree(leaves, 4)
    assert len(top) <= 4
    assert all(len(children) <= 4 for children in nodes.values())
    reached: list[str] = []

    def walk(ids: list[str]) -> None:
        for i in ids:
            if i in nodes:
                walk(nodes[i])
            else:
                reached.append(i)

    walk(top)
    assert sorted(reached) == leaves
    assert merge_tree(leaves[:3], 4) == ({}, leaves[:3])


def test_a_plan_file_keeps_its_shape() -> None:
    """The JSON of a plan has exactly this shape (a change to it bumps PLAN_VERSION)."""
    plan = make_plan(
        "ds", "ds", {"xs": 1.5}, [_record("a", 30)], PlanSettings(chunksize=20, events_per_job=100), key="k"
    )
    data = plan.model_dump(mode="json")
    assert list(data) == [
        "version",
        "dataset",
        "slug",
        "metadata",
        "settings",
        "files",
        "units",
        "merge",
        "expected_events",
        "empty_files",
        "bad_files",
        "key",
    ]
    assert data["version"] == PLAN_VERSION and data["key"] == "k"
    assert data["settings"] == {
        "chunksize": 20,
        "events_per_job": 100,
        "merge_fanin": 64,
        "align_chunks": True,
    }
    assert data["files"] == [
        {
            "path": "/a.root",
            "treename": "Events",
            "key": "a",
            "uuid": "a",
            "entries": 30,
            "size": 1,
            "mtime_ns": 1,
            "gen_sumw": None,  # PLAN_VERSION 2: the Runs tree's sum of generator weights
            "steps": None,  # no new PLAN_VERSION: a plan made before steps existed means whole files, as now
            "record_path": "/cache/a.json",
            "batch_output": None,
        }
    ]
    (unit,) = data["units"]
    assert unit["chunks"] == [[0, 0, 15], [0, 15, 30]] and unit["events"] == 30
    assert data["merge"] == {"nodes": {}, "top": [unit["id"]]}
    assert Plan.model_validate_json(plan.model_dump_json()) == plan


def test_steps_are_chunked_alone_and_one_beyond_the_file_is_an_error() -> None:
    from coffea_smk.spec.config import ConfigError

    settings = PlanSettings(chunksize=4, events_per_job=100)
    steps = {"/a.root": [(0, 6), (6, 10), (25, 30)]}
    plan = make_plan("ds", "ds", {}, [_record("a", 30), _record("b", 5)], settings, key="k", steps=steps)
    (unit,) = plan.units
    assert [tuple(c) for c in unit.chunks] == [
        (0, 0, 4),
        (0, 4, 8),
        (0, 8, 10),
        (0, 25, 28),
        (0, 28, 30),
        (1, 0, 3),
        (1, 3, 5),
    ]
    assert plan.expected_events == unit.events == 15 + 5
    assert plan.files[0].ranges() == ((0, 10), (25, 30)) and plan.files[1].steps is None
    with pytest.raises(
        ConfigError, match=r"/a.root: the fileset asks for entries \[25, 31\).*has 30 entries"
    ):
        make_plan("ds", "ds", {}, [_record("a", 30)], settings, key="k", steps={"/a.root": [(25, 31)]})
