"""Opening input files with errors that say what to do.

An input is a ROOT file (opened by uproot) or a Parquet file (named ``.parquet`` or
``.parq``, or starting with the ``PAR1`` magic: opened by :mod:`coffea_smk.io.parquet`).
Local files are memory-mapped; remote files (``root://``, ``http(s)://``) go through uproot's
fsspec sources, whose packages are optional extras: :func:`check_backends` names the missing
extra when the workflow starts, before any job runs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

from coffea_smk.io.faults import IOFault, causes, io_fault, not_found, transient
from coffea_smk.io.parquet import ParquetError, is_parquet, open_parquet
from coffea_smk.io.remote import prepare_xrootd
from coffea_smk.io.rntuple import RNTupleError, RNTupleInput, is_rntuple
from coffea_smk.spec.config import ConfigError


class InputFileError(RuntimeError):
    """An input file cannot be used; the message names it and says what to do."""

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        """Whether trying again may help, when known better than the cause's type tells
        (a short read of a local file: it is truncated); None: the exception chain says."""


class MissingBackendError(InputFileError):
    """Reading a remote file needs a package that is not installed; the message names the extra."""


def open_file(path: str) -> Any:
    """Open ``path`` with uproot (reads its header and directory only: cheap), or a Parquet
    file as a :class:`~coffea_smk.io.parquet.ParquetInput` (reads its footer only).

    Raises:
        MissingBackendError: A remote file whose protocol needs a package that is not installed.
        InputFileError: Not found, not a ROOT file, truncated, or its storage
            failed (then caused by the storage's error: a reset, a timeout).
    """
    import uproot  # noqa: PLC0415  0.3 s to import: the workflow parse (check_backends) needs none of it

    problem = missing_backend(path)
    if problem is not None:
        raise MissingBackendError(problem)
    # Local files are memory-mapped (uproot falls back by itself where mmap fails):
    # cheaper than uproot's default fsspec source, which hands every read to an
    # I/O thread and opens the file again for it.
    options: dict[str, Any] = {"handler": uproot.source.file.MemmapSource}
    if path.startswith("root://"):
        # XRootD reads many ranges in one vector request: uproot's default coalescing (ranges
        # less than 32 kB apart read as one) would bring the other branches' baskets between
        # those a chunk needs (measured: 2.5x the bytes with small baskets, 1.5x on NanoAOD-like
        # files), for no round trip saved
        options = {"coalesce_config": uproot.source.coalesce.CoalesceConfig(max_range_gap=0)}
    elif "://" in path:
        options = {}
    if path.lower().startswith("root://"):
        prepare_xrootd()
    if is_parquet(path):
        return _open_parquet(path)
    try:
        return uproot.open(path, **options)
    except Exception as err:
        raise _open_error(path, err) from err


def _open_parquet(path: str) -> Any:
    try:
        return open_parquet(path)
    except ParquetError as err:
        raise InputFileError(
            f"{err}; it may be truncated or not a Parquet file: replace it or remove it from the fileset",
            transient=False,
        ) from err
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
    elif not_found(err):
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


def rntuple_of(rootfile: Any, path: str, treename: str) -> RNTupleInput | None:
    """The RNTuple ``treename`` of an open ROOT file (its header and footer read), or None
    when it is not an RNTuple (then :func:`tree_of` reads it as a TTree).

    Raises:
        InputFileError: Its header or footer cannot be read (the file is closed).
    """
    if not is_rntuple(rootfile, treename):
        return None
    try:
        return RNTupleInput(rootfile, path, treename)
    except RNTupleError as err:
        rootfile.close()
        raise InputFileError(str(err)) from err


GEN_SUMW_BRANCHES = ("genEventSumw", "genEventSumw_")
"""The sum of generator weights in NanoAOD's ``Runs`` tree (``genEventSumw_`` before NanoAOD v7)."""


def runs_sumw(rootfile: Any) -> float | None:
    """The file's sum of generator weights from its ``Runs`` tree (all entries), or None when
    it has no such tree or branch (data, or a file written without one)."""
    if "Runs" not in rootfile:
        return None
    runs = rootfile["Runs"]
    name = next((b for b in GEN_SUMW_BRANCHES if b in runs), None)
    if name is None:
        return None
    return float(runs[name].array(library="np").astype("f8").sum())


class StaleRecordError(InputFileError):
    """A file changed after preprocessing although its size and mtime did not."""

    def __init__(self, message: str, key: str, uuid: str) -> None:
        super().__init__(message)
        self.key = key
        """The file's cache key."""
        self.uuid = uuid
        """The UUID the file has now."""
