"""Preprocessing: one small JSON record per input file, the persistent cache.

Beside each record, a basket map (:mod:`coffea_smk.io.basketmap`) keeps where every
branch's baskets are, so that processing jobs read columns without decoding
the tree's metadata again.

A record holds what planning needs (entries, cluster boundaries) and what
identifies the file (path, tree, size, mtime, UUID, a hash of the branch list).
Its path is derived from the file's identity (path, tree, size, mtime), so an
unchanged file finds its record and is never opened again, while a touched or
replaced file gets a new key and is preprocessed afresh. A Parquet file's record
has the same shape: a hash of its footer for the UUID, its row groups for the
clusters (:mod:`coffea_smk.io.parquet`).

The error policy of processing jobs holds here too (:func:`preprocess_files`):
an open that fails with a transient I/O error is tried again (``retries``,
``retry_backoff``; the whole exception chain decides, as for ``continue_on``),
and a storage host that does not answer is decided once for the job's files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path

from pydantic import ValidationError

from coffea_smk.engine.policy import retrying
from coffea_smk.engine.records import (
    RECORD_VERSION,
    BadFile,
    FileIdentity,
    FileRecord,
    PreprocessedFile,
    UnusableFile,
)
from coffea_smk.io.basketmap import READER_VERSION, TreeMap, map_path
from coffea_smk.io.files import InputFileError, StaleRecordError, open_file, rntuple_of, runs_sumw
from coffea_smk.io.parquet import ParquetInput
from coffea_smk.io.remote import host_of, probe_hosts
from coffea_smk.io.rntuple import FieldMap, RNTupleInput
from coffea_smk.spec.settings import ErrorPolicy
from coffea_smk.util.atomic import write_json

__all__ = [
    "RECORD_VERSION",
    "FileIdentity",
    "StaleRecordError",
    "inspect_file",
    "note_replaced",
    "preprocess_files",
    "read_record",
    "record_path",
    "replaced_files",
]

log = logging.getLogger("coffea_smk.engine.preprocess")


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


def read_record(path: Path, identity: FileIdentity) -> FileRecord | None:
    """A valid cached record for ``identity``, or None (missing, corrupt or stale)."""
    try:
        text = path.read_bytes()
    except OSError:
        return None
    try:
        record = FileRecord.model_validate_json(text)
    except ValidationError:
        log.warning("ignoring invalid cache record %s", path)
        return None
    if record.version != RECORD_VERSION or record.key != identity.key:
        log.warning("ignoring invalid cache record %s", path)
        return None
    if record.reader != READER_VERSION:
        # its basket map and cluster boundaries come from another reader: build both again
        log.info(
            "cache record %s is of reader %s, not %s: rebuilding it", path, record.reader, READER_VERSION
        )
        return None
    return record


def inspect_file(identity: FileIdentity, map_to: Path | None = None) -> FileRecord:
    """Open the file once and build its record (and write its basket map at ``map_to``)."""
    t0 = time.perf_counter()
    rootfile = open_file(identity.path)
    if isinstance(rootfile, ParquetInput):
        with rootfile:
            return _parquet_record(identity, rootfile, t0)
    rinput = rntuple_of(rootfile, identity.path, identity.treename)
    if rinput is not None:
        with rinput:
            return _rntuple_record(identity, rinput, t0)
    with rootfile:
        uuid = str(rootfile.file.uuid)
        tmap = TreeMap.read(rootfile, identity.path, identity.treename, uuid)
        if map_to is not None:
            tmap.save(map_to, identity.key)
        return FileRecord(
            version=RECORD_VERSION,
            reader=READER_VERSION,
            **asdict(identity),
            key=identity.key,
            uuid=uuid,
            entries=tmap.entries,
            clusters=tuple(tmap.clusters()) if tmap.entries else (0,),
            nbranches=len(tmap.types),
            branches_hash=tmap.branches_hash(),
            seconds=round(time.perf_counter() - t0, 4),
            gen_sumw=runs_sumw(rootfile),
        )


def _rntuple_record(identity: FileIdentity, rinput: RNTupleInput, t0: float) -> FileRecord:
    """An RNTuple's record: the file's UUID, its clusters, its field map's hash and the anchor's
    checksum; no basket map (a processing job reads the header and footer as it opens the file)."""
    fmap = FieldMap(rinput)
    return FileRecord(
        version=RECORD_VERSION,
        reader=READER_VERSION,
        **asdict(identity),
        key=identity.key,
        uuid=str(rinput.file.uuid),
        format="rntuple",
        entries=rinput.entries,
        clusters=rinput.clusters,
        nbranches=len(fmap.types),
        branches_hash=f"{fmap.fields_hash()}:{rinput.anchor}",
        seconds=round(time.perf_counter() - t0, 4),
        gen_sumw=runs_sumw(rinput.rootfile),
    )


def _parquet_record(identity: FileIdentity, pinput: ParquetInput, t0: float) -> FileRecord:
    """A Parquet file's record: its footer's hash, its row groups as clusters; no basket map
    (a processing job reads the footer again as it opens the file: nothing more to keep)."""
    return FileRecord(
        version=RECORD_VERSION,
        reader=READER_VERSION,
        **asdict(identity),
        key=identity.key,
        uuid=pinput.uuid,
        format="parquet",
        entries=pinput.entries,
        clusters=pinput.clusters,
        nbranches=len(pinput.schema),
        branches_hash=pinput.schema_hash(),
        seconds=round(time.perf_counter() - t0, 4),
    )


def preprocess_files(
    identities: list[FileIdentity],
    cache_dir: str | os.PathLike[str],
    *,
    skip_bad_files: bool = False,
    policy: ErrorPolicy | None = None,
) -> tuple[list[PreprocessedFile | UnusableFile], list[BadFile]]:
    """Records for ``identities``: from the cache when valid, else by opening the file once.

    Opening a file is tried again after a transient I/O error (``policy.retries`` times, after
    ``policy.retry_backoff`` seconds doubled each time; no retries without a ``policy``). The
    storage hosts of the files to open are probed first, once each
    (:func:`~coffea_smk.io.remote.probe_hosts`): a host that does not answer is probed again
    after the same pauses, and if it stays down its files fail at once, however many they are.

    Returns:
        The records, in order, and the files that could not be used (only with
        ``skip_bad_files``; their records say why and are not cached, so the
        next run tries them again).

    Raises:
        InputFileError: A file cannot be used and ``skip_bad_files`` is off.
    """
    policy = policy or ErrorPolicy(retries=0)
    cached = [read_record(record_path(cache_dir, i), i) for i in identities]
    down = _hosts_down([i.path for i, r in zip(identities, cached, strict=True) if r is None], policy)
    # Remote files are opened several at a time: an open is a few round trips to the
    # storage, which would otherwise add up file after file. Local ones one by one.
    one = partial(_preprocess_one, cache_dir, skip_bad_files, policy, down)
    workers = min(REMOTE_OPENS, len(identities)) if any("://" in i.path for i in identities) else 1
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="coffea_smk-preprocess") as pool:
            done = list(pool.map(one, identities, cached))
    else:
        done = [one(identity, record) for identity, record in zip(identities, cached, strict=True)]
    found = []
    for outcome in done:  # in order: the first file that fails is the one reported
        if isinstance(outcome, InputFileError):
            raise outcome
        found.append(outcome)
    return [record for record, _ in found], [b for _, b in found if b is not None]


def _hosts_down(paths: list[str], policy: ErrorPolicy) -> dict[str, str]:
    """``{host: why}`` of the storage hosts of ``paths`` that do not answer, after the policy's retries."""
    hosts = list(dict.fromkeys(host_of(p) for p in paths if "://" in p and not p.startswith("file://")))
    down: dict[str, str] = {}
    for tries in range(policy.retries + 1):
        if tries:
            delay = policy.retry_backoff * 2 ** (tries - 1)
            log.warning(
                "storage %s unreachable (%s); retry %d of %d in %.2f s",
                ", ".join(hosts),
                "; ".join(down[h] for h in hosts),
                tries,
                policy.retries,
                delay,
            )
            time.sleep(delay)
        down = {h: f"{type(e).__name__}: {e}" for h, e in probe_hosts(hosts).items() if e is not None}
        hosts = list(down)
        if not hosts:
            break
    return down


REMOTE_OPENS = 8
"""Remote files a preprocessing job opens at once."""


def _preprocess_one(
    cache_dir: str | os.PathLike[str],
    skip_bad_files: bool,
    policy: ErrorPolicy,
    down: dict[str, str],
    identity: FileIdentity,
    record: FileRecord | None,
) -> tuple[PreprocessedFile | UnusableFile, BadFile | None] | InputFileError:
    """One file's record (from the cache, or by opening it), or the error that makes it unusable."""

    path = record_path(cache_dir, identity)
    if record is None:
        host = host_of(identity.path) if "://" in identity.path else ""
        if host in down:
            err: Exception | None = InputFileError(
                f"{identity.path}: its storage {host} is unreachable ({down[host]}); run again when "
                "it is up, or set skip_bad_files: true to go on without the file",
                transient=True,
            )
        else:
            log.info("opening %s (tree %s)", identity.path, identity.treename)
            opened, err, _ = retrying(
                policy, f"opening {identity.path}", partial(inspect_file, identity, map_path(path))
            )
            record = opened
        if err is not None:
            if not isinstance(err, InputFileError):
                raise err
            if not skip_bad_files:
                return err
            log.error("skipping %s: %s", identity.path, err)
            bad = BadFile(path=identity.path, treename=identity.treename, error=str(err))
            return UnusableFile(**asdict(identity), key=identity.key, error=str(err)), bad
        assert record is not None
        write_json(path, record.model_dump(mode="json"))
    else:
        log.info("cached %s", identity.path)
    return PreprocessedFile(**record.model_dump(), record_path=str(path)), None
