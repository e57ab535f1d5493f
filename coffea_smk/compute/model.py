"""What to compute, in the shapes of ``coffea.compute``: files, datasets, groups, computables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, kw_only=True)
class File:
    """One input file."""

    path: str
    """A local path or a URL (``root://``, ``https://``)."""
    tree: str = "Events"
    """The tree (``object_path`` in coffea's fileset)."""
    steps: tuple[tuple[int, int], ...] | None = None
    """Only these entry ranges ``[start, stop)``, sorted (coffea's ``steps``); None: all entries."""

    def entry(self) -> str | dict[str, Any]:
        """The file's value in coffea's fileset shape."""
        if self.steps is None:
            return self.tree
        return {"object_path": self.tree, "steps": [list(s) for s in self.steps]}


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """A named set of files with its metadata."""

    name: str
    files: tuple[File, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def fileset_entry(self) -> dict[str, Any]:
        """The dataset in coffea's fileset shape."""
        entry: dict[str, Any] = {"files": {f.path: f.entry() for f in self.files}}
        if self.metadata:
            entry["metadata"] = dict(self.metadata)
        return entry

    def map_steps(self, processor: Any) -> Computable:
        """``processor`` over every chunk of this dataset (its result: ``{name: result}``)."""
        return DataGroup(datasets=(self,)).map_steps(processor)

    def map_files(self, func: Callable[[Any], Any]) -> Computable:
        """``func(directory)`` on every file of this dataset (its result: ``{name: sum}``)."""
        return DataGroup(datasets=(self,)).map_files(func)


@dataclass(frozen=True, kw_only=True)
class DataGroup:
    """Several datasets; computing on one gives a result per dataset."""

    datasets: tuple[Dataset, ...]

    @classmethod
    def from_fileset(cls, fileset: Mapping[str, Any], treename: str = "Events") -> DataGroup:
        """A group from coffea's fileset (plain, preprocessed, or ``{dataset: [files]}``)."""
        from coffea_smk.compute.workflow import normalise_fileset  # noqa: PLC0415  (json/yaml only)

        datasets = []
        for name, entry in normalise_fileset(fileset).items():
            default = entry.get("treename") or treename
            files = tuple(_file(p, t, default) for p, t in entry["files"].items())
            datasets.append(Dataset(name=name, files=files, metadata=entry.get("metadata", {})))
        return cls(datasets=tuple(datasets))

    def fileset(self) -> dict[str, Any]:
        """The group in coffea's fileset shape."""
        return {d.name: d.fileset_entry() for d in self.datasets}

    def only(self, names: set[str]) -> DataGroup:
        """The datasets named in ``names``."""
        return replace(self, datasets=tuple(d for d in self.datasets if d.name in names))

    def map_steps(self, processor: Any) -> Computable:
        """``processor`` (an object with ``process(events)``, a class, or a function
        ``events -> result``) over every chunk of every dataset."""
        return Computable(data=self, processor=processor)

    def map_files(self, func: Callable[[Any], Any]) -> Computable:
        """``func`` of each file's uproot directory (``ReadOnlyDirectory``), once per file
        with entries; a dataset's result is the sum over its files."""
        from coffea_smk.compute.files import FileFunction  # noqa: PLC0415  (uproot)

        return Computable(data=self, processor=FileFunction(func))


@dataclass(frozen=True, kw_only=True)
class Computable:
    """A processor mapped over a group's chunks: what ``SnakemakeBackend.compute`` runs."""

    data: DataGroup
    processor: Any

    @property
    def dataset_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.data.datasets)


def _file(path: str, value: Any, default: str) -> File:
    """A file from its value in a normalised fileset: a tree name, or ``{object_path, steps}``."""
    if isinstance(value, Mapping):
        steps = value.get("steps")
        tree = value.get("object_path") or default
        return File(path=path, tree=tree, steps=None if steps is None else tuple((a, b) for a, b in steps))
    return File(path=path, tree=value or default)
