"""One chunk's buffer manager: what the user's arrays, field paths and branch names mean as buffer keys."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from coffea_smk.buffers.prefetch import Prefetcher
from coffea_smk.buffers.stats import ReadStats
from coffea_smk.buffers.store import FileBuffers


class Prefetch:
    """Reads started by :func:`prefetch`; a context manager.

    Leaving the ``with`` block does not wait: what is still being read keeps
    being read and is used when touched. :meth:`wait` blocks until every
    requested buffer is read (and raises the first read error).
    """

    def __init__(self, manager: BufferManager, keys: list[str], prefetcher: Prefetcher | None) -> None:
        self.manager = manager
        self.keys = keys
        self._prefetcher = prefetcher

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def wait(self) -> None:
        """Block until every requested buffer is in memory; raise the first read error."""
        for key in self.keys:
            self.manager.store.load(key)


class BufferManager:
    """The buffers of one chunk's events; reached with :func:`manager` inside ``process``."""

    def __init__(self, store: FileBuffers, start: int, stop: int, events: Any = None) -> None:
        self.store = store
        self.start = start
        self.stop = stop
        self.events = events
        self._prefetchers: dict[int, Prefetcher] = {}
        self._by_branch: dict[str, list[str]] | None = None
        self._closed = False

    # ---- resolving what the user means -----------------------------------------------
    def keys(self, *what: Any) -> list[str]:
        """Buffer keys of this chunk behind arrays, field paths or branch names (in order)."""
        out: list[str] = []
        seen: set[str] = set()
        for item in flatten(what):
            for key in self._keys_of(item):
                if key not in seen:
                    seen.add(key)
                    out.append(key)
        return out

    def _keys_of(self, item: Any) -> list[str]:
        # awkward loads when a processor asks, not in jobs that import buffers for ReadStats
        from coffea_smk.buffers.keys import virtual_buffer_keys  # noqa: PLC0415 (awkward when asked)

        if isinstance(item, str):
            return self._keys_of_name(item)
        return [k for k in virtual_buffer_keys(item) if self._mine(k)]

    def _mine(self, key: str) -> bool:
        try:
            return self.store.source.key_range(key) == (self.start, self.stop)
        except Exception:
            return False

    def _keys_of_name(self, name: str) -> list[str]:
        from coffea_smk.buffers.keys import project, virtual_buffer_keys  # noqa: PLC0415 (awkward when asked)

        if self.events is not None:
            found = project(self.events, name.split("."))
            if found is not None:
                return [k for k in found if self._mine(k)]
        if self._by_branch is None:
            self._by_branch = {}
            if self.events is not None:
                for key in virtual_buffer_keys(self.events):
                    if self._mine(key):
                        for branch in self.store.source.key_branches(key):
                            self._by_branch.setdefault(branch, []).append(key)
        if name in self._by_branch:
            return list(self._by_branch[name])
        raise KeyError(f"no field or branch named {name!r} in these events")

    # ---- the user's calls ----------------------------------------------------------------
    def clear(self, *what: Any) -> int:
        """Free the buffers behind ``what`` now; return the bytes released by the store.

        Touching them again reads them again from the file (and counts as a
        re-read in the chunk's metrics).
        """
        return self.store.drop(self.keys(*what))

    def prefetch(self, *what: Any, nthreads: int = 1) -> Prefetch:
        """Start reading the buffers behind ``what`` in ``nthreads`` background threads."""
        if self._closed:
            raise RuntimeError("this chunk is over: prefetch inside process(events)")
        keys = self.keys(*what)
        prefetcher = None
        if keys:
            prefetcher = self._prefetchers.get(nthreads)
            if prefetcher is None:
                prefetcher = self._prefetchers[nthreads] = Prefetcher(nthreads, name="explicit")
            prefetcher.submit(self.store, keys)
        return Prefetch(self, keys, prefetcher)

    @property
    def resident_bytes(self) -> int:
        """Bytes of this chunk's buffers held in memory now."""
        return self.store.held_bytes(self.start, self.stop)

    @property
    def stats(self) -> ReadStats:
        """What this chunk has read so far."""
        return self.store.stats(self.start, self.stop)

    def close(self) -> None:
        """End the chunk's explicit prefetches: cancel what is queued, let reads in flight finish."""
        self._closed = True
        for prefetcher in self._prefetchers.values():
            prefetcher.close()
        self._prefetchers.clear()


def flatten(items: Iterable[Any]) -> Iterator[Any]:
    """The items of nested lists, tuples and sets, in order."""
    for item in items:
        if isinstance(item, (list, tuple, set)):
            yield from flatten(item)
        else:
            yield item
