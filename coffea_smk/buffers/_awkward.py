"""The private and undocumented awkward API that coffea_smk relies on, all of it here.

Tested with awkward 2.14 (the bounds on awkward in ``pyproject.toml``); when a new
awkward release moves any of these, this module is the one to fix. What it uses, and why:

- ``awkward._nplikes.virtual.VirtualNDArray`` (with ``awkward._nplikes.numpy.Numpy``
  and ``awkward._nplikes.shape.unknown_length``): coffea_smk makes its events' lazy
  buffers itself rather than handing callables to :func:`awkward.from_buffers`. That is
  much cheaper per buffer, turns the array's own caching off (so the buffer store, not
  awkward, holds what was read and can free it), and lets a jagged content learn its
  length from its counter's offsets without being read (a shape generator).
- ``VirtualNDArray.buffer_key``: which store key a lazy buffer reads, so that
  ``clear`` and ``prefetch`` find the buffers behind ``events.Jet`` without reading any.
- ``RecordArray._contents``: a record's stored contents. The public ``contents`` asks
  for the record's length, which for a collection's content means reading its offsets.
- ``awkward.types.numpytype.dtype_to_primitive`` (undocumented): a NumPy dtype's name
  in an awkward form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from awkward._nplikes.numpy import Numpy
from awkward._nplikes.shape import unknown_length
from awkward._nplikes.virtual import VirtualNDArray
from awkward.types.numpytype import dtype_to_primitive

UNKNOWN_LENGTH: Any = unknown_length
"""The length of a lazy buffer whose length is known only from its shape generator."""

_NUMPY = Numpy.instance()


def virtual_buffer(
    shape: tuple[Any, ...],
    dtype: np.dtype[Any],
    generate: Callable[[], Any],
    shape_generator: Callable[[], tuple[int, ...]] | None,
    key: str,
) -> Any:
    """A lazy NumPy buffer that calls ``generate`` on every touch (awkward caches nothing)."""
    return VirtualNDArray(_NUMPY, shape, dtype, generate, shape_generator, key, __enable_caching__=False)


def buffer_key(buffer: Any) -> str | None:
    """The buffer key of a lazy buffer; None for a buffer in memory or without a key."""
    if isinstance(buffer, VirtualNDArray):
        key: str | None = buffer.buffer_key
        return key
    return None


def stored_contents(record: Any) -> list[Any]:
    """A record node's contents, without asking for its length (which may read offsets)."""
    return list(getattr(record, "_contents", None) or record.contents)


def primitive(dtype: np.dtype[Any]) -> str:
    """The name of ``dtype`` in an awkward form (``"float32"``, ``"int64"`` ...)."""
    name: str = dtype_to_primitive(dtype)
    return name
