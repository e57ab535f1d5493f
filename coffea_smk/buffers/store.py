"""The buffer store: the buffers one work unit read from one file, and what each chunk read.

A buffer is in one :class:`EntryState` at a time. The processor's thread reads
a buffer that is missing (or only queued) itself; a prefetch thread takes a
queued one (:meth:`FileBuffers.start`, :meth:`FileBuffers.run`); a read in
flight is waited for; a failed prefetch read is raised when (and only if) the
processor touches that buffer. Every transition happens under the store's lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any, Protocol

from coffea_smk.buffers.stats import ReadStats

log = logging.getLogger("coffea_smk.buffers")


class BufferReadError(RuntimeError):
    """Reading a buffer failed; the message names the branch, the file and the entry range."""

    # its public name, as written in a config's continue_on and in failure records
    __module__ = "coffea_smk.buffers"


class KeySource(Protocol):
    """How a file's buffers are read and described, by buffer key.

    A buffer key names one buffer of one entry range of one file; keys of
    different chunks differ, and ``suffix`` strips the range so that what
    one chunk touched can be asked for in the next.
    """

    @property
    def where(self) -> str:
        """The file, for messages."""

    def read_key(self, key: str) -> Any: ...
    def key_range(self, key: str) -> tuple[int, int]: ...
    def key_branches(self, key: str) -> tuple[str, ...]: ...
    def key_bytes(self, key: str) -> tuple[int, int]: ...
    def suffix(self, key: str) -> str: ...
    def key_for(self, suffix: str, start: int, stop: int) -> str | None: ...


class EntryState(Enum):
    """Where one buffer of the store is."""

    QUEUED = "queued"
    """Waiting in a prefetcher's queue; the processor takes it over if it touches it first."""
    RUNNING = "running"
    """Being read by its owner thread (the processor's or a prefetch thread)."""
    DONE = "done"
    """Read; held until the chunk ends or it is cleared."""
    FAILED = "failed"
    """A prefetch read failed; raised when the processor touches it."""


QUEUED = EntryState.QUEUED
RUNNING = EntryState.RUNNING
DONE = EntryState.DONE
FAILED = EntryState.FAILED
_MISSING: Any = object()


class _Entry:
    __slots__ = (
        "array",
        "background",
        "done",
        "error",
        "owner",
        "release",
        "started",
        "state",
        "task",
        "touched",
    )

    def __init__(self, state: EntryState, owner: int | None = None) -> None:
        self.state = state
        self.owner = owner
        self.array: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.started = time.perf_counter()
        self.background = False
        self.release: Callable[[], None] | None = None  # gives back the prefetch memory budget
        self.task: Task | None = None
        self.touched = False


class Task:
    """One queued prefetch read, made by :meth:`FileBuffers.queue` for a prefetcher's queue."""

    __slots__ = ("cancelled", "entry", "key", "store")

    def __init__(self, store: FileBuffers, key: str, entry: _Entry) -> None:
        self.store = store
        self.key = key
        self.entry = entry
        self.cancelled = False


class FileBuffers:
    """The buffers one work unit read from one file, shared by its chunks and prefetch threads.

    The processor's thread reaches it through :meth:`load` (coffea_smk's
    events) or as a mapping through :meth:`get` / ``[key] = value`` (coffea's
    NanoEvents use it as their ``buffer_cache``). Prefetch threads fill it
    through :meth:`queue`, :meth:`start` and :meth:`run`. A buffer is read
    once per chunk unless cleared.
    """

    def __init__(self, source: KeySource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._running: set[_Entry] = set()  # prefetch reads in flight, dropped or not
        self._stats: dict[tuple[int, int], ReadStats] = {}
        self._closed = False

    # ---- statistics ------------------------------------------------------------
    def stats(self, start: int, stop: int) -> ReadStats:
        """The statistics of the chunk ``[start, stop)`` (created empty on first use)."""
        with self._lock:
            return self._stats_for((start, stop))

    def _stats_for(self, rng: tuple[int, int]) -> ReadStats:
        stats = self._stats.get(rng)
        if stats is None:
            stats = self._stats[rng] = ReadStats()
        return stats

    def _touch(self, key: str, entry: _Entry) -> None:
        # under self._lock; the processor's thread touched `key`
        if entry.touched:
            return
        entry.touched = True
        self._stats_for(self.source.key_range(key)).add_touch(key)
        self._release(entry)

    def held_bytes(self, start: int, stop: int) -> int:
        """Bytes of the chunk ``[start, stop)``'s buffers held in memory now."""
        with self._lock:
            return sum(
                int(getattr(entry.array, "nbytes", 0))
                for key, entry in self._entries.items()
                if entry.state is DONE and self._in_chunk(key, start, stop)
            )

    def _in_chunk(self, key: str, start: int, stop: int) -> bool:
        try:
            return self.source.key_range(key) == (start, stop)
        except Exception:
            return False

    # ---- the processor's side ----------------------------------------------------
    def load(self, key: str) -> Any:
        """The buffer ``key``: from the store, from a read in flight, or read now."""
        array = self._acquire(key)
        if array is not _MISSING:
            return array
        try:
            array = self.source.read_key(key)
        except Exception as err:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.state is RUNNING and entry.owner == threading.get_ident():
                    del self._entries[key]
                    entry.done.set()
            raise self._error(key, err) from err
        self._complete(key, array)
        return array

    def get(self, key: str, default: Any = None) -> Any:
        """Mapping access for coffea's NanoEvents: ``default`` means "read it and store it here"."""
        array = self._acquire(key)
        return default if array is _MISSING else array

    def __setitem__(self, key: str, value: Any) -> None:
        self._complete(key, value)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            entry = self._entries.get(key) if isinstance(key, str) else None
            return entry is not None and entry.state is DONE

    def note_prefetch_error(self, start: int, stop: int) -> None:
        """A background read for ``[start, stop)`` outside the store failed: counted in its stats."""
        with self._lock:
            self._stats_for((start, stop)).prefetch_errors += 1

    def known(self, key: str) -> bool:
        """Whether the store holds ``key``, reads it, or has it queued."""
        with self._lock:
            return key in self._entries

    def _acquire(self, key: str) -> Any:
        """The array if ready; else ``_MISSING`` and the calling thread now owns the read."""
        me = threading.get_ident()
        waited = False
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is None or entry.state is QUEUED:
                    if entry is not None:  # queued for a prefetch thread: read it here instead
                        self._cancel_queued(entry)
                    entry = self._entries[key] = _Entry(RUNNING, me)
                    self._touch(key, entry)
                    return _MISSING
                if entry.state is RUNNING and entry.owner == me:
                    if not entry.background:
                        entry.started = time.perf_counter()
                    return _MISSING
                if entry.state is DONE:
                    if entry.background and not entry.touched and not waited:
                        self._stats_for(self.source.key_range(key)).prefetch_hits += 1
                    self._touch(key, entry)
                    return entry.array
                if entry.state is FAILED:
                    self._touch(key, entry)
                    del self._entries[key]
                    assert entry.error is not None
                    raise entry.error
                # being read by a prefetch thread: wait for it
                done = entry.done
                self._stats_for(self.source.key_range(key)).prefetch_waits += 1
            t0 = time.perf_counter()
            done.wait()
            waited = True
            seconds = time.perf_counter() - t0
            with self._lock:
                self._stats_for(self.source.key_range(key)).add_wait(seconds)

    def _complete(self, key: str, array: Any, entry: _Entry | None = None) -> None:
        """Record a finished read by the calling thread (``entry``: a prefetch task's own)."""
        me = threading.get_ident()
        t1 = time.perf_counter()
        # described outside the lock: it walks the branch's baskets
        branches, nbytes = self.source.key_branches(key), self.source.key_bytes(key)
        with self._lock:
            current = self._entries.get(key)
            target = entry if entry is not None else current
            if target is None or target.state is not RUNNING or target.owner != me:
                return
            target.state = DONE
            if target is current:
                target.array = array
            # else: cleared or dropped while it was read; counted, not kept
            stats = self._stats_for(self.source.key_range(key))
            stats.add_read(key, branches, nbytes, t1 - target.started, target.background)
            target.done.set()

    def _error(self, key: str, err: BaseException, background: bool = False) -> BufferReadError:
        if isinstance(err, BufferReadError):
            return err
        start, stop = self.source.key_range(key)
        branches = ", ".join(self.source.key_branches(key)) or key
        where = " (in a prefetch thread)" if background else ""
        out = BufferReadError(
            f"reading {branches} from {self.source.where}, entries {start}-{stop}, failed{where}: "
            f"{type(err).__name__}: {err}"
        )
        out.__cause__ = err
        return out

    # ---- the prefetch threads' side ------------------------------------------------------
    def queue(self, key: str) -> Task | None:
        """A prefetch task for ``key``, or None when the store holds or reads it already."""
        with self._lock:
            if key in self._entries:
                return None
            entry = self._entries[key] = _Entry(QUEUED)
            task = entry.task = Task(self, key, entry)
            return task

    def unqueue(self, task: Task) -> None:
        """Forget a queued task that its prefetcher cancelled before it started."""
        with self._lock:
            if self._entries.get(task.key) is task.entry and task.entry.state is QUEUED:
                del self._entries[task.key]

    def _cancel_queued(self, entry: _Entry) -> None:
        # under self._lock
        if entry.task is not None:
            entry.task.cancelled = True
            entry.task = None

    def start(self, task: Task, release: Callable[[], None] | None = None) -> bool:
        """Claim ``task`` for the calling (prefetch) thread; False if it is no longer wanted.

        ``release`` gives back the memory budget reserved for the buffer; the
        store calls it once, when the processor touches the buffer or the
        buffer is dropped.
        """
        with self._lock:
            entry = self._entries.get(task.key)
            if self._closed or task.cancelled or entry is not task.entry or entry.state is not QUEUED:
                return False
            entry.state = RUNNING
            entry.owner = threading.get_ident()
            entry.background = True
            entry.started = time.perf_counter()
            entry.release = release
            entry.task = None
            self._running.add(entry)
            return True

    def run(self, task: Task) -> None:
        """Read a started task's buffer in the calling (prefetch) thread; never raises."""
        entry = task.entry
        try:
            array = self.source.read_key(task.key)
        except BaseException as err:
            with self._lock:
                if self._entries.get(task.key) is entry and entry.state is RUNNING:
                    entry.state = FAILED
                    entry.error = self._error(task.key, err, background=True)
                    self._stats_for(self.source.key_range(task.key)).prefetch_errors += 1
                self._release(entry)
            log.debug("prefetch of %s failed: %s", task.key, err)
        else:
            self._complete(task.key, array, entry)
            with self._lock:
                if self._entries.get(task.key) is not entry:
                    self._release(entry)  # cleared or dropped while it was read
        finally:
            with self._lock:
                self._running.discard(entry)
            entry.done.set()

    def _release(self, entry: _Entry) -> None:
        # under self._lock
        if entry.release is not None:
            release, entry.release = entry.release, None
            release()

    def in_flight(self) -> list[threading.Event]:
        """Completion events of the reads that prefetch threads are doing now."""
        with self._lock:
            return [e.done for e in self._running]

    # ---- freeing ----------------------------------------------------------------
    def drop(self, keys: Iterable[str]) -> int:
        """Forget these buffers (queued reads are cancelled); return the bytes freed."""
        freed = 0
        with self._lock:
            for key in keys:
                entry = self._entries.pop(key, None)
                if entry is None:
                    continue
                if entry.state is DONE and entry.array is not None:
                    freed += int(getattr(entry.array, "nbytes", 0))
                self._cancel_queued(entry)
                self._release(entry)
        return freed

    def end_chunk(self, start: int, stop: int) -> ReadStats:
        """Drop every buffer of the chunk ``[start, stop)`` and return its statistics."""
        with self._lock:
            keys = [k for k in self._entries if self.source.key_range(k) == (start, stop)]
            stats = self._stats.pop((start, stop), None) or ReadStats()
            for key in keys:
                entry = self._entries[key]
                if entry.background and not entry.touched:
                    if entry.state is DONE:
                        stats.prefetch_unused += 1
                    elif entry.state is FAILED:
                        log.warning(
                            "a prefetched buffer that the processor did not touch could not be read: %s",
                            self._error(key, entry.error or RuntimeError("unknown")),
                        )
        self.drop(keys)
        return stats

    def close(self) -> None:
        """No more prefetch reads start; wait for those in flight, then forget everything."""
        with self._lock:
            self._closed = True
            running = [e.done for e in self._running]
        for done in running:
            done.wait()
        with self._lock:
            for entry in self._entries.values():
                self._cancel_queued(entry)
                self._release(entry)
            self._entries.clear()


def reader_for(store: FileBuffers, key: str) -> Callable[[], Any]:
    """The generator awkward calls for ``key``: the store, not awkward, keeps the array."""

    def generate() -> Any:
        return store.load(key)

    return generate
