"""The Pareto front of a set of scored candidates (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """Whether ``a`` is at least as good as ``b`` on every objective and better on one."""
    better = False
    for x, y, up in zip(a, b, maximize, strict=True):
        if (x < y) if up else (x > y):
            return False
        if x != y:
            better = True
    return better


def pareto_front(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the points no other point dominates, in input order.

    Equal points do not dominate each other, so ties on the front are all kept; a point equal
    to a dominated one is dominated too.
    """
    return [
        i
        for i, point in enumerate(points)
        if not any(dominates(other, point, maximize) for j, other in enumerate(points) if j != i)
    ]
