"""A fork server for local jobs: the cost of importing numpy, awkward, uproot and hist is paid once.

Every Snakemake job is a new Python process; importing the scientific stack
costs ~0.3-0.7 s, which for thousands of short jobs is most of the run. When
``coffea-smk run`` executes locally it starts this server, which imports the
stack once and forks a child per job. The job command (``python -m
coffea_smk job ...``) becomes a thin client: it sends its arguments, working
directory, environment and its stdout/stderr file descriptors over a Unix
socket, waits for the exit code, and exits with it. If the client is killed,
the child notices and dies with it; if the server is unreachable, the client
runs the job itself. Cluster executors never use it (the socket's host must
be the job's host).
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
from collections.abc import Iterable
from typing import TypedDict

ENV = "COFFEA_SMK_JOBSERVER"
_MAX_REQUEST = 1 << 24


class _Request(TypedDict):
    """What a client sends: the job's arguments, working directory and environment."""

    argv: list[str]
    cwd: str
    env: dict[str, str]


def address(sock_path: str) -> str:
    """The value of ``$COFFEA_SMK_JOBSERVER``: host and socket path."""
    return f"{socket.gethostname()}:{sock_path}"


# ---- client (imported by `python -m coffea_smk job`; keep it light) ---------------------
def run_via_server(argv: list[str]) -> int | None:
    """Run a job step in the server; None if there is no usable server here."""
    value = os.environ.get(ENV, "")
    host, _, path = value.partition(":")
    if not path or host != socket.gethostname() or not os.path.exists(path):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        body: _Request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}
        request = json.dumps(body).encode()
        sys.stdout.flush()
        sys.stderr.flush()
        socket.send_fds(conn, [struct.pack("!I", len(request))], [1, 2])
        conn.sendall(request)
    except OSError:
        conn.close()
        return None
    reply = b""
    while len(reply) < 4:
        chunk = conn.recv(4 - len(reply))
        if not chunk:
            print("coffea_smk: the job server died during the job", file=sys.stderr)
            return 1
        reply += chunk
    conn.close()
    return int(struct.unpack("!i", reply)[0])


# ---- server ------------------------------------------------------------------------------
def _preload(extra: Iterable[str] = ()) -> None:
    """Import what jobs use, once, in the server (after it listens; never in the client);
    ``extra`` modules too (coffea for coffea processors), those that fail to import left to the jobs."""
    import awkward  # noqa: F401, PLC0415  the server's whole point: imported once, after listening
    import hist  # noqa: F401, PLC0415  (as above)
    import numpy  # noqa: F401, PLC0415  (as above)
    import uproot  # noqa: F401, PLC0415  (as above)
    import vector  # noqa: F401, PLC0415  (as above)

    import coffea_smk.engine.process  # noqa: PLC0415  (as above)
    import coffea_smk.smk.jobs  # noqa: F401, PLC0415  (as above)

    for name in extra:
        try:
            importlib.import_module(name)
        except Exception:  # the job that needs it reports why
            continue


def _child(conn: socket.socket, fds: list[int], request: _Request) -> None:
    """Runs in the forked child: become the job, report its exit code."""
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["coffea_smk", "job", *request["argv"]]

    def watch() -> None:
        # The client sends nothing more: EOF means it was killed, and so is the job.
        try:
            conn.recv(1)
        finally:
            os._exit(137)

    threading.Thread(target=watch, daemon=True).start()
    code = 1
    try:
        from coffea_smk.smk.jobs import main  # noqa: PLC0415  the client never imports the job steps

        code = main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException as err:
        print(f"coffea_smk job failed in the job server: {err!r}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            conn.sendall(struct.pack("!i", code))
        finally:
            os._exit(code)


def _receive(conn: socket.socket) -> tuple[list[int], _Request]:
    msg, fds, _, _ = socket.recv_fds(conn, 4, 2)
    (size,) = struct.unpack("!I", msg)
    if size > _MAX_REQUEST:
        raise ValueError("request too large")
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    raw = json.loads(data)
    if not (
        isinstance(raw, dict)
        and isinstance(raw.get("argv"), list)
        and isinstance(raw.get("cwd"), str)
        and isinstance(raw.get("env"), dict)
    ):
        raise ValueError("not a job request")
    return list(fds), _Request(argv=raw["argv"], cwd=raw["cwd"], env=raw["env"])


def serve(sock_path: str, preload: Iterable[str] = ()) -> None:
    """Serve jobs until the parent process (``coffea-smk run``) exits or SIGTERM; ``preload``:
    more modules to import before the first job is forked."""
    parent = os.getppid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel

    def stop(*_: object) -> None:
        # at once: tearing down the imported stack took ~0.2 s at the end of every run
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path + ".tmp")
    os.chmod(sock_path + ".tmp", 0o600)  # only the user's own jobs may connect
    server.listen(64)
    os.replace(sock_path + ".tmp", sock_path)  # ready when the path appears
    # Imports after listening: Snakemake starts meanwhile, and its first jobs
    # wait in the backlog rather than `coffea-smk run` waiting for the imports.
    _preload(preload)
    try:
        while os.getppid() == parent:
            ready, _, _ = select.select([server], [], [], 1.0)
            if not ready:
                continue
            conn, _ = server.accept()
            try:
                fds, request = _receive(conn)
            except (OSError, ValueError):
                conn.close()
                continue
            if os.fork() == 0:
                server.close()
                _child(conn, fds, request)
            for fd in fds:
                os.close(fd)
            conn.close()
    finally:
        server.close()
        if os.path.exists(sock_path):
            os.unlink(sock_path)
