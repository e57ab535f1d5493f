"""Result files: exact round trips, no code execution on load, corruption detected."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import hist
import numpy as np
import pytest

from coffea_smk import results as storage


def _hists() -> list[hist.Hist]:
    out = [
        hist.Hist.new.Reg(3, 0, 1, name="a", label="A [GeV]").Mean(),
        hist.Hist.new.StrCat([], growth=True, name="d").Var([0, 1, 3], name="v").Weight(),
        hist.Hist.new.IntCat([1, 5], name="i").Bool(name="b").Int64(),
        hist.Hist.new.Reg(4, -1, 1, circular=True, name="c").WeightedMean(),
        hist.Hist.new.Reg(5, 0, 5, name="x", underflow=False).Double(),
    ]
    out[0].fill([0.1, 0.1], sample=[3.0, 4.0])
    out[1].fill(d=["x", "y"], v=[0.5, 2], weight=[2, 3])
    out[2].fill(i=[1, 5], b=[True, False])
    out[3].fill([0.1], sample=[2.0], weight=[3])
    out[4].fill([0.5, 7.0, -1.0])
    out[0].name = "named"
    return out


def test_round_trip_is_exact(tmp_path: Path) -> None:
    hists = _hists()
    obj = {
        "h": hists,
        "n": 3,
        "f": 2.5,
        "nan": float("nan"),
        "np": np.int64(5),
        "arr": np.arange(4.0),
        "s": {1, 2},
        "fs": frozenset({"a"}),
        "t": (1, "a"),
        ("k", 1): [1, 2],
        "none": None,
        "nested": {"x": {"y": [True, False]}},
    }
    storage.save(tmp_path / "r.npz", obj, {"events": 3})
    back = storage.load(tmp_path / "r.npz")
    for a, b in zip(hists, back["h"], strict=True):
        assert isinstance(b, hist.Hist) and a == b
        assert a.view(flow=True).tobytes() == b.view(flow=True).tobytes()
        assert a.axes == b.axes and a.storage_type == b.storage_type
    assert back["h"][0].name == "named" and back["h"][0].axes[0].label == "A [GeV]"
    assert math.isnan(back["nan"]) and back["f"] == 2.5 and back["n"] == 3
    assert isinstance(back["np"], np.int64) and back["np"] == 5
    assert np.array_equal(back["arr"], obj["arr"])
    assert back["s"] == {1, 2} and back["fs"] == frozenset({"a"}) and back["t"] == (1, "a")
    assert back[("k", 1)] == [1, 2] and back["none"] is None and back["nested"] == obj["nested"]
    assert storage.load_meta(tmp_path / "r.npz") == {"events": 3}


class _Custom:
    def __init__(self, x: int) -> None:
        self.x = x


def test_unknown_types_need_opt_in(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"result\['a'\].*_Custom.*allow_pickle"):
        storage.save(tmp_path / "x.npz", {"a": _Custom(1)})
    storage.save(tmp_path / "x.npz", {"a": _Custom(2)}, allow_pickle=True)
    with pytest.raises(storage.ResultFileError, match="cloudpickle"):
        storage.load(tmp_path / "x.npz")
    assert storage.load(tmp_path / "x.npz", allow_pickle=True)["a"].x == 2


def test_a_planted_pickle_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    np.savez(tmp_path / "evil.npz", __coffea_smk__=np.frombuffer(pickle.dumps(Evil()), dtype=np.uint8))
    with pytest.raises(storage.ResultFileError):
        storage.load(tmp_path / "evil.npz")
    np.save(tmp_path / "obj.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    (tmp_path / "obj.npz").write_bytes((tmp_path / "obj.npy").read_bytes())
    with pytest.raises(storage.ResultFileError):
        storage.load(tmp_path / "obj.npz")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_files_are_reported(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "r.npz"
    storage.save(path, {"h": _hists()[1], "x": np.arange(1000)})
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x00garbage" * 50, "empty": b""}[damage]
    )
    with pytest.raises(storage.ResultFileError, match="delete it and re-run"):
        storage.load(path)


def test_writes_are_atomic(tmp_path: Path) -> None:
    path = tmp_path / "r.npz"
    storage.save(path, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        storage.save(path, {"a": Boom()})
    assert storage.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]
