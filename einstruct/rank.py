"""The graph bound on the rank: a minimum x-y cut of the einsum hypergraph.

Build a directed graph with a node per tensor and, per index, an edge
``i_in -> i_out`` whose capacity is the index's log size; each tensor holding
the index connects to ``i_in`` and from ``i_out`` with unbounded capacity. A
hyperedge is then cut at most once. The minimum cut between the input and the
output is the log of an upper bound on the rank (BACKGROUND §3).

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

import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from fractions import Fraction

from .ir import Structure

__all__ = ["min_cut_indices", "cut_weight", "max_flow_source_side"]

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
        if v in row and row[v] is not None and cap is not None:
            row[v] += cap
        else:
            row[v] = None if cap is None or (v in row and row[v] is None) else cap
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
        finite = [residual[u][v] for u, v in path if residual[u][v] is not None]
        if not finite:
            raise ValueError("source and sink are joined by unbounded edges: no finite cut")
        push = min(finite)
        for u, v in path:
            if residual[u][v] is not None:
                residual[u][v] -= push
            if residual[v][u] is not None:
                residual[v][u] += push


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


def cut_weight(indices, weights: Mapping[str, Fraction | float]):
    """Sum of the weights of ``indices``."""
    return sum((weights[i] for i in indices), Fraction(0))
