"""The inputs of the skim tests: copies of the shared NanoAOD, MC and data."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def copied_fileset(root: Path, nanoaod: Path) -> dict[str, Any]:
    """Copies of the shared NanoAOD under ``root/data`` (so a test may touch them), as a fileset:
    DY (MC, two files of 40 events) and Data (one file of 40 events)."""
    data = root / "data"
    data.mkdir(exist_ok=True)
    for name in ("nano_dy.root", "nano_dimuon.root"):
        shutil.copyfile(nanoaod / name, data / name)
    shutil.copyfile(nanoaod / "nano_dy.root", data / "nano_dy2.root")
    return {
        "DY": {"files": [str(data / "nano_dy.root"), str(data / "nano_dy2.root")], "metadata": {"xsec": 2.5}},
        "Data": {"files": [str(data / "nano_dimuon.root")], "metadata": {"is_data": True}},
    }
