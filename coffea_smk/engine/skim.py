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
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

import awkward as ak
import numpy as np

from coffea_smk.io.skimfiles import SkimFile as WrittenFile
from coffea_smk.io.skimfiles import compact, write_piece
from coffea_smk.io.skimtable import SkimColumnError, skim_branches
from coffea_smk.skim import Skim, SkimFile, SkimOutput, SkimPiece, lumi_json, unique_lumis
from coffea_smk.spec.skims import SkimSettings
from coffea_smk.util.atomic import write_json

__all__ = ["SkimError", "Skims", "UnitSkims", "chunk_skims", "compact_skims", "skims_of"]

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
    """Replace each :class:`Skim` of ``output``'s top level by the chunk's totals; return its rows.

    Args:
        output: What the processor returned for the chunk (changed in place where it is a dict).
        events: The chunk's events (all of them: the totals count every event).
        where: The chunk, for messages (dataset, file, entry range).

    Raises:
        SkimError: A Skim below the top level, or a bare awkward array anywhere: the message
            names its key and says what to return instead.
    """
    rows: dict[str, Rows] = {}
    if not isinstance(output, Mapping):
        _refuse_arrays(output, "the output", where)
        return output, rows
    for key, value in list(output.items()):
        if isinstance(value, Skim):
            try:
                branches = skim_branches(value.array, value.columns, str(key))
            except SkimColumnError as err:
                raise SkimError(f"{where}: skim {key!r}: {err}") from err
            rows[str(key)] = branches
            assert isinstance(output, MutableMapping)
            output[key] = _totals(events, branches)
        else:
            _refuse_arrays(value, f"output[{key!r}]", where)
    return output, rows


def _refuse_arrays(value: Any, path: str, where: str) -> None:
    if isinstance(value, Skim):
        raise SkimError(
            f"{where}: {path} is a coffea_smk.Skim below the top level of the output; return it "
            "as a value of the output dict itself (its key is the skim's name)"
        )
    if isinstance(value, ak.Array):
        raise SkimError(
            f"{where}: {path} is an awkward array ({len(value)} rows), which cannot be added up "
            "over chunks. To write per-event values to files, return coffea_smk.Skim(array) (or "
            "coffea's column_accumulator); to count, histogram it or return a number."
        )
    if isinstance(value, Mapping):
        for k, v in value.items():
            _refuse_arrays(v, f"{path}[{k!r}]", where)


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
        out = Path(out_path)
        for name, chunks in self._rows.items():
            if not chunks:
                continue  # nothing selected: no piece, the totals still count
            branches = _concatenate(chunks, name, out_path)
            path = out.with_name(f"{out.stem}.skim-{name}{settings.suffix}")
            written: WrittenFile = write_piece(str(path), branches, settings)
            piece = SkimPiece(str(path), written.rows, written.bytes, tuple(self._ranges[name]))
            result[name] = result[name] + SkimOutput(pieces=(piece,))
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


def skims_of(result: Any) -> dict[str, SkimOutput]:
    """The skims of a result (the :class:`SkimOutput` values of its top level)."""
    if not isinstance(result, Mapping):
        return {}
    return {str(k): v for k, v in result.items() if isinstance(v, SkimOutput)}


def compact_skims(result: Any, folder: str, settings: SkimSettings, where: str) -> Any:
    """Compact each skim's pieces into files in ``folder`` (a template with ``{name}``).

    Raises:
        SkimError: Two pieces hold the same entries (an event would be written twice), or a
            piece is missing (its unit's partial was kept but the piece deleted).
    """
    for name, pieces in skims_of(result).items():
        _check_pieces(pieces, name, where)
        target = folder.format(name=name)
        files = compact([p.path for p in pieces.pieces], target, settings) if pieces.pieces else []
        skim = dataclasses.replace(pieces, files=tuple(SkimFile(f.path, f.rows, f.bytes) for f in files))
        if sum(f.rows for f in skim.files) != skim.rows:
            raise SkimError(
                f"{where}: skim {name!r} compacted to {sum(f.rows for f in skim.files)} rows of {skim.rows}"
            )
        if len(skim.lumis) and skim.sumw is None:  # data: no generator weights
            write_json(str(Path(target) / "lumi.json"), lumi_json(skim.lumis))
        result[name] = skim
        log.info("skim %r: %d of %d events kept, %d files", name, skim.rows, skim.events, len(skim.files))
    return result


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
