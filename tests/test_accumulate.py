"""coffea's accumulate semantics."""

from __future__ import annotations

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
