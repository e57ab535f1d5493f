"""A local HTTP server with byte ranges, standing in for remote storage (tests, benchmarks).

``serve(directory, latency=0.01)`` serves the files of ``directory`` at
``http://127.0.0.1:<port>/<name>``, answering ``Range: bytes=a-b`` requests,
each after ``latency`` seconds (a storage element's round trip). Used as a
context manager; counts the requests it answered and logs them.

Faults, switched on and off while it runs (an overloaded storage element)::

    with serve(directory) as remote:
        remote.fail("a.root", at="read", times=2)   # reset the next read of a basket, twice
        remote.fail("a.root", at="open")            # reset every open of it from now on
        remote.heal()                               # storage healthy again

A faulty request gets a TCP reset (``SO_LINGER`` 0, no response). ``at="open"``
hits the requests that are not byte-range reads of the file's data region
(HEAD, and the header, directory and metadata reads that opening a file and
its tree makes); ``at="read"`` hits the byte-range reads that start in a
basket (the data region). With ``times``, a read fault stays on the first
range it hits, so a request and its repeats fail: an HTTP client's own retry
(aiohttp >= 3.10 repeats a failed idempotent request once) cannot hide it
the way it hides single resets of concurrent requests. The baskets are found once per file, by uproot, from
the basket positions of every tree in the file.
"""

from __future__ import annotations

import bisect
import math
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Request:
    """One request as the server saw it (``reset``: answered with a TCP reset)."""

    method: str
    name: str
    start: int
    stop: int
    kind: str
    """``read`` (a byte range starting in a basket) or ``open`` (any other); ``""`` for
    a file that no fault was ever set on (its baskets are not looked up)."""
    reset: bool


@dataclass
class _Fault:
    at: str
    times: int | None  # None: forever
    range: tuple[int, int] | None = None  # a read fault with ``times``: the range it stays on


@dataclass
class Served:
    url: str
    root: Path = Path()
    requests: int = 0
    bytes_sent: int = 0
    log: list[Request] = field(default_factory=list)
    _faults: dict[tuple[str, str], _Fault] = field(default_factory=dict)
    _baskets: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, name: str) -> str:
        return f"{self.url}/{name}"

    def fail(self, name: str, at: str, times: int | None = None) -> None:
        """Reset the ``open`` or ``read`` requests of file ``name``: the next ``times`` ones, or all."""
        if at not in ("open", "read"):
            raise ValueError(f"at must be 'open' or 'read', not {at!r}")
        self.baskets(name)  # found now, not while a request waits
        with self._lock:
            self._faults[(name, at)] = _Fault(at, times)

    def heal(self) -> None:
        """No more faults."""
        with self._lock:
            self._faults.clear()

    def resets(self, name: str | None = None, kind: str | None = None) -> int:
        """How many requests (of file ``name``, of ``kind``) were answered with a reset."""
        with self._lock:
            return sum(r.reset and name in (None, r.name) and kind in (None, r.kind) for r in self.log)

    def baskets(self, name: str) -> list[tuple[int, int]]:
        """The byte ranges of the file's baskets (its data region), sorted."""
        with self._lock:
            if name in self._baskets:
                return self._baskets[name]
        ranges = basket_ranges(self.root / name)
        with self._lock:
            self._baskets[name] = ranges
        return ranges

    def _decide(self, method: str, name: str, start: int, stop: int) -> bool:
        """Log the request; whether to reset it."""
        with self._lock:
            ranges = self._baskets.get(name)
        kind = ""  # not classified: no fault was ever set on this file (finding its baskets costs)
        if ranges is not None:
            i = bisect.bisect_right(ranges, (start, math.inf)) - 1
            kind = "read" if method == "GET" and i >= 0 and start < ranges[i][1] else "open"
        with self._lock:
            fault = self._faults.get((name, kind))
            reset = fault is not None and (fault.times is None or fault.times > 0)
            if reset and fault is not None and kind == "read" and fault.times is not None:
                fault.range = fault.range or (start, stop)
                reset = fault.range == (start, stop)
            if reset and fault is not None and fault.times is not None:
                fault.times -= 1
            self.log.append(Request(method, name, start, stop, kind, reset))
        return reset


def basket_ranges(path: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """The byte ranges ``[seek, seek + bytes)`` of the baskets of every TTree of a ROOT file, sorted."""
    import uproot

    ranges = []
    with uproot.open(path) as f:
        for key, classname in f.classnames().items():
            if classname != "TTree":
                continue
            for branch in f[key].itervalues(recursive=True):
                n = branch.member("fWriteBasket")  # the baskets written out (not kept in the tree)
                seeks, sizes = branch.member("fBasketSeek")[:n], branch.member("fBasketBytes")[:n]
                ranges.extend((int(a), int(a) + int(b)) for a, b in zip(seeks, sizes, strict=True))
    return sorted(ranges)


@contextmanager
def serve(directory: str | os.PathLike[str], latency: float = 0.0) -> Iterator[Served]:
    root = Path(directory).resolve()
    served = Served("", root)
    to_reset: set[int] = set()  # ids of the sockets to close with a reset

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else Nagle + delayed ACKs add ~40 ms per response

        def log_message(self, *args: object) -> None:
            pass

        def _target(self) -> Path | None:
            path = (root / self.path.lstrip("/").split("?")[0]).resolve()
            return path if path.is_file() and root in path.parents else None

        def _reset(self, method: str, path: Path, start: int, stop: int) -> bool:
            if not served._decide(method, path.name, start, stop):
                return False
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            with served._lock:
                to_reset.add(id(self.connection))
            return True

        def do_HEAD(self) -> None:
            path = self._target()
            if path is None:
                self.send_error(404)
                return
            size = path.stat().st_size
            if self._reset("HEAD", path, 0, 0):
                return
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def do_GET(self) -> None:
            path = self._target()
            if path is None:
                self.send_error(404)
                return
            size = path.stat().st_size
            start, stop = 0, size
            match = _RANGE.match(self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
                stop = min(size, int(match.group(2)) + 1) if match.group(2) else size
            time.sleep(latency)
            if self._reset("GET", path, start, stop):
                return
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(stop - start)
            self.send_response(206 if match else 200)
            if match:
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(data)
            with served._lock:
                served.requests += 1
                served.bytes_sent += len(data)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
            with served._lock:
                reset = id(request) in to_reset
                to_reset.discard(id(request))
            if reset:
                request.close()  # no FIN first: with SO_LINGER 0 the peer gets a reset
            else:
                super().shutdown_request(request)

    server = Server(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
