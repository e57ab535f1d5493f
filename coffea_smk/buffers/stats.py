"""What one chunk read, and where its reading time went: the record behind its metrics."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class ReadStats:
    """What one chunk read, and where its reading time went (filled in as it reads)."""

    columns: set[str] = field(default_factory=set)
    """Branches read."""
    touched: list[str] = field(default_factory=list)
    """Buffer keys the processor touched, in first-touch order."""
    buffers: int = 0
    """Buffers read (a buffer read again after :func:`clear` counts again)."""
    rereads: int = 0
    bytes_compressed: int = 0
    bytes_uncompressed: int = 0
    read_seconds: float = 0.0
    """Time the processor's thread was blocked reading or waiting for a read in flight."""
    wait_seconds: float = 0.0
    """The part of ``read_seconds`` spent waiting for prefetch threads."""
    background_seconds: float = 0.0
    """Time prefetch threads spent reading this chunk's buffers (overlapping the processor)."""
    prefetched: int = 0
    prefetch_hits: int = 0
    """Prefetched buffers that were ready when the processor touched them."""
    prefetch_waits: int = 0
    prefetch_unused: int = 0
    prefetch_errors: int = 0
    _seen: set[str] = field(default_factory=set, repr=False)
    _touched_set: set[str] = field(default_factory=set, repr=False)

    def add_read(
        self, key: str, branches: Iterable[str], nbytes: tuple[int, int], seconds: float, background: bool
    ) -> None:
        """Count one finished read of ``key`` (``nbytes``: compressed, uncompressed)."""
        self.buffers += 1
        if key in self._seen:
            self.rereads += 1
        self._seen.add(key)
        self.columns.update(branches)
        self.bytes_compressed += nbytes[0]
        self.bytes_uncompressed += nbytes[1]
        if background:
            self.prefetched += 1
            self.background_seconds += seconds
        else:
            self.read_seconds += seconds

    def add_touch(self, key: str) -> None:
        """Note that the processor touched ``key`` (kept in first-touch order)."""
        if key not in self._touched_set:
            self._touched_set.add(key)
            self.touched.append(key)

    def add_wait(self, seconds: float) -> None:
        """Count time the processor waited for a prefetch thread's read."""
        self.read_seconds += seconds
        self.wait_seconds += seconds
