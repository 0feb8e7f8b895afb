"""The min-cut rank bound against independent references: brute force and networkx."""

from __future__ import annotations

import itertools
import math

import networkx as nx
from hypothesis import given
from hypothesis import strategies as st
from strategies import structure_specs

import einstruct
from einstruct.analysis import analyze_structure
from einstruct.analysis.rank import max_flow_source_side, min_cut_indices


def _separates(structure, removed: set[str]) -> bool:
    """Whether deleting the indices in ``removed`` disconnects x from y (tensor-index graph)."""
    seen, todo = {structure.input.name}, [structure.input.name]
    while todo:
        t = structure.tensor(todo.pop())
        for i in t.indices:
            if i in removed:
                continue
            for other in structure.holders(i):
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
    return structure.output.name not in seen


def _brute_force_bound(structure) -> int:
    """min over index sets that separate x from y of the product of their sizes."""
    names = [i.name for i in structure.indices]
    best = None
    for r in range(len(names) + 1):
        for subset in itertools.combinations(names, r):
            if _separates(structure, set(subset)):
                p = math.prod(structure.size(i) for i in subset)
                best = p if best is None else min(best, p)
    return best


@given(spec=structure_specs(max_size=6, max_indices=7))
def test_min_cut_is_the_cheapest_separating_index_set(spec):
    structure = einstruct.load(spec[0])
    weights = {i.name: math.log(i.size) for i in structure.indices}
    cut = min_cut_indices(structure, weights)
    assert _separates(structure, set(cut))
    assert math.prod(structure.size(i) for i in cut) == _brute_force_bound(structure)
    a = analyze_structure(structure)
    assert a.rank_bound == min(_brute_force_bound(structure), a.d_in, a.d_out)


@st.composite
def _flow_graphs(draw):
    n = draw(st.integers(2, 7))
    edges = draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.integers(0, 9)), max_size=20)
    )
    return n, [(u, v, c) for u, v, c in edges if u != v]


@given(graph=_flow_graphs())
def test_max_flow_matches_networkx(graph):
    n, edges = graph
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    merged: dict[tuple[int, int], int] = {}
    for u, v, c in edges:
        merged[(u, v)] = merged.get((u, v), 0) + c
    for (u, v), c in merged.items():
        g.add_edge(u, v, capacity=c)
    value, _ = nx.minimum_cut(g, 0, n - 1)
    side = max_flow_source_side(edges, 0, n - 1)
    assert 0 in side and n - 1 not in side
    assert sum(c for (u, v), c in merged.items() if u in side and v not in side) == value


def test_block_diagonal_index_must_be_cut():
    # k is held by x, W and y: every cut includes it, so the rank is at most blocks * block size
    s = einstruct.load("structure b = block_diagonal(blocks = 4, d = 64)")
    a = analyze_structure(s)
    assert a.rank_bound == 64 and a.full_rank
    cut = min_cut_indices(s, {i.name: math.log(i.size) for i in s.indices})
    assert "k" in cut


def test_low_rank_bound_is_the_rank():
    a = analyze_structure(einstruct.load("structure l = low_rank(rank = 8, d = 256)"))
    assert a.rank_bound == 8 and not a.full_rank


#: cuts whose size is a product of two parameters ({p, q}: a*b) or one (c, d)
CHAIN = """structure chain(d = 256, a = 4, b = 4, c = 64, e = 8):
    y[o] = x[i] * U[i, p, q] * V[p, q, s] * W[s, t, u] * Z[t, u, o]
    where i = o = d, p = a, q = b, s = c, t = e, u = e
"""


@given(values=st.tuples(*[st.sampled_from([2, 4, 16, 64, 256, 1024])] * 5))
def test_the_symbolic_bound_is_the_cheapest_separating_set_at_any_parameter_values(values):
    # the symbolic bound used to try one small parameter at a time and missed a*b (a cut
    # smallest only when a and b are both small): Min(c, d) where the rank is 16
    bound = analyze_structure(einstruct.load(CHAIN, symbolic=True)).rank_bound
    names = ("d", "a", "b", "c", "e")
    at = dict(zip(names, values, strict=True))
    concrete = einstruct.load(CHAIN, **at)
    expected = min(_brute_force_bound(concrete), at["d"])
    assert int(bound.subs({sym: at[str(sym)] for sym in bound.free_symbols})) == expected


def test_with_seven_parameters_a_cut_smallest_when_one_is_large_is_found():
    # past 3^6 stand-ins the grid took every set of parameters small and none large:
    # the cut j (2^16) wins only when r is large, and the bound lost it
    spec = """structure s(r, p1, p2, p3, p4, p5, p6):
    y[o, q] = x[i, q] * A[i, j] * B[j, k] * C[k, o]
    where i = o = 2^20, j = 2^16, k = r, q = p1 * p2 * p3 * p4 * p5 * p6
"""
    bound = analyze_structure(einstruct.load(spec, symbolic=True)).rank_bound
    at = {"r": 2**20, "p1": 2, "p2": 2, "p3": 2, "p4": 2, "p5": 2, "p6": 2}
    concrete = einstruct.load(spec, **at)
    expected = min(_brute_force_bound(concrete), concrete.in_features, concrete.out_features)
    assert int(bound.subs({sym: at[str(sym)] for sym in bound.free_symbols})) == expected
