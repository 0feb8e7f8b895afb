"""The static search against independent references.

References: the paper's conditions restated here, brute-force enumeration of
the theta grid through the language's own ``theta(...)`` shorthand, an O(n^2)
dominance check, and a full re-analysis of every emitted ``source``.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

import einstruct
from einstruct.analysis import analyze_structure
from einstruct.errors import ParameterError
from einstruct.space import SearchQuery, run_search
from einstruct.space.grid import CHAIN_CLASSES, chain_points, two_factor_points
from einstruct.space.realize import Widths, realize

CLASSES = ("alpha", "beta", "gamma", "delta", "epsilon", "phi", "rho")


def reanalyze(source: str):
    return analyze_structure(einstruct.load(source))


def numbers(a) -> tuple:
    t = a.taxonomy
    return (a.params, a.counts.flops, a.rank_bound, a.counts.peak_intermediate, t.omega, t.psi, t.nu)


def result_numbers(r) -> tuple:
    return (r.params, r.flops, r.rank_bound, r.peak_intermediate, r.omega, r.psi, r.nu)


def dominated(a: tuple, b: tuple) -> bool:
    """b dominates a: fewer-or-equal FLOPs and peak, more-or-equal params and rank, one strictly."""
    better_eq = b[1] <= a[1] and b[0] >= a[0] and b[2] >= a[2] and b[3] <= a[3]
    strictly = b[1] < a[1] or b[0] > a[0] or b[2] > a[2] or b[3] < a[3]
    return better_eq and strictly


# -- the grid -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_two_factor_grid_is_the_papers_space_without_degenerate_and_redundant_points(n):
    expected = set()
    for values in itertools.product(range(n + 1), repeat=7):
        a, b, g, d, e, f, r = values
        if a + b + g != n or d + e + f != n:
            continue
        if min(a, e) < min(b, d):  # redundant: the mirror of an oriented twin
            continue
        if r > min(a, e):  # degenerate: the rank axis wider than useful
            continue
        expected.add(tuple(Fraction(v, n) for v in values))
    found = [tuple(p.classes()[c] for c in CLASSES) for p in two_factor_points(n)]
    assert len(found) == len(set(found))
    assert set(found) == expected


def test_chain_points_give_every_factor_a_class():
    for p in chain_points(2):
        theta = p.classes()
        assert set(theta) == set(CHAIN_CLASSES)
        assert theta["in_A"] + theta["in_AB"] + theta["in_ABC"] == 1
        assert theta["out_C"] + theta["out_BC"] + theta["out_ABC"] == 1
    # A and C always hold an input or an output class; B is empty only for in_A = out_C = 1, no ranks
    assert len(chain_points(2)) == 6 * 6 * 9 - 1


# -- realization --------------------------------------------------------------------------


@given(
    d_in=st.integers(2, 5000),
    d_out=st.integers(2, 5000),
    n=st.sampled_from([2, 3, 4, 6]),
    k=st.integers(0, 10**6),
)
def test_realized_sizes_cover_the_widths_and_load_back(d_in, d_out, n, k):
    points = two_factor_points(n)
    point = points[k % len(points)]
    r = realize(point, Widths(d_in, d_out), n)
    assert r is not None
    s = r.structure
    assert s.in_features == d_in and s.out_features == d_out
    assert s.d_in >= d_in and s.d_out >= d_out  # padding, never truncation
    if r.exact:
        assert (s.d_in, s.d_out) == (d_in, d_out)
    assert einstruct.load(s.to_source()) == s


def test_an_exact_factorization_is_found_for_768_and_3072():
    monarch = dict(zip(CLASSES, map(Fraction, ("1/2", "0", "1/2", "0", "1/2", "1/2", "0"))))
    point = next(p for p in two_factor_points(4) if p.classes() == monarch)
    r = realize(point, Widths(768, 3072), 4)
    s = r.structure
    assert r.exact and (s.d_in, s.d_out) == (768, 3072)
    sizes = {i.name: i.size for i in s.indices}
    assert sizes["gamma"] * sizes["alpha"] == 768 and sizes["phi"] * sizes["epsilon"] == 3072
    assert sorted([sizes["gamma"], sizes["alpha"]]) == [24, 32]  # 768 = 24 x 32, nearest to sqrt(768)
    assert sorted([sizes["phi"], sizes["epsilon"]]) == [48, 64]
    a = reanalyze(s.to_source())
    assert a.taxonomy.theta == monarch  # the sizes stand for theta 1/2: omega 0, psi 1
    assert (a.taxonomy.omega, a.taxonomy.psi, a.taxonomy.nu) == (0, 1, Fraction(1, 2))
    assert [d.code for d in a.diagnostics] == []


def test_no_factorization_rounds_and_pads_like_theta():
    point = next(p for p in two_factor_points(2) if p.classes()["gamma"] == Fraction(1, 2))
    r = realize(point, Widths(769, 769), 2)  # 769 is prime
    assert not r.exact and r.structure.d_in > 769
    assert "padded" in [d.code for d in reanalyze(r.structure.to_source()).diagnostics]


def test_a_size_written_as_a_scaled_power_of_the_width_has_that_exponent():
    scaled = (
        "structure s(d_in = 768, d_out = 3072):\n"
        "    y[f, e] = x[g, a] * A[g, a, f] * B[f, g, e]\n"
        "    where g = 24 * (d_in / 768)^(1/2), a = 32 * (d_in / 768)^(1/2),"
        " f = 48 * (d_out / 3072)^(1/2), e = 64 * (d_out / 3072)^(1/2)\n"
    )
    a = reanalyze(scaled)
    assert [i.size for i in a.structure.indices] == [24, 32, 48, 64]
    assert all(i.exponent == Fraction(1, 2) for i in a.indices)
    # literal sizes keep their exponents at this width (log base d), as before
    literal = scaled.split("where")[0] + "where g = 24, a = 32, f = 48, e = 64\n"
    b = reanalyze(literal)
    assert b.indices[0].exponent == pytest.approx(math.log(24) / math.log(768))
    # d / 4 with a constant block count is not a scaled power: unchanged
    blocks = "structure b(d = 1000):\n    y[k, o] = x[k, i] * W[k, i, o]\n    where k = 4, i = o = d / 4\n"
    c = reanalyze(blocks)
    assert c.indices[1].exponent == pytest.approx(math.log(250) / math.log(1000))


# -- the search ---------------------------------------------------------------------------


def _brute_force(d: int, n: int, limits: dict) -> dict[tuple, bool]:
    """Every feasible two-factor structure of the grid via theta(...): numbers -> on the front."""
    found = {}
    for values in itertools.product(range(n + 1), repeat=7):
        a, b, g, dl, e, f, r = values
        if a + b + g != n or dl + e + f != n or min(a, e) < min(b, dl) or r > min(a, e):
            continue
        args = ", ".join(f"{c} = {v}/{n}" for c, v in zip(CLASSES, values))
        an = reanalyze(f"structure t = theta({args}, d = {d})\n")
        if an.counts.flops > limits.get("flops_ratio", 10) * 2 * d * d:
            continue
        if an.taxonomy.psi < limits.get("min_psi", 0) or an.taxonomy.omega > limits.get("max_omega", 9):
            continue
        found[numbers(an)] = True
    for k in found:
        found[k] = not any(dominated(k, other) for other in found)
    return found


@pytest.mark.parametrize(
    "limits",
    [{}, {"flops_ratio": Fraction(1, 4)}, {"min_psi": 1, "max_omega": 0}],
    ids=["all", "flops", "psi"],
)
def test_front_is_non_dominated_and_complete_against_brute_force(limits):
    d, n = 256, 4  # 256^(k/4) is exact, so theta(...) realizes the same sizes
    report = run_search(SearchQuery(d, d, grid=n, top=None, include_dominated=True, **limits), jobs=1)
    reference = _brute_force(d, n, limits)
    got = {result_numbers(r): r.pareto for r in report.results}
    assert got == reference
    assert report.stats["front"] == sum(r.pareto for r in report.results)  # structures, not number tuples


def test_every_result_meets_its_constraints_and_its_source_analyzes_back():
    query = SearchQuery(
        1024, 512, flops_ratio="1/5", max_params=100_000, min_psi="1/2", max_omega="1/4", grid=6, top=None
    )
    report = run_search(query, jobs=1)
    assert report.results
    for r in report.results:
        a = reanalyze(r.source)
        assert numbers(a) == result_numbers(r)
        assert a.counts.train_flops == r.train_flops
        assert dict(a.taxonomy.theta) == r.theta
        assert a.counts.flops <= Fraction(1, 5) * 2 * 1024 * 512
        assert a.params <= 100_000
        assert a.taxonomy.psi >= Fraction(1, 2) and a.taxonomy.omega <= Fraction(1, 4)


def test_minimal_flops_at_full_rank_without_sharing_is_monarch():
    report = run_search(SearchQuery(4096, 4096, min_psi=1, max_omega=0, rank="flops", grid=4), jobs=1)
    best = report.results[0]
    a = reanalyze(best.source)
    assert a.taxonomy.theta == dict(zip(CLASSES, map(Fraction, ("1/2", "0", "1/2", "0", "1/2", "1/2", "0"))))
    assert [i.size for i in a.structure.indices] == [64, 64, 64, 64]
    assert a.counts.flops == 2 * 2 * 64**3 and a.params == 2 * 64**3  # two bmm steps of 64 blocks
    assert best.name.startswith("monarch")


def test_guidance_puts_full_rank_without_sharing_first():
    report = run_search(SearchQuery(1024, 1024, flops_ratio="1/4", grid=4, top=None), jobs=1)
    flags = [r.omega == 0 and r.psi == 1 for r in report.results]
    assert any(flags) and flags == sorted(flags, reverse=True)


def test_three_factor_chains_are_searched():
    report = run_search(SearchQuery(512, 512, factors=3, grid=2, top=None, include_dominated=True), jobs=1)
    chains = [r for r in report.results if len(r.structure.factors) == 3]
    assert chains
    for r in chains[:20]:
        assert numbers(reanalyze(r.source)) == result_numbers(r)
        assert set(r.theta) == set(CHAIN_CLASSES)


def test_parallel_and_serial_searches_agree():
    query = SearchQuery(512, 256, flops_ratio="1/3", grid=6, top=None, include_dominated=True)
    serial = run_search(query, jobs=1)
    import einstruct.space.run as run_module

    old = run_module.PARALLEL_FROM
    run_module.PARALLEL_FROM = 1
    try:
        parallel = run_search(query, jobs=2)
    finally:
        run_module.PARALLEL_FROM = old
    assert [r.to_dict() for r in serial.results] == [r.to_dict() for r in parallel.results]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_flops": 10, "flops_ratio": "0.1"}, "not both"),
        ({"flops_ratio": "abc"}, "must be a number"),
        ({"min_psi": "-1"}, "must not be negative"),
        ({"factors": 4}, "factors must be 2 or 3"),
        ({"rank": "speed"}, "unknown ranking"),
        ({"grid": 0}, "grid step"),
    ],
)
def test_bad_queries_are_clear_errors(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        SearchQuery(64, 64, **kwargs)


@pytest.mark.parametrize("width, shown", [("64", "got str '64'"), (64.0, "got float 64.0"), (1, "got 1")])
def test_a_width_that_is_not_an_integer_says_its_type(width, shown):
    with pytest.raises(ParameterError, match=shown):  # a str '64' was shown as "got 64"
        SearchQuery(width, 64)


def test_a_huge_grid_is_refused_with_a_hint():
    with pytest.raises(ParameterError, match="coarser --grid"):
        run_search(SearchQuery(64, 64, grid=200))


@pytest.mark.parametrize("n", range(1, 9))
def test_the_point_count_is_the_number_of_points_enumerated(n):
    from einstruct.space.grid import point_count

    assert point_count(n, 2) == len(two_factor_points(n))
    assert point_count(n, 3) == len(two_factor_points(n)) + len(chain_points(n))
    assert point_count(n, 2, most=5) > 5  # stops early, past the bound


def test_a_grid_over_the_point_limit_is_refused_before_the_search(monkeypatch):
    # a 1/16 grid (70,857 points) ran for 5 to 14 minutes; 1/22 (298,596) for hours
    import time

    started = time.perf_counter()
    with pytest.raises(ParameterError) as error:
        run_search(SearchQuery(4096, 4096, grid=16))
    assert time.perf_counter() - started < 2
    with pytest.raises(ParameterError, match="70,857 points"):
        einstruct.search(4096, grid=16)  # the Python API: the same limit
    message = "a search grid of step 1/16 has 70,857 points, over the limit of 60,000"
    assert error.value.message.startswith(message) and "EINSTRUCT_MAX_GRID_POINTS" in error.value.message
    assert error.value.hint == (
        "use a coarser --grid (1/15 has 53,244 points); or raise the limit: EINSTRUCT_MAX_GRID_POINTS=70857"
    )
    with pytest.raises(ParameterError, match="1/7 has 85,157 points with three-factor chains") as error:
        run_search(SearchQuery(64, 64, factors=3, grid=7))
    assert "--grid (1/6 has 39,643 points) or --factors 2" in error.value.hint
    with pytest.raises(ParameterError, match="1/100000 has more than 60,000 points"):
        run_search(SearchQuery(64, 64, grid=100_000))  # not counted to the end
    monkeypatch.setenv("EINSTRUCT_MAX_GRID_POINTS", "37")  # the limit follows the environment
    with pytest.raises(ParameterError, match="1/2 has 38 points, over the limit of 37"):
        run_search(SearchQuery(64, 64, grid=2))
    monkeypatch.setenv("EINSTRUCT_MAX_GRID_POINTS", "38")
    assert run_search(SearchQuery(64, 64, grid=2)).stats["points"] == 38


def test_python_api_and_json_schema():
    report = einstruct.search(256, flops_ratio=0.25, grid=4, top=3)
    data = report.to_dict()
    assert set(data) == {"query", "results"}
    keys = {"name", "source", "theta", "params", "flops", "train_flops", "omega", "psi", "nu"}
    keys |= {"rank_bound", "peak_intermediate", "pareto"}
    assert len(data["results"]) == 3
    for item, r in zip(data["results"], report):
        assert keys <= set(item)
        assert item["source"] == r.source and item["pareto"] is True
    with pytest.raises(ParameterError, match="measure"):
        einstruct.search(256, rank="measured")


def test_full_rank_family_names_only_for_full_rank_candidates():
    """A candidate named monarch_/btt_ has the full rank of its width (the numerical rank of
    its dense matrix, checked on one deficient layout); a rank-deficient layout of the same
    classes gets the generic two_ name."""
    import torch

    from einstruct.space.run import analyze_candidate, realize_all

    query = SearchQuery(d_in=256, d_out=256, grid=4, top=None, include_dominated=True)
    _, _, realized = realize_all(query)
    monarch_like = [r for r in realized if r.name.startswith(("monarch_", "btt_"))]
    ranks = {r.name: analyze_candidate(r.structure)[4] for r in monarch_like}
    assert any(rank < 256 for rank in ranks.values()), "the grid has rank-deficient layouts"
    report = run_search(query)
    for result in report.results:
        if result.name.startswith(("monarch_", "btt_")):
            assert result.rank_bound == 256, result.name
    deficient = [r for r in report.results if r.name.startswith("two_") and r.rank_bound < 256]
    assert deficient
    layer = einstruct.compile(deficient[0].source)(dtype=torch.float64)
    assert torch.linalg.matrix_rank(layer.to_dense()) <= deficient[0].rank_bound < 256
