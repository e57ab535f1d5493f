"""Per-chunk metrics, kept in the results' ``meta``, and their roll-ups.

A partial result's ``meta["chunks"]`` holds one record per chunk (see
:func:`chunk_metrics`). Merges sum them into ``meta["totals"]`` (peak memory is
a maximum, not a sum); per-dataset and global results add ``meta["rates"]``
(events/s, MB/s, read share). They live in the result files, so they persist
across re-runs and follow the results around. ``coffea-smk metrics
RESULT.npz`` prints them.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coffea_smk.buffers import ReadStats
from coffea_smk.engine.meta import ChunkMetrics, MergedMeta, Partial

SUMMED = (
    "events",
    "chunks",
    "buffers",
    "rereads",
    "bytes_compressed",
    "bytes_uncompressed",
    "read_s",
    "read_wait_s",
    "read_background_s",
    "events_s",
    "process_s",
    "total_s",
    "prefetched",
    "prefetch_hits",
    "prefetch_waits",
    "prefetch_unused",
    "prefetch_errors",
    "retries",
    "fallbacks",
    "gen_sumw",
    "gen_weighted_events",
)
"""Chunk fields that add up across chunks, units and datasets."""
MAXED = ("peak_rss_mb",)
"""Chunk fields whose roll-up is the maximum."""

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_rss() -> bool:
    """Restart the process's peak-RSS counter (Linux), so a chunk's peak is its own."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident memory in MB since the last :func:`reset_peak_rss` (else since start)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def chunk_metrics(
    stats: ReadStats,
    *,
    file: str,
    start: int,
    stop: int,
    events_s: float,
    process_s: float,
    total_s: float,
    fallback_branches: list[str] | None = None,
) -> ChunkMetrics:
    """The metrics record of one chunk.

    Args:
        stats: What the chunk read (from its buffer store).
        file: The key of the chunk's file.
        start: The chunk's first entry.
        stop: The entry after its last.
        events_s: Wall time of building the lazy events (no column is read then).
        process_s: Wall time of building the events and running ``process()``,
            including the reads it waited for.
        total_s: Wall time of the whole chunk (events, process, accumulate).
        fallback_branches: Branches read by uproot instead of coffea_smk's basket
            reader (off its allow-list, or a basket in a layout it is not proven on).

    ``read_s`` is the time the processor's thread was blocked reading (or
    waiting for a prefetch thread); ``read_background_s`` is reading done by
    prefetch threads meanwhile, which overlaps ``process_s``. The recorded
    ``process_s`` excludes ``read_s`` and ``events_s``, so ``events_s + read_s +
    process_s`` is the processor's share of ``total_s`` (the rest is accumulation).
    """
    return ChunkMetrics(
        file=file,
        entrystart=start,
        entrystop=stop,
        events=stop - start,
        columns=tuple(sorted(stats.columns)),
        buffers=stats.buffers,
        rereads=stats.rereads,
        bytes_compressed=stats.bytes_compressed,
        bytes_uncompressed=stats.bytes_uncompressed,
        read_s=round(stats.read_seconds, 6),
        read_wait_s=round(stats.wait_seconds, 6),
        read_background_s=round(stats.background_seconds, 6),
        events_s=round(events_s, 6),
        process_s=round(max(0.0, process_s - stats.read_seconds - events_s), 6),
        total_s=round(total_s, 6),
        peak_rss_mb=peak_rss_mb(),
        prefetched=stats.prefetched,
        prefetch_hits=stats.prefetch_hits,
        prefetch_waits=stats.prefetch_waits,
        prefetch_unused=stats.prefetch_unused,
        prefetch_errors=stats.prefetch_errors,
        retries=0,
        fallbacks=len(fallback_branches or []),
        fallback_branches=tuple(sorted(fallback_branches or [])),
    )


def unit_totals(meta: Partial) -> dict[str, float]:
    """Totals of a result's metrics: its own ``totals`` if merged, else summed from its chunks."""
    if isinstance(meta, MergedMeta):
        return dict(meta.totals)
    return _summed([c.model_dump() for c in meta.chunks], meta.wall_s)


def _summed(chunks: list[Mapping[str, Any]], wall_s: float) -> dict[str, float]:
    totals: dict[str, float] = {}
    for chunk in chunks:
        totals = add_totals(totals, {"chunks": 1, **chunk})
    totals.setdefault("chunks", 0.0)
    totals["wall_s"] = float(wall_s)
    return totals


def add_totals(a: Mapping[str, float], b: Mapping[str, Any]) -> dict[str, float]:
    """Roll ``b`` into a copy of ``a``: sums, and maxima for peak memory."""
    out = {k: float(v) for k, v in a.items()}
    for name, value in b.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if name in MAXED:
            out[name] = max(out.get(name, 0.0), float(value))
        elif name in SUMMED or name == "wall_s":
            out[name] = out.get(name, 0.0) + float(value)
    return out


def rates(totals: Mapping[str, float]) -> dict[str, float]:
    """Throughput figures from totals: per second of chunk processing time."""
    t = totals.get("total_s", 0.0)
    out = {
        "events_per_s": totals.get("events", 0.0) / t if t else 0.0,
        "mb_compressed_per_s": totals.get("bytes_compressed", 0.0) / 1e6 / t if t else 0.0,
        "mb_uncompressed_per_s": totals.get("bytes_uncompressed", 0.0) / 1e6 / t if t else 0.0,
        "read_fraction": totals.get("read_s", 0.0) / t if t else 0.0,
    }
    return {k: round(v, 4) for k, v in out.items()}


def report(meta: Mapping[str, Any]) -> str:
    """A table of the metrics in a result file's ``meta`` (of any kind, read as it is)."""
    rows: list[tuple[str, dict[str, Any], list[str]]] = []
    if "datasets" in meta:
        for name, d in meta["datasets"].items():
            rows.append((name, d.get("totals", {}), d.get("columns", [])))
        rows.append(("(all)", meta.get("totals", {}), meta.get("columns", [])))
    else:
        totals = (
            meta["totals"] if "totals" in meta else _summed(meta.get("chunks", []), meta.get("wall_s", 0.0))
        )
        rows.append((str(meta.get("dataset")), dict(totals), meta.get("columns", [])))
    header = (
        f"{'dataset':<24} {'events':>10} {'chunks':>6} {'columns':>7} {'MB read':>9} "
        f"{'events/s':>10} {'MB/s':>7} {'read %':>6} {'peak RSS MB':>11} {'fallbacks':>9}"
    )
    lines = [header]
    for name, totals, columns in rows:
        r = rates(totals)
        lines.append(
            f"{name[:24]:<24} {int(totals.get('events', 0)):>10} {int(totals.get('chunks', 0)):>6} "
            f"{len(columns):>7} {totals.get('bytes_compressed', 0) / 1e6:>9.1f} "
            f"{r['events_per_s']:>10.0f} {r['mb_compressed_per_s']:>7.1f} "
            f"{100 * r['read_fraction']:>6.1f} {totals.get('peak_rss_mb', 0):>11.1f} "
            f"{int(totals.get('fallbacks', 0)):>9}"
        )
    fell_back = sorted({b for chunk in meta.get("chunks", []) for b in chunk.get("fallback_branches", [])})
    if fell_back:
        lines.append(f"branches read by uproot instead of the basket reader: {', '.join(fell_back)}")
    return "\n".join(lines)
