"""Loading a processor that was shipped with cloudpickle (by ``coffea_smk.Runner`` or a backend).

The module that :mod:`coffea_smk.compute` writes beside the pickle calls :func:`load_pickled`;
the module's text holds the pickle's SHA-256, so the processor's key changes with its bytes.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from coffea_smk.spec.processor import ProcessorError


def python_version() -> str:
    """``major.minor`` of this interpreter: what a pickle of code must be loaded with."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def load_pickled(module_file: str, name: str, sha256: str, python: str) -> Any:
    """The object pickled in ``name`` (beside ``module_file``).

    Raises:
        ProcessorError: This Python is not the one that pickled it, or the file is not the
            one the module names (missing, or other bytes).
    """
    if python != python_version():
        raise ProcessorError(
            f"the processor was shipped with cloudpickle from Python {python}, and this job runs "
            f"Python {python_version()} ({sys.executable}): pickled code loads only in the same "
            f"Python version; run the jobs with Python {python}, or put the processor in a module "
            "the jobs can import (processor: 'module:Class')"
        )
    path = Path(module_file).resolve().parent / name
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ProcessorError(f"the shipped processor {path} cannot be read: {err}") from err
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ProcessorError(f"the shipped processor {path} is not the one {module_file} names (other bytes)")
    import cloudpickle  # noqa: PLC0415  only a shipped processor needs it

    try:
        return cloudpickle.loads(data)
    except Exception as err:
        raise ProcessorError(f"the shipped processor {path} cannot be unpickled: {err!r}") from err
