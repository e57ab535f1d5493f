"""Job names and wildcards: a job's name is a content key, and a retry's is ``<key>-a<k>``.

Failed work is retried through *attempts*: a job that ends with failures
(under ``continue_on`` or ``skip_bad_files``) still writes its output, covering
what succeeded, plus a failure manifest. On the next run the same job is
requested under a new name ``<id>-a<k>``. Only this layer knows the names: the
engine gets the id and the attempt apart.
"""

from __future__ import annotations

import os
import re
from enum import Enum

HEX = r"[0-9a-f]{16}"
_ATTEMPT = re.compile(rf"^({HEX})(?:-a([0-9]+))?$")

WILDCARDS = {
    "dataset": r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    "batch": rf"{HEX}(?:-a[0-9]+)?",
    "plan": HEX,
    "tag": HEX,
    "key": HEX,
    "unit": rf"{HEX}(?:-a[0-9]+)?",
    "node": rf"{HEX}(?:-[0-9a-f]{{8}})?",
}
"""The wildcards of the output paths (``wildcard_constraints`` of the workflow)."""


class Step(str, Enum):
    """The steps a job runs (``python -m coffea_smk job <step>``)."""

    PREPROCESS = "preprocess"
    PLAN = "plan"
    PROCESS = "process"
    MERGE = "merge"
    DATASET = "dataset"
    RESULT = "result"
    PLOTS = "plots"
    REPORT = "report"
    PUBLISH = "publish"
    STAT = "stat"


def split_attempt(name: str) -> tuple[str, int]:
    """``"<id>-a3"`` -> ``("<id>", 3)``; ``"<id>"`` -> ``("<id>", 0)``.

    Raises:
        ValueError: ``name`` is not a job name.
    """
    m = _ATTEMPT.match(name)
    if not m:
        raise ValueError(f"not a job name: {name!r}")
    return m.group(1), int(m.group(2) or 0)


def attempt_name(ident: str, attempt: int) -> str:
    """The job name of attempt ``attempt`` of ``ident``."""
    return ident if attempt == 0 else f"{ident}-a{attempt}"


def next_attempts(directory: str | os.PathLike[str]) -> dict[str, int]:
    """``{id: next attempt}`` from the failure manifests (``<name>.json``) in a directory.

    Attempt ``k`` of an id is due when manifests exist for attempts ``0..k-1``.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return {}
    failed: dict[str, set[int]] = {}
    for name in names:
        m = _ATTEMPT.match(name.removesuffix(".json")) if name.endswith(".json") else None
        if m:
            failed.setdefault(m[1], set()).add(int(m[2] or 0))
    out = {}
    for ident, ks in failed.items():
        k = 0
        while k in ks:
            k += 1
        out[ident] = k
    return out
