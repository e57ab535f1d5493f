"""The settings a job needs, each a frozen model built from the analysis config in one place.

A setting keeps the name it has in ``analysis.yaml`` all the way to the job:
:meth:`_Settings.from_config` copies the fields of the same names out of the
:class:`~coffea_smk.spec.config.AnalysisConfig`, the Snakemake glue passes the
model's JSON on the job's command line (``--policy JSON``, ``--events JSON``),
and the job parses it with the same model. ``tests/test_config.py`` checks that
every field here has the config's name, type, constraints and default.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from coffea_smk.spec.config import AnalysisConfig, exception_names, known_schema

S = TypeVar("S", bound="_Settings")


class _Settings(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, use_attribute_docstrings=True
    )

    @classmethod
    def from_config(cls: type[S], cfg: AnalysisConfig) -> S:
        """The settings of ``cfg`` (fields of the same names)."""
        return cls.model_validate({name: getattr(cfg, name) for name in cls.model_fields})

    def to_json(self) -> str:
        """The JSON a job receives on its command line."""
        return self.model_dump_json(by_alias=True)

    @classmethod
    def from_json(cls: type[S], text: str | None) -> S:
        """Parse :meth:`to_json`'s output; the defaults without one."""
        return cls.model_validate_json(text) if text else cls()


class ErrorPolicy(_Settings):
    """What a failing file open or chunk does (see :mod:`coffea_smk.engine.policy`)."""

    continue_on: Annotated[tuple[str, ...], AfterValidator(exception_names)] = ()
    """Exception type names (``OSError``, ``mymod.MyError``) that fail only the chunk, wherever
    they are in the error's exception chain."""
    retries: Annotated[int, Field(ge=0)] = 2
    """In-job retries of a file open or a chunk after a transient I/O error."""
    retry_backoff: Annotated[float, Field(ge=0)] = 1.0
    """Seconds before the first retry, doubled for each further one."""


class EventsOptions(_Settings):
    """How a processing job builds and reads events. They shape no result."""

    schema_: Annotated[str, AfterValidator(known_schema)] = Field(default="auto", alias="schema")
    """``auto``, ``nanoaod``, ``coffea`` or a coffea schema class (config key ``schema``)."""
    prefetch: bool = True
    """Automatic prefetch of the columns the processor touched in earlier chunks."""
    prefetch_threads: Annotated[int, Field(ge=1, le=64)] = 1
    """Threads of the automatic prefetch."""
    prefetch_max_mb: Annotated[int, Field(gt=0)] = 512
    """Bound on prefetched bytes the processor has not used yet."""


class PlanSettings(_Settings):
    """The settings that shape a dataset's plan (and so are part of its key)."""

    chunksize: Annotated[int, Field(gt=0)] = 100_000
    """Events per chunk: one call of ``process()``."""
    events_per_job: Annotated[int, Field(gt=0)] = 2_000_000
    """Target events per work unit (one Snakemake job)."""
    merge_fanin: Annotated[int, Field(ge=2)] = 64
    """Inputs per merge job in the per-dataset merge tree."""
    align_chunks: bool = True
    """Move chunk boundaries onto the file's cluster boundaries when close."""
