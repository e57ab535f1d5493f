"""What identifies remote input files when the workflow starts (``remote_identity``).

With ``remote_identity: stat`` the storage is asked once, for all remote files
together (:func:`coffea_smk.io.remote.stat_remote`), each time the workflow is
parsed by the process that starts the run; the answers are kept in the cache
(``cache/remote/<key>.json``) so that a cluster job's own parse of the workflow
reads them instead of asking the storage again.

**A storage host that does not answer is decided once** (:func:`stat_remote_files`):
every host is first probed (a TCP connection, a short timeout, a few tries: all
hosts at once), then asked for one file; a host that refuses, times out or drops
the connection is *down* for this run, and none of its files is asked (10^4 files
on a dead host cost what 10 do). Its files are then *taken on their records*
(:func:`recorded_stats`): what the storage said of them when an earlier run
started, the newest table first. A file that no earlier run stat-ed cannot be
keyed. What the start assumed is kept in ``cache/remote/last-run.json``
(:class:`RunRecord`), which ``coffea-smk status`` and ``summary`` read: a no-op
run writes no result to say it in.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coffea_smk.io.faults import transient
from coffea_smk.io.remote import (
    STAT_PROTOCOLS,
    RemoteStat,
    host_of,
    probe_hosts,
    stat_remote,
    unreachable,
)
from coffea_smk.spec.config import AnalysisConfig, ConfigError, Dataset
from coffea_smk.util.atomic import write_json

STATS_ENV = "COFFEA_SMK_REMOTE_STATS"
"""The key of what the storage said of the remote inputs when the workflow started (the table
``cache/remote/<key>.json``), passed to the jobs so that their own parse does not ask again."""
RUN_RECORD = "last-run.json"
"""The run record's name in ``cache/remote/`` (beside the tables, whose names are keys)."""
_TABLE_NAME = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class DownHost:
    """A storage host the workflow's start could not reach, and what it did about its files."""

    host: str
    """``scheme://host:port``."""
    error: str
    """Why: the last error of its probe or of its first stat, ``Type: message``."""
    recorded: tuple[str, ...] = ()
    """Its files taken on their records (the identity an earlier run's start found)."""
    unrecorded: tuple[str, ...] = ()
    """Its files that no earlier run stat-ed: they cannot be keyed (skipped with ``skip_bad_files``)."""


@dataclass
class StorageAnswers:
    """What :func:`stat_remote_files` found: an answer per remote file, and the hosts that are down."""

    stats: dict[str, RemoteStat | OSError] = field(default_factory=dict)
    down: dict[str, str] = field(default_factory=dict)
    """``{host: error}`` of the hosts that did not answer (their files' answers are that error)."""


@dataclass(frozen=True)
class StatTable:
    """What a table in ``cache/remote/`` holds."""

    stats: dict[str, RemoteStat]
    down: dict[str, DownHost]


def read_table(path: Path) -> StatTable:
    """A table :meth:`Layout.save_stats` wrote; empty if it is missing or damaged.

    Two shapes: ``{url: stat}`` (no host was down), or ``{"stats": {url: stat}, "down": {host:
    DownHost}}``.
    """
    try:
        raw = json.loads(path.read_text())
        if isinstance(raw.get("stats"), dict) and isinstance(raw.get("down"), dict):
            stats = {str(url): RemoteStat(**st) for url, st in raw["stats"].items()}
            down = {str(h): _down_host(d) for h, d in raw["down"].items()}
            return StatTable(stats, down)
        return StatTable({str(url): RemoteStat(**st) for url, st in raw.items()}, {})
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return StatTable({}, {})


_this_process: dict[str, StatTable] = {}


def remember(key: str, table: StatTable) -> None:
    """Keep what this process found at the workflow's start (its key goes to :data:`STATS_ENV`)."""
    if key:
        _this_process[key] = table


def remembered() -> StatTable | None:
    """What this process found at the workflow's start, if :data:`STATS_ENV` names it.

    The progress view makes its own layout in the process that starts the run, after the
    workflow's: it takes the same answers rather than asking the storage again. Only answers of
    this very process count (an inherited environment cannot name them).
    """
    key = os.environ.get(STATS_ENV, "")
    return _this_process.get(key) if key else None


def read_stats(path: Path) -> dict[str, RemoteStat]:
    """The stats of a table (see :func:`read_table`)."""
    return read_table(path).stats


def table_content(stats: dict[str, RemoteStat], down: Iterable[DownHost]) -> dict[str, Any]:
    """What :func:`read_table` reads back: ``stats`` alone when no host is down (the shape of old)."""
    plain = {url: asdict(st) for url, st in sorted(stats.items())}
    hosts = {d.host: asdict(d) for d in sorted(down, key=lambda d: d.host)}
    return {"stats": plain, "down": hosts} if hosts else plain


def _down_host(raw: dict[str, Any]) -> DownHost:
    return DownHost(
        str(raw["host"]),
        str(raw["error"]),
        tuple(raw.get("recorded", ())),
        tuple(raw.get("unrecorded", ())),
    )


def stat_remote_files(
    cfg: AnalysisConfig,
    datasets: Iterable[Dataset],
    known: dict[str, RemoteStat],
    known_down: Mapping[str, DownHost] | None = None,
) -> StorageAnswers:
    """What the storage says of every remote input file not ``known`` yet (``remote_identity: stat``).

    Each storage host is decided once: probed (:func:`~coffea_smk.io.remote.probe_hosts`), then
    asked for its first file; a host that does not answer either (:func:`~coffea_smk.io.remote.
    unreachable`) is down, and its other files are not asked. The other hosts' files are asked
    all at once; transient failures of a host that answers are asked again ``retries`` times,
    after ``retry_backoff`` doubled each time. The files of ``known_down`` hosts that are not
    ``known`` are not asked either (a job's parse: its run's start found them down).
    """
    if cfg.remote_identity != "stat":
        return StorageAnswers()
    urls = list(dict.fromkeys(f.path for d in datasets for f in d.files if f.is_remote))
    out = StorageAnswers({u: known[u] for u in urls if u in known})
    by_host: dict[str, list[str]] = defaultdict(list)
    unsupported = []
    for url in urls:
        if url in out.stats:
            continue
        if url.split("://", 1)[0].lower() in STAT_PROTOCOLS:
            by_host[host_of(url)].append(url)
        else:
            unsupported.append(url)
    out.stats.update(stat_remote(unsupported))  # the answer: cannot stat them
    for host, d in (known_down or {}).items():
        if by_host.pop(host, None):
            out.down[host] = d.error
    if not by_host:
        return out
    for host, err in probe_hosts(by_host).items():
        if err is not None:
            out.down[host] = f"{type(err).__name__}: {err}"
    # one file of each host that accepted a connection: does its server answer?
    first = {host: files[0] for host, files in by_host.items() if host not in out.down}
    out.stats.update(stat_remote(first.values()))
    for host, url in first.items():
        answer = out.stats[url]
        if isinstance(answer, OSError) and unreachable(answer):
            out.down[host] = f"{type(answer).__name__}: {answer}"
    live = [u for host, files in by_host.items() if host not in out.down for u in files]
    out.stats.update(stat_remote([u for u in live if u not in out.stats]))
    todo = [u for u in live if _retry(out.stats[u])]
    for attempt in range(cfg.retries):
        if not todo:
            break
        time.sleep(cfg.retry_backoff * 2**attempt)
        out.stats.update(stat_remote(todo))
        todo = [u for u in todo if _retry(out.stats[u])]
    for host, error in out.down.items():
        for url in by_host.get(host, ()):
            out.stats[url] = ConnectionError(f"storage {host} is unreachable ({error})")
    return out


def _retry(answer: RemoteStat | OSError) -> bool:
    return isinstance(answer, OSError) and transient(answer)


def recorded_stats(remote_dir: Path, urls: Iterable[str]) -> dict[str, RemoteStat]:
    """What earlier runs' starts found of ``urls`` (the tables in ``remote_dir``, newest first).

    A table is touched each time a run starts with it (:meth:`Layout.save_stats`), so the newest
    holds the last answer; the others are read only for the files it does not have.
    """
    wanted = set(urls)
    out: dict[str, RemoteStat] = {}
    try:
        tables = [p for p in remote_dir.glob("*.json") if _TABLE_NAME.fullmatch(p.stem)]
        tables.sort(key=_mtime, reverse=True)
    except OSError:
        return out
    for path in tables:
        if not wanted:
            break
        stats = read_stats(path)
        for url in wanted & stats.keys():
            out[url] = stats[url]
        wanted -= stats.keys()
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def touch(path: Path) -> None:
    """Mark a table as the newest (a run started with it again); never fails."""
    try:
        os.utime(path)
    except OSError:
        pass


@dataclass(frozen=True)
class RunRecord:
    """What the last run's start assumed about the storage (``cache/remote/last-run.json``)."""

    started: str
    """When the workflow started (local time, ISO 8601)."""
    analysis_key: str
    down: tuple[DownHost, ...] = ()
    """The hosts that did not answer (none: every remote file was stat-ed)."""

    @property
    def taken_on_records(self) -> int:
        return sum(len(d.recorded) for d in self.down)

    def write(self, path: Path) -> None:
        write_json(path, {**asdict(self), "down": [asdict(d) for d in self.down]})

    @classmethod
    def read(cls, path: Path) -> RunRecord | None:
        """The record at ``path``; None if it is missing or damaged."""
        try:
            raw = json.loads(path.read_text())
            down = tuple(_down_host(d) for d in raw.get("down", ()))
            return cls(str(raw["started"]), str(raw["analysis_key"]), down)
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            return None


def describe_down(down: Iterable[DownHost], *, examples: int = 0) -> str:
    """``root://a:1094 (3 files; ConnectionRefusedError: ...), ...`` (with up to ``examples``
    file names each)."""
    parts = []
    for d in down:
        files = f"{len(d.recorded)} files taken on their records"
        if d.unrecorded:
            files += f", {len(d.unrecorded)} never stat-ed"
        shown = list(d.recorded[:examples])
        more = f", ... ({len(d.recorded) - examples} more)" if len(d.recorded) > examples > 0 else ""
        names = f": {', '.join(shown)}{more}" if shown else ""
        parts.append(f"{d.host} ({files}; {d.error}){names}")
    return "; ".join(parts)


def take_on_records(
    answers: StorageAnswers, remote_dir: Path, datasets: Iterable[Dataset], *, skip: bool
) -> tuple[DownHost, ...]:
    """Take the files of the hosts that are down on their records (in ``answers``, in place).

    Raises:
        ConfigError: Files that no earlier run stat-ed (unless ``skip``: ``skip_bad_files``,
            then they are identified by URL and tree and fail, listed, at preprocessing).
    """
    if not answers.down:
        return ()
    of_host: dict[str, list[str]] = {h: [] for h in answers.down}
    where: dict[str, str] = {}
    for d in datasets:
        for f in d.files:
            if f.is_remote and f.path not in where:
                where[f.path] = d.name
                host = host_of(f.path)
                if host in of_host:
                    of_host[host].append(f.path)
    recorded = recorded_stats(remote_dir, (u for urls in of_host.values() for u in urls))
    answers.stats.update(recorded)
    down = tuple(
        DownHost(
            host,
            answers.down[host],
            tuple(u for u in urls if u in recorded),
            tuple(u for u in urls if u not in recorded),
        )
        for host, urls in of_host.items()
    )
    unknown = [(d.host, d.error, u) for d in down for u in d.unrecorded]
    for _, _, url in unknown if skip else ():
        answers.stats.pop(url, None)  # identified by URL and tree: preprocessing fails it, listed
    if unknown and not skip:
        host, error, first = unknown[0]
        files = f"{first} (and {len(unknown) - 1} more files)" if len(unknown) > 1 else first
        raise ConfigError(
            f"storage {host} is unreachable ({error}); input file {files} of dataset "
            f"{where[first]!r} was never stat-ed by an earlier run, so it cannot be identified. "
            "Run again when the storage is up, remove it from the fileset, or set skip_bad_files: "
            "true to go on without it (remote_identity: url does not ask the storage)"
        )
    return down
