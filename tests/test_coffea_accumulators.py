"""coffea's accumulator types (and Counter, defaultdict, OrderedDict) kept with their type and
behaviour, without pickle, and added as coffea adds them; ``allow_pickle`` reaches every step."""

from __future__ import annotations

import collections
import json
import subprocess
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
    # `coffea-smk summary` shows what the meta says, and why not the result
    summary = subprocess.run(
        [sys.executable, "-m", "coffea_smk", "summary", str(result / "result.npz")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "events processed: 40 of 40" in summary and "allow_pickle=True" in summary
    # without allow_pickle the run stops at the first result, naming the type and the setting
    workflow.write({**config, "version": "2"}, fileset)
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    logs = "".join(p.read_text() for p in (result / "logs").rglob("*.log"))
    assert "Opaque has no safe stored form" in proc.stdout + proc.stderr + logs


# ---- default factories, coffea's accumulate over any grouping, and the errors ------------------


def _dtype(x: Any) -> Any:
    """Types and values all the way down (a histogram by its axes and its view), for comparison."""
    if isinstance(x, processor.value_accumulator):
        return ("value_accumulator", _dtype(x.value))
    if isinstance(x, hist.Hist):
        return ("hist", tuple(x.axes), x.view(flow=True).tolist())
    if isinstance(x, dict):
        return (type(x), {k: _dtype(v) for k, v in x.items()})
    if isinstance(x, (set, list, tuple)):
        return (type(x), x)
    return (type(x), x)


def _output(i: int) -> dict[str, Any]:
    """A chunk's output as older coffea processors return them: a plain dict of accumulators."""
    from functools import partial

    nested = processor.defaultdict_accumulator(partial(processor.defaultdict_accumulator, int))
    nested[f"d{i % 2}"]["n"] += i
    per = processor.defaultdict_accumulator(
        processor.dict_accumulator({"n": processor.value_accumulator(int)}).identity
    )
    per[f"p{i % 3}"]["n"] += 1
    return {
        "va": processor.value_accumulator(float, i),  # an int in a float accumulator: coffea makes it 1.0
        "dd": processor.defaultdict_accumulator(float, {f"k{i % 3}": i, "all": 1}),
        "nested": nested,
        "per": per,
        "sa": processor.set_accumulator({i % 4}),
        "da": processor.dict_accumulator(
            {"x": processor.value_accumulator(int, i), f"y{i % 2}": processor.value_accumulator(float, 1)}
        ),
        "counter": collections.Counter({f"c{i % 2}": i + 1}),
        "pdd": collections.defaultdict(list, {f"k{i % 2}": [i]}),
        "od": collections.OrderedDict([(f"o{i % 2}", i)]),
    }


@pytest.mark.parametrize("seed", range(6))
def test_any_grouping_through_files_equals_coffeas_accumulate(tmp_path: Path, seed: int) -> None:
    """Chunks added into partials, partials stored and merged from their files in any grouping
    (as the workflow's units, merges and datasets do): equal to coffea's accumulate, types included."""
    import copy
    import random

    rng = random.Random(seed)
    n = rng.randint(1, 9)
    outputs = [_output(i) for i in range(n)]
    theirs = processor.accumulate(copy.deepcopy(outputs))
    paths, unit = [], None
    for i, out in enumerate(outputs):
        unit = add(unit, out)
        if rng.random() < 0.5 or i == n - 1:
            paths.append(tmp_path / f"u{i}.npz")
            results.save(paths[-1], unit)
            unit = None
    ours = None
    for path in paths:
        ours = add(ours, results.load(path))
    results.save(tmp_path / "all.npz", ours)
    for got in (ours, results.load(tmp_path / "all.npz")):
        assert _dtype(got) == _dtype(theirs)
        # the default factories came back, and work
        assert (
            got["nested"]["new"]["n"] == 0 and type(got["nested"]["new"]) is processor.defaultdict_accumulator
        )
        assert got["per"]["new"]["n"].value == 0 and type(got["per"]["new"]) is processor.dict_accumulator
        assert got["dd"]["new"] == 0.0 and got["pdd"]["new"] == [] and got["va"].identity().value == 0.0


def test_default_factories_stored_safely(tmp_path: Path) -> None:
    from functools import partial

    import numpy as np

    h0 = hist.Hist(hist.axis.Regular(3, 0, 3, name="x"))
    stored = {
        "partial_kw": processor.defaultdict_accumulator(
            partial(processor.value_accumulator, float, initial=1.5)
        ),
        "class": processor.defaultdict_accumulator(processor.defaultdict_accumulator),
        "set_acc": processor.defaultdict_accumulator(processor.set_accumulator),
        "np_bool": processor.value_accumulator(np.bool_),
        "hist": processor.value_accumulator(h0.copy, h0.copy().fill(x=[1, 2])),
        "dd_of_dd": collections.defaultdict(partial(collections.defaultdict, int)),
        "none": processor.defaultdict_accumulator(None, {"a": 1}),
    }
    results.save(tmp_path / "f.npz", stored)
    with np.load(tmp_path / "f.npz") as npz:
        assert json.loads(npz["__coffea_smk__"].tobytes())["pickled"] == []
    back = results.load(tmp_path / "f.npz")
    assert (
        back["partial_kw"]["a"].value == 1.5 and type(back["partial_kw"]["a"]) is processor.value_accumulator
    )
    assert type(back["class"]["a"]) is processor.defaultdict_accumulator
    assert type(back["set_acc"]["a"]) is processor.set_accumulator
    assert back["np_bool"].identity().value is np.False_
    assert back["hist"].value == stored["hist"].value and back["hist"].identity().value == h0
    assert back["dd_of_dd"]["a"]["b"] == 0
    assert back["none"].default_factory is None and back["none"] == {"a": 1}
    # a value_accumulator holding None keeps it (coffea's constructor would call the factory)
    results.save(tmp_path / "n.npz", {"v": processor.value_accumulator(list, [])})
    assert results.load(tmp_path / "n.npz")["v"].value == []


def test_unsafe_factories_and_types_are_named_with_their_place(tmp_path: Path) -> None:
    from functools import partial

    nested = {
        "cutflow": {"DY": processor.defaultdict_accumulator(partial(processor.value_accumulator, lambda: 0))}
    }
    with pytest.raises(TypeError, match=r"result\['cutflow'\]\['DY'\].*default factory.*allow_pickle: true"):
        results.save(tmp_path / "r.npz", nested)
    with pytest.raises(TypeError, match=r"result\['d'\]: a .*Sub has no safe stored form.*allow_pickle"):
        results.save(tmp_path / "r.npz", {"d": Sub(a=1)})  # not silently stored as a plain dict
    results.save(tmp_path / "p.npz", nested, allow_pickle=True)
    with pytest.raises(results.PickledResultError, match="allow_pickle=True"):
        results.load(tmp_path / "p.npz")
    back = results.load(tmp_path / "p.npz", allow_pickle=True)
    assert back["cutflow"]["DY"]["x"].value == 0


class Sub(dict):  # type: ignore[type-arg]
    """A dict subclass coffea_smk does not know."""


def test_without_coffea_a_clear_error_and_plain_results_still_load(tmp_path: Path) -> None:
    results.save(tmp_path / "c.npz", {"cutflow": {"DY": processor.defaultdict_accumulator(int, {"all": 1})}})
    results.save(tmp_path / "plain.npz", {"n": collections.Counter({"a": 1})})
    code = (
        "import sys; sys.modules['coffea'] = None\n"  # as if coffea were not installed
        "from coffea_smk import results\n"
        f"assert results.load({str(tmp_path / 'plain.npz')!r}) == {{'n': {{'a': 1}}}}\n"
        "assert 'coffea.processor' not in sys.modules\n"
        f"results.load({str(tmp_path / 'c.npz')!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: ") and "c.npz" in last, last
    assert "result['cutflow']['DY']" in last and "pip install 'coffea_smk[coffea]'" in last, last


def test_new_keys_holding_histograms_are_added_where_coffea_cannot() -> None:
    """``dict_accumulator({dataset: hist})`` from two datasets: coffea's add asks the histogram
    for an ``identity()``; coffea_smk adds the values as in a plain dict."""

    def out(name: str) -> Any:
        h = hist.Hist(hist.axis.Regular(2, 0, 2, name="x")).fill(x=[1])
        return processor.dict_accumulator({name: h, "sets": processor.dict_accumulator({name: {1}})})

    with pytest.raises(AttributeError, match="identity"):
        processor.accumulate([out("A"), out("B")])
    ours = None
    for name in ("A", "B", "A"):
        ours = add(ours, out(name))
    assert type(ours) is processor.dict_accumulator
    assert ours["A"].sum() == 2 and ours["B"].sum() == 1 and ours["sets"] == {"A": {1}, "B": {1}}


def test_summary_of_a_pickled_result_shows_the_meta(tmp_path: Path) -> None:
    from coffea_smk.demo import summary

    meta = {"events": 40, "events_expected": 40, "complete": True}
    results.save(
        tmp_path / "r.npz", {"x": processor.defaultdict_accumulator(lambda: 0)}, meta, allow_pickle=True
    )
    text = summary(tmp_path / "r.npz")
    assert "events processed: 40 of 40" in text and "allow_pickle" in text
    assert "not shown" not in summary(tmp_path / "r.npz", allow_pickle=True)


# ---- through the workflow: an old-style processor, against coffea's Runner and one fill --------


def _by_label(h: hist.Hist) -> dict[tuple[Any, ...], list[Any]]:
    """A histogram as {category labels: the view of the rest}, whatever the categories' order."""
    import itertools

    cats = [a for a in h.axes if isinstance(a, (hist.axis.StrCategory, hist.axis.IntCategory))]
    out = {}
    for labels in itertools.product(*(list(a) for a in cats)):
        part = h[{a.name: hist.loc(v) for a, v in zip(cats, labels, strict=True)}]
        out[labels] = part.view(flow=True).tolist()
    return out


def _same(ours: Any, theirs: Any, where: str = "result") -> None:
    assert type(ours) is type(theirs), f"{where}: {type(ours)} is not {type(theirs)}"
    if isinstance(theirs, hist.Hist):
        assert [type(a) for a in ours.axes] == [type(a) for a in theirs.axes], where
        assert {k: sorted(v) for k, v in _labels(ours).items()} == {
            k: sorted(v) for k, v in _labels(theirs).items()
        }, f"{where}: categories differ"
        assert _by_label(ours) == _by_label(theirs), f"{where}: bins differ"
    elif isinstance(theirs, processor.value_accumulator):
        _same(ours.value, theirs.value, f"{where}.value")
        _same(ours.identity().value, theirs.identity().value, f"{where}.identity()")
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs) or set(ours) == set(theirs), (
            f"{where}: {set(ours)} != {set(theirs)}"
        )
        for key in theirs:
            _same(ours[key], theirs[key], f"{where}[{key!r}]")
        factory = getattr(theirs, "default_factory", None)
        if factory is not None:  # the defaults work, and make the same
            _same(ours.default_factory(), factory(), f"{where}.default_factory()")
    else:
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"


def _labels(h: hist.Hist) -> dict[str, list[Any]]:
    return {a.name: list(a) for a in h.axes if isinstance(a, (hist.axis.StrCategory, hist.axis.IntCategory))}


@pytest.mark.slow
def test_old_style_processor_through_the_workflow(workflow: Workflow, nanoaod: Path) -> None:
    """Factories (nested, partial, identity, a histogram's copy), Counter, defaultdict, OrderedDict and
    an AGC-style histogram with growing process x variation x multiplicity axes whose categories
    differ between chunks and datasets: four chunks per file, two work units per file, three
    datasets; equal to coffea's Runner (iterative and futures executors) and, for the histogram,
    to one histogram filled with every chunk."""
    sys.path.insert(0, str(PROCESSORS))  # for coffea's futures executor's workers too
    try:
        _old_style(workflow, nanoaod)
    finally:
        sys.path.remove(str(PROCESSORS))


def _old_style(workflow: Workflow, nanoaod: Path) -> None:
    import uproot
    from coffea_accumulator_cases import CHUNK, OldStyle, empty_hist, fill

    files = {"DY": "nano_dy.root", "Data": "nano_dimuon.root", "DY2": "nano_dy_SpecialTree.root"}
    fileset = {d: {"files": {str(nanoaod / f): "Events"}} for d, f in files.items()}
    config = {
        "processor": "coffea_accumulator_cases:OldStyle",
        "chunksize": CHUNK,
        "events_per_job": 2 * CHUNK,
    }
    workflow.write(config, fileset)
    workflow.run()
    meta = coffea_smk.load_meta(workflow.root / "results" / "result.npz")
    assert meta["totals"]["chunks"] == 12 and meta["complete"]
    ours = coffea_smk.load(workflow.root / "results" / "result.npz")

    import warnings

    from coffea.nanoevents import NanoAODSchema

    for executor in (processor.IterativeExecutor(), processor.FuturesExecutor(workers=2)):
        runner = processor.Runner(executor=executor, schema=NanoAODSchema, chunksize=CHUNK, savemetrics=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = runner(fileset, processor_instance=OldStyle(), treename="Events")
        _same(ours, theirs, f"result ({type(executor).__name__})")

    # the histogram equals one filled with everything, chunk by chunk
    one = empty_hist()
    for dataset, name in files.items():
        arrays = uproot.open(nanoaod / name)["Events"].arrays(["nMuon", "MET_pt"], library="np")
        for start in range(0, len(arrays["nMuon"]), CHUNK):
            stop = start + CHUNK
            fill(one, dataset, start, arrays["nMuon"][start:stop], arrays["MET_pt"][start:stop])
    _same(ours["hist"], one, "result['hist']")
    assert sorted(_labels(ours["hist"])["variation"]) == ["dy_first", "nominal", "up"]
    assert sorted(_labels(ours["hist"])["nmu"]) == [0, 1, 2, 3, 4]

    # the per-dataset results hold their own categories only, and keep the types
    dy = coffea_smk.load(workflow.root / "results" / "datasets" / "DY.npz")
    assert _labels(dy["hist"])["process"] == ["DY"] and sorted(_labels(dy["hist"])["nmu"]) == [0, 1, 2]
    assert type(dy["per_dataset"]["DY"]) is processor.dict_accumulator and dy["cutflow"]["DY"]["all"] == 40
    assert dy["cutflow"]["other"]["all"] == 0 and dy["per_dataset"]["other"]["n"].value == 0


def test_a_pickled_input_is_removed_when_the_analysis_does_not_allow_pickle(tmp_path: Path) -> None:
    """allow_pickle switched off after a run that stored pickles: those partials are not the
    analysis's own (it writes none); the merge and a unit's retry name the setting and remove them,
    so the next run redoes them as configured now."""
    from coffea_smk.engine.process import load_previous
    from coffea_smk.engine.reduce import MergeError, merge_to_file

    paths = []
    for i in range(2):
        path = tmp_path / f"p{i}.npz"
        results.save(path, {"x": processor.defaultdict_accumulator(lambda: 0)}, allow_pickle=True)
        paths.append(str(path))
    with pytest.raises(MergeError, match="allow_pickle"):
        merge_to_file(paths, str(tmp_path / "out.npz"))
    assert not Path(paths[0]).exists() and Path(paths[1]).exists()
    with pytest.raises(results.ResultFileError, match="allow_pickle"):
        load_previous(paths[1])
    assert not Path(paths[1]).exists()
