"""The storage goes down: a finished analysis stays a no-op, fast, and says what it assumed.

Real XRootD servers (``.ci/xrootd``) and real Snakemake runs. The tests that stop a server stop
one of their own (:func:`own_server`), never the session's, which the other tests read from.
Times are printed; the only timed asserts are the issue's bounds (a no-op re-run in 15 s,
``status`` in 5 s, with the storage down).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Workflow, XRootD, assert_same_result, unavailable
from tcpproxy import proxy

import coffea_smk
from coffea_smk.io.faults import transient
from coffea_smk.io.remote import RemoteStat, host_of, probe_hosts, unreachable
from coffea_smk.smk.remote import DownHost, RunRecord, read_table, recorded_stats, table_content

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"
FILES = ("nano_dy.root", "nano_dimuon.root")  # 40 events each
SETTINGS = {"processor": DIMUON, "chunksize": 10, "events_per_job": 40, "retries": 2, "retry_backoff": 0.2}
NOOP_BOUND = 15.0  # seconds: the issue's bound for a no-op re-run with the storage down
STATUS_BOUND = 5.0  # and for `coffea-smk status`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _closed_port() -> int:
    """A port nothing listens on (connections are refused)."""
    return _free_port()


@pytest.fixture
def own_server(xrootd: XRootD, nanoaod: Path) -> Iterator[XRootD]:
    """A second XRootD server, this test's own to stop and start, serving the samples.

    (The ``xrootd`` fixture is asked first: it skips, or fails under CI, where no server can run.)
    """
    root = Path(tempfile.mkdtemp(prefix="coffea-smk-down-"))  # not under pytest's (mode 700)
    root.chmod(0o755)
    server = XRootD(_free_port(), root / "data", root / "base")
    server.data.mkdir(parents=True)
    for f in FILES:
        shutil.copyfile(nanoaod / f, server.data / f)
    try:
        server.start()
    except RuntimeError as err:
        pytest.fail(str(err))
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def clean(nanoaod: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The result of a clean run on the local files."""
    workflow = Workflow(tmp_path_factory.mktemp("clean"))
    workflow.write(SETTINGS, {"Mixed": {"files": [str(nanoaod / f) for f in FILES]}})
    workflow.run()
    return coffea_smk.load(workflow.root / "results" / "result.npz")


def _result(workflow: Workflow) -> tuple[Any, dict[str, Any]]:
    path = workflow.root / "results" / "result.npz"
    return coffea_smk.load(path), coffea_smk.load_meta(path)


def _timed(workflow: Workflow, *args: str, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    proc = workflow.run(*args, **kwargs)
    return proc, time.perf_counter() - t0


def _summary(result: Path) -> str:
    """What `coffea-smk summary RESULT` prints."""
    proc = subprocess.run(
        [sys.executable, "-m", "coffea_smk", "summary", str(result)],
        text=True,
        capture_output=True,
        check=True,
    )
    return proc.stdout


def _logs(workflow: Workflow, step: str) -> str:
    return "".join(p.read_text() for p in (workflow.root / "results" / "logs" / step).rglob("*.log"))


# ---- no server needed: the decisions ---------------------------------------------------------


def test_hosts_and_what_counts_as_unreachable() -> None:
    assert host_of("root://eosuser.cern.ch//eos/x.root") == "root://eosuser.cern.ch:1094"
    assert host_of("ROOT://Host:2094//x.root") == "root://host:2094"
    assert host_of("https://example.org/a/b.root") == "https://example.org:443"
    # the client's own errors (no answer from a server): unreachable, and transient
    for message in ("[FATAL] Connection error", "[ERROR] Operation expired", "[FATAL] Socket error"):
        err = OSError(f"Failed to open file: {message}")
        assert transient(err) and unreachable(err)
    assert unreachable(ConnectionRefusedError(111, "Connection refused"))
    # the server answered: overloaded (try later), no such file (no): not unreachable
    overloaded = OSError("stat failed: [ERROR] Server responded with an error: [3024] overloaded")
    assert transient(overloaded) and not unreachable(overloaded)
    assert not unreachable(FileNotFoundError(2, "no such file"))
    import urllib.error

    busy = urllib.error.HTTPError("http://x/y.root", 503, "Service Unavailable", {}, None)  # type: ignore[arg-type]
    assert transient(busy) and not unreachable(busy)


def test_a_dead_host_is_probed_once_and_briefly() -> None:
    dead = f"root://127.0.0.1:{_closed_port()}"
    t0 = time.perf_counter()
    answers = probe_hosts([dead, "root://no-such-host.invalid:1094"])
    elapsed = time.perf_counter() - t0
    assert isinstance(answers[dead], ConnectionRefusedError)
    assert isinstance(answers["root://no-such-host.invalid:1094"], OSError)
    print(f"\nprobing a refusing host and an unknown name: {elapsed:.2f} s")
    assert elapsed < 5


def test_recorded_identities_come_from_the_newest_table(tmp_path: Path) -> None:
    old, new = tmp_path / "0000000000000001.json", tmp_path / "0000000000000002.json"
    a, b = "root://h//a.root", "root://h//b.root"
    old.write_text(json.dumps(table_content({a: RemoteStat(1, 10), b: RemoteStat(2, 20)}, ())))
    down = DownHost("root://h:1094", "ConnectionRefusedError: refused", (a,))
    new.write_text(json.dumps(table_content({a: RemoteStat(3, 30)}, [down])))
    os.utime(old, (1, 1))
    assert read_table(new).down == {"root://h:1094": down}
    assert recorded_stats(tmp_path, [a, b, "root://h//c.root"]) == {
        a: RemoteStat(3, 30),
        b: RemoteStat(2, 20),
    }
    (tmp_path / "last-run.json").write_text("{}")  # the run record is no table
    assert recorded_stats(tmp_path, [a]) == {a: RemoteStat(3, 30)}


def test_preprocessing_a_dead_hosts_files_fails_them_at_once(tmp_path: Path) -> None:
    """No server: 200 files of a host that refuses connections are skipped in one decision."""
    from coffea_smk.engine.preprocess import FileIdentity, preprocess_files
    from coffea_smk.io.files import InputFileError
    from coffea_smk.spec.settings import ErrorPolicy

    port = _closed_port()
    ids = [FileIdentity(f"root://127.0.0.1:{port}//f{i}.root", "Events", None, None) for i in range(200)]
    policy = ErrorPolicy(retries=2, retry_backoff=0.2)
    t0 = time.perf_counter()
    _, bad = preprocess_files(ids, tmp_path, skip_bad_files=True, policy=policy)
    elapsed = time.perf_counter() - t0
    assert len(bad) == 200 and all("unreachable" in b.error for b in bad)
    assert not list(tmp_path.rglob("*.json"))  # nothing cached: the next run tries them again
    with pytest.raises(
        InputFileError, match=rf"f0\.root: its storage root://127\.0\.0\.1:{port} is unreachable"
    ):
        preprocess_files(ids, tmp_path, policy=policy)
    print(f"\npreprocessing 200 files of a dead host: {elapsed:.2f} s (2 retries of the host)")
    assert elapsed < 10


def test_an_http_storage_that_refuses_is_taken_on_its_records(tmp_path: Path) -> None:
    """The layout (the workflow's start) with https files on a host that refuses connections."""
    pytest.importorskip("aiohttp")
    from coffea_smk.smk.layout import Layout
    from coffea_smk.spec.config import ConfigError

    port = _closed_port()
    urls = [f"https://127.0.0.1:{port}/data/f{i}.root" for i in range(3)]
    tables = tmp_path / "results" / "cache" / "remote"
    tables.mkdir(parents=True)
    recorded = {u: RemoteStat(100 + i, 10**18, f'"etag{i}"') for i, u in enumerate(urls[:2])}
    (tables / "00000000000000bb.json").write_text(json.dumps(table_content(recorded, ())))
    config = {"processor": DIMUON, "outdir": str(tmp_path / "results")}
    layout = Layout.from_config({**config, "fileset": {"Web": {"files": urls[:2]}}}, None)
    (down,) = layout.down
    assert down.host == f"https://127.0.0.1:{port}" and down.recorded == tuple(urls[:2])
    assert [i.etag for i in layout.identities["Web"]] == ['"etag0"', '"etag1"']
    with pytest.raises(ConfigError, match=rf"input file {urls[2]} of dataset 'Web' was never stat-ed"):
        Layout.from_config({**config, "fileset": {"Web": {"files": urls}}}, None)
    # status's layout: the file is identified by URL and tree instead
    lenient = Layout.from_config({**config, "fileset": {"Web": {"files": urls}}}, None, unknown_ok=True)
    assert lenient.down[0].unrecorded == (urls[2],) and lenient.identities["Web"][2].size is None


# ---- real servers, real runs -----------------------------------------------------------------


def _fileset(server: XRootD, port: int | None = None) -> dict[str, Any]:
    return {"Mixed": {"files": [server.url(f, port) for f in FILES]}}


@pytest.mark.slow
def test_a_finished_analysis_stays_a_no_op_with_its_storage_down(
    workflow: Workflow, own_server: XRootD, clean: Any
) -> None:
    host = f"root://127.0.0.1:{own_server.port}"
    workflow.write(SETTINGS, _fileset(own_server))
    workflow.run()
    result = workflow.root / "results" / "result.npz"
    target = result.resolve()
    before = (target.stat().st_mtime_ns, target.read_bytes())

    own_server.stop()
    assert not own_server.alive()
    proc, t_noop = _timed(workflow)
    out = proc.stdout + proc.stderr
    assert "Nothing to be done" in out
    (warning,) = [line for line in out.splitlines() if "WARNING: storage unreachable" in line]
    assert host in warning and "2 files taken on their records" in warning
    assert (target.stat().st_mtime_ns, target.read_bytes()) == before
    assert_same_result(coffea_smk.load(result), clean)
    record = RunRecord.read(workflow.root / "results" / "cache" / "remote" / "last-run.json")
    assert record is not None and [d.host for d in record.down] == [host]
    assert record.taken_on_records == 2

    # status: the analysis's own records, the storage flagged as not checked
    proc, t_status = _timed(workflow, command="status")
    assert "storage unreachable, not checked now: " + host in proc.stdout
    assert "last run (started" in proc.stdout and "80/80" in proc.stdout
    summary = _summary(result)
    assert f"last run (started {record.started}): storage unreachable: {host} (2 files" in summary

    own_server.start()
    proc, t_back = _timed(workflow)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert "storage unreachable" not in proc.stdout + proc.stderr
    assert (target.stat().st_mtime_ns, target.read_bytes()) == before
    status = workflow.run(command="status")
    assert "storage unreachable" not in status.stdout
    print(
        f"\nstorage down: no-op re-run {t_noop:.1f} s, status {t_status:.1f} s; "
        f"storage back: no-op re-run {t_back:.1f} s"
    )
    assert t_noop <= NOOP_BOUND and t_status <= STATUS_BOUND


@pytest.mark.slow
def test_a_result_made_with_the_storage_down_says_so(workflow: Workflow, own_server: XRootD) -> None:
    """Removing a dataset reads no file: a new global result, made with the storage down."""
    host = f"root://127.0.0.1:{own_server.port}"
    fileset = {"DY": {"files": [own_server.url(FILES[0])]}, "Data": {"files": [own_server.url(FILES[1])]}}
    workflow.write(SETTINGS, fileset)
    workflow.run()
    partials = {p: p.stat().st_mtime_ns for p in (workflow.root / "results" / "partials").rglob("*.npz")}
    own_server.stop()
    workflow.write(SETTINGS, {"DY": fileset["DY"]})
    proc = workflow.run()
    assert "storage unreachable" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in partials} == partials  # no file was read again
    _, meta = _result(workflow)
    assert meta["complete"] and meta["events"] == 40 and list(meta["datasets"]) == ["DY"]
    (taken,) = meta["taken_on_records"]
    assert taken["host"] == host and taken["files"] == 1 and "Connection" in taken["error"]
    summary = _summary(workflow.root / "results" / "result.npz")
    assert f"storage unreachable when this result was made: {host}: 1 files taken on" in summary
    report = (workflow.root / "results" / "report.html").read_text()
    assert f"<code>{host}</code> unreachable when this result was made: 1 input files" in report


@pytest.mark.slow
def test_work_that_needs_a_dead_storage_fails_fast_and_loses_nothing(
    workflow: Workflow, own_server: XRootD, nanoaod: Path, tmp_path: Path
) -> None:
    remote = own_server.url("nano_dy.root")
    fileset = {"Local": {"files": [str(nanoaod / "nano_dimuon.root")]}, "Remote": {"files": [remote]}}
    workflow.write(SETTINGS, fileset)
    workflow.run("--until", "plan")  # preprocessed and planned: the units are to do
    own_server.stop()

    # no continue_on: the remote unit's job fails, naming the file and what to do; the local one runs
    t0 = time.perf_counter()
    proc = workflow.run("--keep-going", check=False)
    t_fail = time.perf_counter() - t0
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"{remote}: its storage failed" in out and "continue_on: [OSError]" in out
    local = list((workflow.root / "results" / "partials" / "Local").rglob("*.npz"))
    assert len(local) == 1 and list((workflow.root / "results" / "datasets" / "Local").glob("*.npz"))
    kept = local[0].stat().st_mtime_ns
    assert "retry 2 of 2" in _logs(workflow, "process")  # the job's retries, each quick

    # continue_on: the remote chunks fail, listed; the result is incomplete and says so
    workflow.write({**SETTINGS, "continue_on": ["OSError"]}, fileset)
    t0 = time.perf_counter()
    proc = workflow.run()
    t_continue = time.perf_counter() - t0
    assert "INCOMPLETE" in proc.stderr
    (manifest,) = (workflow.root / "results").rglob("failures/Remote/*/*.json")
    failed = json.loads(manifest.read_text())["failed"]
    assert {f["file"] for f in failed} == {remote} and len(failed) == 4
    assert local[0].stat().st_mtime_ns == kept

    # the storage is back: the failed chunks are redone, nothing else
    own_server.start()
    workflow.run()
    _, meta = _result(workflow)
    assert meta["complete"] and meta["events"] == 80 and not meta["taken_on_records"]
    assert local[0].stat().st_mtime_ns == kept
    reference = Workflow(tmp_path / "reference")
    reference.write(
        SETTINGS, {"Local": fileset["Local"], "Remote": {"files": [str(nanoaod / "nano_dy.root")]}}
    )
    reference.run()
    assert_same_result(_result(workflow)[0], _result(reference)[0])
    proc = workflow.run()
    assert "Nothing to be done" in proc.stdout + proc.stderr
    print(
        f"\nstorage down, a unit to do: the run fails in {t_fail:.1f} s; with continue_on {t_continue:.1f} s"
    )


@pytest.mark.slow
def test_a_file_never_seen_on_a_dead_storage(workflow: Workflow, own_server: XRootD) -> None:
    """A dataset added while the storage is down: its file was never stat-ed, it cannot be keyed."""
    host = f"root://127.0.0.1:{own_server.port}"
    first, new = own_server.url(FILES[0]), own_server.url(FILES[1])
    workflow.write(SETTINGS, {"DY": {"files": [first]}})
    workflow.run()
    own_server.stop()
    fileset = {"DY": {"files": [first]}, "Data": {"files": [new]}}
    workflow.write(SETTINGS, fileset)
    t0 = time.perf_counter()
    proc = workflow.run(check=False)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert f"storage {host} is unreachable" in proc.stderr
    assert f"input file {new} of dataset 'Data'" in proc.stderr and "skip_bad_files: true" in proc.stderr
    # status answers all the same, and names the file it cannot identify
    status = workflow.run(command="status", check=False)
    assert f"never stat-ed on {host}, cannot be identified: {new}" in status.stdout

    # skip_bad_files: the file is skipped (its preprocessing job fails it at once) and listed
    workflow.write({**SETTINGS, "skip_bad_files": True}, fileset)
    t0 = time.perf_counter()
    proc = workflow.run()
    skipped = time.perf_counter() - t0
    assert "INCOMPLETE" in proc.stderr
    meta = coffea_smk.load_meta(workflow.root / "results" / "result.npz")
    assert meta["events"] == 40 and meta["bad_files"] == 1
    assert f"its storage {host} is unreachable" in _logs(workflow, "preprocess")
    print(f"\na never stat-ed file on a dead storage: stops in {elapsed:.1f} s; skipped in {skipped:.1f} s")

    # the storage is back: the file is stat-ed, preprocessed and processed; the result is complete
    own_server.start()
    workflow.run()
    _, meta = _result(workflow)
    assert meta["complete"] and meta["events"] == 80


@pytest.mark.slow
@pytest.mark.parametrize("how", ["refused", "accepted-then-closed"])
def test_probing_costs_the_same_for_10_and_10000_files(tmp_path: Path, how: str) -> None:
    """The workflow's start (the layout, in-process) with every file on a dead host, their
    identities recorded by an earlier run."""
    import importlib.util

    from coffea_smk.smk.layout import Layout

    if importlib.util.find_spec("XRootD") is None or importlib.util.find_spec("fsspec_xrootd") is None:
        unavailable("the XRootD client is not installed: pip install -e '.[test]' (the xrootd extra)")
    times = {}
    port = _closed_port()
    with proxy(("127.0.0.1", port)) as dead_proxy:  # accepts, then closes: nothing behind it
        target = port if how == "refused" else dead_proxy.port
        for n in (10, 10_000):
            urls = [f"root://127.0.0.1:{target}//f{i}.root" for i in range(n)]
            outdir = tmp_path / f"{n}" / "results"
            tables = outdir / "cache" / "remote"
            tables.mkdir(parents=True)
            recorded = {u: RemoteStat(1000 + i, 10**18) for i, u in enumerate(urls)}
            (tables / "00000000000000aa.json").write_text(json.dumps(table_content(recorded, ())))
            config = {"fileset": {"Many": {"files": urls}}, "processor": DIMUON, "outdir": str(outdir)}
            t0 = time.perf_counter()
            layout = Layout.from_config(config, None)
            times[n] = time.perf_counter() - t0
            (down,) = layout.down
            assert down.host == f"root://127.0.0.1:{target}" and len(down.recorded) == n
            assert layout.remote == recorded
    print(
        f"\n{how}: the start with 10 files on a dead host {times[10]:.2f} s, with 10^4 {times[10_000]:.2f} s"
    )
    assert times[10_000] < NOOP_BOUND


@pytest.mark.slow
def test_connections_reset_during_preprocessing_are_retried_in_the_job(
    workflow: Workflow, xrootd: XRootD, nanoaod: Path, clean: Any, request: pytest.FixtureRequest
) -> None:
    folder = xrootd.data / f"{request.node.name}-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copyfile(nanoaod / f, folder / f)
    logs = workflow.root / "results" / "logs" / "preprocess"
    try:
        # a wide-area round trip: opening a file then takes a few tenths of a second, so that the
        # resets below reach it on a loaded machine too (on a local link it was done before them)
        with proxy(("127.0.0.1", xrootd.port), rtt=0.05) as p:
            urls = [xrootd.url(f"{folder.name}/{f}", p.port) for f in FILES]
            workflow.write({**SETTINGS, "retries": 4, "retry_backoff": 1.0}, {"Mixed": {"files": urls}})
            done: list[Any] = []
            # the client gives up on a connection at once (default: 5 x 120 s), so that a reset
            # reaches coffea_smk rather than being waited out by the client
            env = {"XRD_CONNECTIONWINDOW": "1", "XRD_CONNECTIONRETRY": "1"}
            run = threading.Thread(target=lambda: done.append(workflow.run(env=env, check=False)))
            run.start()
            # from the moment the preprocessing job logs, every connection is reset, until it retries
            deadline = time.monotonic() + 300
            while not list(logs.rglob("*.log")) and run.is_alive() and time.monotonic() < deadline:
                time.sleep(0.005)
            while run.is_alive() and "retry" not in _logs(workflow, "preprocess"):
                p.process.send_signal(signal.SIGUSR1)  # reset every connection open now
                time.sleep(0.005)
            run.join()
            dropped = p.stats().dropped
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    (proc,) = done
    assert proc.returncode == 0, proc.stderr
    log = _logs(workflow, "preprocess")
    assert "retry 1 of 4" in log and ("reset" in log or "Connection error" in log), log
    assert dropped >= 1
    ours, meta = _result(workflow)
    assert meta["complete"] and meta["events"] == 80
    assert_same_result(ours, clean)


@pytest.mark.slow
def test_a_storage_down_when_preprocessing_starts_is_waited_for(
    workflow: Workflow, own_server: XRootD, clean: Any
) -> None:
    """The preprocessing job finds the host down and probes it again after its retries' pauses."""
    workflow.write(
        {**SETTINGS, "remote_identity": "url", "retries": 4, "retry_backoff": 1.0}, _fileset(own_server)
    )
    own_server.stop()
    done: list[Any] = []
    run = threading.Thread(target=lambda: done.append(workflow.run(check=False)))
    run.start()
    deadline = time.monotonic() + 300
    while (
        "unreachable" not in _logs(workflow, "preprocess") and run.is_alive() and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    own_server.start()
    run.join()
    (proc,) = done
    assert proc.returncode == 0, proc.stderr
    log = _logs(workflow, "preprocess")
    assert f"storage root://127.0.0.1:{own_server.port} unreachable" in log and "retry 1 of 4" in log
    ours, meta = _result(workflow)
    assert meta["complete"] and meta["events"] == 80
    assert_same_result(ours, clean)
