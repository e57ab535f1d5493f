"""Buffer control inside ``process(events)``: free columns now, read columns ahead.

Every column of ``events`` is a lazy buffer. coffea_smk keeps the buffers a
chunk has read in one store (not inside awkward's arrays), so they can be
freed at any moment and read ahead in background threads::

    from coffea_smk import buffers

    def process(self, events):
        with buffers.prefetch(["Jet.pt", "Jet.eta", "Jet.phi"], nthreads=2):
            muons = select_muons(events.Muon)     # runs while the jet columns are read
        jets = events.Jet[events.Jet.pt > 30]     # ready (or waits for the read in flight)
        ...
        buffers.clear(events.Jet)                 # frees the jet buffers now
        # touching events.Jet again re-reads it from the file

Both functions take arrays that come from ``events`` (``events.Jet``,
``events.Jet.pt``), field paths (``"Jet"``, ``"Jet.pt"``) or branch names
(``"Jet_pt"``), or lists of them. Names are resolved without reading anything
(awkward itself reads a collection's offsets to give ``events.Jet.pt``).
They work the same with coffea_smk's events and with coffea's NanoEvents run
by coffea_smk. :func:`manager` gives the chunk's :class:`BufferManager`
(resident bytes, columns read).

A read that fails in a prefetch thread is raised when (and only if) the
processor touches that buffer, as a :class:`BufferReadError` naming the
branch, the file and the entry range, exactly as a read in the processor's own
thread would. Nothing waits forever: every read in flight ends, in success or
error, and the end of a chunk stops what is still queued.
"""

from __future__ import annotations

from typing import Any

from coffea_smk.buffers.api import ATTR, activate, clear, deactivate, manager, prefetch
from coffea_smk.buffers.manager import BufferManager, Prefetch
from coffea_smk.buffers.prefetch import Budget, Prefetcher
from coffea_smk.buffers.stats import ReadStats
from coffea_smk.buffers.store import BufferReadError, FileBuffers, KeySource, reader_for

__all__ = [
    "ATTR",
    "Budget",
    "BufferManager",
    "BufferReadError",
    "FileBuffers",
    "KeySource",
    "Prefetch",
    "Prefetcher",
    "ReadStats",
    "activate",
    "clear",
    "deactivate",
    "manager",
    "prefetch",
    "reader_for",
    "virtual_buffer_keys",
]


def __getattr__(name: str) -> Any:
    if name == "virtual_buffer_keys":
        # imports awkward: not at load, since jobs that never run a processor import ReadStats
        from coffea_smk.buffers.keys import virtual_buffer_keys  # noqa: PLC0415 (awkward when asked)

        return virtual_buffer_keys
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
