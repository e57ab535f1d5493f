"""What of a dataset its result lacks: the entry ranges not covered, as ``File`` steps.

A per-dataset result records the entry ranges it covers (by file key) and the ranges it was
asked for (its input files' steps, or whole files); the difference is exactly the failed or
missing chunks. A :class:`~coffea_smk.compute.model.Dataset` of those ranges, computed and
added to the partial result, gives the full result with no event twice and none lost.
"""

from __future__ import annotations

from dataclasses import replace

from coffea_smk.compute.model import Dataset, File
from coffea_smk.engine.meta import DatasetMeta
from coffea_smk.util.ranges import subtract


class UnknownRestError(RuntimeError):
    """A result says it is incomplete but not what it lacks."""


def rest_of(dataset: Dataset, meta: DatasetMeta | None) -> Dataset | None:
    """The part of ``dataset`` that its result (``meta``; None: no result) lacks; None: nothing.

    Raises:
        UnknownRestError: The result is incomplete and its ranges cover everything it was asked.
    """
    if meta is None:
        return dataset
    if meta.complete:
        return None
    given = {f.path: f for f in dataset.files}
    files = []
    for summary in meta.input_files:
        missing = subtract(summary.ranges(), meta.ranges.get(summary.key, ()))
        if missing:
            files.append(File(path=summary.path, tree=summary.treename, steps=tuple(missing)))
    for bad in meta.bad_files:  # not opened at all: the whole file, as it was asked
        files.append(given.get(bad.path) or File(path=bad.path, tree=bad.treename))
    if not files:
        raise UnknownRestError(
            f"dataset {dataset.name!r}: its result is incomplete, yet covers every entry range it "
            "was asked for: compute the dataset again in a new outdir"
        )
    return replace(dataset, files=tuple(files))
