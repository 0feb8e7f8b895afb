"""The graph bound on the rank: a minimum x-y cut of the einsum hypergraph.

Build a directed graph with a node per tensor and, per index, an edge
``i_in -> i_out`` whose capacity is the index's log size; each tensor holding
the index connects to ``i_in`` and from ``i_out`` with unbounded capacity. A
hyperedge is then cut at most once. The minimum cut between the input and the
output is the log of an upper bound on the rank (docs/taxonomy.md §2-3).

The flow runs on integers, so the cut is exact: rational weights are scaled by
the common denominator; float weights (log sizes) by 2^40, which separates any
two cuts whose size products differ (the products are then multiplied exactly
by the caller). The graphs are tiny (a node per tensor, two per index), so a
plain Edmonds-Karp is fast and spares the CLI networkx's import time; the tests
check it against ``networkx.minimum_cut``.

    >>> s = load("examples/btt.ein")
    >>> sorted(min_cut_indices(s, {"g": 1, "a": 1, "f": 1, "r": 0, "e": 1}))  # doctest: +SKIP
    ['a', 'g']
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from fractions import Fraction
from typing import Any

from ..ir import Size, Structure
from ..numbers import simplified
from .counts import STAND_IN, concrete_stand_in

__all__ = ["min_cut_indices", "cut_weight", "max_flow_source_side", "rank_bound"]

#: Float weights are scaled by this before rounding to integers.
FLOAT_SCALE = 2**40


def _integer_capacities(weights: Mapping[str, Fraction | float | int]) -> dict[str, int]:
    if all(isinstance(w, int | Fraction) for w in weights.values()):
        scale = math.lcm(1, *(Fraction(w).denominator for w in weights.values()))
        return {i: int(Fraction(w) * scale) for i, w in weights.items()}
    return {i: round(float(w) * FLOAT_SCALE) for i, w in weights.items()}


def max_flow_source_side(
    edges: Iterable[tuple[Hashable, Hashable, int | None]], source: Hashable, sink: Hashable
) -> set[Hashable]:
    """The source side of a minimum cut (Edmonds-Karp on integer capacities).

    Args:
        edges: ``(u, v, capacity)``; capacity ``None`` is unbounded.
        source, sink: the two terminals.

    Returns:
        The nodes still reachable from ``source`` in the residual graph.

    Raises:
        ValueError: a path of unbounded edges joins source and sink (no finite cut).
    """
    residual: dict[Hashable, dict[Hashable, int | None]] = {source: {}, sink: {}}
    for u, v, cap in edges:
        row = residual.setdefault(u, {})
        previous = row.get(v, 0)
        row[v] = None if cap is None or previous is None else previous + cap
        residual.setdefault(v, {}).setdefault(u, 0)
    while True:
        parent: dict[Hashable, Hashable] = {source: source}
        queue = deque([source])
        while queue and sink not in parent:
            u = queue.popleft()
            for v, cap in residual[u].items():
                if v not in parent and (cap is None or cap > 0):
                    parent[v] = u
                    queue.append(v)
        if sink not in parent:
            return set(parent)
        path, v = [], sink
        while v != source:
            path.append((parent[v], v))
            v = parent[v]
        finite = [c for c in (residual[u][v] for u, v in path) if c is not None]
        if not finite:
            raise ValueError("source and sink are joined by unbounded edges: no finite cut")
        push = min(finite)
        for u, v in path:
            forward, backward = residual[u][v], residual[v][u]
            if forward is not None:
                residual[u][v] = forward - push
            if backward is not None:
                residual[v][u] = backward + push


def min_cut_indices(structure: Structure, weights: Mapping[str, Fraction | float]) -> tuple[str, ...]:
    """The indices of a minimum input-output cut, with ``weights[i]`` the cost of cutting ``i``.

    Exact for rational weights; float weights are resolved to 2^-40.
    """
    caps = _integer_capacities(weights)
    edges: list[tuple[Hashable, Hashable, int | None]] = [
        (("in", i.name), ("out", i.name), caps[i.name]) for i in structure.indices
    ]
    for tensor in structure.tensors:
        for i in tensor.indices:
            edges.append((("tensor", tensor.name), ("in", i), None))
            edges.append((("out", i), ("tensor", tensor.name), None))
    reachable = max_flow_source_side(
        edges, ("tensor", structure.input.name), ("tensor", structure.output.name)
    )
    return tuple(
        i.name for i in structure.indices if ("in", i.name) in reachable and ("out", i.name) not in reachable
    )


def cut_weight(indices: Iterable[str], weights: Mapping[str, Fraction | float]) -> Fraction | float:
    """Sum of the weights of ``indices``."""
    return sum((weights[i] for i in indices), Fraction(0))


def rank_bound(structure: Structure) -> Size:
    """The min-cut bound on the rank, capped at min(d_in, d_out) of the layer."""
    if not structure.is_symbolic:
        weights = {i.name: math.log(i.size) for i in structure.indices}
        bound = math.prod(structure.size(i) for i in min_cut_indices(structure, weights))
        return min(bound, structure.in_features, structure.out_features)
    # symbolic: which cut is smallest depends on the parameters, so collect the minimal
    # cuts over a grid of stand-ins where each parameter is small, middling or large (a
    # cut may be smallest only when two parameters are small together: a*b against c)
    import sympy

    concrete_stand_in(structure)  # the size limit's error, as every symbolic analysis gives it
    free = sorted(
        {sym for i in structure.indices if not isinstance(i.size, int) for sym in i.size.free_symbols},
        key=str,
    )
    sizes = _size_functions(structure, free)
    cuts = {cut for values in _stand_in_grid(len(free)) if (cut := _cut_at(structure, sizes, values))}
    candidates = {simplified(sympy.Mul(*(structure.size(i) for i in cut))) for cut in cuts}
    candidates |= {sympy.sympify(structure.in_features), sympy.sympify(structure.out_features)}
    return simplified(sympy.Min(*candidates))


#: stand-in values of a free parameter: small, the default stand-in, large
_LEVELS = (2**4, STAND_IN, 2**20)


def _stand_in_grid(n: int) -> Iterable[tuple[int, ...]]:
    """Values for ``n`` parameters: every combination of the three levels where that is at
    most 3^6 = 729 trials; else each parameter alone small or large (the rest at the
    default), with every set of them small where that is at most 2^10."""
    if 3**n <= 729:
        return itertools.product(_LEVELS, repeat=n)
    small, middle, large = _LEVELS
    one = [tuple(level if k == j else middle for k in range(n)) for j in range(n) for level in (small, large)]
    together = list(itertools.product((small, middle), repeat=n)) if n <= 10 else [(middle,) * n]
    return [*together, *one]


def _cut_at(structure: Structure, sizes: dict[str, Any], values: tuple[int, ...]) -> tuple[str, ...] | None:
    """The indices of a minimum cut with the free parameters at ``values`` (``sizes``: each
    index's size as a function of them); None where a size overflows a float there (that
    regime is out of reach)."""
    weights = {}
    try:
        for name, size in sizes.items():
            weights[name] = math.log(
                max(1.0, float(size(*(float(v) for v in values))))
            )  # floats: k^k^k overflows, not grows
    except (OverflowError, ValueError, TypeError, ZeroDivisionError):
        return None
    if not all(math.isfinite(w) for w in weights.values()):
        return None
    return tuple(sorted(min_cut_indices(structure, weights)))


def _size_functions(structure: Structure, free: list) -> dict[str, Any]:
    """Each index's size as a fast float function of the parameters ``free`` (a balanced
    split's parts as square roots: the cut needs sizes, not exact rounding)."""
    import sympy

    names = {"sqrt_lo": math.sqrt, "sqrt_hi": math.sqrt, "Round": round}
    out: dict[str, Any] = {}
    for i in structure.indices:
        if isinstance(i.size, int):
            out[i.name] = functools.partial(lambda v, *_: v, i.size)
            continue
        fast = sympy.lambdify(free, i.size, modules=[names, "math"])
        try:
            fast(*[float(STAND_IN)] * len(free))
        except NameError:  # a function lambdify does not print for math: sympy's own, slower
            fast = functools.partial(lambda size, *v: size.subs(dict(zip(free, v, strict=True))), i.size)
        except (OverflowError, ValueError, TypeError, ZeroDivisionError):
            pass  # this stand-in is out of reach; others may not be
        out[i.name] = fast
    return out
