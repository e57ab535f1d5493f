"""What a processor returns to write selected events to files: :class:`Skim`.

::

    def process(self, events):
        sel = events[ak.num(events.Muon) >= 2]
        return {"hists": ..., "dimuon": coffea_smk.Skim(sel, columns=["Muon", "Jet_pt", "run"])}

The key of the output dict is the skim's name. Each work unit writes the rows of its
chunks to one piece file; per dataset the pieces are compacted, and
``<outdir>/skims/<name>/fileset.json`` is a fileset for the next analysis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Skim",
    "SkimFile",
    "SkimOutput",
    "SkimPiece",
    "column_values",
    "get_at",
    "lumi_json",
    "set_at",
    "skim_name",
    "skims_in",
    "unique_lumis",
]


class Skim:
    """Selected events (or values per event) to write, with the columns to keep.

    Args:
        array: An events array or any subset of it: a selection of events, a collection,
            fields the processor computed, or a plain awkward array of per-event values.
        columns: NanoAOD branch names (``"Jet_pt"``), collection names (``"Muon"``: all its
            branches) or glob patterns (``"Jet_*"``); all fields of ``array`` by default.
    """

    __slots__ = ("array", "columns")

    def __init__(self, array: Any, columns: Sequence[str] | str | None = None) -> None:
        if isinstance(columns, str):
            columns = [columns]
        self.array = array
        self.columns = tuple(columns) if columns is not None else None

    def __repr__(self) -> str:
        cols = "all fields" if self.columns is None else ", ".join(self.columns)
        return f"Skim({len(self.array)} rows; {cols})"


@dataclass(frozen=True)
class SkimPiece:
    """The rows one work unit wrote (a file beside its partial result)."""

    path: str
    rows: int
    bytes: int
    ranges: tuple[tuple[str, int, int], ...]
    """The entry ranges whose selected rows it holds: ``(file key, start, stop)``, in order."""


@dataclass(frozen=True)
class SkimFile:
    """A compacted skim file of a dataset."""

    path: str
    rows: int
    bytes: int


@dataclass
class SkimOutput:
    """A skim in a result: where its rows are, and the totals of every event it saw.

    A processor's :class:`Skim` becomes one of these per chunk; they add up through the
    merge tree like histograms. The totals count all events of the chunks processed,
    selected or not (a chunk that selects nothing still counts), so normalising after the
    skim needs no access to the original files.
    """

    events: int = 0
    """Events of the chunks processed (before the selection)."""
    rows: int = 0
    """Rows selected (written)."""
    sumw: float | None = None
    """Sum of ``genWeight`` over the events processed (None without that branch: data)."""
    sumw2: float | None = None
    """Sum of ``genWeight`` squared."""
    lumis: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    """The ``(run, luminosityBlock)`` pairs of the events processed, unique and sorted."""
    columns: tuple[str, ...] = ()
    """The branches written."""
    pieces: tuple[SkimPiece, ...] = ()
    files: tuple[SkimFile, ...] = ()
    """The dataset's compacted files (set by the per-dataset step; empty before)."""
    column: bool = False
    """Made from coffea's ``column_accumulator``: loaded back as the concatenated array."""

    def __add__(self, other: object) -> SkimOutput:
        if not isinstance(other, SkimOutput):
            return NotImplemented
        return SkimOutput(
            events=self.events + other.events,
            rows=self.rows + other.rows,
            sumw=_add_optional(self.sumw, other.sumw),
            sumw2=_add_optional(self.sumw2, other.sumw2),
            lumis=unique_lumis(np.concatenate([self.lumis, other.lumis])),
            columns=self.columns or other.columns,
            pieces=self.pieces + other.pieces,
            files=self.files + other.files,
            column=self.column or other.column,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SkimOutput):
            return NotImplemented
        return (
            (self.events, self.rows, self.sumw, self.sumw2, self.columns, self.pieces, self.files)
            == (other.events, other.rows, other.sumw, other.sumw2, other.columns, other.pieces, other.files)
        ) and np.array_equal(self.lumis, other.lumis)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def record(self) -> dict[str, Any]:
        """Everything but :attr:`lumis`, as plain JSON values (how a result file stores it)."""
        return {
            "events": self.events,
            "rows": self.rows,
            "sumw": self.sumw,
            "sumw2": self.sumw2,
            "columns": list(self.columns),
            "pieces": [[p.path, p.rows, p.bytes, [list(r) for r in p.ranges]] for p in self.pieces],
            "files": [[f.path, f.rows, f.bytes] for f in self.files],
            "column": self.column,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], lumis: np.ndarray) -> SkimOutput:
        """The inverse of :meth:`record`."""
        return cls(
            events=int(record["events"]),
            rows=int(record["rows"]),
            sumw=record["sumw"],
            sumw2=record["sumw2"],
            lumis=np.asarray(lumis, np.int64).reshape(-1, 2),
            columns=tuple(record["columns"]),
            pieces=tuple(
                SkimPiece(str(p), int(r), int(b), tuple((str(k), int(s), int(e)) for k, s, e in ranges))
                for p, r, b, ranges in record["pieces"]
            ),
            files=tuple(SkimFile(str(p), int(r), int(b)) for p, r, b in record["files"]),
            column=bool(record.get("column", False)),
        )


def column_values(skim: SkimOutput) -> Any:
    """The values of a skim made from coffea's ``column_accumulator``, concatenated in file and
    entry order from its files (its pieces, for a unit's partial result), as a
    ``column_accumulator`` (a numpy array without coffea)."""
    paths = [f.path for f in skim.files] or [p.path for p in skim.pieces]
    parts = []
    for path in paths:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq  # noqa: PLC0415  only when loading such a skim

            table = pq.read_table(path)
            parts.append(table.column(0).to_numpy())
        else:
            import uproot  # noqa: PLC0415  with it

            tree = uproot.open(path)["Events"]
            parts.append(tree[tree.keys()[0]].array(library="np"))
    values = np.concatenate(parts) if parts else np.zeros(0)
    try:
        from coffea.processor import column_accumulator  # noqa: PLC0415  coffea is optional
    except ImportError:
        return values
    return column_accumulator(values)


def skims_in(result: Any) -> dict[tuple[Any, ...], SkimOutput]:
    """The skims of a result, by where they sit (the keys leading to them, dicts at any depth)."""
    found: dict[tuple[Any, ...], SkimOutput] = {}

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, SkimOutput):
            found[path] = node
        elif isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, (*path, key))

    walk(result, ())
    return found


def skim_name(path: tuple[Any, ...]) -> str:
    """A skim's name: the keys leading to it, joined by ``.`` (``dimuon``; ``columns.pt``)."""
    return ".".join(str(k) for k in path)


def get_at(result: Any, path: tuple[Any, ...]) -> Any:
    """The value at ``path`` of nested dicts."""
    for key in path:
        result = result[key]
    return result


def set_at(result: Any, path: tuple[Any, ...], value: Any) -> None:
    """Set the value at ``path`` (not empty) of nested dicts."""
    get_at(result, path[:-1])[path[-1]] = value


def _add_optional(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0.0) + (b or 0.0)


def unique_lumis(pairs: np.ndarray) -> np.ndarray:
    """``(run, luminosityBlock)`` pairs, unique and sorted by run then lumi section."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return pairs
    if (pairs < 0).any() or (pairs >= 2**31).any():  # not run and lumi numbers: the general way
        return np.unique(pairs, axis=0)
    # one integer per pair (run in the high bits): a 1-d unique, ~100x faster than axis=0
    keys = np.unique((pairs[:, 0] << 32) | pairs[:, 1])
    return np.stack([keys >> 32, keys & 0xFFFFFFFF], axis=1)


def lumi_json(pairs: np.ndarray) -> dict[str, list[list[int]]]:
    """The CMS luminosity JSON of ``(run, lumi)`` pairs: ``{"run": [[first, last], ...]}``."""
    out: dict[str, list[list[int]]] = {}
    for run, lumi in unique_lumis(pairs).tolist():
        ranges = out.setdefault(str(run), [])
        if ranges and ranges[-1][1] + 1 == lumi:
            ranges[-1][1] = lumi
        else:
            ranges.append([lumi, lumi])
    return out
