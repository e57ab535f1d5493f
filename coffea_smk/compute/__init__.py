"""A Python API for notebooks on the coffea_smk workflow: coffea's ``Runner`` and a
``coffea.compute``-style backend, both running ``coffea-smk run`` underneath."""

from __future__ import annotations

from coffea_smk.compute.backend import ErrorPolicy, SnakemakeBackend
from coffea_smk.compute.model import Computable, DataGroup, Dataset, File
from coffea_smk.compute.progress import Progress
from coffea_smk.compute.runner import Runner
from coffea_smk.compute.task import FailedStep, IncompleteResultError, Task
from coffea_smk.compute.workflow import RunError

__all__ = [
    "Computable",
    "DataGroup",
    "Dataset",
    "ErrorPolicy",
    "FailedStep",
    "File",
    "IncompleteResultError",
    "Progress",
    "RunError",
    "Runner",
    "SnakemakeBackend",
    "Task",
]
