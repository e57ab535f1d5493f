"""A local HTTP server with byte ranges, standing in for remote storage (tests, benchmarks).

``serve(directory, latency=0.01)`` serves the files of ``directory`` at
``http://127.0.0.1:<port>/<name>``, answering ``Range: bytes=a-b`` requests,
each after ``latency`` seconds (a storage element's round trip). Used as a
context manager; counts the requests it answered.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Served:
    url: str
    requests: int = 0
    bytes_sent: int = 0

    def __call__(self, name: str) -> str:
        return f"{self.url}/{name}"


@contextmanager
def serve(directory: str | os.PathLike[str], latency: float = 0.0) -> Iterator[Served]:
    root = Path(directory).resolve()
    lock = threading.Lock()
    served = Served("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else Nagle + delayed ACKs add ~40 ms per response

        def log_message(self, *args: object) -> None:
            pass

        def _target(self) -> Path | None:
            path = (root / self.path.lstrip("/").split("?")[0]).resolve()
            return path if path.is_file() and root in path.parents else None

        def do_HEAD(self) -> None:
            path = self._target()
            if path is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(path.stat().st_size))
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
            with lock:
                served.requests += 1
                served.bytes_sent += len(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
