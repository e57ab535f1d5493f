"""RNTuple test files with their TTree twins (the same events), built once by ROOT.

The files come from the real NanoAOD samples (``../shared/data/nanoaod``) and from
replicas of them (``benchmarks/replicate.py``: a few thousand real events, written as a
TTree with uproot, the *twin*), written by ROOT (``tests/make_rntuple.py``, in a
subprocess: ROOT is never imported in the pytest process) in two layouts:

- ``converted``: ROOT's ``RNTupleImporter`` on the TTree: NanoAOD's names (``nMuon``,
  ``Muon_pt``), as ``../shared/data/rntuple`` has them;
- ``native``: CMSSW's ``NanoAODRNTupleOutputModule`` layout: ``Muon`` a vector of records
  (``Muon.pt``, no ``nMuon``), ``MET`` a record (``MET.pt``), ``run``, ``event``,
  ``genWeight`` and the ``HLT_*`` bits top-level scalars.

The replicas have several clusters (small cluster sizes) and come in every compression
ROOT writes. Built once per set of specs into pytest's cache directory
(``.pytest_cache/d/coffea-smk-rntuple/<key>``, ``key`` a hash of the specs, the two
scripts, the sources and the ROOT and uproot versions), under a lock.

Fixtures (imported by ``conftest.py``): ``rntuple_files`` (every file, by name),
``rntuple_file`` (each), ``rntuple_converted``, ``rntuple_native``,
``rntuple_multicluster`` (each of those), all of them :class:`RNTupleFile`.
"""

from __future__ import annotations

import dataclasses
import enum
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "make_rntuple.py"
REPLICATE = HERE.parent / "benchmarks" / "replicate.py"


class Layout(str, enum.Enum):
    CONVERTED = "converted"
    """ROOT's RNTupleImporter on a NanoAOD TTree: ``nMuon``, ``Muon_pt``, ``_collection0``."""
    NATIVE = "native"
    """CMSSW's RNTuple output: ``Muon`` a vector of records ``Muon.pt``; ``MET.pt``; no ``nMuon``."""


class Compression(enum.Enum):
    """ROOT's compression settings (``100 * algorithm + level``) the files are written with."""

    ZSTD = 505  # ROOT's default for RNTuple
    LZ4 = 404
    LZMA = 209  # NanoAOD's production setting
    ZLIB = 101  # the TTree replicas' setting (benchmarks/replicate.py)
    NONE = 0

    @property
    def magic(self) -> bytes:
        """The first bytes of a compressed block (ROOT's block header), ``b""`` uncompressed."""
        return {"ZSTD": b"ZS", "LZ4": b"L4", "LZMA": b"XZ", "ZLIB": b"ZL", "NONE": b""}[self.name]


DEFAULT_PAGE = 1 << 20  # ROOT's defaults: 1 MiB pages, 128 MiB zipped, 1.25 GiB unzipped clusters
DEFAULT_ZIPPED = 128 << 20
DEFAULT_UNZIPPED = 10 * DEFAULT_ZIPPED


@dataclass(frozen=True)
class Spec:
    """How one file is made (passed to ``make_rntuple.py`` as JSON)."""

    name: str
    source: str
    """The NanoAOD sample in ``../shared/data/nanoaod`` whose events these are."""
    layout: Layout
    compression: Compression = Compression.ZSTD
    events: int = 0
    """0: the sample itself; otherwise a replica of it with this many events."""
    seed: int = 1
    extra_branches: int = 50
    """Replicas: branches kept beside the physics collections (``replicate.py``'s ``extra``)."""
    basket: int = 1000
    page_size: int = DEFAULT_PAGE
    zipped_cluster_size: int = DEFAULT_ZIPPED
    unzipped_cluster_size: int = DEFAULT_UNZIPPED
    clusters_per_group: int = 0
    """Native layout: commit a cluster group every this many clusters (0: one group)."""

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layout"] = self.layout.value
        out["compression"] = self.compression.value
        return out

    @property
    def multi_cluster(self) -> bool:
        """Written with small clusters: several of them (>= 3, ``test_rntuple_files.py``)."""
        return self.zipped_cluster_size < DEFAULT_ZIPPED


def _replica(name: str, source: str, layout: Layout, compression: Compression, **kw: Any) -> Spec:
    """A replica of ``events`` real events with clusters of ~200 kB zipped (~10 a file)."""
    small = {"page_size": 64 << 10, "zipped_cluster_size": 200_000, "unzipped_cluster_size": 1_000_000}
    return Spec(name, source, layout, compression, **{"events": 4000, **small, **kw})


SPECS: tuple[Spec, ...] = (
    # the real samples, one cluster each (ROOT's default options)
    Spec("dy", "nano_dy.root", Layout.CONVERTED),
    Spec("dimuon", "nano_dimuon.root", Layout.CONVERTED),
    Spec("tt_v15", "nano_tt_v15.root", Layout.CONVERTED),
    Spec("dy_empty", "nano_dy_empty.root", Layout.CONVERTED),
    Spec("native_dy", "nano_dy.root", Layout.NATIVE),
    Spec("native_tt_v15", "nano_tt_v15.root", Layout.NATIVE),
    # replicas: several clusters, every compression
    *(
        _replica(f"dy_{c.name.lower()}", "nano_dy.root", Layout.CONVERTED, c)
        for c in (Compression.ZSTD, Compression.LZ4, Compression.LZMA, Compression.ZLIB, Compression.NONE)
    ),
    _replica("dimuon_zstd", "nano_dimuon.root", Layout.CONVERTED, Compression.ZSTD, seed=2),
    _replica("native_dy_zstd", "nano_dy.root", Layout.NATIVE, Compression.ZSTD, clusters_per_group=3),
    _replica("native_dimuon_lz4", "nano_dimuon.root", Layout.NATIVE, Compression.LZ4, seed=2),
)
BY_NAME = {s.name: s for s in SPECS}


@dataclass(frozen=True)
class RNTupleFile:
    """One RNTuple file and its TTree twin, as ROOT's reader described it after writing it."""

    name: str
    path: Path
    """The RNTuple file: ntuple ``Events`` (and ``Runs`` where the source has a Runs tree)."""
    twin: Path
    """A TTree file (tree ``Events``) with the same events in the same order."""
    layout: Layout
    compression: Compression
    entries: int
    clusters: int
    cluster_groups: int
    source: str
    """The NanoAOD sample the events come from (``nano_dimuon.root`` is real data)."""
    fields: dict[str, str] = dataclasses.field(hash=False, compare=False, repr=False)
    """Top-level field names and ROOT's type names (untyped records and vectors: their
    structure, ``record`` or ``collection``)."""

    @property
    def is_data(self) -> bool:
        return self.source == "nano_dimuon.root"


def _nanoaod() -> Path:
    from conftest import _nanoaod_dir

    return _nanoaod_dir()


def cache_key(specs: tuple[Spec, ...], nanoaod: Path) -> str:
    """Everything that shapes the files: specs, scripts, sources, the writers' versions."""
    h = hashlib.sha256()
    h.update(json.dumps([s.as_json() for s in specs], sort_keys=True).encode())
    for script in (SCRIPT, REPLICATE):
        h.update(script.read_bytes())
    for source in sorted({s.source for s in specs}):
        st = (nanoaod / source).stat()
        h.update(f"{source}:{st.st_size}:{st.st_mtime_ns}".encode())
    for dist in ("root", "uproot", "awkward", "numpy"):
        h.update(f"{dist}={metadata.version(dist)}".encode())
    return h.hexdigest()[:16]


def build(
    cache: Path, specs: tuple[Spec, ...] = SPECS, nanoaod: Path | None = None
) -> dict[str, RNTupleFile]:
    """The files of ``specs`` under ``cache/<key>``, built there first if missing (under a lock)."""
    nanoaod = nanoaod or _nanoaod()
    key = cache_key(specs, nanoaod)
    out = cache / key
    manifest = out / "manifest.json"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session building the same files: wait for it
        if not manifest.exists():
            _prune(cache, key)
            out.mkdir(exist_ok=True)
            (out / "specs.json").write_text(json.dumps([s.as_json() for s in specs], indent=1))
            env = {**os.environ, "PYTHONWARNINGS": "ignore::UserWarning"}
            proc = subprocess.run(
                [sys.executable, str(SCRIPT), str(out / "specs.json"), str(out), str(nanoaod)],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            if proc.returncode != 0 or not manifest.exists():
                raise RuntimeError(
                    f"{SCRIPT.name} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
                )
    os.utime(out)  # in use (see _prune)
    by_name = {s.name: s for s in specs}
    records: list[dict[str, Any]] = json.loads(manifest.read_text())
    return {r["name"]: _record(r, out, by_name[r["name"]]) for r in records}


def _record(r: dict[str, Any], out: Path, spec: Spec) -> RNTupleFile:
    return RNTupleFile(
        name=r["name"],
        path=out / r["path"],
        twin=out / r["twin"],  # an absolute path (a real sample) stays as it is
        layout=spec.layout,
        compression=spec.compression,
        entries=r["entries"],
        clusters=r["clusters"],
        cluster_groups=r["cluster_groups"],
        source=spec.source,
        fields=r["fields"],
    )


def _prune(cache: Path, key: str, days: float = 2.0) -> None:
    """Remove other keys' files unused for ``days`` (not at once: a session of another
    checkout state, sharing this cache, may be reading them)."""
    import shutil
    import time

    for old in cache.iterdir():
        if old.is_dir() and old.name != key and time.time() - old.stat().st_mtime > days * 86400:
            shutil.rmtree(old, ignore_errors=True)


def _cache_dir(request: pytest.FixtureRequest, factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    return Path(cache.mkdir("coffea-smk-rntuple")) if cache is not None else factory.mktemp("rntuple")


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rntuple_files(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, RNTupleFile]:
    """Every RNTuple test file, by name (built on first use, then cached across sessions)."""
    import importlib.util

    if importlib.util.find_spec("ROOT") is None:
        from conftest import unavailable

        unavailable("ROOT writes the RNTuple test files and is not installed: pip install -e '.[test]'")
    return build(_cache_dir(request, tmp_path_factory))


def _names(pred: Any) -> list[str]:
    return [s.name for s in SPECS if pred(s)]


@pytest.fixture(scope="session", params=_names(lambda s: True))
def rntuple_file(request: pytest.FixtureRequest, rntuple_files: dict[str, RNTupleFile]) -> RNTupleFile:
    """Each RNTuple test file."""
    return rntuple_files[request.param]


@pytest.fixture(scope="session", params=_names(lambda s: s.layout is Layout.CONVERTED))
def rntuple_converted(request: pytest.FixtureRequest, rntuple_files: dict[str, RNTupleFile]) -> RNTupleFile:
    """Each file converted by ROOT's RNTupleImporter (NanoAOD's TTree names)."""
    return rntuple_files[request.param]


@pytest.fixture(scope="session", params=_names(lambda s: s.layout is Layout.NATIVE))
def rntuple_native(request: pytest.FixtureRequest, rntuple_files: dict[str, RNTupleFile]) -> RNTupleFile:
    """Each file in CMSSW's native RNTuple layout (collections of records)."""
    return rntuple_files[request.param]


@pytest.fixture(scope="session", params=_names(lambda s: s.multi_cluster))
def rntuple_multicluster(
    request: pytest.FixtureRequest, rntuple_files: dict[str, RNTupleFile]
) -> RNTupleFile:
    """Each file with several clusters (replicas of a few thousand events)."""
    return rntuple_files[request.param]
