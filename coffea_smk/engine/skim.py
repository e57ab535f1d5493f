"""Skims in the processing and per-dataset steps: selected rows to piece files, pieces to files.

In a processing job each chunk's output is searched for :class:`~coffea_smk.Skim` values (at
the top level of the output dict, whose key names the skim). Each becomes the chunk's
:class:`~coffea_smk.skim.SkimOutput` (the totals of all the chunk's events, which add up
through the merge tree) while its rows wait in a :class:`UnitSkims`; at the end of the unit
they are written to one piece file per skim beside the unit's partial result, named after it
(so a changed analysis never reuses a piece). The per-dataset step then checks that no entry
range was written twice and compacts the pieces into files near the target size.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import awkward as ak
import numpy as np

from coffea_smk.io.skimfiles import SkimFile as WrittenFile
from coffea_smk.io.skimfiles import compact, write_piece
from coffea_smk.io.skimtable import SkimColumnError, skim_branches
from coffea_smk.skim import (
    Skim,
    SkimFile,
    SkimOutput,
    SkimPiece,
    get_at,
    lumi_json,
    set_at,
    skim_name,
    skims_in,
    unique_lumis,
)
from coffea_smk.spec.skims import SkimSettings
from coffea_smk.util.atomic import write_json

__all__ = ["SkimError", "Skims", "UnitSkims", "chunk_skims", "compact_skims"]

log = logging.getLogger("coffea_smk.skim")

Rows = dict[str, ak.Array]
"""A chunk's selected rows of one skim: NanoAOD-flat branches."""


class SkimError(ValueError):
    """A processor output holds a skim or a per-event array the workflow cannot write."""


class Skims(NamedTuple):
    """What a per-dataset or global step needs to write skims."""

    settings: SkimSettings
    folder: str | None
    """Where the step's skim files go: a template with ``{name}`` (None: the step writes none)."""


def chunk_skims(output: Any, events: Any, where: str) -> tuple[Any, dict[str, Rows]]:
    """Replace each :class:`Skim` (and coffea ``column_accumulator``) of ``output`` by the chunk's
    totals; return their rows by skim name (the output's keys on the way, joined by ``.``).

    Args:
        output: What the processor returned for the chunk (changed in place, dicts at any depth).
        events: The chunk's events (all of them: the totals count every event).
        where: The chunk, for messages (dataset, file, entry range).

    Raises:
        SkimError: A bare awkward array, or a Skim whose columns do not exist: the message
            names its key and says what to return instead.
    """
    rows: dict[str, Rows] = {}
    _walk(output, (), events, where, rows)
    if isinstance(output, Skim) or _is_column(output):
        raise SkimError(f"{where}: the output is a skim itself; return it in a dict (its key names it)")
    return output, rows


def _is_column(value: Any) -> bool:
    kind = type(value)
    return kind.__module__ == "coffea.processor.accumulator" and kind.__name__ == "column_accumulator"


def _walk(node: Any, path: tuple[str, ...], events: Any, where: str, rows: dict[str, Rows]) -> None:
    if isinstance(node, ak.Array):
        raise SkimError(
            f"{where}: output{''.join(f'[{k!r}]' for k in path)} is an awkward array ({len(node)} rows), "
            "which cannot be added up over chunks. To write per-event values to files, return "
            "coffea_smk.Skim(array) (or coffea's column_accumulator); to count, histogram it or "
            "return a number."
        )
    if not isinstance(node, Mapping):
        return
    for key, value in list(node.items()):
        here = (*path, str(key))
        name = ".".join(here)
        if isinstance(value, Skim) or _is_column(value):
            skim = value if isinstance(value, Skim) else Skim(ak.Array(value.value))
            try:  # a column_accumulator's values: one branch, named by its key
                branches = skim_branches(
                    skim.array, skim.columns, name if isinstance(value, Skim) else here[-1]
                )
            except SkimColumnError as err:
                raise SkimError(f"{where}: skim {name!r}: {err}") from err
            rows[name] = branches
            assert isinstance(node, MutableMapping)
            node[key] = dataclasses.replace(_totals(events, branches), column=_is_column(value))
        else:
            _walk(value, here, events, where, rows)


def _totals(events: Any, branches: Rows) -> SkimOutput:
    """The chunk's skim record: every event counted, with its generator weights and lumi sections."""
    weights = _field(events, "genWeight")
    sumw = sumw2 = None
    if weights is not None:
        w = np.asarray(weights, np.float64)
        sumw, sumw2 = float(w.sum()), float(np.square(w).sum())
    run, lumi = _field(events, "run"), _field(events, "luminosityBlock")
    lumis = np.zeros((0, 2), np.int64)
    if run is not None and lumi is not None:
        lumis = unique_lumis(np.stack([np.asarray(run, np.int64), np.asarray(lumi, np.int64)], axis=1))
    first = next(iter(branches.values()), None)
    return SkimOutput(
        events=len(events),
        rows=0 if first is None else len(first),
        sumw=sumw,
        sumw2=sumw2,
        lumis=lumis,
        columns=tuple(branches),
    )


def _field(events: Any, name: str) -> np.ndarray | None:
    try:
        values: np.ndarray = ak.to_numpy(getattr(events, name))
    except (AttributeError, KeyError, ValueError):
        return None
    return values


class UnitSkims:
    """The rows of a unit's skims, kept until the unit is done, then written as pieces."""

    def __init__(self) -> None:
        self._rows: dict[str, list[Rows]] = {}
        self._ranges: dict[str, list[tuple[str, int, int]]] = {}

    def add(self, rows: dict[str, Rows], file_key: str, start: int, stop: int) -> None:
        """Keep a chunk's rows (only once the chunk's output was accumulated)."""
        for name, branches in rows.items():
            self._rows.setdefault(name, [])
            self._ranges.setdefault(name, [])
            if branches and len(next(iter(branches.values()))):
                self._rows[name].append(branches)
                self._ranges[name].append((file_key, start, stop))

    def write(self, result: Any, out_path: str, settings: SkimSettings) -> Any:
        """Write one piece per skim with rows beside ``out_path``; record it in ``result``."""
        out = Path(out_path).absolute()  # a result names its skim files absolutely: loadable from anywhere
        for name, chunks in self._rows.items():
            if not chunks:
                continue  # nothing selected: no piece, the totals still count
            branches = _concatenate(chunks, name, out_path)
            path = out.with_name(f"{out.stem}.skim-{name}{settings.suffix}")
            written: WrittenFile = write_piece(str(path), branches, settings)
            piece = SkimPiece(str(path), written.rows, written.bytes, tuple(self._ranges[name]))
            where = next(p for p in skims_in(result) if skim_name(p) == name)
            set_at(result, where, get_at(result, where) + SkimOutput(pieces=(piece,)))
        return result


def _concatenate(chunks: list[Rows], name: str, out_path: str) -> Rows:
    names = list(chunks[0])
    for rows in chunks[1:]:
        if list(rows) != names:
            raise SkimError(
                f"{out_path}: skim {name!r} has other branches in one chunk ({', '.join(rows)}) than "
                f"in the first ({', '.join(names)}): give Skim(columns=...) explicitly"
            )
    return {b: ak.concatenate([rows[b] for rows in chunks]) for b in names}


def compact_skims(
    result: Any, folder: str, settings: SkimSettings, where: str, sources: Sequence[str] = ()
) -> Any:
    """Compact each skim's pieces into files in ``folder`` (a template with ``{name}``).

    ROOT skims get the ``Runs`` trees of the dataset's ``sources`` (concatenated) in their first
    file only, so that summing ``genEventSumw`` over a skim's files counts each source once.

    Raises:
        SkimError: Two pieces hold the same entries (an event would be written twice), or a
            piece is missing (its unit's partial was kept but the piece deleted).
    """
    for at, pieces in skims_in(result).items():
        name = skim_name(at)
        _check_pieces(pieces, name, where)
        target = str(Path(folder.format(name=name)).absolute())
        runs = _runs(sources) if settings.format == "root" and pieces.pieces else None
        files = compact([p.path for p in pieces.pieces], target, settings, runs=runs) if pieces.pieces else []
        skim = dataclasses.replace(pieces, files=tuple(SkimFile(f.path, f.rows, f.bytes) for f in files))
        if sum(f.rows for f in skim.files) != skim.rows:
            raise SkimError(
                f"{where}: skim {name!r} compacted to {sum(f.rows for f in skim.files)} rows of {skim.rows}"
            )
        if len(skim.lumis) and skim.sumw is None:  # data: no generator weights
            write_json(str(Path(target) / "lumi.json"), lumi_json(skim.lumis))
        set_at(result, at, skim)
        log.info("skim %r: %d of %d events kept, %d files", name, skim.rows, skim.events, len(skim.files))
    return result


def _runs(sources: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The ``Runs`` trees of the source files, concatenated (None when none has one)."""
    import uproot  # noqa: PLC0415  only ROOT skims need it here

    parts: list[dict[str, np.ndarray]] = []
    for path in sources:
        if path.endswith((".parquet", ".parq")):  # no Runs tree in a Parquet input
            continue
        with uproot.open(path) as f:
            if "Runs" in f:
                parts.append(f["Runs"].arrays(library="np"))
    if not parts:
        return None
    names = [n for n in parts[0] if all(n in p for p in parts)]
    return {n: np.concatenate([p[n] for p in parts]) for n in names}


def _check_pieces(skim: SkimOutput, name: str, where: str) -> None:
    seen: dict[str, list[tuple[int, int]]] = {}
    for piece in skim.pieces:
        if not Path(piece.path).exists():
            raise SkimError(
                f"{where}: skim {name!r}: the piece {piece.path} is missing; delete the partial "
                f"result beside it ({Path(piece.path).name.split('.skim-')[0]}.npz) and run again"
            )
        for key, start, stop in piece.ranges:
            for s, e in seen.get(key, []):
                if start < e and s < stop:
                    raise SkimError(
                        f"{where}: skim {name!r}: entries [{start}, {stop}) of file {key} are in two "
                        "pieces; nothing was written. Delete the dataset's partials and run again."
                    )
            seen.setdefault(key, []).append((start, stop))
    rows = sum(p.rows for p in skim.pieces)
    if rows != skim.rows:
        raise SkimError(
            f"{where}: skim {name!r}: its pieces hold {rows} rows, its chunks selected {skim.rows}"
        )
