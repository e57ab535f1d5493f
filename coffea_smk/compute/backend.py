"""``SnakemakeBackend``: coffea.compute's ``Backend`` on the coffea_smk workflow."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from coffea_smk.compute.model import Computable, DataGroup
from coffea_smk.compute.runner import Runner
from coffea_smk.compute.task import Task
from coffea_smk.compute.workflow import folder_of, running_pid, start


@dataclass(frozen=True, kw_only=True)
class ErrorPolicy:
    """What a failing chunk does (the config's ``continue_on`` and ``retries``)."""

    continue_on: tuple[type[BaseException], ...] = ()
    """Exception types (anywhere in the error's cause chain) that fail only their chunk."""
    retries: int = 2
    """In-job retries of a file open or a chunk after a transient I/O error."""


class SnakemakeBackend:
    """Runs computables as ``coffea-smk run`` in the background, with ``profile``; a task's
    finished work stays in ``outdir`` and is reused by the next computation there."""

    def __init__(
        self,
        outdir: str | os.PathLike[str] = "coffea_smk_out",
        profile: str = "local",
        cores: int = 2,
        chunksize: int = 100_000,
        **runner: Any,
    ) -> None:
        self.outdir = Path(outdir).resolve()
        self._runner = dict(outdir=self.outdir, profile=profile, cores=cores, chunksize=chunksize, **runner)
        self._tasks: list[Task] = []

    def __enter__(self) -> SnakemakeBackend:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:  # an error in the block: stop what it started
            for task in self._tasks:
                task.cancel()

    def compute(self, computable: Computable, error_policy: ErrorPolicy | None = None) -> Task:
        """Start computing ``computable``; returns at once.

        Raises:
            RuntimeError: A task of this backend is still running (one run at a time in an outdir).
        """
        if any(not task.done() for task in self._tasks):
            raise RuntimeError(
                f"a computation is still running in {self.outdir}: wait() for it or cancel() it first "
                "(its finished work is kept either way)"
            )
        other = running_pid(folder_of(self.outdir) / "analysis.yaml")
        if other is not None:
            raise RuntimeError(
                f"a computation started by another Python process is still running in {self.outdir} "
                f"(process {other}): SnakemakeBackend.attach({str(self.outdir)!r}) gives it back, "
                "wait() for it or cancel() it first"
            )
        policy = error_policy or ErrorPolicy()
        runner = Runner(**self._runner, continue_on=policy.continue_on, retries=policy.retries)
        configfile = runner.write(computable.data.fileset(), computable.processor)
        process = start(configfile, runner.profile, runner.cores, runner.snakemake_args)
        (configfile.parent / "run.pid").write_text(f"{process.pid}\n")
        task = Task(computable, self.outdir, configfile, process, allow_pickle=runner.allow_pickle)
        self._tasks.append(task)
        return task

    @staticmethod
    def attach(outdir: str | os.PathLike[str], processor: Any = None) -> Task:
        """The task of the last computation in ``outdir`` (finished, or still running in
        another process: then ``done()`` says so by its process id)."""
        import json  # noqa: PLC0415

        import yaml  # noqa: PLC0415

        folder = folder_of(outdir)
        configfile = folder / "analysis.yaml"
        if not configfile.exists():
            raise FileNotFoundError(f"{outdir}: no computation started here ({configfile} does not exist)")
        config = yaml.safe_load(configfile.read_text())
        fileset = json.loads((folder / str(config["fileset"])).read_text())
        computable = Computable(data=DataGroup.from_fileset(fileset), processor=processor)
        return _Attached(computable, Path(outdir).resolve(), configfile, None, bool(config["allow_pickle"]))


class _Attached(Task):
    """A task started by another process: running while its process id lives."""

    def done(self) -> bool:
        return running_pid(self.configfile) is None

    def cancel(self) -> None:
        pid = running_pid(self.configfile)
        if pid is not None:  # the run leads its own process group (started with a new session)
            os.killpg(pid, signal.SIGTERM)
            self.wait()

    def wait(self, timeout: float | None = None) -> bool:
        import time  # noqa: PLC0415

        end = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.5)
        return True
