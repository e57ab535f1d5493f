"""A computation running as a ``coffea-smk run`` in the background: coffea.compute's ``Task``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coffea_smk.compute.model import Computable
from coffea_smk.compute.progress import Progress, Rate, count, watch
from coffea_smk.compute.workflow import RunError, failure

if TYPE_CHECKING:
    from rich.console import Console

    from coffea_smk.engine.meta import DatasetMeta
    from coffea_smk.smk.layout import Layout


class IncompleteResultError(RuntimeError):
    """Some steps of the computation failed or are missing."""


@dataclass(frozen=True)
class FailedStep:
    """A chunk that failed, as its failure manifest says."""

    dataset: str
    file: str
    start: int | None
    stop: int | None
    error: str

    def __str__(self) -> str:
        return f"{self.dataset}: {self.file} entries {self.start}-{self.stop}: {self.error}"


class Task:
    """The run of a computable: returned at once by ``SnakemakeBackend.compute``."""

    def __init__(
        self,
        computable: Computable,
        outdir: Path,
        configfile: Path,
        process: subprocess.Popen[bytes] | None,
        allow_pickle: bool = False,
    ) -> None:
        self.computable = computable
        self.outdir = outdir
        self.configfile = configfile
        self._process = process
        self._allow_pickle = allow_pickle
        self._layout_cache: Layout | None = None
        self._config = _snapshot(configfile)  # a later computation in the outdir rewrites the files
        self._rate = Rate()

    def done(self) -> bool:
        """Whether the run has ended (successfully or not)."""
        return self._process is None or self._process.poll() is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run to end (at most ``timeout`` seconds); whether it has."""
        if self._process is None:
            return True
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def cancel(self) -> None:
        """Stop the run (Snakemake stops its jobs; finished work stays and is reused)."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait()

    def _check_run(self) -> None:
        self.wait()
        code = 0 if self._process is None else self._process.returncode
        if code != 0:
            raise failure(self.configfile, code)

    def _stored(self) -> dict[str, tuple[DatasetMeta, Path]]:
        """The per-dataset results of this computation that exist (by their keyed paths, so
        another computation in the same outdir never stands in for this one's): meta and path."""
        from coffea_smk.engine.meta import DatasetMeta  # noqa: PLC0415  pydantic
        from coffea_smk.results import load_meta  # noqa: PLC0415  numpy

        layout = self._layout()
        out = {}
        for slug, d in layout.datasets.items():
            path = Path(layout.dataset_result(slug))
            if path.exists():
                out[d.name] = (DatasetMeta.model_validate(load_meta(path)), path)
        return out

    def _load(self, path: Path) -> Any:
        from coffea_smk.results import IncompleteResultWarning, load  # noqa: PLC0415  numpy

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IncompleteResultWarning)
            return load(path, allow_pickle=self._allow_pickle)

    def _results(self) -> tuple[dict[str, Any], set[str]]:
        """The complete per-dataset results, and the names of the incomplete ones."""
        stored = self._stored()
        found = {name: self._load(path) for name, (meta, path) in stored.items() if meta.complete}
        return found, {name for name, (meta, _) in stored.items() if not meta.complete}

    def failed_steps(self) -> list[FailedStep]:
        """The chunks that failed in the current run (from its failure manifests)."""
        out = []
        names = set(self.computable.dataset_names)
        for path in sorted((self.outdir / "failures").rglob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for entry in data.get("failed", []) if isinstance(data, dict) else []:
                step = _step(entry)
                if step is not None and step.dataset in names:
                    out.append(step)
        return out

    @property
    def progress(self) -> Progress:
        """Counts of datasets, chunks and events (from the workflow's files), and the rate."""
        running = not self.done()
        found, incomplete = ({}, set()) if running else self._results()
        counts = count(self._layout(), set(self.computable.dataset_names))
        return Progress(
            datasets=len(self.computable.dataset_names),
            done=len(found),
            incomplete=len(incomplete),
            failed_chunks=counts.failed_chunks,
            running=running,
            events_done=counts.events_done,
            events_expected=counts.events_expected,
            chunks_done=counts.chunks_done,
            chunks_pending=counts.chunks_pending,
            events_per_second=self._rate(counts.events_done),
        )

    def watch(self, interval: float = 1.0, console: Console | None = None) -> Progress:
        """Show a live progress bar until the run ends (in a terminal, or a widget in Jupyter
        with ``ipywidgets``); the last :attr:`progress`. ``result()`` then returns at once."""
        return watch(lambda: self.progress, interval, console)

    def _layout(self) -> Layout:
        """The analysis as the run sees it (read once: the config does not change under a task)."""
        if self._layout_cache is None:
            from coffea_smk.smk.layout import Layout  # noqa: PLC0415  (pydantic)

            self._layout_cache = Layout.from_config(self._config, str(self.configfile), unknown_ok=True)
        return self._layout_cache

    def result(self) -> dict[str, Any]:
        """The result of each dataset, once the run has ended.

        Raises:
            RunError: The run failed as a whole.
            IncompleteResultError: Some steps failed (named in the message).
        """
        self._check_run()
        found, _ = self._results()
        missing = [n for n in self.computable.dataset_names if n not in found]
        if missing:
            steps = "\n  ".join(str(s) for s in self.failed_steps()) or "(no failure manifest)"
            raise IncompleteResultError(
                f"the result is incomplete: datasets {', '.join(missing)} lack failed or missing steps:\n  "
                f"{steps}\nuse task.partial_result() for what finished and a computable of the rest"
            )
        return found

    def partial_result(self) -> tuple[dict[str, Any], Computable | None]:
        """What finished (per dataset, incomplete ones included), and a computable of exactly
        the entry ranges that did not (None: nothing left), once the run has ended.

        ``coffea_smk.accumulate([part, backend.compute(rest).result()])`` is the full result:
        no event twice, none lost. Computing the rest redoes no finished chunk.
        """
        from coffea_smk.compute.rest import rest_of  # noqa: PLC0415  (pydantic)

        self.wait()  # a failed run still leaves what finished
        stored = self._stored()
        part = {name: self._load(path) for name, (_, path) in stored.items()}
        left = []
        for dataset in self.computable.data.datasets:
            rest = rest_of(dataset, stored[dataset.name][0] if dataset.name in stored else None)
            if rest is not None:
                left.append(rest)
        if not left:
            return part, None
        data = replace(self.computable.data, datasets=tuple(left))
        return part, Computable(data=data, processor=self.computable.processor)


def _snapshot(configfile: Path) -> dict[str, Any]:
    """The analysis as written now: its config with the fileset inline."""
    import yaml  # noqa: PLC0415

    config: dict[str, Any] = yaml.safe_load(configfile.read_text())
    if isinstance(config.get("fileset"), str):
        config["fileset"] = json.loads((configfile.parent / config["fileset"]).read_text())
    return config


def _step(entry: Any) -> FailedStep | None:
    if not isinstance(entry, dict) or "dataset" not in entry:
        return None
    start, stop = entry.get("entrystart", entry.get("start")), entry.get("entrystop", entry.get("stop"))
    return FailedStep(
        dataset=str(entry["dataset"]),
        file=str(entry.get("file", entry.get("filename", "?"))),
        start=start if isinstance(start, int) else None,
        stop=stop if isinstance(stop, int) else None,
        error=str(entry.get("exception", entry.get("type", ""))) + ": " + str(entry.get("message", "")),
    )


__all__ = ["FailedStep", "IncompleteResultError", "Progress", "RunError", "Task"]
