"""``coffea_smk.Runner``: coffea's ``processor.Runner`` interface on the coffea_smk workflow."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coffea_smk.compute.ship import reference
from coffea_smk.compute.workflow import Settings, failure, folder_of, start, write_analysis


def schema_name(schema: Any) -> str:
    """The config's ``schema`` for coffea's ``schema=`` argument (None, a name or a schema class)."""
    if schema is None:
        return "auto"
    if isinstance(schema, str):
        return schema
    return f"{schema.__module__}:{schema.__qualname__}"


@dataclass
class Runner:
    """A drop-in for coffea's ``processor.Runner``: the call runs the coffea_smk workflow
    (``coffea-smk run`` with ``profile``) on the fileset and returns the accumulated,
    post-processed output. Finished work is kept in ``outdir`` and never redone.

    Example:
        ``coffea_smk.Runner(chunksize=100_000, outdir="out")(fileset, processor_instance=P())``
    """

    chunksize: int = 100_000
    """Events per call of ``process``."""
    outdir: str | os.PathLike[str] = "coffea_smk_out"
    """Where results, partials and logs go (the analysis is written to ``<outdir>/python/``)."""
    profile: str = "local"
    """A shipped profile (``local``, ``slurm``, ``uge``, ``htcondor``) or a profile directory."""
    cores: int = 2
    """Snakemake's ``--cores``: jobs at once."""
    schema: Any = None
    """coffea's ``schema=``: None (``auto``), a schema class or a config ``schema`` name."""
    maxchunks: int | None = None
    """Not supported (a result of the first chunks only): must stay None."""
    skipbadfiles: bool = False
    """Skip (and list) files that cannot be opened (the config's ``skip_bad_files``)."""
    retries: int = 2
    """In-job retries after a transient I/O error."""
    continue_on: Sequence[str | type[BaseException]] = ()
    """Exception types that fail only their chunk (the result is then incomplete)."""
    events_per_job: int | None = None
    """Events per work unit (one Snakemake job); the config's default when None."""
    allow_pickle: bool = False
    """Store result types without a safe form with cloudpickle."""
    savemetrics: bool = False
    """Not supported: metrics are in the results (``coffea-smk metrics``)."""
    config: Mapping[str, Any] = field(default_factory=dict)
    """Further ``analysis.yaml`` settings."""
    snakemake_args: Sequence[str] = ()
    """Further arguments of ``coffea-smk run`` (Snakemake's)."""

    def __post_init__(self) -> None:
        if self.maxchunks is not None:
            raise ValueError("coffea_smk.Runner: maxchunks is not supported (results are always complete)")
        if self.savemetrics:
            raise ValueError("coffea_smk.Runner: savemetrics is not supported; see `coffea-smk metrics`")

    def settings(self, treename: str | None) -> Settings:
        return Settings(
            chunksize=self.chunksize,
            events_per_job=self.events_per_job,
            treename=treename or "Events",
            schema=schema_name(self.schema),
            continue_on=tuple(_exception_name(e) for e in self.continue_on),
            retries=self.retries,
            skip_bad_files=self.skipbadfiles,
            allow_pickle=self.allow_pickle,
            extra=dict(self.config),
        )

    def write(self, fileset: Mapping[str, Any], processor_instance: Any, treename: str | None = None) -> Path:
        """Write the analysis (config, fileset, shipped processor) without running it; its config."""
        ref = reference(processor_instance, folder_of(self.outdir))
        return write_analysis(self.outdir, fileset, ref, self.settings(treename))

    def __call__(
        self, fileset: Mapping[str, Any], processor_instance: Any, treename: str | None = None
    ) -> Any:
        """Run the workflow on ``fileset`` and return the processor's post-processed output.

        Raises:
            RunError: The run failed (the message holds the end of its log).
        """
        configfile = self.write(fileset, processor_instance, treename)
        proc = start(configfile, self.profile, self.cores, self.snakemake_args)
        try:
            code = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        if code != 0:
            raise failure(configfile, code)
        from coffea_smk.results import load  # noqa: PLC0415  numpy etc. only when there is a result

        return load(Path(self.outdir).resolve() / "result.npz", allow_pickle=self.allow_pickle)


def _exception_name(value: str | type[BaseException]) -> str:
    if isinstance(value, str):
        return value
    module = value.__module__
    return value.__qualname__ if module == "builtins" else f"{module}.{value.__qualname__}"
