"""Latency hidden when reading over ``root://``: batched requests, a column hint, files read ahead.

Against the real XRootD server (the ``xrootd`` fixture) through ``tests/tcpproxy.py``, which
counts round trips and bytes. The files are real NanoAOD events replicated into many baskets
(``benchmarks/replicate.py``), so that chunks span several baskets as in production files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from tcpproxy import proxy

from coffea_smk.engine.plan import make_plan
from coffea_smk.engine.preprocess import FileIdentity, preprocess_files
from coffea_smk.engine.process import run_unit
from coffea_smk.engine.reading import ColumnHint
from coffea_smk.spec.config import InputFile
from coffea_smk.spec.processor import load_processor
from coffea_smk.spec.settings import EventsOptions, PlanSettings

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
EVENTS = 6_000
FILES = ("DY", "DoubleMuon")


@pytest.fixture(scope="module")
def served(xrootd: Any) -> list[str]:
    """Two files of 6,000 replicated events in baskets of 500, in the server's data directory."""
    sys.path.insert(0, str(BENCHMARKS))
    import replicate

    folder = xrootd.data / "remote-reading"
    return [
        replicate.write(name, folder / f"{name}.root", EVENTS, seed=7 + i, basket=500, extra=20).name
        for i, name in enumerate(FILES)
    ]


def _unit(port: int, names: list[str], cache: Path, xrootd: Any) -> Any:
    ids = [FileIdentity.of(InputFile(xrootd.url(f"remote-reading/{n}", port), "Events")) for n in names]
    records, _ = preprocess_files(ids, cache)
    settings = PlanSettings(chunksize=1_000, events_per_job=len(names) * EVENTS)
    plan = make_plan("Remote", "remote", {}, records, settings)
    (unit,) = plan.units
    return plan, unit.id


def _run(xrootd: Any, names: list[str], tmp: Path, **kw: Any) -> tuple[Any, Any, Any]:
    """Process the files in one unit through a fresh proxy; the output, meta and the proxy's counts
    for the processing alone (preprocessing is done first, through the same proxy)."""
    processor = load_processor("dimuon_ht:DimuonHT", str(BENCHMARKS))
    with proxy(("127.0.0.1", xrootd.port), rtt=0.002) as p:
        plan, unit = _unit(p.port, names, tmp / "cache", xrootd)
        before = p.stats()
        out, meta = run_unit(plan, unit, processor, **kw)
        after = p.stats()
    after.round_trips -= before.round_trips
    after.bytes_down -= before.bytes_down
    return out, meta, after


def _same(a: Any, b: Any) -> bool:
    return all((a[k].view(flow=True) == b[k].view(flow=True)).all() for k in ("mass", "ht")) and (
        a["events"] == b["events"]
    )


def test_batched_reads_fetch_each_basket_once_and_save_round_trips(
    xrootd: Any, served: list[str], tmp_path: Path
) -> None:
    plain, plain_meta, plain_wire = _run(xrootd, served, tmp_path, events=EventsOptions(prefetch=False))
    fast, fast_meta, fast_wire = _run(xrootd, served, tmp_path, events=EventsOptions(prefetch=True))
    assert _same(plain, fast) and plain["events"] == {"Remote": 2 * EVENTS}
    read = sum(c.bytes_compressed for c in fast_meta.chunks)
    assert read == sum(c.bytes_compressed for c in plain_meta.chunks)
    # every basket crosses the wire once: the bytes received are those the chunks read, plus the
    # opens' headers and directories (a few kB a file)
    assert read < fast_wire.bytes_down < read + 64_000
    assert plain_wire.bytes_down < read + 64_000
    # one request per chunk for the columns learned, instead of one per column
    assert fast_wire.round_trips < plain_wire.round_trips / 2, (fast_wire, plain_wire)


def test_a_column_hint_batches_a_units_first_chunk(xrootd: Any, served: list[str], tmp_path: Path) -> None:
    hint = ColumnHint(tmp_path / "partials" / "columns.json")
    options = EventsOptions(prefetch=True)
    first, _, cold = _run(xrootd, served[:1], tmp_path, events=options, hint=hint)
    learned = json.loads(hint.path.read_text())
    assert "Muon_pt/data" in learned and "Jet_pt/data" in learned
    again, _, warm = _run(xrootd, served[:1], tmp_path, events=options, hint=ColumnHint(hint.path))
    assert _same(first, again)
    assert warm.round_trips < cold.round_trips, (warm, cold)
    # another dataset without a hint of its own starts from this one
    other = ColumnHint(tmp_path / "other" / "columns.json", [hint.path])
    assert other.load() == learned


def test_a_hint_that_names_other_columns_changes_nothing(
    xrootd: Any, served: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "columns.json"
    path.write_text(json.dumps(["Electron_pt/data", "nElectron.offsets/offsets", "no_such/data"]))
    plain, _, _ = _run(xrootd, served[:1], tmp_path, events=EventsOptions(prefetch=False))
    options = EventsOptions(prefetch=True)
    hinted, meta, _ = _run(xrootd, served[:1], tmp_path, events=options, hint=ColumnHint(path))
    assert _same(plain, hinted) and not meta.failed
    assert "Muon_pt/data" in json.loads(path.read_text())  # the hint is corrected by what was read
