"""Planning: chunks from preprocessing records, work units from chunks, a merge tree from units.

Every identifier is a content key: a unit's id hashes its chunks (file
identity and entry ranges), a merge node's id hashes its children. Re-planning
after one file changed therefore gives the same ids to everything that did not
change, and Snakemake redoes only the units and merges downstream of the file.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from coffea_smk.util.hashing import key_of

PLAN_VERSION = 1


@dataclass(frozen=True)
class PlanSettings:
    """The settings that shape a dataset's plan."""

    chunksize: int
    events_per_job: int
    merge_fanin: int
    align_chunks: bool = True


def chunk_boundaries(
    entries: int, chunksize: int, clusters: list[int] | None = None, align: bool = True
) -> list[int]:
    """Boundaries ``[0, b1, ..., entries]`` of near-equal chunks of at most ~``chunksize`` events.

    Like coffea, a file is cut into ``ceil(entries / chunksize)`` chunks of equal
    size. With ``align``, a boundary moves onto the nearest cluster boundary
    when that is within 10% of the chunk size, so a chunk decompresses whole
    baskets.
    """
    if entries <= 0:
        return [0]
    n = max(1, math.ceil(entries / chunksize))
    step = math.ceil(entries / n)
    bounds = [min(i * step, entries) for i in range(n + 1)]
    bounds = sorted(set(bounds))
    if align and clusters and len(clusters) > 2:
        tolerance = max(1, step // 10)
        inner = []
        for b in bounds[1:-1]:
            i = bisect.bisect_left(clusters, b)
            near = [c for c in clusters[max(0, i - 1) : i + 1] if 0 < c < entries]
            best = min(near, key=lambda c: abs(c - b), default=b)
            inner.append(best if abs(best - b) <= tolerance else b)
        bounds = sorted({0, entries, *inner})
    return bounds


def make_plan(
    dataset: str, slug: str, metadata: dict[str, Any], records: list[dict[str, Any]], settings: PlanSettings
) -> dict[str, Any]:
    """The plan of one dataset: files, work units and the merge tree."""
    bad = [
        {"path": r["path"], "treename": r["treename"], "error": r["error"]} for r in records if "error" in r
    ]
    records = [r for r in records if "error" not in r]
    keep = ("path", "treename", "key", "uuid", "entries", "size", "mtime_ns", "record_path", "batch_output")
    files = [{k: r.get(k) for k in keep} for r in records]
    units = _units(records, settings)
    nodes, top = merge_tree([u["id"] for u in units], settings.merge_fanin)
    return {
        "version": PLAN_VERSION,
        "dataset": dataset,
        "slug": slug,
        "metadata": metadata,
        "settings": vars(settings),
        "files": files,
        "units": units,
        "merge": {"nodes": nodes, "top": top},
        "expected_events": sum(r["entries"] for r in records),
        "empty_files": [r["path"] for r in records if r["entries"] == 0],
        "bad_files": bad,
    }


def _units(records: list[dict[str, Any]], s: PlanSettings) -> list[dict[str, Any]]:
    """Group consecutive chunks into units of about ``events_per_job`` events.

    A small file goes whole into the open unit when it fits; a large file is
    cut at chunk boundaries, and its tail stays open for the next small files.
    """
    units: list[dict[str, Any]] = []
    current: list[list[int]] = []
    events = 0

    def close() -> None:
        nonlocal current, events
        if current:
            chunks_key = [[records[i]["key"], records[i]["uuid"], a, b] for i, a, b in current]
            units.append({"id": key_of("unit", chunks_key), "events": events, "chunks": current})
        current, events = [], 0

    for index, record in enumerate(records):
        bounds = chunk_boundaries(record["entries"], s.chunksize, record.get("clusters"), s.align_chunks)
        if len(bounds) < 2:
            continue
        if events and events + record["entries"] > s.events_per_job:
            close()
        for start, stop in pairwise(bounds):
            if events and events + (stop - start) > s.events_per_job:
                close()
            current.append([index, start, stop])
            events += stop - start
    close()
    return units


def merge_tree(leaves: list[str], fanin: int) -> tuple[dict[str, list[str]], list[str]]:
    """Merge nodes ``{id: children}`` and the ids that the dataset result merges directly."""
    nodes: dict[str, list[str]] = {}
    level = list(leaves)
    while len(level) > fanin:
        nxt = []
        for i in range(0, len(level), fanin):
            group = level[i : i + fanin]
            if len(group) == 1:
                nxt.append(group[0])
                continue
            node = key_of("merge", group)
            nodes[node] = group
            nxt.append(node)
        level = nxt
    return nodes, level


def unit_by_id(plan: dict[str, Any], unit_id: str) -> dict[str, Any]:
    for unit in plan["units"]:
        if unit["id"] == unit_id:
            return unit
    raise KeyError(f"work unit {unit_id} is not in the plan of dataset {plan['dataset']!r}")
