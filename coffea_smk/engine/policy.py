"""The error policy's decisions: retry a transient I/O error, go on past a ``continue_on`` error.

Both decisions read the whole exception chain (:func:`coffea_smk.io.faults.causes`):
a storage error arrives wrapped (in ``InputFileError``, ``BufferReadError``, by
awkward, coffea or the processor), and its root cause is what counts. The
policy's settings are :class:`coffea_smk.spec.settings.ErrorPolicy`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from coffea_smk.engine.accumulate import AccumulateError
from coffea_smk.io.faults import causes, matches, transient
from coffea_smk.io.files import StaleRecordError
from coffea_smk.io.remote import drop_broken_handles
from coffea_smk.spec.settings import ErrorPolicy

log = logging.getLogger("coffea_smk.process")

T = TypeVar("T")


class ChunkError(RuntimeError):
    """The processor failed on a chunk; the message says which and shows its traceback."""


def continues(policy: ErrorPolicy, err: BaseException) -> bool:
    """Whether an exception of ``err``'s chain is of a ``continue_on`` type.

    ``ChunkError`` (coffea_smk's wrapper around every failure of ``process()``)
    is not looked at, so ``continue_on: [RuntimeError]`` does not catch all.
    Never on an ``AccumulateError`` (the accumulator may be half-updated) or
    a ``StaleRecordError`` (the job must stop so that the file is preprocessed again).
    """
    chain = causes(err)
    if any(isinstance(e, (AccumulateError, StaleRecordError)) for e in chain):
        return False
    return matches(err, policy.continue_on, skip=(ChunkError,))


def retryable(err: BaseException) -> bool:
    """Whether the root cause is a transient I/O error (a reset, a timeout; not a missing file)."""
    return transient(err)


def retrying(policy: ErrorPolicy, what: str, call: Callable[[], T]) -> tuple[T | None, Exception | None, int]:
    """``call()``, tried again after transient I/O errors (``policy.retries`` times, with back-off).

    Returns:
        Its result (or None), the error it failed with for good (or None), and
        the retries it took.
    """
    tries = 0
    while True:
        try:
            return call(), None, tries
        except Exception as err:
            if tries >= policy.retries or not retryable(err):
                return None, err, tries
            _sleep(policy, tries, what, err)
            drop_broken_handles()  # XRootD: the next try opens the file again, on a new connection
            tries += 1


def _sleep(policy: ErrorPolicy, tries: int, what: str, err: BaseException) -> None:
    delay = policy.retry_backoff * (2**tries)
    root = causes(err)[-1]
    log.warning(
        "%s failed (%s: %s); retry %d of %d in %.2f s",
        what,
        type(root).__name__,
        root,
        tries + 1,
        policy.retries,
        delay,
    )
    time.sleep(delay)
