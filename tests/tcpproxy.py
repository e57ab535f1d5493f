"""A TCP proxy that delays each direction, counts, and drops connections (tests, benchmarks).

This machine's kernel has no ``netem``: latency is added here instead. Every
chunk of bytes is forwarded ``rtt / 2`` seconds after it arrived, in both
directions, without limiting throughput (a wide-area link, not a slow one).
Run in its own process, so that it does not compete for the GIL of the program
it measures::

    with proxy(("127.0.0.1", 1094), rtt=0.02) as p:
        url = f"root://127.0.0.1:{p.port}//file.root"
        ...
        p.stats()   # connections, round trips, bytes each way
        p.drop()    # reset every open connection now (a storage hiccup)

A *round trip* is counted each time the client sends after the server has
answered (or sends first): requests sent together before any answer count
once, which is what the latency costs.

Also a command: ``python tests/tcpproxy.py LISTEN_PORT HOST:PORT --rtt 0.02``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Stats:
    connections: int = 0
    round_trips: int = 0
    bytes_up: int = 0
    """From the client to the server."""
    bytes_down: int = 0
    dropped: int = 0


class _Proxy:
    def __init__(
        self, target: tuple[str, int], rtt: float, stats_file: Path | None, trace: Path | None = None
    ) -> None:
        self.target, self.delay, self.stats_file = target, rtt / 2, stats_file
        self.trace = trace.open("a", buffering=1) if trace is not None else None
        self.stats = Stats()
        self.open: set[asyncio.StreamWriter] = set()

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.close()
            return
        for w in (cwriter, swriter):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stats.connections += 1
        self.open |= {cwriter, swriter}
        turn = ["server", str(self.stats.connections)]  # who sent last on this connection, and its number
        try:
            await asyncio.gather(
                self.pipe(creader, swriter, "client", turn), self.pipe(sreader, cwriter, "server", turn)
            )
        except asyncio.CancelledError:  # the proxy stops
            pass
        finally:
            self.open -= {cwriter, swriter}
            for w in (cwriter, swriter):
                w.close()

    async def pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, side: str, turn: list[str]
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.create_task(send())
        try:
            while data := await reader.read(1 << 16):
                if side == "client":
                    self.stats.bytes_up += len(data)
                    if turn[0] == "server":
                        self.stats.round_trips += 1
                        if self.trace is not None:
                            self.trace.write(f"{time.time():.4f} {turn[1]} {len(data)}\n")
                else:
                    self.stats.bytes_down += len(data)
                turn[0] = side
                queue.put_nowait((time.monotonic() + self.delay, data))
        except OSError:
            pass
        finally:
            queue.put_nowait((0.0, b""))
            try:
                await sender
            except OSError:
                pass

    def drop(self) -> None:
        """Reset every open connection (SO_LINGER 0)."""
        for w in list(self.open):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        self.stats.dropped += len(self.open) // 2
        self.write_stats()

    def write_stats(self) -> None:
        if self.stats_file is not None:
            tmp = self.stats_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(self.stats)))
            os.replace(tmp, self.stats_file)

    async def serve(self, port: int, ready: Path | None) -> None:
        server = await asyncio.start_server(self.handle, "127.0.0.1", port)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self.drop)
        loop.add_signal_handler(signal.SIGUSR2, self.write_stats)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        if ready is not None:
            ready.write_text(str(server.sockets[0].getsockname()[1]))
        async with server:
            await stop.wait()
        self.write_stats()


@dataclass
class Running:
    port: int
    process: subprocess.Popen[bytes]
    stats_file: Path

    def stats(self) -> Stats:
        """The counts so far."""
        self.stats_file.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR2)
        for _ in range(200):
            if self.stats_file.exists():
                return Stats(**json.loads(self.stats_file.read_text()))
            time.sleep(0.01)
        raise TimeoutError("the proxy wrote no statistics")

    def drop(self) -> None:
        """Reset every connection open through the proxy now."""
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(0.1)


@contextmanager
def proxy(
    target: tuple[str, int], rtt: float = 0.0, workdir: Path | None = None, trace: Path | None = None
) -> Iterator[Running]:
    """A proxy in front of ``target``, on a free port, ``rtt`` seconds of round trip added
    (``trace``: a file to log each round trip to)."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ready, stats = Path(tmp) / "port", Path(tmp) / "stats.json"
        cmd = [sys.executable, __file__, "0", f"{target[0]}:{target[1]}", f"--rtt={rtt}"]
        cmd += [f"--ready={ready}", f"--stats={stats}", *([f"--trace={trace}"] if trace else [])]
        process = subprocess.Popen(cmd)
        try:
            for _ in range(500):
                if ready.exists() and ready.read_text():
                    break
                if process.poll() is not None:
                    raise RuntimeError(f"the proxy exited ({process.returncode})")
                time.sleep(0.01)
            yield Running(int(ready.read_text()), process, stats)
        finally:
            process.terminate()
            process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int, help="port to listen on (0: any free one)")
    parser.add_argument("target", help="HOST:PORT to forward to")
    parser.add_argument("--rtt", type=float, default=0.0, help="round-trip time to add, in seconds")
    parser.add_argument("--ready", type=Path, help="write the port listened on to this file")
    parser.add_argument("--stats", type=Path, help="write the counts here on SIGUSR2 and at exit")
    parser.add_argument(
        "--trace", type=Path, help="append a line per round trip: time, connection, bytes sent"
    )
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    asyncio.run(_Proxy((host, int(port)), args.rtt, args.stats, args.trace).serve(args.port, args.ready))


if __name__ == "__main__":
    main()
