"""The Pareto front over (FLOPs, params, rank bound, peak intermediate), and the rankings.

Objectives: fewer FLOPs, more parameters, a higher rank bound, a smaller peak
intermediate. Parameters count as capacity, not cost: the papers find that
more parameters per FLOP (omega = 0) is what scales, and ``--max-params``
bounds memory when it matters. A candidate is on the front when no other
feasible candidate is at least as good in all four and better in one.

Rankings (``--rank``):

- ``guidance`` (default): the papers' advice, omega = 0 and psi = 1 first, then
  the most parameters per FLOP; ties (omega = 0 structures all use about one
  parameter per two FLOPs) go to the higher psi, then to more parameters: the
  largest layer the budget affords;
- ``flops``: fewest FLOPs first (then more parameters);
- ``params``: most parameters first (then fewer FLOPs);
- ``measured``: fastest measured forward + backward first (needs ``--measure``).

    >>> front([(2, 1), (1, 2), (3, 3), (1, 3)], lambda v: v)   # minimizing both
    [(1, 2), (2, 1)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, TypeVar

__all__ = ["OBJECTIVES", "RANKINGS", "objectives", "dominates", "front", "rank_key"]

T = TypeVar("T")

#: Each objective and whether it is minimized or maximized.
OBJECTIVES = {"flops": "min", "params": "max", "rank_bound": "max", "peak_intermediate": "min"}

#: The rankings ``--rank`` accepts, with one line each.
RANKINGS = {
    "guidance": "omega = 0 and psi = 1 first, then most params per FLOP, then most params",
    "flops": "fewest FLOPs first",
    "params": "most parameters first",
    "measured": "fastest measured forward + backward first",
}


def objectives(result: Any) -> tuple[Any, Any, Any, Any]:
    """A result's objectives as numbers to minimize (maximized ones negated)."""
    return (result.flops, -result.params, -result.rank_bound, result.peak_intermediate)


def dominates(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and better somewhere (minimizing)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def front(
    items: Sequence[T],
    key: Callable[[T], Any],
    progress: Callable[[int, int], None] | None = None,
    every: int = 1000,
) -> list[T]:
    """The non-dominated items (minimizing every entry of ``key``), in ``key`` order.

    Sorted lexicographically, an item can only be dominated by one before it,
    and then by one already on the front, so each item is checked against the
    front so far. ``progress(done, total)`` is called every ``every`` items.
    """
    kept: list[tuple[Any, T]] = []
    for done, item in enumerate(sorted(items, key=key)):
        if progress is not None and done % every == 0:
            progress(done, len(items))
        k = key(item)
        if not any(dominates(f, k) for f, _ in kept):
            kept.append((k, item))
    return [item for _, item in kept]


def _per_flop(result: Any) -> Fraction:
    return Fraction(result.params) / Fraction(result.flops)


def rank_key(ranking: str) -> Callable[[Any], tuple[Any, ...]]:
    """The sort key of a ranking (see the module docstring)."""
    if ranking == "guidance":
        return lambda r: (
            0 if (r.omega == 0 and r.psi == 1) else 1,
            -_per_flop(r),
            -r.psi,
            -r.params,
            r.name,
        )
    if ranking == "flops":
        return lambda r: (r.flops, -r.params, r.name)
    if ranking == "params":
        return lambda r: (-r.params, r.flops, r.name)
    if ranking == "measured":
        return lambda r: (r.ms is None, r.ms if r.ms is not None else 0.0, r.flops, r.name)
    raise KeyError(ranking)
