"""What the storage says about remote files without opening them, and the XRootD client's state.

:func:`stat_remote` asks each server for the size and modification time of many
files at once: XRootD ``stat`` requests, all in flight together on one
connection per server (the client's asynchronous callbacks), and an HTTP
``HEAD`` per file (``Content-Length``, ``Last-Modified``, ``ETag``) from a few
threads. 10^4 files behind 20 ms of latency take about a second.

The XRootD client (through fsspec-xrootd) keeps state that defeats retries in
the same process: it fails every request to a server for 30 minutes after a
connection to it was lost (``StreamErrorWindow``), and fsspec-xrootd keeps the
dead file handles of vector reads. :func:`prepare_xrootd` and
:func:`drop_broken_handles` undo both, so that an in-job retry reconnects.
"""

from __future__ import annotations

import email.utils
import errno
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from coffea_smk.io.faults import XROOTD_NOT_FOUND, xrootd_error_code

STAT_TIMEOUT = 60
"""Seconds to wait for one stat (XRootD) or HEAD (HTTP) answer."""
_HTTP_THREADS = 16


@dataclass(frozen=True)
class RemoteStat:
    """What the storage says identifies a file's content."""

    size: int | None
    mtime_ns: int | None
    etag: str | None = None
    """HTTP only: the entity tag, when the server gives one."""


def _xrootd_client() -> Any:
    import XRootD.client  # noqa: PLC0415  optional (the xrootd extra), and only for root:// inputs

    return XRootD.client


_prepared = False


def prepare_xrootd() -> None:
    """Let the XRootD client reconnect right after a lost connection (``StreamErrorWindow`` 0).

    Its default (1800 s) fails every request to a server for half an hour once
    a connection to it was lost, so coffea_smk's in-job retries (``retries``,
    ``retry_backoff``) could never reach a restarted server. An
    ``XRD_STREAMERRORWINDOW`` set in the environment is kept.
    """
    global _prepared
    if not _prepared:
        _xrootd_client().EnvPutInt("StreamErrorWindow", 0)  # False (kept) when the environment sets it
        _prepared = True


def drop_broken_handles() -> int:
    """Forget the file handles that fsspec-xrootd keeps for vector reads and that lost their connection.

    Such a handle stays cached (per file URL) and fails every later read of the
    file with "I/O operation on closed file"; without it, the next read opens
    the file again. Returns how many were dropped (none when fsspec-xrootd was never used).
    """
    module = sys.modules.get("fsspec_xrootd.xrootd")
    if module is None:
        return 0
    dropped = 0
    # fsspec keeps its file system instances in the class's instance cache (private, hence the getattr)
    for fs in list(getattr(module.XRootDFileSystem, "_cache", {}).values()):
        cache = getattr(getattr(fs, "_readonly_filehandle_cache", None), "_cache", None)
        if not isinstance(cache, dict):
            continue
        for url, item in list(cache.items()):
            handle = getattr(item, "handle", None)
            if handle is not None and not handle.is_open():
                cache.pop(url, None)
                dropped += 1
    return dropped


def stat_remote(urls: Iterable[str], timeout: int = STAT_TIMEOUT) -> dict[str, RemoteStat | OSError]:
    """Size and modification time of each ``root://`` or ``http(s)://`` URL, without opening it.

    Returns:
        ``{url: RemoteStat}``, or the error for a URL that could not be stat-ed: a
        ``FileNotFoundError`` when the server says it does not exist, else an
        ``OSError`` whose message is the storage's (transient or not, see
        :func:`coffea_smk.io.faults.transient`).
    """
    by_protocol: dict[str, list[str]] = defaultdict(list)
    for url in dict.fromkeys(urls):
        by_protocol[url.split("://", 1)[0].lower()].append(url)
    out: dict[str, RemoteStat | OSError] = {}
    if by_protocol.get("root"):
        out.update(_stat_xrootd(by_protocol.pop("root"), timeout))
    http = by_protocol.pop("http", []) + by_protocol.pop("https", [])
    if http:
        with ThreadPoolExecutor(min(_HTTP_THREADS, len(http))) as pool:
            out.update(zip(http, pool.map(lambda u: _head(u, timeout), http), strict=True))
    for protocol, rest in by_protocol.items():
        for url in rest:
            out[url] = OSError(errno.EPROTONOSUPPORT, f"{url}: cannot stat {protocol}:// files")
    return out


def _stat_xrootd(urls: list[str], timeout: int) -> dict[str, RemoteStat | OSError]:
    """XRootD stats, all sent at once, one ``FileSystem`` (one connection) per server."""
    client = _xrootd_client()
    prepare_xrootd()
    by_server: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for url in urls:
        parsed = client.URL(url)
        by_server[f"{parsed.protocol}://{parsed.hostid}"].append((url, parsed.path_with_params))
    out: dict[str, RemoteStat | OSError] = {}
    done = threading.Condition()

    def answer(url: str) -> Any:
        def callback(status: Any, info: Any, hosts: Any) -> None:
            result = _xrootd_result(url, status, info)
            with done:
                out[url] = result
                done.notify_all()

        return callback

    servers = [client.FileSystem(server) for server in by_server]
    for fs, files in zip(servers, by_server.values(), strict=True):
        for url, path in files:
            submitted = fs.stat(path, timeout=timeout, callback=answer(url))
            if not submitted.ok:
                out[url] = _xrootd_result(url, submitted, None)
    deadline = time.monotonic() + 2 * timeout + 30  # the client answers every request by its timeout
    with done:
        while len(out) < len(urls) and done.wait(max(0.0, deadline - time.monotonic())):
            pass
    for url in urls:
        out.setdefault(url, TimeoutError(errno.ETIMEDOUT, f"{url}: no answer to stat in {timeout} s"))
    return out


def _xrootd_result(url: str, status: Any, info: Any) -> RemoteStat | OSError:
    if status.ok and info is not None:
        return RemoteStat(int(info.size), int(info.modtime) * 1_000_000_000)
    message = f"{url}: stat failed: {status.message.strip()}"
    if status.errno == XROOTD_NOT_FOUND or xrootd_error_code(message) == XROOTD_NOT_FOUND:
        return FileNotFoundError(errno.ENOENT, message)
    return OSError(message)


def _head(url: str, timeout: int) -> RemoteStat | OSError:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            headers = response.headers
    except urllib.error.HTTPError as err:
        if err.code in (404, 410):
            return FileNotFoundError(errno.ENOENT, f"{url}: HTTP {err.code} {err.reason}")
        return err  # an OSError that keeps its status: 503 is transient, 403 is not
    except OSError as err:
        return err
    length = headers.get("Content-Length")
    modified = headers.get("Last-Modified")
    mtime_ns = None
    if modified:
        try:
            mtime_ns = int(email.utils.parsedate_to_datetime(modified).timestamp()) * 1_000_000_000
        except (TypeError, ValueError):
            mtime_ns = None
    return RemoteStat(int(length) if length and length.isdigit() else None, mtime_ns, headers.get("ETag"))
