"""Planning: chunks from preprocessing records, work units from chunks, a merge tree from units.

Every identifier is a content key: a unit's id hashes its chunks (file
identity and entry ranges), a merge node's id hashes its children. Re-planning
after one file changed therefore gives the same ids to everything that did not
change, and Snakemake redoes only the units and merges downstream of the file.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

from coffea_smk.engine.records import (
    PLAN_VERSION,
    BadFile,
    Chunk,
    MergeTree,
    Plan,
    PlanFile,
    PreprocessedFile,
    UnusableFile,
    WorkUnit,
)
from coffea_smk.spec.config import ConfigError
from coffea_smk.spec.settings import PlanSettings
from coffea_smk.util.hashing import key_of

__all__ = ["PLAN_VERSION", "PlanSettings", "chunk_boundaries", "make_plan", "merge_tree"]


def chunk_boundaries(
    entries: int, chunksize: int, clusters: Sequence[int] | None = None, align: bool = True
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
    dataset: str,
    slug: str,
    metadata: Mapping[str, Any],
    records: Sequence[PreprocessedFile | UnusableFile],
    settings: PlanSettings,
    *,
    key: str | None = None,
    batch_outputs: Sequence[str | None] | None = None,
    steps: Mapping[str, Sequence[tuple[int, int]]] | None = None,
) -> Plan:
    """The plan of one dataset: files, work units and the merge tree.

    Args:
        dataset: The dataset's name; ``slug`` its name in paths.
        metadata: The dataset's metadata from the fileset.
        records: The preprocessing records of its files, in fileset order.
        settings: How to cut the files into chunks and units.
        key: The plan's content key (its path's).
        batch_outputs: For each record, the preprocessing output it came from.
        steps: The entry ranges of the files (by path) that are processed in part.

    Raises:
        ConfigError: A step goes beyond its file's entries (the message names both).
    """
    steps = steps or {}
    sources = list(batch_outputs) if batch_outputs is not None else [None] * len(records)
    bad = [
        BadFile(path=r.path, treename=r.treename, error=r.error)
        for r in records
        if isinstance(r, UnusableFile)
    ]
    usable = [(r, src) for r, src in zip(records, sources, strict=True) if isinstance(r, PreprocessedFile)]
    files = tuple(
        PlanFile(
            path=r.path,
            treename=r.treename,
            key=r.key,
            uuid=r.uuid,
            entries=r.entries,
            size=r.size,
            mtime_ns=r.mtime_ns,
            gen_sumw=r.gen_sumw,
            record_path=r.record_path,
            batch_output=src,
            steps=_steps(r, steps.get(r.path)),
        )
        for r, src in usable
    )
    units = _units(files, [r.clusters for r, _ in usable], settings)
    nodes, top = merge_tree([u.id for u in units], settings.merge_fanin)
    return Plan(
        version=PLAN_VERSION,
        dataset=dataset,
        slug=slug,
        metadata=dict(metadata),
        settings=settings,
        files=files,
        units=tuple(units),
        merge=MergeTree(nodes={k: tuple(v) for k, v in nodes.items()}, top=tuple(top)),
        expected_events=sum(f.events for f in files),
        empty_files=tuple(f.path for f in files if f.entries == 0),
        bad_files=tuple(bad),
        key=key,
    )


def _steps(
    record: PreprocessedFile, steps: Sequence[tuple[int, int]] | None
) -> tuple[tuple[int, int], ...] | None:
    if steps is None:
        return None
    for start, stop in steps:
        if stop > record.entries:
            raise ConfigError(
                f"{record.path}: the fileset asks for entries [{start}, {stop}) of tree {record.treename!r}, "
                f"which has {record.entries} entries: correct the file's 'steps'"
            )
    return tuple((int(a), int(b)) for a, b in steps)


def _chunks(file: PlanFile, clusters: Sequence[int], s: PlanSettings) -> list[tuple[int, int]]:
    """The chunks of a file: the whole file cut as coffea does, or each of its steps cut alike."""
    if file.steps is None:
        return list(pairwise(chunk_boundaries(file.entries, s.chunksize, clusters, s.align_chunks)))
    out = []
    for start, stop in file.ranges():
        out += [(start + a, start + b) for a, b in pairwise(chunk_boundaries(stop - start, s.chunksize))]
    return out


def _units(files: Sequence[PlanFile], clusters: Sequence[Sequence[int]], s: PlanSettings) -> list[WorkUnit]:
    """Group consecutive chunks into units of about ``events_per_job`` events.

    A small file goes whole into the open unit when it fits; a large file is
    cut at chunk boundaries, and its tail stays open for the next small files.
    """
    units: list[WorkUnit] = []
    current: list[Chunk] = []
    events = 0

    def close() -> None:
        nonlocal current, events
        if current:
            chunks_key = [[files[c.file].key, files[c.file].uuid, c.start, c.stop] for c in current]
            units.append(WorkUnit(id=key_of("unit", chunks_key), events=events, chunks=tuple(current)))
        current, events = [], 0

    for index, file in enumerate(files):
        chunks = _chunks(file, clusters[index], s)
        if not chunks:
            continue
        if events and events + file.events > s.events_per_job:
            close()
        for start, stop in chunks:
            if events and events + (stop - start) > s.events_per_job:
                close()
            current.append(Chunk(index, start, stop))
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
