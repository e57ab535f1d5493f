"""What preprocessing and planning write: file identities and records, batches, plans and work units.

Each record is a frozen pydantic model whose JSON is exactly what the file on
disk holds; a file is parsed with its model before anything reads it, so a
record of another shape is rejected, never misread. The shapes are part of the
cache keys: a change to :class:`FileRecord` or :class:`Batch` needs a new
:data:`RECORD_VERSION`, a change to :class:`Plan` a new :data:`PLAN_VERSION`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from coffea_smk.io.basketmap import READER_VERSION
from coffea_smk.io.faults import not_found, transient
from coffea_smk.io.files import InputFileError
from coffea_smk.io.parquet import PARQUET_READER_VERSION, has_parquet_suffix
from coffea_smk.io.remote import RemoteStat
from coffea_smk.io.rntuple import RNTUPLE_READER_VERSION
from coffea_smk.spec.config import InputFile
from coffea_smk.spec.settings import PlanSettings
from coffea_smk.util.hashing import key_of
from coffea_smk.util.ranges import coalesce

RECORD_VERSION = 3
"""The shape of :class:`FileRecord` and :class:`Batch` (part of every file's key)."""
PLAN_VERSION = 2
"""The shape of :class:`Plan` (part of every plan's key)."""


class Record(BaseModel):
    """A frozen record whose JSON has exactly its fields (no more, no fewer)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


@dataclass(frozen=True)
class FileIdentity:
    """What identifies an input file without opening it."""

    path: str
    treename: str
    size: int | None
    mtime_ns: int | None
    replaced: str | None = None
    """Set when a job found the file replaced behind the cache's back (same size and
    mtime, another UUID): the UUID it found, so that the key changes."""
    etag: str | None = None
    """An HTTP file's entity tag, when its server gives one."""

    @property
    def key(self) -> str:
        """The file's cache key; also of every chunk of it, so a reader fix redoes what it read."""
        parts = [self.path, self.treename, self.size, self.mtime_ns, RECORD_VERSION, READER_VERSION]
        parts.append(f"rntuple:{RNTUPLE_READER_VERSION}")  # which reader reads it is known only once opened
        extra = [*([self.replaced] if self.replaced else []), *([f"etag:{self.etag}"] if self.etag else [])]
        if has_parquet_suffix(self.path):  # read by the Parquet reader: its fixes redo what it read
            extra.append(f"parquet:{PARQUET_READER_VERSION}")
        return key_of("file", *parts, *extra)

    @classmethod
    def of(
        cls,
        f: InputFile,
        dataset: str = "",
        *,
        missing_ok: bool = False,
        remote: RemoteStat | OSError | None = None,
    ) -> FileIdentity:
        """Stat a local file (no open); a remote file is identified by what its storage said
        (``remote``: :func:`coffea_smk.io.remote.stat_remote`'s answer), else by URL and tree.

        Raises:
            InputFileError: A file does not exist or its storage cannot say (unless
                ``missing_ok``: then it is identified by path and tree and fails at preprocessing).
        """
        where = f" of dataset {dataset!r}" if dataset else ""
        if f.is_remote:
            if isinstance(remote, RemoteStat):
                return cls(f.path, f.treename, remote.size, remote.mtime_ns, etag=remote.etag)
            if remote is None or missing_ok:
                return cls(f.path, f.treename, None, None)
            if not_found(remote):
                raise InputFileError(
                    f"input file {f.path}{where} does not exist on its storage ({remote}): fix its URL "
                    "in the fileset or remove it from the dataset"
                )
            again = "it may be down or overloaded: run again later" if transient(remote) else "check it"
            raise InputFileError(
                f"input file {f.path}{where}: its storage cannot say its size and modification time "
                f"({type(remote).__name__}: {remote}); {again}, or set remote_identity: url"
            )
        try:
            st = os.stat(f.path)
        except FileNotFoundError:
            if missing_ok:
                return cls(f.path, f.treename, None, None)
            raise InputFileError(
                f"input file {f.path}{where} does not exist: fix its path in the fileset "
                "or remove it from the dataset"
            ) from None
        return cls(f.path, f.treename, st.st_size, st.st_mtime_ns)


class FileRecord(Record):
    """What preprocessing keeps of one input file: the cache record ``<cache>/files/<kk>/<key>.json``."""

    version: int
    """:data:`RECORD_VERSION` when it was written."""
    reader: int
    """The basket reader's version (:data:`~coffea_smk.io.basketmap.READER_VERSION`)."""
    path: str
    treename: str
    size: int | None
    mtime_ns: int | None
    replaced: str | None
    """See :attr:`FileIdentity.replaced`."""
    etag: str | None = None
    """See :attr:`FileIdentity.etag` (a default: records written before it stay valid)."""
    key: str
    """:attr:`FileIdentity.key`."""
    uuid: str
    """The ROOT file's UUID, or a hash of a Parquet file's footer (checked when a processing
    job opens the file)."""
    format: Literal["ttree", "rntuple", "parquet"] = "ttree"
    """``ttree``, ``rntuple`` or ``parquet`` (a default: records written before it stay valid)."""
    entries: int
    clusters: tuple[int, ...]
    """Cluster boundaries ``[0, ..., entries]``, a Parquet file's row group boundaries
    (chunk boundaries move onto them)."""
    nbranches: int
    """Branches (Parquet: columns)."""
    branches_hash: str
    seconds: float
    """Time it took to open the file and read its metadata."""
    gen_sumw: float | None = None
    """The sum of generator weights of the file's ``Runs`` tree (``genEventSumw``, or
    ``genEventSumw_`` in older NanoAOD), over all its entries; None without one."""


class PreprocessedFile(FileRecord):
    """A usable file of a preprocessing batch: its record and where the record is cached."""

    record_path: str
    """The cache record (its basket map lies beside it)."""


class UnusableFile(Record):
    """A file of a preprocessing batch that could not be opened (with ``skip_bad_files``); not cached."""

    path: str
    treename: str
    size: int | None
    mtime_ns: int | None
    replaced: str | None
    etag: str | None = None
    key: str
    entries: int = 0
    error: str
    """Why it cannot be used."""


class Batch(Record):
    """A preprocessing job's output: the records of its files, in order."""

    records: tuple[PreprocessedFile | UnusableFile, ...]


class BadFile(Record):
    """A file that could not be used, as plans, results and failure manifests list it."""

    path: str
    treename: str
    error: str


class FileSummary(Record):
    """An input file as a per-dataset result records it."""

    path: str
    treename: str
    key: str
    uuid: str
    entries: int
    size: int | None
    mtime_ns: int | None
    gen_sumw: float | None = None
    """See :attr:`FileRecord.gen_sumw`."""
    steps: tuple[tuple[int, int], ...] | None = None
    """The entry ranges asked for (the fileset's ``steps``); None: the whole file."""

    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The entry ranges to process, those that touch made one (none for an empty file)."""
        steps = self.steps if self.steps is not None else ((0, self.entries),)
        return tuple((a, b) for a, b in coalesce([[a, b] for a, b in steps if a < b]))

    @property
    def events(self) -> int:
        """Entries to process: of the steps, or the whole file's."""
        return sum(stop - start for start, stop in self.ranges())


class PlanFile(FileSummary):
    """A file of a plan: its identity, and where preprocessing left its record."""

    record_path: str | None = None
    """The cache record (whose basket map a processing job reads), if any."""
    batch_output: str | None = None
    """The preprocessing output the record came from."""

    def summary(self) -> FileSummary:
        return FileSummary.model_validate(self.model_dump(include=set(FileSummary.model_fields)))


class Chunk(NamedTuple):
    """One call of ``process()``: entries ``[start, stop)`` of the plan's file number ``file``."""

    file: int
    start: int
    stop: int


class WorkUnit(Record):
    """Consecutive chunks processed by one job; ``id`` is a content key of the chunks."""

    id: str
    events: int
    chunks: tuple[Chunk, ...]


class MergeTree(Record):
    """A dataset's merge tree: nodes ``{id: children}`` and the ids the dataset result merges."""

    nodes: dict[str, tuple[str, ...]]
    top: tuple[str, ...]


class BatchFailures(Record):
    """A preprocessing job's failure manifest: the files a later attempt tries again."""

    bad_files: tuple[BadFile, ...]


class PlanRequest(Record):
    """What a plan job is asked to make (its ``--spec``)."""

    dataset: str
    slug: str
    key: str
    """The plan's content key."""
    metadata: dict[str, Any]
    settings: PlanSettings
    steps: dict[str, tuple[tuple[int, int], ...]] = {}
    """The entry ranges of the files that the fileset gives ``steps`` for (by path)."""


class Plan(Record):
    """The plan of one dataset: files, work units and the merge tree (``plan/<dataset>/<key>.json``)."""

    version: int
    """:data:`PLAN_VERSION` when it was made."""
    dataset: str
    slug: str
    metadata: dict[str, Any]
    """The dataset's metadata from the fileset (the user's, any JSON)."""
    settings: PlanSettings
    files: tuple[PlanFile, ...]
    """The usable files, in fileset order (chunks refer to them by number)."""
    units: tuple[WorkUnit, ...]
    merge: MergeTree
    expected_events: int
    empty_files: tuple[str, ...]
    bad_files: tuple[BadFile, ...]
    key: str | None = None
    """The plan's content key (its path's key)."""

    @property
    def runs_sumw(self) -> float | None:
        """The dataset's sum of generator weights from its files' ``Runs`` trees, or None when a
        file has none (then the processing jobs sum ``genWeight`` of every event instead)."""
        sums = [f.gen_sumw for f in self.files]
        return sum(s for s in sums if s is not None) if sums and None not in sums else None

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Plan:
        """Parse a plan file.

        Raises:
            FileNotFoundError: There is none.
            pydantic.ValidationError: It is damaged (not JSON, or not a plan).
        """
        with open(path, "rb") as handle:
            return cls.model_validate_json(handle.read())

    def unit(self, unit_id: str) -> WorkUnit:
        """The work unit ``unit_id``.

        Raises:
            KeyError: It is not in this plan.
        """
        for unit in self.units:
            if unit.id == unit_id:
                return unit
        raise KeyError(f"work unit {unit_id} is not in the plan of dataset {self.dataset!r}")
