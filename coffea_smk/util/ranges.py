"""Entry ranges ``[start, stop)``: the bookkeeping that keeps every event counted exactly once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def coalesce(ranges: list[list[int]]) -> list[list[int]]:
    """Sorted, merged ``[start, stop)`` ranges.

    Raises:
        ValueError: Two ranges overlap (an event would be counted twice).
    """
    out: list[list[int]] = []
    for start, stop in sorted(ranges):
        if out and start < out[-1][1]:
            raise ValueError(f"entry ranges {out[-1]} and {[start, stop]} overlap")
        if out and start == out[-1][1]:
            out[-1][1] = stop
        else:
            out.append([start, stop])
    return out


def covered(ranges: list[list[int]], start: int, stop: int) -> bool:
    """Whether ``[start, stop)`` lies inside one of ``ranges``."""
    return any(a <= start and stop <= b for a, b in ranges)


def subtract(ranges: Iterable[Sequence[int]], done: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """The parts of ``ranges`` that no range of ``done`` covers, sorted."""
    cut = sorted((a, b) for a, b in done if a < b)
    out: list[tuple[int, int]] = []
    for start, stop in sorted((a, b) for a, b in ranges):
        at = start
        for a, b in cut:
            if b <= at or a >= stop:
                continue
            if a > at:
                out.append((at, a))
            at = max(at, b)
        if at < stop:
            out.append((at, stop))
    return out
