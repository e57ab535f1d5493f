"""Reading over ``root://`` from a real XRootD server (``.ci/xrootd``), through real Snakemake runs.

The server serves a directory of the test's own (the ``xrootd`` fixture); each test copies the
NanoAOD samples into a folder of it, so that it may delete or replace them. Latency, counts and
dropped connections come from ``tcpproxy.py`` in front of the server.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import XROOTD_SCRIPTS, Workflow, XRootD, assert_same_result, run_coffea
from tcpproxy import proxy

import coffea_smk
from coffea_smk.examples.dimuon import DimuonProcessor
from coffea_smk.io.faults import causes, closed_by_xrootd, not_found, transient
from coffea_smk.io.files import InputFileError, open_file
from coffea_smk.io.remote import RemoteStat, stat_remote

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"
FILES = ("nano_dy.root", "nano_dimuon.root")  # 40 events each
SETTINGS = {"processor": DIMUON, "chunksize": 10, "events_per_job": 40, "retries": 2, "retry_backoff": 0.2}


def _raise(err: BaseException, cause: BaseException | None = None) -> BaseException:
    try:
        raise err from cause
    except BaseException as raised:
        return raised


@pytest.fixture
def served(xrootd: XRootD, nanoaod: Path, request: pytest.FixtureRequest) -> Any:
    """A folder of the server's data directory with the samples: ``(folder name, its path)``."""
    name = f"{request.node.name.replace('[', '-').strip(']')}-{os.getpid()}"
    folder = xrootd.data / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for f in FILES:
        shutil.copyfile(nanoaod / f, folder / f)
    yield name, folder
    shutil.rmtree(folder, ignore_errors=True)


def _fileset(xrootd: XRootD, folder: str, port: int | None = None) -> dict[str, Any]:
    return {"Mixed": {"files": [xrootd.url(f"{folder}/{f}", port) for f in FILES]}}


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


def _chunks(workflow: Workflow) -> list[dict[str, Any]]:
    return [
        c
        for p in (workflow.root / "results").rglob("partials/**/*.npz")
        for c in coffea_smk.load_meta(p)["chunks"]
    ]


# ---- what the server answers, and how its errors are classified ---------------------------------


def test_stat_and_the_errors_of_a_real_server(xrootd: XRootD, served: tuple[str, Path]) -> None:
    name, folder = served
    urls = [xrootd.url(f"{name}/{f}") for f in (*FILES, "missing.root")]
    answers = stat_remote(urls)
    for f, url in zip(FILES, urls, strict=False):
        st = answers[url]
        assert isinstance(st, RemoteStat) and st.size == (folder / f).stat().st_size
        assert st.mtime_ns == int((folder / f).stat().st_mtime) * 10**9
    missing = answers[urls[2]]
    assert (
        isinstance(missing, FileNotFoundError) and not transient(missing) and "missing.root" in str(missing)
    )

    # a missing file at open: XRootD's "[3011]" in an OSError without errno is permanent
    with pytest.raises(InputFileError, match=r"missing\.root: file not found") as opened:
        open_file(urls[2])
    assert not transient(opened.value) and not_found(opened.value)
    assert "[3011]" in str(causes(opened.value)[-1])

    # nothing listens: the client's own error, transient
    with proxy(("127.0.0.1", 9), rtt=0.0) as dead:  # a proxy to a closed port: connections fail at once
        answer = stat_remote([xrootd.url(f"{name}/{FILES[0]}", dead.port)], timeout=5)
    (err,) = answer.values()
    assert isinstance(err, OSError) and transient(err)


def test_xrootd_error_codes_decide() -> None:
    server = "[ERROR] Server responded with an error: [{}] Unable to open /x.root; {}"
    assert not transient(OSError(f"Failed to open file: {server.format(3011, 'no such file')}"))
    assert not transient(OSError(f"Failed to open file: {server.format(3010, 'not authorized')}"))
    assert transient(OSError(f"Failed to open file: {server.format(3024, 'overloaded')}"))
    assert transient(OSError("Bytes failed to read from open file: [FATAL] Connection error"))
    assert transient(OSError("Failed to submit request: [ERROR] Operation expired"))
    # wrapped as coffea_smk wraps it
    assert not transient(_raise(InputFileError("x.root"), OSError(server.format(3011, "no such file"))))


def test_a_handle_closed_by_a_lost_connection_is_transient(xrootd: XRootD, served: tuple[str, Path]) -> None:
    from XRootD import client

    name, _ = served
    handle = client.File()
    assert handle.open(xrootd.url(f"{name}/{FILES[0]}"))[0].ok
    handle.close()
    with pytest.raises(ValueError, match="closed file") as closed:
        handle.read(0, 10)
    assert closed_by_xrootd(closed.value) and transient(closed.value)
    assert not transient(ValueError("I/O operation on closed file"))  # not raised by XRootD


# ---- real runs -------------------------------------------------------------------------------


@pytest.mark.slow
def test_dimuon_over_root_equals_local_and_coffea(
    workflow: Workflow, xrootd: XRootD, served: tuple[str, Path], clean: Any
) -> None:
    name, _ = served
    fileset = _fileset(xrootd, name)
    workflow.write(SETTINGS, fileset)
    t0 = time.perf_counter()
    workflow.run()
    elapsed = time.perf_counter() - t0
    ours, meta = _result(workflow)
    assert meta["complete"] and meta["events"] == 80
    assert_same_result(ours, clean)
    theirs = run_coffea(fileset, DimuonProcessor, 10)
    assert_same_result(ours, theirs)
    assert workflow.opened() == []  # no local ROOT file: everything came over root://
    print(f"dimuon over root://: {elapsed:.1f} s")

    # a no-op re-run: with remote_identity: url nothing at all is sent to the server
    with proxy(("127.0.0.1", xrootd.port)) as p:
        workflow.write({**SETTINGS, "remote_identity": "url"}, _fileset(xrootd, name, p.port))
        workflow.run()  # other URLs (the proxy's port): other keys; made once
        before = p.stats()
        proc = workflow.run()
        assert "Nothing to be done" in proc.stdout + proc.stderr
        assert p.stats().connections == before.connections
        # with stat (the default) a no-op re-run asks for sizes and dates only: a connection
        # that the host accepts (the probe, no byte sent) and one for the stats
        workflow.write(SETTINGS, _fileset(xrootd, name, p.port))
        workflow.run()
        before = p.stats()
        proc = workflow.run()
        after = p.stats()
        assert "Nothing to be done" in proc.stdout + proc.stderr
        assert after.connections == before.connections + 2
        assert after.bytes_down - before.bytes_down < 4096  # two stats; opening a file reads more than that
    assert_same_result(_result(workflow)[0], clean)


@pytest.mark.slow
def test_coffea_processor_over_root_equals_coffea(
    workflow: Workflow, xrootd: XRootD, served: tuple[str, Path]
) -> None:
    pytest.importorskip("coffea")
    from coffea.processor.test_items import NanoEventsProcessor

    name, _ = served
    fileset = {
        "ZJets": {
            "files": {xrootd.url(f"{name}/nano_dy.root"): "Events"},
            "metadata": {"checkusermeta": True, "someusermeta": "hello"},
        },
        "Data": {
            "files": {xrootd.url(f"{name}/nano_dimuon.root"): "Events"},
            "metadata": {"checkusermeta": True, "someusermeta2": "world"},
        },
    }
    workflow.write(
        {"processor": "coffea_test_processors:nanoevents_virtual", "chunksize": 10, "events_per_job": 40},
        fileset,
    )
    workflow.run()
    ours, meta = _result(workflow)
    assert ours["cutflow"] == {"ZJets_pt": 18, "ZJets_mass": 6, "Data_pt": 84, "Data_mass": 66}
    assert_same_result(ours, run_coffea(fileset, NanoEventsProcessor(mode="virtual"), 10))
    assert meta["complete"] and workflow.opened() == []


def _fault_env(p: Any | None, mark: Path, entry: int, file: str, xrootd: XRootD) -> dict[str, str]:
    env = {
        **{k: v for k, v in xrootd.env.items() if k.startswith("XRD_")},
        "COFFEA_SMK_TEST_FAULT_MARK": str(mark),
        "COFFEA_SMK_TEST_FAULT_ENTRY": str(entry),
        "COFFEA_SMK_TEST_FAULT_FILE": file,
        "COFFEA_SMK_TEST_XROOTD_SCRIPTS": str(XROOTD_SCRIPTS),
        # the client gives up on a server after 1 s (default: 5 x 120 s), so that an outage
        # of 3 s reaches coffea_smk instead of being waited out by the client
        "XRD_CONNECTIONWINDOW": "1",
        "XRD_CONNECTIONRETRY": "1",
    }
    if p is not None:
        env["COFFEA_SMK_TEST_PROXY_PID"] = str(p.process.pid)
    return env


@pytest.mark.slow
def test_a_server_restarted_mid_run_is_retried_in_the_job(
    workflow: Workflow, xrootd: XRootD, served: tuple[str, Path], clean: Any
) -> None:
    name, _ = served
    settings = {
        **SETTINGS,
        "processor": "xrootd_test_processors:RestartingServer",
        "retries": 4,
        "retry_backoff": 1.0,
    }
    workflow.write(settings, _fileset(xrootd, name))
    workflow.run("--until", "plan")
    mark = workflow.root / "restarted"
    # the first chunk of nano_dimuon's work unit: its columns are read after the restart
    workflow.run(env=_fault_env(None, mark, 0, "nano_dimuon.root", xrootd))
    assert mark.exists() and xrootd.alive()
    ours, meta = _result(workflow)
    assert meta["complete"] and meta["events"] == meta["events_expected"] == 80
    assert_same_result(ours, clean)
    # both work units run while the server is down: each retries what it was reading
    retried = [c for c in _chunks(workflow) if c["retries"]]
    assert retried and any(c["entrystart"] == 0 for c in retried), retried
    logs = "".join(p.read_text() for p in (workflow.root / "results" / "logs" / "process").rglob("*.log"))
    assert "Connection error" in logs and "retry 1 of 4" in logs
    assert not list((workflow.root / "results").rglob("failures/**/*.json"))


@pytest.mark.slow
def test_dropped_connections_are_recovered(
    workflow: Workflow, xrootd: XRootD, served: tuple[str, Path], clean: Any
) -> None:
    name, _ = served
    with proxy(("127.0.0.1", xrootd.port), rtt=0.01) as p:
        settings = {**SETTINGS, "processor": "xrootd_test_processors:DroppingConnections"}
        workflow.write(settings, _fileset(xrootd, name, p.port))
        workflow.run("--until", "plan")
        mark = workflow.root / "dropped"
        workflow.run(env=_fault_env(p, mark, 10, "nano_dy.root", xrootd))
        stats = p.stats()
    assert mark.exists() and stats.dropped >= 1
    ours, meta = _result(workflow)
    assert meta["complete"] and meta["events"] == 80
    assert_same_result(ours, clean)
    # the XRootD client itself reconnects and sends the request again: no retry is needed
    assert sum(c["retries"] for c in _chunks(workflow)) >= 0 and len(_chunks(workflow)) == 8


@pytest.mark.slow
def test_a_file_deleted_after_preprocessing(
    workflow: Workflow, xrootd: XRootD, served: tuple[str, Path]
) -> None:
    name, folder = served
    bad = xrootd.url(f"{name}/nano_dy.root")
    url_settings = {**SETTINGS, "remote_identity": "url"}
    workflow.write(url_settings, _fileset(xrootd, name))
    workflow.run("--until", "plan")
    (folder / "nano_dy.root").unlink()

    # stat (the default): the run stops before anything starts, naming the file and its dataset
    workflow.write(SETTINGS, _fileset(xrootd, name))
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    assert f"input file {bad} of dataset 'Mixed' does not exist" in proc.stdout + proc.stderr

    # trusting the cache (url): no continue_on: the job fails with a clear error
    workflow.write(url_settings, _fileset(xrootd, name))
    proc = workflow.run(check=False)
    assert proc.returncode != 0 and f"{bad}: file not found" in proc.stderr
    assert "retry 1" not in "".join(
        p.read_text() for p in (workflow.root / "results" / "logs").rglob("*.log")
    )

    # continue_on: its chunks fail, listed in a failure manifest; the other file is processed
    workflow.write({**url_settings, "continue_on": ["OSError"]}, _fileset(xrootd, name))
    proc = workflow.run()
    assert "INCOMPLETE" in proc.stderr
    meta = coffea_smk.load_meta(workflow.root / "results" / "result.npz")
    assert not meta["complete"] and meta["events"] == 40 and meta["failed_chunks"] == 4
    (manifest,) = (workflow.root / "results").rglob("failures/Mixed/*/*.json")
    failed = json.loads(manifest.read_text())["failed"]
    assert [(f["file"], f["entrystart"], f["entrystop"]) for f in failed] == [
        (bad, a, a + 10) for a in (0, 10, 20, 30)
    ]
    assert all(f["attempts"] == 1 and "[3011]" in f["cause"] for f in failed)


@pytest.mark.slow
def test_a_replaced_remote_file_is_preprocessed_again(
    workflow: Workflow, xrootd: XRootD, served: tuple[str, Path], nanoaod: Path, tmp_path: Path
) -> None:
    name, folder = served
    workflow.write(SETTINGS, _fileset(xrootd, name))
    workflow.run()
    records = set((workflow.root / "results" / "cache" / "files").rglob("*.json"))
    # same name, other content: nano_dy.root becomes a copy of nano_dimuon.root
    shutil.copyfile(nanoaod / "nano_dimuon.root", folder / "nano_dy.tmp")
    os.replace(folder / "nano_dy.tmp", folder / "nano_dy.root")
    workflow.run()
    new = set((workflow.root / "results" / "cache" / "files").rglob("*.json")) - records
    assert [json.loads(p.read_text())["path"] for p in new] == [xrootd.url(f"{name}/nano_dy.root")]
    ours, meta = _result(workflow)
    assert meta["complete"] and meta["events"] == 80

    local = Workflow(tmp_path / "replaced")
    local.write(
        SETTINGS, {"Mixed": {"files": [str(folder / "nano_dy.root"), str(folder / "nano_dimuon.root")]}}
    )
    local.run()
    assert_same_result(ours, _result(local)[0])

    # unchanged: the re-run stats the files and preprocesses nothing
    proc = workflow.run()
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_cluster_jobs_parse_asks_the_storage_nothing(
    xrootd: XRootD, served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coffea_smk.smk.analysis import STATS_ENV, Analysis

    name, _ = served
    plans = SimpleNamespace(plan=SimpleNamespace(get=None))
    with proxy(("127.0.0.1", xrootd.port)) as p:
        config = {
            "fileset": _fileset(xrootd, name, p.port),
            "processor": DIMUON,
            "outdir": str(tmp_path / "results"),
        }
        monkeypatch.delenv(STATS_ENV, raising=False)
        main = Analysis(config, [], plans, SimpleNamespace(is_main_process=True, dryrun=False))
        # the probe's connection and the stats'
        assert p.stats().connections == 2 and os.environ[STATS_ENV] == main.layout.stat_key != ""
        dry = Analysis(config, [], plans, SimpleNamespace(is_main_process=True, dryrun=True))
        # a dry run writes nothing; a run keeps the table for its jobs
        assert dry.get_remote_stats() == [] and not main.layout.stat_table().exists()
        assert main.get_remote_stats() == [] and main.layout.stat_table().exists()
        # (this process keeps its connection to the server: count the bytes sent)
        before = p.stats().bytes_up
        job = Analysis(config, [], plans, SimpleNamespace(is_main_process=False, dryrun=False))
        assert p.stats().bytes_up == before  # the job read the table
        assert job.layout.keys == main.layout.keys and job.layout.identities == main.layout.identities
        # a job without the table's key asks the storage itself: the same keys
        monkeypatch.setenv(STATS_ENV, "")
        again = Analysis(config, [], plans, SimpleNamespace(is_main_process=False, dryrun=False))
        assert p.stats().bytes_up > before and again.layout.keys == main.layout.keys


@pytest.mark.slow
def test_start_time_with_many_remote_files(xrootd: XRootD, nanoaod: Path, tmp_path: Path) -> None:
    """10^4 remote files (hard links of one sample) behind 20 ms of latency: `snakemake -n` and the
    parse alone take seconds, not minutes."""
    n = int(os.environ.get("COFFEA_SMK_TEST_NFILES", "10000"))
    folder = xrootd.data / f"many-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(nanoaod / "nano_dy.root", folder / "f0.root")
    for i in range(1, n):
        os.link(folder / "f0.root", folder / f"f{i}.root")
    workflow = Workflow(tmp_path)
    try:
        with proxy(("127.0.0.1", xrootd.port), rtt=0.02) as p:
            urls = [xrootd.url(f"{folder.name}/f{i}.root", p.port) for i in range(n)]
            workflow.write({"processor": DIMUON, "files_per_preprocess_job": 20}, {"Many": {"files": urls}})
            t0 = time.perf_counter()
            stats = stat_remote(urls)
            t_stat = time.perf_counter() - t0
            assert all(isinstance(s, RemoteStat) for s in stats.values())
            t0 = time.perf_counter()
            proc = workflow.run("-n")
            t_dry = time.perf_counter() - t0
            workflow.write({"processor": DIMUON, "remote_identity": "url"}, {"Many": {"files": urls}})
            t0 = time.perf_counter()
            workflow.run("-n")
            t_url = time.perf_counter() - t0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert "preprocess" in proc.stdout + proc.stderr
    print(
        f"\n{n} remote files at 20 ms: stat {t_stat:.2f} s; `coffea-smk run -n` "
        f"{t_dry:.1f} s (remote_identity: stat), {t_url:.1f} s (url)"
    )
    assert t_stat < 10 and t_dry < 120


@pytest.mark.slow
@pytest.mark.cluster
def test_slurm_jobs_do_not_ask_the_storage_again(
    slurm: None,
    workflow: Workflow,
    xrootd: XRootD,
    served: tuple[str, Path],
    clean: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each Slurm job parses the workflow again; it reads what the run's start asked the storage."""
    monkeypatch.setenv("COFFEA_SMK_PROGRESS", "off")
    name, _ = served
    with proxy(("127.0.0.1", xrootd.port)) as p:
        workflow.write(SETTINGS, _fileset(xrootd, name, p.port))
        args = ("--profile", "slurm", "--slurm-status-command", "squeue")
        workflow.run(*args, "--slurm-init-seconds-before-status-checks", "1", cores=1)
        connections = p.stats().connections
    assert_same_result(_result(workflow)[0], clean)
    # the start's probe and stats (2), the preprocessing group job's probe and open (2), the two
    # process jobs' opens (2); the dataset, result and report jobs would add one each (or two)
    # if their parse asked the storage
    assert connections == 6, connections
    (table,) = (workflow.root / "results" / "cache" / "remote").glob("????????????????.json")  # a key
    assert len(json.loads(table.read_text())) == 2
