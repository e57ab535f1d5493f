"""coffea_smk: columnar HEP analyses in the style of coffea, run as a Snakemake workflow."""

from __future__ import annotations

import importlib
from typing import Any

from coffea_smk._version import __version__

__all__ = [
    "Chain",
    "Runner",
    "Skim",
    "__version__",
    "accumulate",
    "load",
    "load_meta",
    "profile_dir",
    "skim_fileset",
    "snakefile",
]

# Names are imported on first use: a job command (`python -m coffea_smk job`)
# must start without importing numpy when a job server runs it.
_WHERE = {
    "Chain": "coffea_smk.smk.chain",
    "Runner": "coffea_smk.compute.runner",
    "Skim": "coffea_smk.skim",
    "accumulate": "coffea_smk.engine.accumulate",
    "load": "coffea_smk.results",
    "load_meta": "coffea_smk.results",
    "profile_dir": "coffea_smk.smk.paths",
    "skim_fileset": "coffea_smk.smk.chain",
    "snakefile": "coffea_smk.smk.paths",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'coffea_smk' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
