"""The progress view: counting with 10^4 work units, and real runs under a pseudo-terminal and a pipe."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PROCESSORS, REPO, Workflow

from coffea_smk.cli import with_progress_view
from coffea_smk.smk.layout import Layout
from coffea_smk.smk.progress import Failure, PlanInfo, RunState, Unit
from coffea_smk.smk.progress_tracker import Tracker, load_plan
from coffea_smk.smk.progress_view import plain_dataset_line, plain_total_line, render
from coffea_smk.smk.timeline import Timeline, breakdown

ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07|[()][A-Z0-9])")
N = 10_000


def _plan(n: int, events: int = 1000) -> PlanInfo:
    return PlanInfo(
        ("a.root", "b.root"),
        {f"{i:016x}": (events, ((i % 2, 0, events),)) for i in range(n)},
        n * events,
    )


# ---- counting -----------------------------------------------------------------------------------
def test_counting_ten_thousand_units() -> None:
    state = RunState()
    state.add_dataset("big", "Big", 100)
    state.add_dataset("small", "Small", 1)
    plan = _plan(N)
    units = list(plan.units)
    t0 = time.perf_counter()
    state.planned("big", plan, done={u: 1000 for u in units[:100]})  # done by an earlier run
    state.planned("small", _plan(2))
    for u in units[100:]:
        state.unit_started("big", u)
    for i, u in enumerate(units[100:], start=100):
        if i % 1000 == 0:
            state.unit_failed("big", u)  # the job failed: 9 units
        elif i % 1000 == 1:
            state.unit_finished("big", u, failed_events=250)  # a chunk failed: 9 units
        elif i < 9000:
            state.unit_finished("big", u)
    elapsed = time.perf_counter() - t0
    big = state.datasets["big"]
    assert big.files_preprocessed == 100
    # done: 100 earlier + 8900 in this run less 16 failures; running: 1000 less 2 failures
    assert big.failed == 18 and big.running == 998 and big.done == 8984
    assert big.done + big.running + big.failed == N  # every unit counted once
    assert sum(1 for s in big.units.values() if s is Unit.DONE) == big.done
    assert big.events_done == 8984 * 1000 + 9 * 750
    assert big.events_this_run == big.events_done - 100 * 1000
    # a unit reported twice, or one of another plan, changes nothing
    state.unit_finished("big", units[200])
    state.unit_started("big", "not-in-the-plan")
    assert big.events_done == 8984 * 1000 + 9 * 750
    total = state.totals()
    assert total.done == big.done and total.events_done == big.events_done
    assert state.expected() == (N + 2, N * 1000 + 2000, True)

    now = time.monotonic()
    t1 = time.perf_counter()
    for _ in range(100):
        text = "\n".join([*(plain_dataset_line(d, now) for d in state.datasets.values())])
        text += plain_total_line(state, now)
    plain_ms = (time.perf_counter() - t1) * 10
    assert f"units {big.done}/{N} ({big.running} running, 18 failed)" in text
    from rich.console import Console

    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    t2 = time.perf_counter()
    for _ in range(20):
        console.print(render(state, now, "log"))
    render_ms = (time.perf_counter() - t2) * 50
    print(
        f"\n{N} units: {elapsed * 1e3:.1f} ms for {2 * N} updates ({elapsed / (2 * N) * 1e6:.2f} us each); "
        f"plain lines {plain_ms:.3f} ms, rich table {render_ms:.2f} ms per refresh"
    )


def test_totals_eta_and_failures() -> None:
    state = RunState()
    state.add_dataset("a", "A", 2)
    state.add_dataset("b", "B", 2)
    state.preprocessed("a", 2)
    assert state.eta(time.monotonic()) is None  # b is not planned: the total is not known
    state.planned("a", _plan(4, 10))
    state.planned("b", _plan(4, 10))
    t = time.monotonic()
    state.unit_started("a", "0000000000000000", now=t - 10)
    state.unit_finished("a", "0000000000000000", now=t)
    assert state.datasets["a"].rate(t) == pytest.approx(1.0)
    assert state.eta(t) == pytest.approx(70.0)
    state.failure(Failure("A", "file a.root entries 0-10", "ValueError: x", "log.txt", 10))
    assert state.n_failures == 1 and state.events_failed == 10
    assert state.failures[-1].line() == "FAILED A: file a.root entries 0-10: ValueError: x (log: log.txt)"


def _record(event: str, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("snakemake", level, "x.py", 1, None, (), None)
    record.event = event
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_tracker_follows_snakemake_records_with_ten_thousand_units(tmp_path: Path, nanoaod: Path) -> None:
    wf = Workflow(tmp_path)
    wf.write({"processor": "smk_test_processors:Failing"}, {"DY": {"files": [str(nanoaod / "nano_dy.root")]}})
    import sys as _sys

    _sys.path.insert(0, str(PROCESSORS))
    try:
        layout = Layout.from_file(str(tmp_path / "analysis.yaml"))
    finally:
        _sys.path.remove(str(PROCESSORS))
    plan_path = tmp_path / layout.plan_path("DY")
    plan_path.parent.mkdir(parents=True)
    units = [{"id": f"{i:016x}", "events": 100, "chunks": [[0, 100 * i, 100 * (i + 1)]]} for i in range(N)]
    plan_path.write_text(
        json.dumps({"files": [{"path": "nano_dy.root"}], "units": units, "expected_events": 100 * N})
    )
    tag = layout.keys["DY"].tag
    # one unit ends with a failed chunk (its manifest), one job fails (its log names the chunk)
    manifest = tmp_path / layout.failure("partial", dataset="DY", tag=tag, unit=units[1]["id"])
    manifest.parent.mkdir(parents=True)
    manifest.write_text(
        json.dumps(
            {
                "failed": [
                    {
                        "file": "nano_dy.root",
                        "entrystart": 100,
                        "entrystop": 150,
                        "exception": "E",
                        "message": "m",
                    }
                ]
            }
        )
    )
    log = tmp_path / "job.log"
    log.write_text(
        "...\nChunkError: processor p failed on dataset 'DY', file nano_dy.root, entries 7-9: E2: boom\n"
    )

    tracker = Tracker(layout, tmp_path)
    assert load_plan(plan_path) is not None
    d = tracker.state.datasets["DY"]
    assert d.units_total == N and d.done == 0 and d.files_preprocessed == 1
    records = [
        _record(
            "job_info", jobid=j, rule_name="process", wildcards={"dataset": "DY", "tag": tag, "unit": u["id"]}
        )
        for j, u in enumerate(units)
    ]
    t0 = time.perf_counter()
    for record in records:
        tracker.handle(record)
    for j in range(N):
        if j == 2:
            tracker.handle(_record("job_error", logging.ERROR, jobid=j, rule_name="process", log=[str(log)]))
        else:
            tracker.handle(_record("job_finished", job_id=j))
    elapsed = time.perf_counter() - t0
    print(f"\ntracker: {2 * N} records in {elapsed * 1e3:.0f} ms ({elapsed / (2 * N) * 1e6:.1f} us each)")
    assert d.done == N - 2 and d.failed == 2 and d.running == 0
    assert d.events_done == 100 * (N - 2) + 50
    lines = [f.line() for f in tracker.state.failures]
    assert lines[0] == "FAILED DY: file nano_dy.root entries 100-150: E: m"
    assert lines[1] == f"FAILED DY: file nano_dy.root entries 7-9: E2: boom (log: {log})"


def test_coffea_smk_run_selects_the_view_unless_asked_for_the_raw_log() -> None:
    assert with_progress_view(["--cores", "2"]) == ["--logger=coffea-smk", "--cores", "2"]
    for raw in (["--verbose"], ["-p"], ["-np"], ["--printshellcmds"], ["--debug-dag"], ["-n"], ["--dag"]):
        assert with_progress_view(raw) == raw
    assert with_progress_view(["--logger", "other"]) == ["--logger", "other"]
    assert with_progress_view(["-c2"]) == ["--logger=coffea-smk", "-c2"]


# ---- real runs ----------------------------------------------------------------------------------
def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(PROCESSORS), env.get("PYTHONPATH", "")])
    env.pop("TERM", None)
    env["TERM"] = "xterm-256color"
    env.pop("COLUMNS", None)
    return env


def run_in_pty(cmd: list[str], cwd: Path, env: dict[str, str], cols: int = 150) -> tuple[int, str]:
    """Run ``cmd`` with a pseudo-terminal as stdin, stdout and stderr; all it wrote, and its exit code."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            continue
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        out += data
    code = proc.wait(timeout=60)
    os.close(master)
    return code, out.decode(errors="replace")


def _screen_text(raw: str) -> str:
    """The text a terminal showed, a line per line drawn (cursor moves start a new line; colours go)."""
    moves = re.sub(r"\x1b\[[0-9;]*[ABCDHJK]|\r", "\n", raw)
    return "\n".join(line for line in ESCAPES.sub("", moves).splitlines() if line.strip())


def _last_frame(text: str) -> str:
    """The last live table drawn (from its last header line on)."""
    return text[text.rindex("dataset ") :]


def _row(frame: str, name: str) -> list[str]:
    return next(line.split() for line in frame.splitlines() if line.split()[:1] == [name])


def _two_datasets(wf: Workflow, nanoaod: Path, processor: str, **config: Any) -> None:
    fileset = {
        "DY": {"files": [str(nanoaod / "nano_dy.root")]},
        "DoubleMuon": {"files": [str(nanoaod / "nano_dimuon.root")]},
    }
    wf.write({"processor": processor, "chunksize": 10, "events_per_job": 20, **config}, fileset)


COFFEA_SMK = [sys.executable, "-m", "coffea_smk", "run", "analysis.yaml", "--cores", "2"]


@pytest.mark.slow
def test_live_view_on_a_terminal(tmp_path: Path, nanoaod: Path) -> None:
    wf = Workflow(tmp_path)
    _two_datasets(wf, nanoaod, "smk_test_processors:count_muons")
    code, raw = run_in_pty(COFFEA_SMK, tmp_path, _env())
    text = _screen_text(raw)
    assert code == 0, text
    assert "\x1b[" in raw  # drawn as a live view
    frame = _last_frame(text)
    # dataset status files units running failed events rate
    assert _row(frame, "DY")[1:7] == ["done", "1/1", "2/2", "0", "0", "40/40"]
    assert _row(frame, "DoubleMuon")[1:7] == ["done", "1/1", "2/2", "0", "0", "40/40"]
    assert _row(frame, "total")[1:6] == ["2/2", "4/4", "0", "0", "80/80"]
    assert "ev/s" in frame and "coffea-smk: done in" in text
    # the full Snakemake log is in <outdir>/logs/, named at the start
    logfile = Path(re.search(r"full log: (\S+\.log)", text)[1])  # type: ignore[index]
    assert logfile.parent == tmp_path / "results" / "logs" / "snakemake"
    log = logfile.read_text()
    assert "rule process:" in log and "Finished jobid" in log
    assert "rule process:" not in text  # ... and not on the screen


@pytest.mark.slow
def test_live_view_shows_a_failure_with_its_file_and_entries(tmp_path: Path, nanoaod: Path) -> None:
    wf = Workflow(tmp_path)
    marker = tmp_path / "fail-now"
    marker.touch()
    _two_datasets(wf, nanoaod, "smk_test_processors:FailsWhileMarked")
    env = _env({"SMK_TEST_FAIL_MARKER": str(marker)})
    code, raw = run_in_pty([*COFFEA_SMK, "--keep-going"], tmp_path, env)
    text = _screen_text(raw)
    assert code != 0, text
    failure = next(line for line in text.splitlines() if line.startswith("FAILED DY"))
    assert str(nanoaod / "nano_dy.root") in failure.replace("\n", "") or "nano_dy.root" in failure
    assert "entries 20-30" in text and "ValueError: deliberate failure" in text
    assert re.search(r"\(log: results/logs/process/DY/\S+\.log\)", text.replace("\n", ""))
    frame = _last_frame(text)
    assert _row(frame, "DY")[1:7] == ["failed", "1/1", "1/2", "0", "1", "20/40"]
    assert _row(frame, "DoubleMuon")[3] == "2/2"  # --keep-going: the other dataset goes on
    assert "the run stopped with errors; full log:" in text


@pytest.mark.slow
def test_plain_lines_when_not_a_terminal(tmp_path: Path, nanoaod: Path) -> None:
    wf = Workflow(tmp_path)
    _two_datasets(wf, nanoaod, "smk_test_processors:count_muons")
    proc = subprocess.run(COFFEA_SMK, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "\x1b" not in out and "\r" not in out
    assert "DY: done, files 1/1, units 2/2 (0 running, 0 failed), events 40/40" in out
    assert "DoubleMuon: done, files 1/1, units 2/2 (0 running, 0 failed), events 40/40" in out
    assert re.search(r"all datasets: files 2/2, units 4/4 \(0 running\), events 80/80", out)
    assert "rule process" not in proc.stdout + proc.stderr  # Snakemake's job log is in the file
    # the run's timeline, beside its log: every job, and the phases are the whole run
    (found,) = (tmp_path / "results" / "logs" / "snakemake").glob("*.timeline.json")
    timeline = Timeline.read(found)
    assert sorted(j.rule for j in timeline.jobs if j.rule == "process") == ["process"] * 4
    assert all(j.end is not None and j.end >= j.start for j in timeline.jobs)
    assert timeline.end is not None
    phases = breakdown(timeline)
    assert sum(p.wall_s for p in phases) == pytest.approx(timeline.end - timeline.process_start)
    assert next(p for p in phases if p.name == "rule process").jobs == 4
    metrics = subprocess.run(
        [sys.executable, "-m", "coffea_smk", "metrics", "analysis.yaml"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert metrics.returncode == 0, metrics.stderr
    assert "Where the wall time of the last run went" in metrics.stdout
    assert re.search(r"^rule process +[0-9.]+ +[0-9.]+% +4 ", metrics.stdout, re.MULTILINE)


@pytest.mark.slow
def test_plain_snakemake_with_the_logger_and_verbose_raw_log(tmp_path: Path, nanoaod: Path) -> None:
    import coffea_smk

    wf = Workflow(tmp_path)
    _two_datasets(wf, nanoaod, "smk_test_processors:count_muons")
    snakemake = [sys.executable, "-m", "snakemake", "--snakefile", coffea_smk.snakefile()]
    profile = ["--profile", str(REPO / "profiles" / "local"), "--configfile", "analysis.yaml", "--cores", "2"]
    proc = subprocess.run(
        [*snakemake, "--logger", "coffea-smk", *profile],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DY: done, files 1/1, units 2/2 (0 running, 0 failed), events 40/40" in proc.stdout
    assert "all datasets: files 2/2, units 4/4" in proc.stdout
    # --verbose: Snakemake's own log, as without the view
    proc = subprocess.run(
        [*COFFEA_SMK, "--verbose", "--forcerun", "result"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rule result:" in proc.stderr and "full log:" not in proc.stdout
