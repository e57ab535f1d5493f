"""Storage that fails: retries and ``continue_on`` decided on the root cause, with a real HTTP server.

The server (``rangeserver.py``) answers chosen requests of one file with a TCP
reset: its opens (header, directory) or its basket reads, a few times
(transient) or until healed (permanent), as an overloaded storage element does.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Workflow, assert_same_result
from rangeserver import serve

import coffea_smk
from coffea_smk.buffers import BufferReadError
from coffea_smk.engine.accumulate import AccumulateError
from coffea_smk.engine.policy import ChunkError, continues, retryable
from coffea_smk.io.basketmap import BasketReadError
from coffea_smk.io.faults import causes, matches, transient
from coffea_smk.io.files import InputFileError, open_file
from coffea_smk.io.reader import source_fetch_many
from coffea_smk.spec.config import ConfigError
from coffea_smk.spec.settings import ErrorPolicy

DIMUON = "coffea_smk.examples.dimuon:DimuonProcessor"
FILES = ("nano_dy.root", "nano_dimuon.root")  # one dataset of two files, 40 events each
# remote_identity: url: the faults are met by the jobs alone (with `stat`, the default, the
# workflow's start sends a HEAD per file, which the range server counts as an open; see
# test_http_identity_is_asked_with_head)
SETTINGS = {
    "processor": DIMUON,
    "chunksize": 10,
    "events_per_job": 80,
    "retries": 2,
    "retry_backoff": 0.01,
    "remote_identity": "url",
}


def _raise(err: BaseException, cause: BaseException | None = None) -> BaseException:
    """``err`` raised from ``cause`` (a real chain, tracebacks included)."""
    try:
        raise err from cause
    except BaseException as raised:
        return raised


# ---- the decisions, on exception chains -------------------------------------------------


def test_causes_follow_cause_then_context_and_stop_on_cycles() -> None:
    reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    outer = _raise(InputFileError("x.root: its storage failed"), _raise(OSError("wrapped"), reset))
    assert [type(e) for e in causes(outer)] == [InputFileError, OSError, ConnectionResetError]

    try:
        try:
            raise reset
        except OSError:
            raise KeyError("raised while handling it") from None
    except KeyError as err:
        assert causes(err) == [err]  # `from None`: the context does not count
    try:
        try:
            raise TimeoutError("slow")
        except OSError:
            raise KeyError("raised while handling it")  # noqa: B904
    except KeyError as err:
        assert [type(e) for e in causes(err)] == [KeyError, TimeoutError]

    a, b = RuntimeError("a"), OSError("b")
    a.__cause__, b.__cause__ = b, a
    assert causes(a) == [a, b]


def test_transient_is_decided_by_the_root_cause() -> None:
    import aiohttp

    reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    client_reset = _raise(aiohttp.ClientOSError(errno.ECONNRESET, "reset"), reset)
    # a read in the processor: ChunkError > BufferReadError > BasketReadError > aiohttp > socket
    read = _raise(
        ChunkError("processor failed"),
        _raise(BufferReadError("reading Muon_pt failed"), _raise(BasketReadError("basket 0"), client_reset)),
    )
    assert transient(read) and transient(reset) and transient(TimeoutError())
    # fsspec turns a failed HEAD into FileNotFoundError: the reset under it counts
    assert transient(_raise(InputFileError("x"), _raise(FileNotFoundError("url"), client_reset)))
    assert transient(aiohttp.ServerDisconnectedError())  # no OSError, but the transport's
    assert transient(_raise(BasketReadError("basket 0"), aiohttp.ServerDisconnectedError()))
    assert transient(_raise(aiohttp.ClientPayloadError("cut"), ValueError("not enough data")))
    info = aiohttp.RequestInfo(aiohttp.client_reqrep.URL("http://x/a.root"), "GET", {})  # type: ignore[arg-type]
    assert transient(aiohttp.ClientResponseError(info, (), status=503))

    assert not transient(FileNotFoundError(errno.ENOENT, "No such file"))
    assert not transient(PermissionError(errno.EACCES, "Permission denied"))
    assert not transient(OSError(errno.EACCES, "Permission denied"))
    assert not transient(_raise(OSError("cannot read"), PermissionError(errno.EACCES, "denied")))
    assert not transient(aiohttp.ClientResponseError(info, (), status=403))
    # a basket that does not decompress: an OSError wrapping no I/O error
    assert not transient(_raise(BasketReadError("basket 0 cannot be read"), ValueError("bad zlib")))
    assert not transient(_raise(ChunkError("processor failed"), ZeroDivisionError()))
    assert not transient(_raise(TypeError("'NoneType' object is not subscriptable")))  # not uproot's
    # coffea_smk knows a short read of a local file means a truncated file
    assert not transient(_raise(InputFileError("x.root: truncated", transient=False), OSError("short")))


def test_continue_on_matches_anywhere_in_the_chain() -> None:
    reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    open_error = _raise(InputFileError("x.root: its storage failed"), reset)
    read_error = _raise(
        ChunkError("processor failed"),
        _raise(BufferReadError("reading"), _raise(BasketReadError("b"), reset)),
    )
    policy = ErrorPolicy(continue_on=("OSError",))
    assert continues(policy, open_error) and continues(policy, read_error)
    assert retryable(open_error) and retryable(read_error)
    assert continues(ErrorPolicy(continue_on=("builtins.ConnectionResetError",)), read_error)
    assert continues(ErrorPolicy(continue_on=("coffea_smk.buffers.BufferReadError",)), read_error)
    assert not continues(ErrorPolicy(continue_on=("KeyError",)), read_error)
    # ChunkError wraps every failure of process(): it is no reason to go on
    bug = _raise(ChunkError("processor failed"), ZeroDivisionError())
    assert not continues(ErrorPolicy(continue_on=("RuntimeError",)), bug)
    assert continues(ErrorPolicy(continue_on=("ArithmeticError",)), bug)
    # never on an accumulator that may be half-updated, wherever it is in the chain
    assert not continues(policy, _raise(ChunkError("x"), _raise(AccumulateError("half"), reset)))
    assert matches(read_error, ["OSError"], skip=(BasketReadError, ConnectionResetError)) is False


# ---- the real errors of a real HTTP server ------------------------------------------------


def test_storage_errors_at_open_and_read_keep_their_cause(nanoaod: Path) -> None:
    with serve(nanoaod) as remote:
        remote.fail("nano_dy.root", at="open")
        with pytest.raises(InputFileError, match="its storage failed") as opened:
            open_file(remote("nano_dy.root"))
        assert "not a ROOT file" not in str(opened.value)
        assert transient(opened.value) and continues(ErrorPolicy(continue_on=("OSError",)), opened.value)
        remote.heal()

        rootfile = open_file(remote("nano_dy.root"))
        with rootfile:
            remote.fail("nano_dy.root", at="read")
            ranges = remote.baskets("nano_dy.root")[:3]
            # a vector read of many baskets (uproot's fsspec source loses the error: it is found again)
            with pytest.raises(OSError) as read:
                source_fetch_many(rootfile)(ranges)
            assert transient(read.value), causes(read.value)
            # uproot's own reads (coffea's events) get a TypeError instead: it counts as the reset
            with pytest.raises(TypeError, match="object is not subscriptable") as lost:
                rootfile["Events"]["Muon_pt"].array()
            assert transient(lost.value) and continues(ErrorPolicy(continue_on=("OSError",)), lost.value)
            remote.heal()
            assert [len(b) for b in source_fetch_many(rootfile)(ranges)] == [b - a for a, b in ranges]
        assert remote.resets("nano_dy.root", "open") > 0 and remote.resets("nano_dy.root", "read") > 0
        assert remote.resets("nano_dimuon.root") == 0


def test_http_identity_is_asked_with_head(nanoaod: Path, tmp_path: Path) -> None:
    from coffea_smk.io.remote import RemoteStat, stat_remote
    from coffea_smk.smk.layout import Layout

    with serve(nanoaod) as remote:
        urls = [remote(name) for name in (*FILES, "missing.root")]
        remote.fail("nano_dimuon.root", at="open", times=1)
        remote.baskets("nano_dimuon.root")  # classify its requests
        answers = stat_remote(urls)
        assert answers[urls[0]] == RemoteStat((nanoaod / FILES[0]).stat().st_size, None, None)
        assert transient(answers[urls[1]])  # type: ignore[arg-type]  # the reset HEAD
        missing = answers[urls[2]]
        assert isinstance(missing, FileNotFoundError) and not transient(missing)
        # at the workflow's start: the reset HEAD is asked again (retries), the missing file named
        config = {"fileset": {"D": {"files": urls[:2]}}, "processor": DIMUON, "basedir": str(tmp_path)}
        remote.fail("nano_dimuon.root", at="open", times=1)
        layout = Layout.from_config({**config, "retry_backoff": 0.01}, None)
        assert [i.size for i in layout.identities["D"]] == [(nanoaod / f).stat().st_size for f in FILES]
        with pytest.raises(ConfigError, match=r"input file .*missing\.root of dataset 'D' does not exist"):
            Layout.from_config({**config, "fileset": {"D": {"files": urls}}}, None)
        # one HEAD per file and start (the missing file's 404 is not logged), the reset one twice
        heads = [(r.name, r.reset) for r in remote.log if r.method == "HEAD"]
        assert len(heads) == 2 + 3 + 2 and heads.count(("nano_dimuon.root", True)) == 2


def test_a_missing_http_backend_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from coffea_smk.io import files
    from coffea_smk.smk.layout import Layout

    importable = files._importable
    monkeypatch.setattr(files, "_importable", lambda module: module != "aiohttp" and importable(module))
    with pytest.raises(InputFileError, match=r"needs aiohttp.*pip install 'coffea_smk\[http\]'") as err:
        open_file("https://storage.example.org/store/nano.root")
    assert "truncated" not in str(err.value)
    fileset = {"DY": {"files": ["local.root", "https://storage.example.org/store/nano.root"]}}
    (tmp_path / "local.root").touch()
    config = {"fileset": fileset, "processor": DIMUON, "basedir": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"storage.example.org/store/nano.root.*coffea_smk\[http\]"):
        Layout.from_config(config, None)
    monkeypatch.setattr(files, "_importable", lambda module: False)
    fileset["DY"]["files"] = ["root://eos.example.org//store/nano.root"]
    with pytest.raises(ConfigError, match=r"root://.*pip install 'coffea_smk\[xrootd\]'"):
        Layout.from_config(config, None)


def _muons(events: Any) -> dict[str, int]:
    import awkward as ak

    return {"muons": int(ak.sum(ak.num(events.Muon.pt, axis=1))), "events": len(events)}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # coffea's schema warns about these files
@pytest.mark.parametrize("schema", ["nanoaod", pytest.param("coffea", marks=pytest.mark.slow)])
def test_read_faults_in_process_fail_only_their_chunks(nanoaod: Path, tmp_path: Path, schema: str) -> None:
    """The engine alone, on coffea_smk's events and on coffea's (whose NanoAOD branches are
    read by coffea_smk's basket reader too: the storage's own error reaches the policy)."""
    if schema == "coffea":
        pytest.importorskip("coffea")
    from coffea_smk.engine.plan import PlanSettings, make_plan
    from coffea_smk.engine.preprocess import FileIdentity, preprocess_files
    from coffea_smk.engine.process import run_unit
    from coffea_smk.engine.reading import EventsOptions
    from coffea_smk.spec.config import InputFile
    from coffea_smk.spec.processor import Processor

    bad = FILES[0]
    with serve(nanoaod) as remote:
        identities = [FileIdentity.of(InputFile(remote(name), "Events")) for name in FILES]
        records, _ = preprocess_files(identities, tmp_path / "cache")
        plan = make_plan(
            "Mixed", "Mixed", {}, records, PlanSettings(chunksize=10, events_per_job=80, merge_fanin=4)
        )
        (unit,) = plan.units
        options = EventsOptions(schema=schema, prefetch=False)
        policy = ErrorPolicy(continue_on=("OSError",), retries=2, retry_backoff=0.0)
        processor = Processor("muons", _muons, None)

        remote.fail(bad, at="read", times=2)  # transient: retried in the job
        out, meta = run_unit(plan, unit.id, processor, policy, events=options)
        assert out == {"muons": 18 + 84, "events": 80} and not meta.failed
        assert remote.resets(bad, "read") == 2 and sum(c.retries for c in meta.chunks) >= 1

        remote.fail(bad, at="read")  # permanent: its chunks fail, the other file's do not
        out, meta = run_unit(plan, unit.id, processor, policy, events=options)
        assert out == {"muons": 84, "events": 40}
        assert [(f.file, f.entrystart, f.attempts) for f in meta.failed] == [
            (remote(bad), a, 3) for a in (0, 10, 20, 30)
        ]
        # both event paths read the baskets themselves: the storage's reset, not uproot's
        # TypeError that stands for it (uproot5#1450)
        root_causes = {(f.cause or f.exception).split(":")[0] for f in meta.failed}
        assert root_causes == {"builtins.ConnectionResetError"}

        with pytest.raises(ChunkError, match=f"file {remote(bad)}, entries 0-10"):  # no continue_on
            run_unit(plan, unit.id, processor, ErrorPolicy(retries=0), events=options)


# ---- real runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean(nanoaod: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The result of a clean run on the local files."""
    workflow = Workflow(tmp_path_factory.mktemp("clean"))
    workflow.write(SETTINGS, {"Mixed": {"files": [str(nanoaod / name) for name in FILES]}})
    workflow.run()
    assert coffea_smk.load_meta(workflow.root / "results" / "result.npz")["complete"]
    return coffea_smk.load(workflow.root / "results" / "result.npz")


def _remote_fileset(remote: Any) -> dict[str, Any]:
    return {"Mixed": {"files": [remote(name) for name in FILES]}}


def _partials(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (root / "results").rglob("partials/**/*.npz")}


def _process_logs(root: Path) -> str:
    return "".join(p.read_text() for p in sorted((root / "results" / "logs" / "process").rglob("*.log")))


@pytest.mark.slow
def test_transient_storage_faults_are_retried_in_the_job(
    workflow: Workflow, nanoaod: Path, clean: Any
) -> None:
    with serve(nanoaod) as remote:
        workflow.write(SETTINGS, _remote_fileset(remote))
        workflow.run("--until", "plan")  # preprocessed while the storage is healthy
        remote.fail("nano_dy.root", at="open", times=2)
        remote.fail("nano_dimuon.root", at="read", times=2)
        workflow.run()
        assert remote.resets("nano_dy.root", "open") == 2
        assert remote.resets("nano_dimuon.root", "read") == 2
        assert remote.resets() == 4
    results = workflow.root / "results"
    meta = coffea_smk.load_meta(results / "result.npz")
    assert meta["complete"] and meta["events"] == meta["events_expected"] == 80
    assert_same_result(coffea_smk.load(results / "result.npz"), clean)
    logs = _process_logs(workflow.root)
    assert f"opening {remote('nano_dy.root')} failed" in logs and "retry 1 of 2" in logs
    (partial,) = results.rglob("partials/**/*.npz")
    chunks = coffea_smk.load_meta(partial)["chunks"]
    # The read fault stays on one basket range, so aiohttp's own single retry cannot hide it. Where
    # it lands depends on how nano_dimuon's baskets are asked for (it is read ahead while nano_dy is
    # processed): a chunk's own read (retried in the job: counted and logged), a background read
    # (counted as a prefetch error, logged) or a vector read, which falls back to reading its ranges
    # one by one (logged). Whichever: said in the log, and the result is exact and complete.
    assert len(chunks) == 8
    (plan_path,) = results.rglob("plan/*/*.json")
    keys = {f["key"]: Path(f["path"]).name for f in json.loads(plan_path.read_text())["files"]}
    hit = [c for c in chunks if c["retries"] or c["prefetch_errors"]]
    assert {keys[c["file"]] for c in hit} <= {"nano_dimuon.root"}
    said = [
        f"retry 1 of {SETTINGS['retries']}" in logs.split("nano_dy.root failed", 1)[-1],
        "a batched read for entries" in logs,
        f"{remote('nano_dimuon.root')}: a vector read of" in logs,
    ]
    assert any(said), logs
    assert not list(results.rglob("failures/**/*.json"))


@pytest.mark.slow
@pytest.mark.parametrize("at", ["open", "read"])
def test_a_file_whose_storage_is_down_fails_only_its_chunks(
    workflow: Workflow, nanoaod: Path, clean: Any, at: str
) -> None:
    bad, good = FILES
    with serve(nanoaod) as remote:
        workflow.write({**SETTINGS, "retries": 1, "continue_on": ["OSError"]}, _remote_fileset(remote))
        workflow.run("--until", "plan")
        remote.fail(bad, at=at)  # until healed
        proc = workflow.run()  # exit 0: the job goes on without that file's chunks
        assert "INCOMPLETE" in proc.stderr
        assert remote.resets(bad, at) > 0 and remote.resets(good) == 0
        results = workflow.root / "results"
        meta = coffea_smk.load_meta(results / "result.npz")
        assert not meta["complete"] and meta["events"] == 40 and meta["events_expected"] == 80
        assert meta["failed_chunks"] == 4

        # the healthy file of the same work unit is processed in full
        (plan_path,) = (results / "plan" / "Mixed").glob("*.json")
        plan = json.loads(plan_path.read_text())
        keys = {Path(f["path"]).name: f["key"] for f in plan["files"]}
        (partial,) = results.rglob("partials/**/*.npz")
        assert coffea_smk.load_meta(partial)["ranges"] == {keys[good]: [[0, 40]]}

        (manifest,) = results.rglob("failures/Mixed/*/*.json")
        failed = json.loads(manifest.read_text())["failed"]
        assert [(f["file"], f["entrystart"], f["entrystop"]) for f in failed] == [
            (remote(bad), a, a + 10) for a in (0, 10, 20, 30)
        ]
        assert all(f["attempts"] == 2 and "ConnectionResetError" in f["cause"] for f in failed)
        expected = (
            "coffea_smk.io.files.InputFileError" if at == "open" else "coffea_smk.buffers.BufferReadError"
        )
        assert {f["exception"] for f in failed} == {expected}

        status = workflow.run(command="status", check=False)
        assert status.returncode == 1
        row = next(line for line in status.stdout.splitlines() if line.startswith("Mixed "))
        assert "4/4/0" in row and "40/80" in row and "INCOMPLETE" in row
        listed = status.stdout.split("failed chunks", 1)[1]
        assert f"{remote(bad)} entries 0-40 (4 chunks, 40 events)" in listed
        assert "ConnectionResetError" in listed and remote(good) not in listed

        # the storage is healthy again: a plain re-run reads only that file's chunks
        remote.heal()
        before, seen = _partials(workflow.root), len(remote.log)
        workflow.run()
        after = _partials(workflow.root)
        assert all(after[name] == t for name, t in before.items()), "no earlier partial is rewritten"
        (retry,) = set(after) - set(before)
        assert retry.endswith("-a1.npz")
        assert {r.name for r in remote.log[seen:]} == {bad}, "the healthy file is not read again"
    retry_meta = coffea_smk.load_meta(next(results.rglob(f"partials/**/{retry}")))
    assert retry_meta["ranges"] == {keys[bad]: [[0, 40]], keys[good]: [[0, 40]]} and not retry_meta["failed"]
    meta = coffea_smk.load_meta(results / "result.npz")
    assert meta["complete"] and meta["events"] == 80
    assert_same_result(coffea_smk.load(results / "result.npz"), clean)
    assert workflow.run(command="status").returncode == 0


@pytest.mark.slow
def test_status_describes_a_job_that_failed_as_a_whole(workflow: Workflow, nanoaod: Path) -> None:
    bad, good = FILES
    with serve(nanoaod) as remote:
        workflow.write({**SETTINGS, "retries": 1}, _remote_fileset(remote))  # no continue_on
        workflow.run("--until", "plan")
        remote.fail(bad, at="open")
        proc = workflow.run(check=False)
        assert proc.returncode != 0 and f"{remote(bad)}: its storage failed" in proc.stderr
    status = workflow.run(command="status", check=False).stdout
    row = next(line for line in status.splitlines() if line.startswith("Mixed "))
    assert "0/8/0" in row
    jobs = status.split("failed jobs", 1)[1]
    (log,) = (workflow.root / "results" / "logs" / "process").rglob("*.log")
    assert f"Mixed: process job: {log.relative_to(workflow.root)}" in jobs
    assert f"covers {remote(bad)} entries 0-40" in jobs and f"covers {remote(good)} entries 0-40" in jobs
    assert f"error: coffea_smk.io.files.InputFileError: {remote(bad)}: its storage failed" in jobs
