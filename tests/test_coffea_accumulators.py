"""coffea's accumulator types (and Counter, defaultdict, OrderedDict) kept with their type and
behaviour, without pickle, and added as coffea adds them; ``allow_pickle`` reaches every step."""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import PROCESSORS, Workflow, assert_same_result, run_coffea

pytest.importorskip("coffea", reason="coffea cannot be imported: install coffea_smk[coffea]")

import hist
from coffea import processor

import coffea_smk
from coffea_smk import results
from coffea_smk.engine.accumulate import add


def _chunk(i: int) -> dict[str, Any]:
    h = hist.Hist(hist.axis.StrCategory([], growth=True, name="c"), hist.axis.Regular(3, 0, 3, name="x"))
    h.fill(c=f"p{i % 3}", x=[i % 3])
    return {
        "value": processor.value_accumulator(float, 1.5 * i),
        "dd": processor.defaultdict_accumulator(int, {f"k{i % 2}": i}),
        "da": processor.dict_accumulator({"n": processor.value_accumulator(int, i)}),
        "set": processor.set_accumulator({f"s{i}"}),
        "counter": collections.Counter({f"c{i % 2}": i - 1}),
        "pdd": collections.defaultdict(list, {"a": [i]}),
        "od": collections.OrderedDict([("z", i), ("a", 1)]),
        "h": h,
    }


def _plain(x: Any) -> Any:
    """Values for comparison: accumulators by their value."""
    if isinstance(x, processor.value_accumulator):
        return ("value", x.value)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def test_added_as_coffea_adds_them_and_stored_with_their_type(tmp_path: Path) -> None:
    ours: Any = None
    for i in range(4):
        ours = add(ours, _chunk(i))
    theirs = processor.accumulate([_chunk(i) for i in range(4)])
    path = tmp_path / "r.npz"
    results.save(path, ours)
    back = results.load(path)
    for key, value in theirs.items():
        for got in (ours[key], back[key]):
            assert type(got) is type(value), key
            assert _plain(got) == _plain(value), key
    # behaviour after loading: defaults, order, types inside
    assert back["dd"]["new"] == 0 and back["dd"].default_factory is int
    assert back["pdd"]["new"] == [] and back["value"].default_factory is float
    assert list(back["od"]) == ["z", "a"] and back["counter"] == collections.Counter({"c1": 2, "c0": 1})
    assert isinstance(back["da"]["n"], processor.value_accumulator) and back["da"]["n"].value == 6
    assert sorted(back["h"].axes["c"]) == ["p0", "p1", "p2"]
    # and they go on adding as coffea's do
    again = add(back, _chunk(5))
    assert again["dd"]["k1"] == 9 and again["value"].value == 16.5 and "s5" in again["set"]
    # list_accumulator: kept a list_accumulator (coffea's own accumulate loses it after two)
    lists = add(add(processor.list_accumulator([1]), processor.list_accumulator([2])), [3])
    results.save(path, {"l": lists})
    loaded = results.load(path)["l"]
    assert type(loaded) is processor.list_accumulator and loaded == [1, 2, 3]


def test_what_cannot_be_stored_safely_is_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"result\['x'\].*default factory <function"):
        results.save(tmp_path / "r.npz", {"x": processor.defaultdict_accumulator(lambda: 0)})
    results.save(tmp_path / "p.npz", {"x": processor.defaultdict_accumulator(lambda: 0)}, allow_pickle=True)
    with pytest.raises(results.ResultFileError, match="allow_pickle"):
        results.load(tmp_path / "p.npz")


@pytest.mark.slow
def test_coffea_accumulators_through_the_workflow(workflow: Workflow, nanoaod: Path) -> None:
    sys.path.insert(0, str(PROCESSORS))
    try:
        from accumulator_processors import Accumulators
    finally:
        sys.path.remove(str(PROCESSORS))
    fileset = {
        "DY": {"files": {str(nanoaod / "nano_dy.root"): "Events"}},
        "Data": {"files": {str(nanoaod / "nano_dimuon.root"): "Events"}},
    }
    # several chunks per file, two units per dataset
    workflow.write(
        {"processor": "accumulator_processors:Accumulators", "chunksize": 10, "events_per_job": 20}, fileset
    )
    workflow.run()
    ours = coffea_smk.load(workflow.root / "results" / "result.npz")
    theirs = run_coffea(fileset, Accumulators(), 10)
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert type(ours[key]) is type(value), key
    assert_same_result(_plain(ours), _plain(theirs))
    assert ours["events"] == {"DY": 40, "Data": 40} and ours["events"]["other"] == 0
    # the per-dataset results too
    dy = coffea_smk.load(workflow.root / "results" / "datasets" / "DY.npz")
    assert type(dy["by_mult"]) is processor.dict_accumulator and dy["counter"] == {"DY_mu": 18}


@pytest.mark.slow
def test_allow_pickle_reaches_every_step(workflow: Workflow, nanoaod: Path) -> None:
    fileset = {"DY": {"files": {str(nanoaod / "nano_dy.root"): "Events"}}}
    config = {"processor": "accumulator_processors:WithOpaque", "chunksize": 10, "events_per_job": 20}
    workflow.write({**config, "allow_pickle": True, "plots": {}}, fileset)
    workflow.run()  # processing, merges, result, plots and the report all load it
    result = workflow.root / "results"
    assert (result / "report.html").is_file()
    assert coffea_smk.load(result / "result.npz", allow_pickle=True)["opaque"].n == 40
    # without allow_pickle the run stops at the first result, naming the type and the setting
    workflow.write({**config, "version": "2"}, fileset)
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    logs = "".join(p.read_text() for p in (result / "logs").rglob("*.log"))
    assert "Opaque has no safe stored form" in proc.stdout + proc.stderr + logs
