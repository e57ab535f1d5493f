"""What the storage says about remote files without opening them, and the XRootD client's state.

:func:`stat_remote` asks each server for the size and modification time of many
files at once: XRootD ``stat`` requests, all in flight together on one
connection per server (the client's asynchronous callbacks), and an HTTP
``HEAD`` per file (``Content-Length``, ``Last-Modified``, ``ETag``) from a few
threads. 10^4 files behind 20 ms of latency take about a second.

Whether a storage host answers at all is decided once per host, never per file:
:func:`probe_hosts` opens a TCP connection to each (a short timeout, a few
tries, all hosts at once), and :func:`unreachable` tells a failed connection
(the server said nothing) from an answer (no such file, overloaded). The XRootD
client would otherwise wait out a dead server for each request (its
``ConnectionWindow`` of 120 s, 5 tries: an open took 7 minutes, measured);
:func:`quick_connections` makes it give up within seconds where that is wanted
(the stats at the workflow's start; the jobs of a run whose start found a host
down, :data:`DOWN_ENV`).

The XRootD client (through fsspec-xrootd) keeps state that defeats retries in
the same process: it fails every request to a server for 30 minutes after a
connection to it was lost (``StreamErrorWindow``), and fsspec-xrootd keeps the
dead file handles of vector reads. :func:`prepare_xrootd` and
:func:`drop_broken_handles` undo both, so that an in-job retry reconnects.
"""

from __future__ import annotations

import email.utils
import errno
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from coffea_smk.io.faults import XROOTD_NOT_FOUND, causes, transient, xrootd_error_code

STAT_TIMEOUT = 60
"""Seconds to wait for one stat (XRootD) or HEAD (HTTP) answer."""
_HTTP_THREADS = 16

PROBE_TIMEOUT = 1.5
"""Seconds to wait for a storage host to accept a TCP connection (:func:`probe_hosts`)."""
PROBE_TRIES = 2
"""Connections tried per host before it is declared unreachable."""
PROBE_PAUSE = 0.5
"""Seconds between two tries."""
STAT_CONNECTION = (3, 2)
"""The XRootD client's ``ConnectionWindow`` (s) and ``ConnectionRetry`` for the stats at the
workflow's start (:func:`quick_connections`): a server that accepts connections but never
answers costs 6 s, not 5 x 120."""
JOB_CONNECTION = (2, 1)
"""The same for the jobs of a run whose start found a host unreachable (:data:`DOWN_ENV`): an
open of one of its files fails within about a second, and the job's retries take over."""
DOWN_ENV = "COFFEA_SMK_STORAGE_DOWN"
"""The storage hosts (``root://host:port``, space-separated) the workflow's start found
unreachable, set for its jobs: their XRootD client then gives up on a connection quickly."""
_DEFAULT_PORTS = {"root": 1094, "roots": 1094, "http": 80, "https": 443}
STAT_PROTOCOLS = ("root", "http", "https")
"""The protocols :func:`stat_remote` asks (others are answered: cannot stat)."""


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
    ``XRD_STREAMERRORWINDOW`` set in the environment is kept. In a job of a run
    whose start found a storage host unreachable (:data:`DOWN_ENV`), the client
    also gives up on a connection quickly (:data:`JOB_CONNECTION`).
    """
    global _prepared
    if not _prepared:
        _xrootd_client().EnvPutInt("StreamErrorWindow", 0)  # False (kept) when the environment sets it
        if os.environ.get(DOWN_ENV, "").strip():
            quick_connections(*JOB_CONNECTION)
        _prepared = True


_quick = False


def quick_connections(window: int, retry: int) -> None:
    """Make this process's XRootD client give up on a server that does not answer after about
    ``window`` x ``retry`` seconds (its ``ConnectionWindow`` and ``ConnectionRetry``, 120 s and 5
    by default), for the connections it makes from now on, to any server. Values set in the
    environment (``XRD_CONNECTIONWINDOW``, ``XRD_CONNECTIONRETRY``) are kept."""
    global _quick
    if not _quick:
        client = _xrootd_client()
        client.EnvPutInt("ConnectionWindow", window)  # False (kept) when the environment sets it
        client.EnvPutInt("ConnectionRetry", retry)
        _quick = True


def host_of(url: str) -> str:
    """The storage host of a remote URL, as ``scheme://host:port`` (the default port made explicit)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS.get(scheme, 0)}"


def unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the storage did not answer at all (no connection, a timeout) rather
    than answering *no* (no such file, no permission) or *later* (XRootD's ``[3024]`` overloaded,
    an HTTP 503): a transient I/O error that comes with no status of a server."""
    if not transient(err):
        return False
    for e in causes(err):
        if isinstance(e, OSError) and e.errno is None and xrootd_error_code(str(e)) is not None:
            return False
        if isinstance(getattr(e, "code", None), int) or isinstance(getattr(e, "status", None), int):
            return False  # an HTTP status
    return True


def probe_hosts(
    hosts: Iterable[str],
    *,
    timeout: float = PROBE_TIMEOUT,
    tries: int = PROBE_TRIES,
    pause: float = PROBE_PAUSE,
) -> dict[str, OSError | None]:
    """Whether each storage host (:func:`host_of`) accepts a TCP connection: ``{host: None}``
    when it does, else the error of its last try.

    All hosts are tried at once, each ``tries`` times ``pause`` seconds apart, so dead hosts
    cost at most ``tries * (timeout + pause)`` seconds however many they are and however many
    files they hold. A name lookup that hangs is cut off too (the threads are daemons: a host
    without an answer by the deadline is unreachable). An HTTP host reached through a proxy
    (``http_proxy``) is not probed: its first request tells.
    """
    todo = list(dict.fromkeys(hosts))
    out: dict[str, OSError | None] = {}
    done = threading.Condition()

    def probe(host: str) -> None:
        result = _probe(host, timeout, tries, pause)
        with done:
            out[host] = result
            done.notify_all()

    for host in todo:
        threading.Thread(target=probe, args=(host,), name="coffea_smk-probe", daemon=True).start()
    deadline = time.monotonic() + tries * (timeout + pause) + 1.0
    with done:
        while len(out) < len(todo) and done.wait(max(0.0, deadline - time.monotonic())):
            pass
        for host in todo:
            out.setdefault(host, TimeoutError(errno.ETIMEDOUT, f"{host}: no answer in {timeout} s"))
        return dict(out)


def _probe(host: str, timeout: float, tries: int, pause: float) -> OSError | None:
    parts = urllib.parse.urlsplit(host)
    if parts.scheme in ("http", "https") and parts.scheme in urllib.request.getproxies():
        if not urllib.request.proxy_bypass(parts.hostname or ""):
            return None  # through a proxy: a connection to the proxy would say nothing
    error: OSError | None = None
    for attempt in range(max(1, tries)):
        if attempt:
            time.sleep(pause)
        try:
            socket.create_connection((parts.hostname or "", parts.port or 0), timeout=timeout).close()
            return None
        except OSError as err:
            error = err
            if isinstance(err, socket.gaierror) and err.errno == socket.EAI_NONAME:
                break  # no such host name: asking again does not help
    return error


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
    quick_connections(*STAT_CONNECTION)
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
