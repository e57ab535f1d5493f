"""Scaled NanoAOD-layout files made by replicating the real events of ``../shared/data/nanoaod``.

Events are drawn at random (with replacement) from a real sample and written
in NanoAOD layout (``nX`` counters, jagged ``X_*`` branches) as a TTree with
the samples' compression (ZLIB 1), in baskets of ``basket`` events. Every
branch of the collections a physics analysis reads (Muon, Electron, Jet,
Photon, Tau, MET, PuppiMET, PV, run/luminosityBlock/event) is kept, plus the
first ``extra`` other branches so that the file's metadata is realistically
large; writing all ~2000 branches makes building slow.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "nanoaod"
SOURCES = {"DY": "nano_dy.root", "DoubleMuon": "nano_dimuon.root", "TT": "nano_tt_v15.root"}
KEEP = ("Muon", "Electron", "Jet", "Photon", "Tau", "MET", "PuppiMET", "PV")


def _source(path: Path, extra: int) -> tuple[int, dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    import uproot

    tree = uproot.open(path)["Events"]
    flat: dict[str, np.ndarray] = {}
    groups: dict[str, dict[str, Any]] = {}
    others = 0
    for name, branch in tree.items(recursive=False):
        prefix = name.partition("_")[0]
        interp = branch.interpretation
        keep = prefix in KEEP or name in ("run", "luminosityBlock", "event")
        if not keep and others >= extra:
            continue
        if isinstance(interp, uproot.AsDtype) and interp.to_dtype.shape == () and not name.startswith("n"):
            flat[name] = branch.array(library="np")
        elif (
            isinstance(interp, uproot.AsJagged)
            and isinstance(interp.content, uproot.AsDtype)
            and f"n{prefix}" in tree
        ):
            groups.setdefault(prefix, {})[name[len(prefix) + 1 :]] = branch.array()
        else:
            continue
        others += not keep
    return tree.num_entries, flat, groups


def _jitter(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomise the low 8 mantissa bits of finite, non-zero float32 values (relative change
    < 3e-5), so that repeated events do not compress better than real ones."""
    if values.dtype != np.float32 or values.size == 0:
        return values
    out = np.array(values, dtype=np.float32)
    bits = out.view(np.uint32)
    ok = np.isfinite(out) & (out != 0)
    noise = rng.integers(0, 256, size=out.shape, dtype=np.uint32)
    bits[ok] = (bits[ok] & ~np.uint32(0xFF)) | noise[ok]
    return out


def write_events(
    out: Path,
    n: int,
    flat: dict[str, np.ndarray],
    groups: dict[str, dict[str, Any]],
    events: int,
    seed: int,
    basket: int,
) -> None:
    """Write ``events`` events drawn from the source columns to ``out`` (atomically)."""
    import awkward as ak
    import uproot

    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    t0 = time.perf_counter()
    with uproot.recreate(tmp, compression=uproot.ZLIB(1)) as f:
        tree = None
        for start in range(0, events, basket):
            size = min(basket, events - start)
            idx = rng.integers(0, n, size)
            batch: dict[str, Any] = {k: _jitter(v[idx], rng) for k, v in flat.items()}
            batch["event"] = np.arange(start + 1, start + size + 1, dtype=batch["event"].dtype)
            for coll, fields in groups.items():
                cols = {}
                for k, v in fields.items():
                    taken = v[idx]
                    cols[k] = ak.unflatten(_jitter(ak.to_numpy(ak.flatten(taken)), rng), ak.num(taken))
                batch[coll] = ak.zip(cols)
            if tree is None:
                types = {
                    k: v.dtype if isinstance(v, np.ndarray) else v.type.content for k, v in batch.items()
                }
                tree = f.mktree("Events", types)
            tree.extend(batch)
    tmp.rename(out)
    print(
        f"  wrote {out.name}: {events} events, {out.stat().st_size / 1e6:.0f} MB "
        f"in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )


def write(source: str, out: Path, events: int, seed: int, basket: int = 20_000, extra: int = 300) -> Path:
    """Write ``events`` replicated events of ``source`` (DY, DoubleMuon, TT) to ``out`` (once)."""
    if not out.exists():
        write_events(out, *_source(SAMPLES / SOURCES[source], extra), events, seed, basket)
    return out


def scaled_set(
    data: Path, events: int, files: int, links: int = 1
) -> tuple[list[tuple[str, Path, int]], Path]:
    """The benchmark set: ``files`` files of ``events / files`` events, DY, DoubleMuon and TT in
    turn, each also under ``links`` names (hard links, a larger analysis without more data);
    and one more file (a dataset to add in an incremental run). Built once under ``data``."""
    import os

    per_file = events // files
    built = [
        (name, write(name, data / f"{name}_{per_file}_{i}.root", per_file, seed=100 + i), per_file)
        for i, name in ((i, ("DY", "DoubleMuon", "TT")[i % 3]) for i in range(files + 1))
    ]
    *out, extra = built
    if links > 1:
        linked = []
        for name, path, n in out:
            for k in range(links):
                link = data / "links" / f"{path.stem}_{k}.root"
                link.parent.mkdir(exist_ok=True)
                if not link.exists():
                    os.link(path, link)
                linked.append((name, link, n))
        out = linked
    return out, extra[1]
