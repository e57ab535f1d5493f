"""Preprocessing: one small JSON record per input file, the persistent cache.

Beside each record, a basket map (:mod:`coffea_smk.baskets`) keeps where every
branch's baskets are, so that processing jobs read columns without decoding
the tree's metadata again.

A record holds what planning needs (entries, cluster boundaries) and what
identifies the file (path, tree, size, mtime, UUID, a hash of the branch list).
Its path is derived from the file's identity (path, tree, size, mtime), so an
unchanged file finds its record and is never opened again, while a touched or
replaced file gets a new key and is preprocessed afresh.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coffea_smk._atomic import write_json
from coffea_smk._causes import IOFault, causes, io_fault, transient
from coffea_smk._hashing import key_of
from coffea_smk.baskets import READER_VERSION
from coffea_smk.config import ConfigError, InputFile

log = logging.getLogger("coffea_smk.preprocess")

RECORD_VERSION = 2


class InputFileError(RuntimeError):
    """An input file cannot be used; the message names it and says what to do."""

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        """Whether trying again may help, when known better than the cause's type tells
        (a short read of a local file: it is truncated); None: the exception chain says."""


class MissingBackendError(InputFileError):
    """Reading a remote file needs a package that is not installed; the message names the extra."""


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


def open_tree(path: str, treename: str) -> tuple[Any, Any]:
    """Open ``path`` and return ``(file, tree)`` with errors that say what to do.

    Raises:
        InputFileError: Not found, not a ROOT file, truncated, or no such tree.
    """
    rootfile = open_file(path)
    return rootfile, tree_of(rootfile, path, treename)


def open_file(path: str) -> Any:
    """Open ``path`` with uproot (reads its header and directory only: cheap).

    Raises:
        MissingBackendError: A remote file whose protocol needs a package that is not installed.
        InputFileError: Not found, not a ROOT file, truncated, or its storage
            failed (then caused by the storage's error: a reset, a timeout).
    """
    import uproot

    problem = missing_backend(path)
    if problem is not None:
        raise MissingBackendError(problem)
    # Local files are memory-mapped (uproot falls back by itself where mmap fails):
    # cheaper than uproot's default fsspec source, which hands every read to an
    # I/O thread and opens the file again for it.
    options = {} if "://" in path else {"handler": uproot.source.file.MemmapSource}
    try:
        return uproot.open(path, **options)
    except Exception as err:
        raise _open_error(path, err) from err


def _open_error(path: str, err: Exception) -> InputFileError:
    """What to say when ``path`` cannot be opened, from the whole exception chain."""
    chain = causes(err)
    what = _describe(err)
    if transient(err):
        if "://" in path:
            return InputFileError(
                f"{path}: its storage failed ({what}); it may be down or overloaded: run again "
                "later (retries, retry_backoff), or go on without it (continue_on: [OSError])"
            )
        if any(isinstance(e, OSError) and e.errno is not None for e in chain):
            return InputFileError(f"{path}: cannot be read ({what})")
        # else uproot's short read of a local file (an OSError without errno): it is truncated
    elif any(isinstance(e, FileNotFoundError) for e in chain):
        return InputFileError(f"{path}: file not found; fix its path in the fileset")
    elif any(io_fault(e) is IOFault.PERMANENT for e in chain):
        return InputFileError(f"{path}: cannot be read ({what})")
    return InputFileError(
        f"{path}: cannot be opened as a ROOT file ({what}); "
        "it may be truncated or not a ROOT file: replace it or remove it from the fileset",
        transient=False,
    )


def _describe(err: BaseException) -> str:
    """``Type: message``, and the root cause's when it says more."""
    text = f"{type(err).__name__}: {err}"
    root = causes(err)[-1]
    root_text = f"{type(root).__name__}: {root}"
    return text if root_text in text else f"{text}; caused by {root_text}"


# What uproot (through fsspec) needs to read each protocol: the extra that installs it,
# and the modules to find.
_BACKENDS = {
    "http": ("http", ("aiohttp",)),
    "https": ("http", ("aiohttp",)),
    "root": ("xrootd", ("fsspec_xrootd", "XRootD")),
}


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing_backend(path: str) -> str | None:
    """What is missing to read ``path`` (a message naming the extra to install), or None."""
    protocol = path.split("://", 1)[0].lower() if "://" in path else ""
    extra, modules = _BACKENDS.get(protocol, ("", ()))
    missing = [m for m in modules if not _importable(m)]
    if not missing:
        return None
    return (
        f"{path}: reading {protocol}:// files needs {', '.join(missing)}, which "
        f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'coffea_smk[{extra}]'"
    )


def check_backends(paths: Iterable[str]) -> None:
    """Check, when the workflow starts, that every input file's protocol can be read.

    Raises:
        ConfigError: Naming the first file (of each protocol) that cannot, and the extra to install.
    """
    seen = set()
    for path in paths:
        protocol = path.split("://", 1)[0].lower() if "://" in path else ""
        if protocol not in seen:
            seen.add(protocol)
            problem = missing_backend(path)
            if problem is not None:
                raise ConfigError(problem)


def tree_of(rootfile: Any, path: str, treename: str) -> Any:
    """The tree ``treename`` of an open file (decodes its metadata: the costly part).

    Raises:
        InputFileError: No such tree, or it cannot be read (the file is closed).
    """
    try:
        tree = rootfile[treename]
    except KeyError:
        trees = sorted(
            {k.split(";")[0] for k, c in rootfile.classnames().items() if c in ("TTree", "ROOT::RNTuple")}
        )
        rootfile.close()
        raise InputFileError(
            f"{path}: no tree {treename!r} (trees in this file: {', '.join(trees) or 'none'}); "
            'set the tree in the fileset ({"files": {path: tree}} or "treename")'
        ) from None
    except Exception as err:
        rootfile.close()
        if transient(err) and "://" in path:
            raise InputFileError(
                f"{path}: its storage failed while reading tree {treename!r} ({_describe(err)}); "
                "it may be down or overloaded: run again later"
            ) from err
        raise InputFileError(
            f"{path}: tree {treename!r} cannot be read ({_describe(err)}); the file may be corrupted"
        ) from err
    if not hasattr(tree, "num_entries") or not hasattr(tree, "branches"):
        rootfile.close()
        raise InputFileError(f"{path}: {treename!r} is not a TTree")
    return tree


def inspect_file(identity: FileIdentity, map_to: Path | None = None) -> dict[str, Any]:
    """Open the file once and build its record (and write its basket map at ``map_to``)."""
    from coffea_smk.baskets import TreeMap

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
            "nbranches": len(tmap.kinds),
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
                from coffea_smk.baskets import map_path

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
