"""Shared fixtures: the real NanoAOD samples, Snakemake runs, and coffea as the reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from rntuple_files import (  # noqa: F401  (fixtures: the RNTuple test files)
    rntuple_converted,
    rntuple_file,
    rntuple_files,
    rntuple_multicluster,
    rntuple_native,
)

REPO = Path(__file__).resolve().parents[1]
PROCESSORS = Path(__file__).resolve().parent / "processors"


def _nanoaod_dir() -> Path:
    env = os.environ.get("COFFEA_SMK_NANOAOD")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data" / "nanoaod"]:
        if (candidate / "nano_dy.root").is_file():
            return candidate
    raise RuntimeError(
        "the real NanoAOD samples are missing: put ../shared/data/nanoaod beside the checkout "
        "or set COFFEA_SMK_NANOAOD"
    )


@pytest.fixture(scope="session")
def nanoaod() -> Path:
    return _nanoaod_dir()


@pytest.fixture(scope="session")
def rootfiles() -> Path:
    """Real non-NanoAOD ROOT files (``../shared/data/rootfiles``, or ``$COFFEA_SMK_ROOTFILES``)."""
    env = os.environ.get("COFFEA_SMK_ROOTFILES")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data" / "rootfiles"]:
        if (candidate / "uproot-issue513.root").is_file():
            return candidate
    raise RuntimeError(
        "the real ROOT test files are missing: put ../shared/data/rootfiles beside the checkout "
        "or set COFFEA_SMK_ROOTFILES"
    )


_AUDIT = textwrap.dedent(
    """
    import os, sys
    _log = os.environ.get("COFFEA_SMK_TEST_OPENLOG")
    if _log:
        def _hook(event, args, _log=_log):
            if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
                p = os.fsdecode(args[0])
                if p.endswith(".root"):
                    with open(_log, "a") as f:
                        f.write(p + "\\n")
        sys.addaudithook(_hook)
    """
)


class Workflow:
    """A directory with an analysis.yaml, run through `coffea-smk run` as a user would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.openlog = root / "opened-root-files.log"
        hooks = root / "_audit"
        hooks.mkdir(parents=True, exist_ok=True)
        (hooks / "sitecustomize.py").write_text(_AUDIT)
        self.hooks = hooks

    def write(self, config: dict[str, Any], fileset: dict[str, Any] | None = None) -> Path:
        if fileset is not None:
            (self.root / "fileset.json").write_text(json.dumps(fileset, indent=1))
            config = {"fileset": "fileset.json", **config}
        path = self.root / "analysis.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def run(
        self,
        *args: str,
        check: bool = True,
        cores: int = 2,
        env: dict[str, str] | None = None,
        command: str = "run",
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join([str(self.hooks), str(PROCESSORS), env.get("PYTHONPATH", "")])
        env["COFFEA_SMK_TEST_OPENLOG"] = str(self.openlog)
        cmd = [sys.executable, "-m", "coffea_smk", command, "analysis.yaml"]
        if command != "status":
            cmd += ["--cores", str(cores), *args]
        proc = subprocess.run(cmd, cwd=self.root, env=env, text=True, capture_output=True, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def opened(self) -> list[str]:
        if not self.openlog.exists():
            return []
        return self.openlog.read_text().split()

    def reset_openlog(self) -> None:
        self.openlog.unlink(missing_ok=True)


@pytest.fixture
def workflow(tmp_path: Path) -> Workflow:
    return Workflow(tmp_path)


class UnplannedFile:
    """What reading needs of a plan's file, for a file opened outside a planned analysis."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.treename = "Events"
        self.key = "test"
        self.uuid = ""
        self.record_path = None


def run_coffea(fileset: dict[str, Any], processor_factory: Callable[[], Any] | Any, chunksize: int) -> Any:
    """Run coffea's own Runner (iterative executor, NanoAODSchema) on a fileset.

    ``processor_factory`` makes a processor with ``process(events)``, or is a
    coffea ``ProcessorABC`` already, which then runs as it is.
    """
    import warnings

    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    if isinstance(processor_factory, processor.ProcessorABC):
        instance = processor_factory
        runner = processor.Runner(
            executor=processor.IterativeExecutor(),
            schema=NanoAODSchema,
            chunksize=chunksize,
            savemetrics=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return runner(fileset, processor_instance=instance, treename="Events")

    class Wrapped(processor.ProcessorABC):  # type: ignore[misc]
        def __init__(self) -> None:
            self.inner = processor_factory()

        def process(self, events: Any) -> Any:
            return self.inner.process(events)

        def postprocess(self, accumulator: Any) -> Any:
            post = getattr(self.inner, "postprocess", None)
            return post(accumulator) if post else accumulator

    runner = processor.Runner(
        executor=processor.IterativeExecutor(), schema=NanoAODSchema, chunksize=chunksize, savemetrics=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runner(fileset, processor_instance=Wrapped(), treename="Events")


def assert_same_result(ours: Any, theirs: Any, where: str = "result") -> None:
    """Bin-for-bin equality of histograms (category order aside), exact equality of the rest."""
    import hist
    import numpy as np

    if isinstance(theirs, hist.Hist):
        assert isinstance(ours, hist.Hist), f"{where}: {type(ours)} is not a Hist"
        assert [a.name for a in ours.axes] == [a.name for a in theirs.axes], where
        cats = [a for a in theirs.axes if isinstance(a, hist.axis.StrCategory)]
        if not cats:
            assert np.array_equal(ours.view(flow=True), theirs.view(flow=True)), where
            return
        name = cats[0].name
        assert sorted(ours.axes[name]) == sorted(theirs.axes[name]), f"{where}: categories differ"
        for value in theirs.axes[name]:
            a, b = ours[{name: value}], theirs[{name: value}]
            assert np.array_equal(a.view(flow=True), b.view(flow=True)), (
                f"{where}[{value}] differs bin by bin"
            )
        return
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), (
            f"{where}: keys {set(ours)} != {set(theirs)}"
        )
        for key in theirs:
            assert_same_result(ours[key], theirs[key], f"{where}[{key!r}]")
        return
    assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"


# ---- real batch schedulers on this machine (the cluster tests) ------------------------

SCHEDULERS = REPO / ".ci" / "schedulers"
SCHED_BASE = Path(os.environ.get("SCHED_BASE", "/tmp/sched"))
# daemon whose pid file tells whether a scheduler is already up (started by .ci/run or by hand)
_SCHEDULER_PIDFILE = {
    "slurm": (SCHED_BASE / "slurm" / "run" / "slurmctld.pid", "slurmctld"),
    "sge": (SCHED_BASE / "sge" / "run" / "qmaster.pid", "sge_qmaster"),
}
_SCHEDULER_PLUGIN = {
    "slurm": "snakemake_executor_plugin_slurm",
    "sge": "snakemake_executor_plugin_cluster_generic",
}


def _daemon_alive(name: str) -> bool:
    pidfile, comm = _SCHEDULER_PIDFILE[name]
    try:
        pid = pidfile.read_text().strip()
        return Path(f"/proc/{pid}/comm").read_text().strip() == comm
    except (OSError, ValueError):
        return False


def unavailable(reason: str) -> NoReturn:
    """A real component a test needs cannot run here: skip, but fail under CI=true (CI has them all)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _scheduler(name: str) -> Any:
    """Start a real single-node scheduler with .ci/schedulers/start-NAME.sh; stop it after if we started it.

    Skips only where it cannot work (not root, no apt); under CI=true it fails instead.
    """
    import importlib.util
    import shutil

    if os.geteuid() != 0:
        unavailable("the cluster tests install and start a real scheduler: they must run as root")
    if shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        unavailable("the cluster tests install the scheduler from Debian packages: apt-get is missing")
    plugin = _SCHEDULER_PLUGIN[name]
    if importlib.util.find_spec(plugin) is None:
        pytest.fail(f"{plugin} is not installed: pip install -e '.[test]'")
    was_running = _daemon_alive(name)
    env = {**os.environ, "SCHED_BASE": str(SCHED_BASE)}
    SCHED_BASE.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["bash", str(SCHEDULERS / f"start-{name}.sh")], env=env, text=True, capture_output=True, timeout=900
    )
    if proc.returncode != 0:
        pytest.fail(f"start-{name}.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    yield
    if not was_running:
        subprocess.run(
            ["bash", str(SCHEDULERS / f"stop-{name}.sh")], env=env, capture_output=True, timeout=300
        )


@pytest.fixture(scope="session")
def slurm() -> Any:
    """A running single-node Slurm (no accounting: use --slurm-status-command squeue)."""
    yield from _scheduler("slurm")


@pytest.fixture(scope="session")
def sge() -> Any:
    """A running single-host Grid Engine (qsub, qstat, qacct, qdel)."""
    yield from _scheduler("sge")


# ---- a real XRootD server on this machine (tests/test_xrootd.py) -------------------------

XROOTD_SCRIPTS = REPO / ".ci" / "xrootd"


class XRootD:
    """A local XRootD server (``.ci/xrootd/start-xrootd.sh``) serving ``data`` as ``/``."""

    def __init__(self, port: int, data: Path, base: Path) -> None:
        self.port, self.data, self.base = port, data, base

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "XRD_PORT": str(self.port),
            "XRD_DATA": str(self.data),
            "XRD_BASE": str(self.base),
        }

    def url(self, name: str, port: int | None = None) -> str:
        """The ``root://`` URL of ``name`` (a path under ``data``), through ``port`` if given (a proxy)."""
        return f"root://127.0.0.1:{port or self.port}//{name}"

    def start(self) -> None:
        proc = subprocess.run(
            ["bash", str(XROOTD_SCRIPTS / "start-xrootd.sh")],
            env=self.env,
            text=True,
            capture_output=True,
            timeout=900,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"start-xrootd.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(XROOTD_SCRIPTS / "stop-xrootd.sh")], env=self.env, capture_output=True, timeout=300
        )

    def alive(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
        except OSError:
            return False
        return True


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def xrootd() -> Any:
    """A running XRootD server whose data directory the tests may change.

    ``.ci/run`` starts one and names it in ``XRD_PORT``, ``XRD_DATA``, ``XRD_BASE``; run
    alone, the tests start a private one on a free port with their own data directory and
    stop it at the end. Skips only where it cannot work (not root, no client bindings);
    under CI=true it fails instead.
    """
    import importlib.util
    import shutil
    import tempfile

    if importlib.util.find_spec("XRootD") is None or importlib.util.find_spec("fsspec_xrootd") is None:
        unavailable("the XRootD client is not installed: pip install -e '.[test]' (the xrootd extra)")
    if os.geteuid() != 0:
        unavailable("the XRootD tests start a real xrootd server (it drops to the daemon user): run as root")
    if shutil.which("xrootd") is None and shutil.which("apt-get") is None:
        unavailable("the XRootD tests need xrootd-server (Debian package) or apt-get to install it")
    given = os.environ.get("XRD_PORT") and os.environ.get("XRD_DATA")
    if given:
        base = Path(os.environ.get("XRD_BASE", "/tmp/xrootd"))
        server = XRootD(int(os.environ["XRD_PORT"]), Path(os.environ["XRD_DATA"]), base)
    else:
        # not under pytest's temporary directory (mode 700): the server runs as daemon
        root = Path(tempfile.mkdtemp(prefix="coffea-smk-xrootd-"))
        root.chmod(0o755)
        server = XRootD(_free_port(), root / "data", root / "base")
    server.data.mkdir(parents=True, exist_ok=True)
    was_running = server.alive()
    try:
        server.start()
    except RuntimeError as err:
        pytest.fail(str(err))
    yield server
    if not was_running and not given:
        server.stop()
        shutil.rmtree(server.data.parent, ignore_errors=True)
