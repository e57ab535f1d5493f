"""A damaged output is removed and the error says so: the next run makes it again.

Every job that finds one of its inputs damaged (a plan, a preprocessing batch,
a partial or merged result) calls :func:`discard`, so the wording and the
behaviour are the same for every kind of output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

E = TypeVar("E", bound=Exception)


class DamagedFileError(RuntimeError):
    """An input of a job was damaged (and has been removed)."""


def discard(path: str | os.PathLike[str], problem: str, error: type[E]) -> E:
    """Remove the damaged file ``path`` and return the error to raise.

    Use as ``raise discard(path, f"{path} is corrupted ({err})", MergeError) from None``.

    Args:
        path: The damaged file.
        problem: What is wrong with it (the first line of the message).
        error: The type of the error.
    """
    Path(path).unlink(missing_ok=True)
    return error(f"{problem}\nRemoved {path}: run again and it is redone.")


def describe(err: ValidationError) -> str:
    """What is wrong with a record file, in a few words (its first problem)."""
    problems = err.errors()
    if not problems:
        return str(err)
    first = problems[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" and {len(problems) - 1} more problems" if len(problems) > 1 else ""
    return f"{first['msg']}{f' at {where}' if where else ''}{more}"
