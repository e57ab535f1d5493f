"""The local fork server: jobs run in forked children of a preloaded process, exactly like direct runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import coffea_smk
from coffea_smk.smk.jobserver import ENV, address


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    sock = tmp_path / "s.sock"
    proc = subprocess.Popen([sys.executable, "-m", "coffea_smk", "jobserver", str(sock)])
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "job server did not start"
        time.sleep(0.01)
    yield proc, {**os.environ, ENV: address(str(sock))}
    proc.terminate()
    proc.wait(timeout=10)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _partial(events: int, entries: list[int]) -> dict[str, Any]:
    """The meta of a partial result covering ``entries`` of file ``f``."""
    from coffea_smk.engine.meta import UnitMeta

    meta = UnitMeta(
        dataset="d", unit="u", attempt=0, events=events, ranges={"f": (tuple(entries),)}, chunks=(), failed=()
    )
    return meta.model_dump(mode="json")


def test_jobs_run_in_the_server_with_exit_codes_and_messages(tmp_path: Path, server: tuple) -> None:
    proc, env = server
    a = tmp_path / "a.npz"
    b = tmp_path / "b.npz"
    from coffea_smk import results as storage

    storage.save(a, {"n": 1}, _partial(1, [0, 1]))
    storage.save(b, {"n": 2}, _partial(2, [1, 3]))
    cmd = [sys.executable, "-m", "coffea_smk", "job", "merge", "--processor", "m:p", "--out", "c.npz"]
    ok = subprocess.run([*cmd, str(a), str(b)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert coffea_smk.load(tmp_path / "c.npz") == {"n": 3}
    assert coffea_smk.load_meta(tmp_path / "c.npz")["ranges"] == {"f": [[0, 3]]}

    # an overlap is refused: the error reaches the client's stderr and exit code
    bad = subprocess.run([*cmd, str(a), str(a)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "overlap" in bad.stderr
    assert proc.poll() is None, "the server survives a failing job"


def test_killing_the_client_kills_the_job(tmp_path: Path, server: tuple, nanoaod: Path) -> None:
    proc, env = server
    (tmp_path / "slow.py").write_text("import time\ndef f(events):\n    time.sleep(60)\n    return {}\n")
    from coffea_smk.engine.plan import PlanSettings, make_plan
    from coffea_smk.engine.preprocess import FileIdentity, preprocess_files
    from coffea_smk.spec.config import InputFile
    from coffea_smk.spec.settings import ErrorPolicy
    from coffea_smk.util.atomic import write_json

    records, _ = preprocess_files(
        [FileIdentity.of(InputFile(str(nanoaod / "nano_dy.root"), "Events"))], tmp_path
    )
    plan = make_plan("DY", "DY", {}, records, PlanSettings(chunksize=40, events_per_job=40, merge_fanin=2))
    write_json(tmp_path / "plan.json", plan.model_dump(mode="json"))
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coffea_smk",
            "job",
            "process",
            "--plan",
            "plan.json",
            "--unit",
            plan.units[0].id,
            "--processor",
            "slow:f",
            "--basedir",
            str(tmp_path),
            "--policy",
            ErrorPolicy(retries=0, retry_backoff=0).to_json(),
            "--failures",
            "f.json",
            "--out",
            "p.npz",
        ],
        cwd=tmp_path,
        env=env,
    )
    deadline = time.monotonic() + 30
    while not _children(proc.pid):
        assert time.monotonic() < deadline, "no job was forked"
        time.sleep(0.02)
    (child,) = _children(proc.pid)
    time.sleep(0.5)
    client.send_signal(signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{child}").exists(), "the job outlived its killed client"
    assert not (tmp_path / "p.npz").exists()


def test_without_a_server_jobs_run_directly(tmp_path: Path) -> None:
    env = {**os.environ, ENV: address(str(tmp_path / "nothing.sock"))}
    out = subprocess.run(
        [sys.executable, "-m", "coffea_smk", "job", "merge", "--processor", "m:p", "--out", "c.npz"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and coffea_smk.load(tmp_path / "c.npz") is None


def test_coffea_is_preloaded_for_coffea_processors_only(tmp_path: Path) -> None:
    from coffea_smk.cli import _preload_for

    (tmp_path / "abc_proc.py").write_text(
        "from coffea import processor\n\nclass P(processor.ProcessorABC): ...\n"
    )
    (tmp_path / "plain_proc.py").write_text("from coffea_smk import buffers  # coffea_smk is not coffea\n")
    cases = {
        ("abc_proc:P", "auto"): ["coffea.processor", "coffea.nanoevents"],
        ("plain_proc:P", "auto"): [],
        ("plain_proc:P", "coffea"): ["coffea.processor", "coffea.nanoevents"],
        ("abc_proc:P", "nanoaod"): [],
        ("missing_module:P", "auto"): [],  # the workflow reports it, not the guess
    }
    for (spec, schema), expected in cases.items():
        config = tmp_path / "analysis.yaml"
        config.write_text(f"fileset: f.json\nprocessor: {spec}\nschema: {schema}\n")
        assert _preload_for(str(config)) == expected, (spec, schema)
