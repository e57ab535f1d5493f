"""The prefetch pool: background threads that read queued buffers, within a memory budget."""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Iterable

from coffea_smk.buffers.store import FileBuffers, Task


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
        """Give back ``n`` bytes."""
        with self._cond:
            self.used = max(0, self.used - n)
            self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiting :meth:`acquire` (which then returns False)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Prefetcher:
    """Background threads that read queued buffers in order, within an optional memory budget."""

    def __init__(self, nthreads: int, budget: Budget | None = None, name: str = "prefetch") -> None:
        if nthreads < 1:
            raise ValueError(f"prefetch needs at least one thread, got nthreads={nthreads}")
        self.nthreads = nthreads
        self.budget = budget
        self.name = name
        self._queue: deque[Task] = deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, store: FileBuffers, keys: Iterable[str]) -> int:
        """Queue reads of the keys the store does not hold yet; return how many were queued."""
        tasks = [t for t in (store.queue(k) for k in keys) if t is not None]
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
            release: Callable[[], None] | None = None
            if self.budget is not None:
                n = _estimate(task)
                if not self.budget.acquire(n):
                    return
                release = functools.partial(self.budget.release, n)
            if task.store.start(task, release):
                task.store.run(task)
            elif release is not None:
                release()

    def cancel(self, store: FileBuffers | None = None) -> None:
        """Cancel queued reads (of one store, or all); reads in flight finish."""
        with self._cond:
            keep: deque[Task] = deque()
            dropped = []
            for task in self._queue:
                if store is None or task.store is store:
                    task.cancelled = True
                    dropped.append(task)
                else:
                    keep.append(task)
            self._queue = keep
        for task in dropped:
            task.store.unqueue(task)

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


def _estimate(task: Task) -> int:
    try:
        return int(task.store.source.key_bytes(task.key)[1])
    except Exception:
        return 0
