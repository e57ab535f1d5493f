"""The cost of the progress view: the same run with Snakemake's own log, plain lines, and the live view.

Runs ``coffea-smk run`` on the demo analysis (``--scale``; ``--events-per-job``
for many small work units), from scratch each time (``results/`` removed), in
three modes taken in turn so that a drift of the machine hits them alike:

- ``raw``: Snakemake's own log (``COFFEA_SMK_PROGRESS=off``), as before the view;
- ``plain``: the view's plain lines (output to a pipe);
- ``live``: the live table (output to a pseudo-terminal).

Usage:
    python benchmarks/progress_cost.py --dir /tmp/progress-bench --scale 4 --repeat 3
    python benchmarks/progress_cost.py --dir /tmp/progress-units --events-per-job 500 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from coffea_smk.demo import prepare


def _run(mode: str, where: Path, cores: int) -> float:
    cmd = [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "--cores", str(cores)]
    env = {**os.environ, "COFFEA_SMK_PROGRESS": "off" if mode == "raw" else "on", "TERM": "xterm"}
    shutil.rmtree(where / "results", ignore_errors=True)
    shutil.rmtree(where / ".snakemake", ignore_errors=True)
    t0 = time.perf_counter()
    if mode == "live":
        master, slave = pty.openpty()
        proc = subprocess.Popen(cmd, cwd=where, env=env, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        while True:
            ready, _, _ = select.select([master], [], [], 0.5)
            try:
                if ready and not os.read(master, 1 << 16):
                    break
            except OSError:
                break
        code = proc.wait()
        os.close(master)
    else:
        code = subprocess.run(cmd, cwd=where, env=env, capture_output=True).returncode
    if code != 0:
        raise SystemExit(f"{mode} run failed ({code})")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", default="/tmp/progress-bench")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--events-per-job", type=int, default=None, help="smaller: more work units")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    a = parser.parse_args()
    where = prepare(a.dir, a.scale)
    if a.events_per_job:
        text = (where / "analysis.yaml").read_text()
        text = text.replace("events_per_job: 40000", f"events_per_job: {a.events_per_job}")
        text = text.replace("chunksize: 10000", f"chunksize: {min(10000, a.events_per_job)}")
        (where / "analysis.yaml").write_text(text)
    times: dict[str, list[float]] = {"raw": [], "plain": [], "live": []}
    for _ in range(a.repeat):
        for mode, values in times.items():
            values.append(_run(mode, where, a.cores))
            print(f"{mode:6s} {values[-1]:7.2f} s", flush=True)
    for mode, values in times.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"{mode:6s} median {statistics.median(values):7.2f} s  (runs: {runs})")


if __name__ == "__main__":
    main()
