"""The graph bound on the rank: a minimum x-y cut of the einsum hypergraph.

Build a directed graph with a node per tensor and, per index, an edge
``i_in -> i_out`` whose capacity is the index's log size; each tensor holding
the index connects to ``i_in`` and from ``i_out`` with unbounded capacity. A
hyperedge is then cut at most once. The minimum cut between the input and the
output is the log of an upper bound on the rank (BACKGROUND §3).

    >>> min_cut_indices(load("examples/btt.ein"), {"g": 1, "a": 1, "f": 1, "r": 0, "e": 1})
    ('g', 'r', ...)  # some minimum cut
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

from .ir import Structure

__all__ = ["min_cut_indices", "cut_weight"]


def min_cut_indices(structure: Structure, weights: Mapping[str, Fraction | float]) -> tuple[str, ...]:
    """The indices of a minimum input-output cut, with ``weights[i]`` the cost of cutting ``i``.

    Exact for rational weights: they are scaled to integers before the flow runs.
    """
    import networkx as nx

    capacities = dict(weights)
    if all(isinstance(w, int | Fraction) for w in capacities.values()):
        scale = 1
        for w in capacities.values():
            scale = scale * Fraction(w).denominator // _gcd(scale, Fraction(w).denominator)
        capacities = {i: int(Fraction(w) * scale) for i, w in capacities.items()}
    graph = nx.DiGraph()
    src, dst = ("tensor", structure.input.name), ("tensor", structure.output.name)
    for index in structure.indices:
        graph.add_edge(("in", index.name), ("out", index.name), capacity=capacities[index.name])
    for tensor in structure.tensors:
        for i in tensor.indices:
            graph.add_edge(("tensor", tensor.name), ("in", i))  # no capacity = unbounded
            graph.add_edge(("out", i), ("tensor", tensor.name))
    _, (reachable, _) = nx.minimum_cut(graph, src, dst)
    return tuple(
        i.name for i in structure.indices if ("in", i.name) in reachable and ("out", i.name) not in reachable
    )


def cut_weight(indices, weights: Mapping[str, Fraction | float]):
    """Sum of the weights of ``indices``."""
    return sum((weights[i] for i in indices), Fraction(0))


def _gcd(a: int, b: int) -> int:
    import math

    return math.gcd(a, b)
