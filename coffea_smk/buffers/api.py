"""The calls inside ``process(events)``: find the chunk's buffer manager, clear, prefetch."""

from __future__ import annotations

import contextvars
from typing import Any

from coffea_smk.buffers.manager import BufferManager, Prefetch, flatten

ATTR = "@coffea_smk.buffers"
"""The events' ``attrs`` key that holds their :class:`BufferManager` (transient: ``@``)."""

_current: contextvars.ContextVar[BufferManager | None] = contextvars.ContextVar(
    "coffea_smk_buffer_manager", default=None
)


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
    for item in flatten(what):
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
    """Restore the manager that was current before :func:`activate` gave ``token``."""
    _current.reset(token)
