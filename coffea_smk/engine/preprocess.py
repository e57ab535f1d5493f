"""Preprocessing: one small JSON record per input file, the persistent cache.

Beside each record, a basket map (:mod:`coffea_smk.io.basketmap`) keeps where every
branch's baskets are, so that processing jobs read columns without decoding
the tree's metadata again.

A record holds what planning needs (entries, cluster boundaries) and what
identifies the file (path, tree, size, mtime, UUID, a hash of the branch list).
Its path is derived from the file's identity (path, tree, size, mtime), so an
unchanged file finds its record and is never opened again, while a touched or
replaced file gets a new key and is preprocessed afresh.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coffea_smk.io.basketmap import READER_VERSION
from coffea_smk.io.files import InputFileError, open_file
from coffea_smk.spec.config import InputFile
from coffea_smk.util.atomic import write_json
from coffea_smk.util.hashing import key_of

log = logging.getLogger("coffea_smk.engine.preprocess")

RECORD_VERSION = 2


class StaleRecordError(InputFileError):
    """A file changed after preprocessing although its size and mtime did not."""

    def __init__(self, message: str, key: str, uuid: str) -> None:
        super().__init__(message)
        self.key = key
        """The file's cache key."""
        self.uuid = uuid
        """The UUID the file has now."""


@dataclass(frozen=True)
class FileIdentity:
    """What identifies an input file without opening it."""

    path: str
    treename: str
    size: int | None
    mtime_ns: int | None
    replaced: str | None = None
    """Set when a job found the file replaced behind the cache's back (same size and
    mtime, another UUID): the UUID it found, so that the key changes (see :func:`note_replaced`)."""

    @property
    def key(self) -> str:
        """The file's cache key; also of every chunk of it, so a reader fix redoes what it read."""
        parts = [self.path, self.treename, self.size, self.mtime_ns, RECORD_VERSION, READER_VERSION]
        return key_of("file", *parts, *([self.replaced] if self.replaced else []))

    @classmethod
    def of(cls, f: InputFile, dataset: str = "", *, missing_ok: bool = False) -> FileIdentity:
        """Stat a local file (no open); remote files are identified by URL and tree.

        Raises:
            InputFileError: A local file does not exist (unless ``missing_ok``:
                then it is identified like a remote file and fails at preprocessing).
        """
        if f.is_remote:
            return cls(f.path, f.treename, None, None)
        try:
            st = os.stat(f.path)
        except FileNotFoundError:
            if missing_ok:
                return cls(f.path, f.treename, None, None)
            where = f" of dataset {dataset!r}" if dataset else ""
            raise InputFileError(
                f"input file {f.path}{where} does not exist: fix its path in the fileset "
                "or remove it from the dataset"
            ) from None
        return cls(f.path, f.treename, st.st_size, st.st_mtime_ns)


def _replaced_dir(cache_dir: str | os.PathLike[str]) -> Path:
    return Path(cache_dir) / "replaced"


def note_replaced(cache_dir: str | os.PathLike[str], key: str, uuid: str) -> None:
    """Record that the file of cache key ``key`` now has UUID ``uuid`` (a processing job found it)."""
    write_json(_replaced_dir(cache_dir) / f"{key}.json", {"uuid": uuid})


def replaced_files(cache_dir: str | os.PathLike[str]) -> dict[str, str]:
    """``{key: uuid}`` of the files found replaced behind the cache's back (one directory listing)."""
    out = {}
    folder = _replaced_dir(cache_dir)
    for note in folder.glob("*.json") if folder.is_dir() else []:
        try:
            out[note.stem] = str(json.loads(note.read_text())["uuid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def record_path(cache_dir: str | os.PathLike[str], identity: FileIdentity) -> Path:
    key = identity.key
    return Path(cache_dir) / "files" / key[:2] / f"{key}.json"


def read_record(path: Path, identity: FileIdentity) -> dict[str, Any] | None:
    """A valid cached record for ``identity``, or None (missing, corrupt or stale)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(record, dict)
        or record.get("version") != RECORD_VERSION
        or record.get("key") != identity.key
        or not isinstance(record.get("entries"), int)
    ):
        log.warning("ignoring invalid cache record %s", path)
        return None
    if record.get("reader") != READER_VERSION:
        # its basket map and cluster boundaries come from another reader: build both again
        log.info(
            "cache record %s is of reader %s, not %s: rebuilding it",
            path,
            record.get("reader"),
            READER_VERSION,
        )
        return None
    return record


def inspect_file(identity: FileIdentity, map_to: Path | None = None) -> dict[str, Any]:
    """Open the file once and build its record (and write its basket map at ``map_to``)."""
    from coffea_smk.io.basketmap import TreeMap

    t0 = time.perf_counter()
    rootfile = open_file(identity.path)
    with rootfile:
        uuid = str(rootfile.file.uuid)
        tmap = TreeMap.read(rootfile, identity.path, identity.treename, uuid)
        if map_to is not None:
            tmap.save(map_to, identity.key)
        record = {
            "version": RECORD_VERSION,
            "reader": READER_VERSION,
            **asdict(identity),
            "key": identity.key,
            "uuid": uuid,
            "entries": tmap.entries,
            "clusters": tmap.clusters() if tmap.entries else [0],
            "nbranches": len(tmap.types),
            "branches_hash": tmap.branches_hash(),
            "seconds": round(time.perf_counter() - t0, 4),
        }
    return record


def preprocess_files(
    identities: list[FileIdentity], cache_dir: str | os.PathLike[str], *, skip_bad_files: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Records for ``identities``: from the cache when valid, else by opening the file once.

    Returns:
        The records, in order, and the files that could not be used (only with
        ``skip_bad_files``; their records carry ``error`` and are not cached, so
        the next run tries them again).

    Raises:
        InputFileError: A file cannot be used and ``skip_bad_files`` is off.
    """
    records, bad = [], []
    for identity in identities:
        path = record_path(cache_dir, identity)
        record = read_record(path, identity)
        if record is None:
            log.info("opening %s (tree %s)", identity.path, identity.treename)
            try:
                from coffea_smk.io.basketmap import map_path

                record = inspect_file(identity, map_path(path))
            except InputFileError as err:
                if not skip_bad_files:
                    raise
                log.error("skipping %s: %s", identity.path, err)
                bad.append({"file": identity.path, "treename": identity.treename, "error": str(err)})
                records.append({**asdict(identity), "key": identity.key, "entries": 0, "error": str(err)})
                continue
            write_json(path, record)
        else:
            log.info("cached %s", identity.path)
        records.append({**record, "record_path": str(path)})
    return records, bad
