"""How skims are written: the ``skims:`` block of ``analysis.yaml``, also what a skim job receives.

A skim is a processor output made with :class:`coffea_smk.Skim`: the selected events of
each work unit are written to a piece file beside the unit's partial result, and a
dataset's pieces are compacted into files near ``target_size_mb``. These settings shape
the skim files, so they are part of the key of every skim output.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SkimFormat", "SkimSettings"]

SkimFormat = Literal["parquet", "root"]


class SkimSettings(BaseModel):
    """The ``skims:`` block of the configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    format: SkimFormat = "parquet"
    """``parquet`` (pyarrow) or ``root`` (a TTree ``Events`` in NanoAOD naming, written by uproot)."""
    compression: Literal["zstd", "lz4", "zlib"] = "zstd"
    """The compression of the skim files (ROOT: ZLIB, LZ4 or ZSTD; Parquet: the same codecs)."""
    compression_level: Annotated[int, Field(ge=1, le=22)] | None = None
    """The codec's level; the library's default when not given."""
    target_size_mb: Annotated[float, Field(gt=0)] = 512.0
    """A dataset's pieces are merged into files of about this size (never split inside a piece)."""
    row_group_rows: Annotated[int, Field(gt=0)] = 100_000
    """Rows per Parquet row group (and per ROOT basket write): the chunk size of a later read."""

    def to_json(self) -> str:
        """The JSON a job receives on its command line."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | None) -> SkimSettings:
        """Parse :meth:`to_json`'s output; the defaults without one."""
        return cls.model_validate_json(text) if text else cls()

    @property
    def suffix(self) -> str:
        """The file name suffix of the skim files."""
        return ".parquet" if self.format == "parquet" else ".root"
