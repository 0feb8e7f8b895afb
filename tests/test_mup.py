"""Structured muP against the papers' formulas, computed here from their definitions.

The reference is the papers' code written out per structure (which matrix each
core is, its d_in and d_out), not einstruct's index walk: spectral init
std = sqrt(min(d_in, d_out) * d_out / (d_out * d_in * d_in)), Adam lr
(D_in / d_in) / n_factors, SGD lr ((d_out / d_in) / (D_out / D_in)) / n_factors,
and the widths split by their prime-factor rule (sympy.factorint, as they do).
"""

from __future__ import annotations

import math

import pytest
import sympy

import einstruct
from einstruct.analysis import analyze_structure
from einstruct.planner.plan import make_plan


def papers_factorize(width: int) -> tuple[int, int]:
    """compute-better-spent's factorize(width, 2): each prime onto the smaller number, sorted."""
    numbers = [1, 1]
    for prime, count in sympy.factorint(width).items():
        for _ in range(count):
            i = min(range(2), key=lambda k: numbers[k])
            numbers[i] *= prime
    return tuple(sorted(numbers))


def papers_std(d_in: int, d_out: int) -> float:
    return math.sqrt(min(d_in, d_out) * d_out / (d_out * d_in * d_in))


def papers_cores(form: str, D_in: int, D_out: int, rank: int = 1, blocks: int = 4) -> list[tuple[int, int]]:
    """(d_in, d_out) of each core, in the order the papers build them."""
    m0, m1 = papers_factorize(D_in)
    n0, n1 = papers_factorize(D_out)
    if form == "dense":
        return [(D_in, D_out)]
    if form == "low_rank":
        return [(D_in, rank), (rank, D_out)]
    if form in ("tensor_train", "kronecker"):  # build_tt: core k is (rank_prev, m_k, n_k, rank_next)
        return [(m0, n0 * rank), (m1 * rank, n1)]
    if form in ("btt", "monarch"):  # build_btt: core k maps rs[k] * ms[k] -> ns[k] * rs[k+1]
        return [(m0, n0 * rank), (rank * m1, n1)]
    if form == "monarch_blocks":  # build_monarch: blocks of in_blk -> mid -> out_blk
        in_blk, out_blk = -(-D_in // blocks), -(-D_out // blocks)
        mid = min(in_blk, out_blk)
        return [(in_blk, mid), (mid, out_blk)]
    raise ValueError(form)


def papers_numbers(cores, D_in, D_out):
    n = len(cores)
    std = [papers_std(i, o) for i, o in cores]
    adam = [D_in / i / n for i, _ in cores]
    sgd = [(o / i) / (D_out / D_in) / n for i, o in cores]
    return std, adam, sgd


FORMS = [
    ("dense", ""),
    ("low_rank", "rank = 32, "),
    ("kronecker", ""),
    ("tensor_train", "rank = 4, "),
    ("btt", ""),
    ("btt", "rank = 4, "),
    ("monarch", ""),
    ("monarch_blocks", "blocks = 4, "),
]
WIDTHS = [(1024, 1024), (768, 768), (2048, 2048), (768, 3072), (3072, 768), (512, 2048)]


@pytest.mark.parametrize("form, args", FORMS, ids=lambda v: v if isinstance(v, str) else None)
@pytest.mark.parametrize("D_in, D_out", WIDTHS)
def test_catalog_init_and_lr_equal_the_papers(form, args, D_in, D_out):
    name = "monarch" if form == "monarch_blocks" else form
    spec = f"structure s = {name}({args}d_in = {D_in}, d_out = {D_out})"
    rank = int(args.split("=")[1].rstrip(", ")) if "rank" in args else 1
    cores = papers_cores(form, D_in, D_out, rank=rank)
    std, adam, sgd = papers_numbers(cores, D_in, D_out)
    structure = einstruct.load(spec)
    assert not structure.is_padded  # every width here has an exact split
    got = analyze_structure(structure).factors
    got_sgd = analyze_structure(structure, optimizer="sgd").factors
    assert [float(f.fans.init_std) for f in got] == pytest.approx(std, rel=1e-12)
    assert [float(f.fans.lr_mult) for f in got] == pytest.approx(adam, rel=1e-12)
    assert [float(f.fans.lr_mult) for f in got_sgd] == pytest.approx(sgd, rel=1e-12)


def test_the_issues_numbers():
    def numbers(spec, optimizer="adam"):
        factors = analyze_structure(einstruct.load(spec), optimizer=optimizer).factors
        return [round(float(f.fans.init_std), 4) for f in factors], [f.fans.lr_mult for f in factors]

    assert numbers("structure b = btt(d = 1024)") == ([0.1768, 0.1768], [16, 16])
    assert numbers("structure l = low_rank(rank = 64, d = 1024)")[1] == [0.5, 8]
    # 768 -> 3072 splits 16 x 48 -> 32 x 96, as the papers' prime factorization does
    tt = einstruct.load("structure t = tensor_train(rank = 4, d_in = 768, d_out = 3072)")
    assert [tt.size(i) for i in ("i1", "i2", "o1", "o2")] == [16, 48, 32, 96]
    assert numbers("structure t = tensor_train(rank = 4, d_in = 768, d_out = 3072)") == (
        [0.25, 0.051],
        [24, 2],
    )
    # BTT-MoE at d = 1024: B initialized and scaled as if rank 1
    assert numbers("examples/btt_moe.ein") == ([0.1768, 0.1768], [16, 16])


def test_fans_do_not_follow_the_planner():
    """The planner evaluates this Tensor-Train B first; init and lr stay the papers' (A meets x)."""
    spec = "structure t = tensor_train(rank = 4, d_in = 768, d_out = 3072)"
    structure = einstruct.load(spec)
    assert make_plan(structure).order.factor_sequence[0] == "B"
    layer = einstruct.compile(spec)
    assert layer.init_std == pytest.approx({"A": 0.25, "B": papers_std(48 * 4, 96)})
    assert layer.lr_mult == {"A": 24, "B": 2}


def test_moe_cores_are_rank_one_in_the_papers_sense():
    d, experts = 1024, 8
    m0, m1 = papers_factorize(d)
    # build_btt_norm_moe_parallel: A.d_out /= E, B.d_in /= E, then init and lr again
    cores = [(m0, m0 * experts / experts), (experts * m1 / experts, m1)]
    std, adam, sgd = papers_numbers(cores, d, d)
    spec = "examples/btt_moe.ein"
    assert [float(f.fans.init_std) for f in analyze_structure(einstruct.load(spec)).factors] == pytest.approx(
        std
    )
    assert [f.fans.lr_mult for f in analyze_structure(einstruct.load(spec)).factors] == pytest.approx(adam)
    sgd_got = analyze_structure(einstruct.load(spec), optimizer="sgd").factors
    assert [f.fans.lr_mult for f in sgd_got] == pytest.approx(sgd)


def test_a_factor_that_does_not_meet_the_input_waits():
    # written B-second, but B reads x: it is applied first, so U's fans are those of the second core
    spec = (
        "structure m(d = 1024, rank = 32):\n"
        "    y[o] = x[i] * U[r, o] * V[i, r]\n"
        "    where i = o = d, r = rank\n"
    )
    fans = {f.name: f.fans for f in analyze_structure(einstruct.load(spec)).factors}
    assert (fans["V"].step, fans["V"].fan_in, fans["V"].fan_out) == (0, 1024, 32)
    assert (fans["U"].step, fans["U"].fan_in, fans["U"].fan_out) == (1, 32, 1024)


def test_learning_rate_multipliers_are_exact_quotients_past_float_precision():
    # d_in / fan_in in floats, then an integral-looking float shown as an int: 2^62 / 6
    # was reported as the integer 768,614,336,404,564,608
    from fractions import Fraction

    spec = "structure huge(d = 2^62, rank = 3):\n    y[o] = x[i] * U[i, r] * V[r, o]\n"
    spec += "    where i = o = d, r = rank\n"
    fans = einstruct.analyze(spec).factors
    by_name = {f.name: f.fans.lr_mult for f in fans}
    exact = Fraction(2**62, 3) / 2  # adam: d_in / fan_in over two factors
    assert not isinstance(by_name["V"], int)
    assert by_name["V"] == float(exact)
    assert by_name["U"] == Fraction(2**62, 2**62) / 2
