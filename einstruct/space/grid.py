"""The points a search enumerates: theta vectors on a rational grid.

Two spaces:

- the paper's two-factor space (docs/taxonomy.md §2, the 7 classes): seven classes alpha..rho, the
  input classes (alpha, beta, gamma) and the output classes (delta, epsilon,
  phi) each summing to 1, rho in [0, 1]. Degenerate points (rho wider than
  min(alpha, epsilon)) and redundant ones (the mirror of an oriented twin, the
  same structure with the factors' roles swapped) are left out, by the
  analyzer's own :func:`~einstruct.analysis.taxonomy.degenerate` and
  :func:`~einstruct.analysis.taxonomy.orient`;
- three-factor chains ``x -> A -> B -> C -> y``: every index is held by a
  contiguous run of the chain that does not hold both x and y. Input classes
  ``in_A`` (x, A), ``in_AB`` (x, A, B), ``in_ABC`` (x, A, B, C); output
  classes ``out_C``, ``out_BC``, ``out_ABC``; rank classes ``rank_AB`` and
  ``rank_BC``. (Monarch and BTT are the two-factor chains; the run A, B, C,
  a rank axis shared by all three factors, is left out to keep the grid
  small.) Points where a factor holds no class are two-factor structures and
  are left to the two-factor space.

A grid of step 1/n puts every class on {0, 1/n, ..., 1}. :func:`point_count`
counts a grid's points without enumerating them (a search refuses a grid of
more than ``EINSTRUCT_MAX_GRID_POINTS`` before it starts).

    >>> len(two_factor_points(2))
    38
    >>> point_count(2, 2)
    38
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

from ..analysis.taxonomy import degenerate, orient
from ..classes import CLASS_NAMES, WRITTEN_AXES

__all__ = [
    "DEFAULT_GRID",
    "Point",
    "CHAIN_CLASSES",
    "CHAIN_TENSORS",
    "TWO_TENSORS",
    "two_factor_points",
    "chain_points",
    "point_count",
]

#: The grid denominator when none is given, by ``factors``: two factors on 1/12;
#: with three-factor chains (a grid in 8 classes) on 1/4.
DEFAULT_GRID = {2: 12, 3: 4}

#: Tensors of the two-factor space and the classes each holds, in storage order
#: (the layout of the ``theta(...)`` shorthand).
TWO_TENSORS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(WRITTEN_AXES.items())

#: The chain's classes: input side, output side, ranks.
CHAIN_CLASSES = ("in_A", "in_AB", "in_ABC", "out_C", "out_BC", "out_ABC", "rank_AB", "rank_BC")

#: Tensors of a three-factor chain and the classes each holds, in storage order.
CHAIN_TENSORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("x", ("in_ABC", "in_AB", "in_A")),
    ("A", ("in_ABC", "in_AB", "in_A", "out_ABC", "rank_AB")),
    ("B", ("in_ABC", "in_AB", "out_ABC", "rank_AB", "rank_BC", "out_BC")),
    ("C", ("in_ABC", "out_ABC", "rank_BC", "out_BC", "out_C")),
    ("y", ("out_ABC", "out_BC", "out_C")),
)


@dataclass(frozen=True)
class Point:
    """One grid point: which space (``two`` or ``chain``) and each class's exponent."""

    space: str
    theta: tuple[tuple[str, Fraction], ...]

    def classes(self) -> dict[str, Fraction]:
        """Class name -> exponent, every class of the space (zeros included)."""
        return dict(self.theta)


def _splits(n: int) -> Iterator[tuple[int, int, int]]:
    """Every (a, b, c) of non-negative integers with a + b + c = n."""
    for a in range(n + 1):
        for b in range(n + 1 - a):
            yield a, b, n - a - b


def two_factor_points(n: int) -> list[Point]:
    """The two-factor space on the grid of step 1/n, without degenerate or redundant points."""
    points = []
    for alpha, beta, gamma in _splits(n):
        for delta, epsilon, phi in _splits(n):
            for rho in range(n + 1):
                # integer numerators: orientation and degeneracy do not depend on the scale
                vec = dict(zip(CLASS_NAMES, (alpha, beta, gamma, delta, epsilon, phi, rho)))
                if orient(vec) != vec or degenerate(vec):
                    continue
                theta = tuple((c, Fraction(v, n)) for c, v in vec.items())
                points.append(Point("two", theta))
    return points


def chain_points(n: int) -> list[Point]:
    """Three-factor chains on the grid of step 1/n in which every factor holds some class."""
    holds = {name: classes for name, classes in CHAIN_TENSORS if name in ("A", "B", "C")}
    points = []
    for ins in _splits(n):
        for outs in _splits(n):
            for rank_ab in range(n + 1):
                for rank_bc in range(n + 1):
                    values = dict(zip(CHAIN_CLASSES, (*ins, *outs, rank_ab, rank_bc)))
                    if any(all(values[c] == 0 for c in classes) for classes in holds.values()):
                        continue
                    theta = tuple((c, Fraction(v, n)) for c, v in values.items())
                    points.append(Point("chain", theta))
    return points


def point_count(n: int, factors: int, most: int | None = None) -> int:
    """How many points a search on the grid of step 1/n enumerates: ``len(two_factor_points(n))``,
    plus ``len(chain_points(n))`` with three factors, counted without building them.

    With ``most``, counting stops once the count passes it (the number returned is then
    more than ``most``, not the whole count), so a huge grid is refused at once.

        >>> [point_count(n, 2) for n in (1, 2, 12)], point_count(4, 3)
        ([9, 38, 20167], 5915)
    """
    # two factors: per (alpha, epsilon), the (beta, delta) that keep the point oriented,
    # min(alpha, epsilon) >= min(beta, delta), times the rho up to min(alpha, epsilon)
    # that keep it non-degenerate; gamma and phi are what is left of 1
    total = 0
    if factors == 3:  # every point but the one where B holds nothing (in_A = out_C = 1)
        split = (n + 1) * (n + 2) // 2
        total += split * split * (n + 1) ** 2 - 1
    for alpha in range(n + 1):
        for epsilon in range(n + 1):
            low = min(alpha, epsilon)
            pairs = (n - alpha + 1) * (n - epsilon + 1) - max(0, n - alpha - low) * max(0, n - epsilon - low)
            total += (low + 1) * pairs  # at least 1 (beta = 0): at most most + 1 steps
            if most is not None and total > most:
                return total
    return total
