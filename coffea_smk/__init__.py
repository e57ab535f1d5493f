"""coffea_smk: columnar HEP analyses in the style of coffea, run as a Snakemake workflow."""

from __future__ import annotations

from coffea_smk._version import __version__
from coffea_smk.accumulate import accumulate
from coffea_smk.paths import profile_dir, snakefile
from coffea_smk.storage import load, load_meta

__all__ = ["__version__", "accumulate", "load", "load_meta", "profile_dir", "snakefile"]


def __dir__() -> list[str]:
    return __all__
