"""coffea's accumulate semantics."""

from __future__ import annotations

from pathlib import Path

import hist
import numpy as np
import pytest

from coffea_smk.engine.accumulate import AccumulateError, accumulate, add


def test_semantics() -> None:
    h1 = hist.Hist.new.StrCat([], growth=True, name="d").Reg(2, 0, 1, name="x").Double()
    h2 = h1.copy()
    h1.fill(d="a", x=0.1)
    h2.fill(d="b", x=0.6)
    out = accumulate(
        [
            {"h": h1, "n": 1, "f": 0.5, "s": {1}, "l": [1], "a": np.ones(2), "d": {"x": 1}},
            {"h": h2, "n": 2, "f": 0.25, "s": {2}, "l": [2], "a": np.ones(2), "d": {"y": 2}},
        ]
    )
    assert out["n"] == 3 and out["f"] == 0.75 and out["s"] == {1, 2} and out["l"] == [1, 2]
    assert np.array_equal(out["a"], [2, 2]) and out["d"] == {"x": 1, "y": 2}
    assert list(out["h"].axes["d"]) == ["a", "b"] and out["h"].sum() == 2
    assert h1.sum() == 1, "inputs are not modified"


def test_none_is_identity_and_first_value_is_copied() -> None:
    first = {"a": np.zeros(2)}
    acc = add(None, first)
    add(acc, {"a": np.ones(2)})
    assert np.array_equal(first["a"], [0, 0])
    assert add(5, None) == 5


@pytest.mark.parametrize(("a", "b"), [({"x": 1}, 2), (1, "s"), ("a", "b"), ({"x": 1}, {"x": [1]})])
def test_type_changes_are_errors(a: object, b: object) -> None:
    with pytest.raises(AccumulateError):
        add(a, b)


def test_int_array_plus_float_array_promotes() -> None:
    out = add(np.array([1, 2]), np.array([0.5, 0.5]))
    assert out.dtype == np.float64 and np.array_equal(out, [1.5, 2.5])


def _agc_hist() -> hist.Hist:
    return (
        hist.Hist.new.StrCat([], growth=True, name="process")
        .StrCat([], growth=True, name="variation")
        .IntCat([], growth=True, name="nmu")
        .Reg(4, 0, 4, name="x")
        .Weight()
    )


def _agc_fills(seed: int) -> list[dict[str, object]]:
    """Fills of chunks whose process / variation / multiplicity categories differ."""
    rng = np.random.default_rng(seed)
    out = []
    for chunk in range(8):
        process = ["ttbar", "wjets", "single_top", "data"][chunk % 4]
        variations = ["nominal", "up"] if chunk % 3 == 0 else ["nominal"]
        variations += [f"btag_{chunk}"] if chunk < 3 else []
        for variation in variations:
            n = int(rng.integers(1, 6))
            # weights in multiples of 1/8: every sum is exact, whatever the order of the additions
            weight = rng.integers(1, 16, n) / 8
            out.append({"process": process, "variation": variation, "nmu": rng.integers(0, 2 + chunk % 3, n),
                        "x": rng.uniform(-1, 5, n), "weight": weight})  # fmt: skip
    return out


def _by_label(h: hist.Hist) -> dict[tuple[object, ...], list[object]]:
    out = {}
    for p in h.axes["process"]:
        for v in h.axes["variation"]:
            for n in h.axes["nmu"]:
                cell = h[{"process": p, "variation": v, "nmu": hist.loc(n)}]
                out[(p, v, n)] = cell.view(flow=True).tolist()
    return out


@pytest.mark.parametrize("seed", range(4))
def test_growing_category_axes_add_by_label(tmp_path: Path, seed: int) -> None:
    """The AGC style: one histogram with growing process x variation (StrCategory) and multiplicity
    (IntCategory) axes over every dataset; chunks whose categories differ, added in any grouping
    and through result files, equal one histogram filled with everything (bins matched by label)."""
    import random

    from coffea_smk import results

    fills = _agc_fills(seed)
    one = _agc_hist()
    for f in fills:
        one.fill(**f)
    chunks = []
    for f in fills:
        h = _agc_hist()
        h.fill(**f)
        chunks.append({"hist": h})
    rng = random.Random(seed)
    rng.shuffle(chunks)
    paths, part = [], None
    for i, c in enumerate(chunks):
        part = add(part, c)
        if rng.random() < 0.4 or i == len(chunks) - 1:
            paths.append(tmp_path / f"p{i}.npz")
            results.save(paths[-1], part)
            part = None
    merged = accumulate(results.load(p) for p in paths)
    assert set(merged["hist"].axes["process"]) == set(one.axes["process"])
    assert set(merged["hist"].axes["variation"]) == set(one.axes["variation"])
    assert set(merged["hist"].axes["nmu"]) == set(one.axes["nmu"])
    assert _by_label(merged["hist"]) == _by_label(one)
    assert merged["hist"].sum(flow=True) == one.sum(flow=True)
