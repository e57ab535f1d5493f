"""What identifies remote input files when the workflow starts (``remote_identity``).

With ``remote_identity: stat`` the storage is asked once, for all remote files
together (:func:`coffea_smk.io.remote.stat_remote`), each time the workflow is
parsed by the process that starts the run; the answers are kept in the cache
(``cache/remote/<key>.json``) so that a cluster job's own parse of the workflow
reads them instead of asking the storage again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from coffea_smk.io.faults import transient
from coffea_smk.io.remote import RemoteStat, stat_remote
from coffea_smk.spec.config import AnalysisConfig, Dataset


def read_stats(path: Path) -> dict[str, RemoteStat]:
    """A table :meth:`Layout.save_stats` wrote; empty if it is missing or damaged."""
    try:
        raw = json.loads(path.read_text())
        return {str(url): RemoteStat(**st) for url, st in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def stat_remote_files(
    cfg: AnalysisConfig, datasets: Iterable[Dataset], known: dict[str, RemoteStat]
) -> dict[str, RemoteStat | OSError]:
    """What the storage says of every remote input file not ``known`` yet (``remote_identity: stat``).

    Transient failures are asked again ``retries`` times, after ``retry_backoff`` doubled each time.
    """
    if cfg.remote_identity != "stat":
        return {}
    urls = list(dict.fromkeys(f.path for d in datasets for f in d.files if f.is_remote))
    out: dict[str, RemoteStat | OSError] = {u: known[u] for u in urls if u in known}
    todo = [u for u in urls if u not in out]
    for attempt in range(cfg.retries + 1):
        if not todo:
            break
        if attempt:
            time.sleep(cfg.retry_backoff * 2 ** (attempt - 1))
        out.update(stat_remote(todo))
        todo = [u for u in todo if _retry(out[u])]
    return out


def _retry(answer: RemoteStat | OSError) -> bool:
    return isinstance(answer, OSError) and transient(answer)
