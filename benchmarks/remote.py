"""coffea_smk against coffea's Runner over XRootD, with latency added, in one invocation.

Serves the scaled files of ``compare.py`` (built once under DATA) from a local
XRootD server (``.ci/xrootd/start-xrootd.sh``, Debian's xrootd-server) through
a TCP proxy that adds a round-trip time (``tests/tcpproxy.py``; this kernel has
no netem), and for each RTT runs, cold, on the same ``root://`` URLs:

1. coffea's Runner with ``FuturesExecutor(workers=2)`` at its chunk sizes (best kept);
2. ``coffea-smk run --cores 2`` (a fresh work directory: preprocessing included).

Checks that the histograms are identical and prints wall time, events/s, the
ratio, and what each sent through the proxy: round trips and bytes, per file
and per chunk. The proxy is restarted for every run, so its counts are that run's.

    python benchmarks/remote.py DATA [--events 2000000] [--files 8] [--links 1] [--rtt 0,20,50]

Figures, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

import replicate  # noqa: E402
from compare import coffea_runner, same_histograms  # noqa: E402
from tcpproxy import Stats, proxy  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, base: Path) -> tuple[int, dict[str, str]]:
    port = _free_port()
    env = {**os.environ, "XRD_PORT": str(port), "XRD_DATA": str(data), "XRD_BASE": str(base)}
    subprocess.run(["bash", str(ROOT / ".ci/xrootd/start-xrootd.sh")], env=env, check=True)
    return port, env


def run_smk(work: Path, fileset: dict[str, Any], per_job: int, chunksize: int | None) -> tuple[float, Any]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "fileset.json").write_text(json.dumps(fileset))
    config: dict[str, Any] = {
        "fileset": str(work / "fileset.json"),
        "processor": "dimuon_ht:DimuonHT",
        "basedir": str(HERE),
        "events_per_job": per_job,
    }
    if chunksize:
        config["chunksize"] = chunksize
    (work / "analysis.yaml").write_text(json.dumps(config))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "--cores", "2"],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "COFFEA_SMK_PROGRESS": "off"},
    )
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"coffea-smk run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    import coffea_smk

    return dt, coffea_smk.load(work / "results" / "result.npz")


def _per(stats: Stats, files: int, chunks: int) -> str:
    return (
        f"{stats.round_trips:6d} RT ({stats.round_trips / files:5.1f}/file, "
        f"{stats.round_trips / chunks:5.1f}/chunk), "
        f"{stats.bytes_down / 1e6:6.1f} MB down, {stats.connections} connections"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="where the built files are cached")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument(
        "--links", type=int, default=1, help="each file under this many names (see compare.py)"
    )
    parser.add_argument("--rtt", default="0,20,50", help="round-trip times to add, in ms")
    parser.add_argument("--coffea-chunks", default="250000,500000")
    parser.add_argument("--events-per-job", type=int, default=500_000)
    parser.add_argument("--chunksize", type=int, default=0, help="coffea_smk chunk size (0: its default)")
    parser.add_argument("--skip-coffea", action="store_true")
    a = parser.parse_args()
    os.environ["PYTHONWARNINGS"] = "ignore"  # coffea's schema warnings, from every worker

    data = a.data.resolve()
    files, _ = replicate.scaled_set(data, a.events, a.files, a.links)
    n_events = sum(n for _, _, n in files)
    port, env = start_server(data, data / "xrootd")
    print(f"dataset: {len(files)} files, {n_events} events over root:// (XRootD on port {port})", flush=True)
    rows = []
    try:
        for rtt in (float(x) for x in a.rtt.split(",")):
            row: dict[str, Any] = {"rtt": rtt}
            theirs = None
            if not a.skip_coffea:
                best = None
                for chunk in (int(c) for c in a.coffea_chunks.split(",")):
                    with proxy(("127.0.0.1", port), rtt / 1e3) as p:
                        fileset = _fileset(files, data, p.port)
                        dt, out = coffea_runner(fileset, chunk)
                        stats = p.stats()
                    chunks = sum(-(-n // chunk) for _, _, n in files)
                    print(
                        f"  {rtt:3.0f} ms coffea chunksize {chunk}: {dt:6.1f} s; "
                        f"{_per(stats, len(files), chunks)}"
                    )
                    if best is None or dt < best[0]:
                        best = (dt, out)
                assert best is not None
                row["coffea"], theirs = best
            with proxy(("127.0.0.1", port), rtt / 1e3) as p:
                fileset = _fileset(files, data, p.port)
                dt, ours = run_smk(data / "work-remote", fileset, a.events_per_job, a.chunksize)
                stats = p.stats()
            import coffea_smk

            partials = (data / "work-remote" / "results").rglob("partials/**/*.npz")
            chunks = sum(len(coffea_smk.load_meta(p)["chunks"]) for p in partials)
            print(f"  {rtt:3.0f} ms coffea_smk: {dt:6.1f} s; {_per(stats, len(files), chunks)}", flush=True)
            row["smk"] = dt
            if theirs is not None:
                row["identical"] = same_histograms(ours, theirs)
            rows.append(row)
    finally:
        subprocess.run(["bash", str(ROOT / ".ci/xrootd/stop-xrootd.sh")], env=env, check=False)

    print()
    print(
        f"{'RTT':>6} {'coffea s':>9} {'smk s':>7} {'smk ev/s':>12} {'vs coffea':>9} {'vs 0 ms':>8} identical"
    )
    for row in rows:
        c = row.get("coffea")
        print(
            f"{row['rtt']:4.0f}ms {c if c else float('nan'):9.1f} {row['smk']:7.1f} "
            f"{n_events / row['smk']:12,.0f} "
            f"{(c / row['smk']) if c else float('nan'):8.2f}x {row['smk'] / rows[0]['smk']:7.2f}x "
            f"{row.get('identical', '-')}"
        )


def _fileset(files: list[tuple[str, Path, int]], data: Path, port: int) -> dict[str, Any]:
    fileset: dict[str, Any] = {}
    for name, path, _ in files:
        url = f"root://127.0.0.1:{port}//{path.relative_to(data)}"
        fileset.setdefault(name, {"files": {}})["files"][url] = "Events"
    return fileset


if __name__ == "__main__":
    main()
