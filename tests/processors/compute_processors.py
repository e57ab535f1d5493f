"""Processors of tests/test_compute.py."""

from __future__ import annotations

import os
from typing import Any

import awkward as ak


class BrokenWhileFlagged:
    """Raises ValueError on the chunks of files named ``broken`` while the file ``flag`` exists
    (a broken input, fixed by removing the flag)."""

    def __init__(self, flag: str = "", broken: str = "", from_entry: int = 0) -> None:
        self.flag = flag
        self.broken = broken
        self.from_entry = from_entry
        """Only the chunks that start at or after this entry are broken."""

    def process(self, events: Any) -> dict[str, Any]:
        meta = events.metadata
        broken = self.broken and self.broken in meta["filename"] and meta["entrystart"] >= self.from_entry
        if broken and os.path.exists(self.flag):
            raise ValueError(f"{events.metadata['filename']} is broken")
        return {"events": len(events), "muons": int(ak.sum(ak.num(events.Muon, axis=1)))}
