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

import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("coffea_smk.buffers")

__all__ = [
    "BufferManager",
    "BufferReadError",
    "Prefetch",
    "ReadStats",
    "clear",
    "manager",
    "prefetch",
]

ATTR = "@coffea_smk.buffers"
"""The events' ``attrs`` key that holds their :class:`BufferManager` (transient: ``@``)."""

_current: contextvars.ContextVar[BufferManager | None] = contextvars.ContextVar(
    "coffea_smk_buffer_manager", default=None
)


class BufferReadError(RuntimeError):
    """Reading a buffer failed; the message names the branch, the file and the entry range."""


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


@dataclass
class ReadStats:
    """What one chunk read, and where its reading time went."""

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


_QUEUED, _RUNNING, _DONE, _FAILED = "queued", "running", "done", "failed"
_MISSING: Any = object()
_Described = tuple[tuple[str, ...], tuple[int, int]]


class _Entry:
    __slots__ = (
        "array",
        "background",
        "budget",
        "done",
        "error",
        "owner",
        "started",
        "state",
        "task",
        "touched",
    )

    def __init__(self, state: str, owner: int | None = None) -> None:
        self.state = state
        self.owner = owner
        self.array: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.started = time.perf_counter()
        self.background = False
        self.budget: tuple[Budget, int] | None = None
        self.task: _Task | None = None
        self.touched = False


class FileBuffers:
    """The buffers one work unit read from one file, shared by its chunks and prefetch threads.

    The processor's thread reaches it through :meth:`load` (coffea_smk's
    events) or as a mapping through :meth:`get` / ``[key] = value`` (coffea's
    NanoEvents use it as their ``buffer_cache``). Prefetch threads fill it
    through :meth:`_run`. A buffer is read once per chunk unless cleared.
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

    def attach(self, start: int, stop: int, stats: ReadStats) -> None:
        """Record the chunk ``[start, stop)`` into ``stats`` (a caller-owned record)."""
        with self._lock:
            self._stats[(start, stop)] = stats

    def _account(self, key: str, entry: _Entry, seconds: float, described: _Described) -> None:
        # under self._lock
        branches, (compressed, uncompressed) = described
        stats = self._stats_for(self.source.key_range(key))
        stats.buffers += 1
        if key in stats._seen:
            stats.rereads += 1
        stats._seen.add(key)
        stats.columns.update(branches)
        stats.bytes_compressed += compressed
        stats.bytes_uncompressed += uncompressed
        if entry.background:
            stats.prefetched += 1
            stats.background_seconds += seconds
        else:
            stats.read_seconds += seconds

    def _touch(self, key: str, entry: _Entry) -> None:
        # under self._lock; the processor's thread touched `key`
        if entry.touched:
            return
        entry.touched = True
        stats = self._stats_for(self.source.key_range(key))
        if key not in stats._touched_set:
            stats._touched_set.add(key)
            stats.touched.append(key)
        if entry.budget is not None:
            budget, n = entry.budget
            entry.budget = None
            budget.release(n)

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
                if entry is not None and entry.state == _RUNNING and entry.owner == threading.get_ident():
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
            return entry is not None and entry.state == _DONE

    def _acquire(self, key: str) -> Any:
        """The array if ready; else ``_MISSING`` and the calling thread now owns the read."""
        me = threading.get_ident()
        waited = False
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is None or entry.state == _QUEUED:
                    if entry is not None:  # queued for a prefetch thread: read it here instead
                        self._cancel_queued(entry)
                    entry = self._entries[key] = _Entry(_RUNNING, me)
                    self._touch(key, entry)
                    return _MISSING
                if entry.state == _RUNNING and entry.owner == me:
                    if not entry.background:
                        entry.started = time.perf_counter()
                    return _MISSING
                if entry.state == _DONE:
                    if entry.background and not entry.touched and not waited:
                        self._stats_for(self.source.key_range(key)).prefetch_hits += 1
                    self._touch(key, entry)
                    return entry.array
                if entry.state == _FAILED:
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
                stats = self._stats_for(self.source.key_range(key))
                stats.read_seconds += seconds
                stats.wait_seconds += seconds

    def _complete(self, key: str, array: Any, entry: _Entry | None = None) -> None:
        """Record a finished read by the calling thread (``entry``: a prefetch task's own)."""
        me = threading.get_ident()
        t1 = time.perf_counter()
        # described outside the lock: it walks the branch's baskets
        described = (self.source.key_branches(key), self.source.key_bytes(key))
        with self._lock:
            current = self._entries.get(key)
            target = entry if entry is not None else current
            if target is None or target.state != _RUNNING or target.owner != me:
                return
            target.state = _DONE
            if target is current:
                target.array = array
            # else: cleared or dropped while it was read; counted, not kept
            self._account(key, target, t1 - target.started, described)
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

    # ---- prefetching ----------------------------------------------------------------
    def _queue(self, key: str) -> _Task | None:
        with self._lock:
            if key in self._entries:
                return None
            entry = self._entries[key] = _Entry(_QUEUED)
            task = entry.task = _Task(self, key, entry)
            return task

    def _cancel_queued(self, entry: _Entry) -> None:
        # under self._lock
        if entry.task is not None:
            entry.task.cancelled = True
            entry.task = None

    def _start(self, task: _Task, budget: tuple[Budget, int] | None) -> bool:
        with self._lock:
            entry = self._entries.get(task.key)
            if self._closed or task.cancelled or entry is not task.entry or entry.state != _QUEUED:
                return False
            entry.state = _RUNNING
            entry.owner = threading.get_ident()
            entry.background = True
            entry.started = time.perf_counter()
            entry.budget = budget
            entry.task = None
            self._running.add(entry)
            return True

    def _run(self, task: _Task) -> None:
        """Read a queued buffer in the calling (prefetch) thread; never raises."""
        entry = task.entry
        try:
            array = self.source.read_key(task.key)
        except BaseException as err:
            with self._lock:
                if self._entries.get(task.key) is entry and entry.state == _RUNNING:
                    entry.state = _FAILED
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
        if entry.budget is not None:
            budget, n = entry.budget
            entry.budget = None
            budget.release(n)

    # ---- freeing ----------------------------------------------------------------
    def drop(self, keys: Iterable[str]) -> int:
        """Forget these buffers (queued reads are cancelled); return the bytes freed."""
        freed = 0
        with self._lock:
            for key in keys:
                entry = self._entries.pop(key, None)
                if entry is None:
                    continue
                if entry.state == _DONE and entry.array is not None:
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
                    if entry.state == _DONE:
                        stats.prefetch_unused += 1
                    elif entry.state == _FAILED:
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

    def in_flight(self) -> list[threading.Event]:
        """Completion events of the reads that prefetch threads are doing now."""
        with self._lock:
            return [e.done for e in self._running]

    def resident(self, keys: Iterable[str] | None = None) -> int:
        """Bytes of the buffers held (all, or of ``keys``)."""
        with self._lock:
            entries = self._entries.values() if keys is None else [self._entries.get(k) for k in keys]
            return sum(
                int(getattr(e.array, "nbytes", 0)) for e in entries if e is not None and e.state == _DONE
            )

    def keys(self) -> list[str]:
        with self._lock:
            return [k for k, e in self._entries.items() if e.state == _DONE]


class Budget:
    """Bytes that prefetch threads may hold ahead of the processor."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()
        self._closed = False

    def acquire(self, n: int) -> bool:
        """Wait until ``n`` more bytes fit (one buffer always fits); False when closing."""
        with self._cond:
            while not self._closed and self.used > 0 and self.used + n > self.limit:
                self._cond.wait()
            if self._closed:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self.used = max(0, self.used - n)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Task:
    __slots__ = ("cancelled", "entry", "key", "store")

    def __init__(self, store: FileBuffers, key: str, entry: _Entry) -> None:
        self.store = store
        self.key = key
        self.entry = entry
        self.cancelled = False


class Prefetcher:
    """Background threads that read queued buffers in order, within an optional memory budget."""

    def __init__(self, nthreads: int, budget: Budget | None = None, name: str = "prefetch") -> None:
        if nthreads < 1:
            raise ValueError(f"prefetch needs at least one thread, got nthreads={nthreads}")
        self.nthreads = nthreads
        self.budget = budget
        self.name = name
        self._queue: deque[_Task] = deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, store: FileBuffers, keys: Iterable[str]) -> int:
        """Queue reads of the keys the store does not hold yet; return how many were queued."""
        tasks = [t for t in (store._queue(k) for k in keys) if t is not None]
        if not tasks:
            return 0
        with self._cond:
            if self._closed:
                store.drop(t.key for t in tasks)
                return 0
            self._queue.extend(tasks)
            while len(self._threads) < self.nthreads:
                thread = threading.Thread(
                    target=self._work, name=f"coffea_smk-{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._cond.notify_all()
        return len(tasks)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                task = self._queue.popleft()
            if task.cancelled:
                continue
            reserved: tuple[Budget, int] | None = None
            if self.budget is not None:
                n = _estimate(task)
                if not self.budget.acquire(n):
                    return
                reserved = (self.budget, n)
            if task.store._start(task, reserved):
                task.store._run(task)
            elif reserved is not None:
                reserved[0].release(reserved[1])

    def cancel(self, store: FileBuffers | None = None) -> None:
        """Cancel queued reads (of one store, or all); reads in flight finish."""
        with self._cond:
            keep: deque[_Task] = deque()
            dropped = []
            for task in self._queue:
                if store is None or task.store is store:
                    task.cancelled = True
                    dropped.append(task)
                else:
                    keep.append(task)
            self._queue = keep
        for task in dropped:
            with task.store._lock:
                if task.store._entries.get(task.key) is task.entry and task.entry.state == _QUEUED:
                    del task.store._entries[task.key]

    def close(self) -> None:
        """Cancel what is queued, let reads in flight finish, and stop the threads."""
        self.cancel()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self.budget is not None:
            self.budget.close()
        for thread in self._threads:
            thread.join()
        self._threads.clear()


def _estimate(task: _Task) -> int:
    try:
        return int(task.store.source.key_bytes(task.key)[1])
    except Exception:
        return 0


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
        for item in _flatten(what):
            for key in self._keys_of(item):
                if key not in seen:
                    seen.add(key)
                    out.append(key)
        return out

    def _keys_of(self, item: Any) -> list[str]:
        if isinstance(item, str):
            return self._keys_of_name(item)
        return [k for k in virtual_buffer_keys(item) if self._mine(k)]

    def _mine(self, key: str) -> bool:
        try:
            return self.store.source.key_range(key) == (self.start, self.stop)
        except Exception:
            return False

    def _keys_of_name(self, name: str) -> list[str]:
        if self.events is not None:
            found = _project(self.events, name.split("."))
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
        return sum(int(getattr(a, "nbytes", 0)) for a in self._arrays())  # pragma: no branch

    def _arrays(self) -> Iterator[Any]:
        with self.store._lock:
            for key, entry in self.store._entries.items():
                if entry.state == _DONE and self._mine(key):
                    yield entry.array

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


def _flatten(items: Iterable[Any]) -> Iterator[Any]:
    for item in items:
        if isinstance(item, (list, tuple, set)):
            yield from _flatten(item)
        else:
            yield item


def virtual_buffer_keys(array: Any) -> list[str]:
    """Buffer keys of the lazy (virtual) buffers behind an awkward array, without reading any."""
    import awkward as ak

    try:
        layout = ak.to_layout(array, allow_record=True)
    except Exception:
        return []
    if isinstance(layout, ak.record.Record):
        layout = layout.array
    out: list[str] = []
    stack = [layout]
    while stack:
        node = stack.pop()
        out.extend(_own_keys(node))
        if isinstance(node, (ak.contents.RecordArray, ak.contents.UnionArray)):
            stack.extend(reversed(_children(node)))
        elif hasattr(node, "content"):
            stack.append(node.content)
    return out


def _own_keys(node: Any) -> list[str]:
    """Keys of a layout node's own virtual buffers (not its children's)."""
    import awkward as ak
    from awkward._nplikes.virtual import VirtualNDArray

    out = []
    for attr in ("data", "offsets", "starts", "stops", "index", "tags", "mask"):
        buf = getattr(node, attr, None)
        if isinstance(buf, ak.index.Index):
            buf = buf.data
        if isinstance(buf, VirtualNDArray) and buf.buffer_key is not None:
            out.append(buf.buffer_key)
    return out


def _project(events: Any, path: list[str]) -> list[str] | None:
    """Keys behind ``events.a.b`` found on the layout, so that nothing is read (None: no such field)."""
    import awkward as ak

    node = ak.to_layout(events)
    above: list[str] = []
    for part in path:
        while not isinstance(node, ak.contents.RecordArray):
            if not hasattr(node, "content"):
                return None
            above.extend(_own_keys(node))  # the offsets of the lists on the way
            node = node.content
        if part not in node.fields:
            return None
        node = _children(node)[node.field_to_index(part)]
    return above + virtual_buffer_keys(node)


def _children(node: Any) -> list[Any]:
    # RecordArray.contents/content() ask for the record's length, which for a
    # collection's content means reading its offsets: take the stored contents.
    return list(getattr(node, "_contents", None) or node.contents)


# ---- the module-level API --------------------------------------------------------------


def manager(events: Any = None) -> BufferManager:
    """The :class:`BufferManager` of ``events`` (or of the chunk being processed).

    Raises:
        RuntimeError: Called outside ``process`` with no events that coffea_smk made.
    """
    if events is not None and not isinstance(events, str):
        found = _from_attrs(events)
        if found is not None:
            return found
    current = _current.get()
    if current is None:
        raise RuntimeError(
            "no buffer manager: coffea_smk.buffers works inside process(events) run by coffea_smk "
            "(or on arrays that come from such events)"
        )
    return current


def _from_attrs(obj: Any) -> BufferManager | None:
    attrs = getattr(obj, "attrs", None)
    if attrs is None:
        return None
    try:
        found = attrs.get(ATTR)
    except Exception:
        return None
    return found if isinstance(found, BufferManager) else None


def _manager_for(what: tuple[Any, ...]) -> BufferManager:
    for item in _flatten(what):
        if not isinstance(item, str):
            found = _from_attrs(item)
            if found is not None:
                return found
    return manager()


def clear(*what: Any) -> int:
    """Free the buffers behind arrays, field paths or branch names now; return the bytes freed."""
    return _manager_for(what).clear(*what)


def prefetch(*what: Any, nthreads: int = 1) -> Prefetch:
    """Read the buffers behind ``what`` in ``nthreads`` background threads; a context manager."""
    return _manager_for(what).prefetch(*what, nthreads=nthreads)


def activate(mgr: BufferManager) -> contextvars.Token[BufferManager | None]:
    """Make ``mgr`` the current manager (the processing loop does this around ``process``)."""
    return _current.set(mgr)


def deactivate(token: contextvars.Token[BufferManager | None]) -> None:
    _current.reset(token)


def reader_for(store: FileBuffers, key: str) -> Callable[[], Any]:
    """The generator awkward calls for ``key``: the store, not awkward, keeps the array."""

    def generate() -> Any:
        return store.load(key)

    return generate
