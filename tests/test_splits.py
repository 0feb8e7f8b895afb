"""Catalog widths: exact splits where they exist (as the papers'), never truncation; nominal theta."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_mup import papers_factorize

import einstruct
from einstruct.analysis import analyze_structure
from einstruct.errors import ParameterError
from einstruct.splits import MAX_RATIO, split


def _exact_pairs(width: int) -> list[tuple[int, int]]:
    """Every (lo, hi) with lo * hi == width, lo <= hi, by trial division."""
    return [(k, width // k) for k in range(1, math.isqrt(width) + 1) if width % k == 0]


@given(st.integers(min_value=1, max_value=20000))
def test_a_split_covers_the_width_and_is_exact_when_a_balanced_one_exists(width):
    lo, hi = split(width)
    assert 1 <= lo <= hi and lo * hi >= width
    balanced = [p for p in _exact_pairs(width) if p[1] <= MAX_RATIO * p[0]]
    if balanced:
        assert lo * hi == width  # no padding
        if papers_factorize(width) in balanced:
            assert (lo, hi) == papers_factorize(width)  # the papers' sizes
    else:  # pad: the near-square ceil split, a little over the width
        assert hi == math.ceil(math.sqrt(width)) and lo == math.ceil(width / hi)


@pytest.mark.parametrize("width", [a * 2**k * 3**j for a in (1,) for k in range(1, 13) for j in (0, 1)])
def test_widths_of_the_papers_experiments_split_as_theirs(width):
    assert split(width) == papers_factorize(width)


@pytest.mark.parametrize("form", ["btt", "monarch", "kronecker", "tensor_train"])
@pytest.mark.parametrize("d_in, d_out", [(768, 3072), (2048, 2048), (1000, 1000), (384, 1536)])
def test_catalog_forms_do_not_pad_when_an_exact_split_exists(form, d_in, d_out):
    rank = "rank = 2, " if form == "tensor_train" else ""
    s = einstruct.load(f"structure s = {form}({rank}d_in = {d_in}, d_out = {d_out})")
    assert (s.d_in, s.d_out) == (d_in, d_out) and not s.is_padded
    codes = [d.code for d in analyze_structure(s).diagnostics]
    assert "padded" not in codes


def test_a_width_without_a_balanced_split_pads_and_never_truncates():
    s = einstruct.load("structure m = monarch(d = 1018)")  # 2 x 509
    assert s.d_in == s.d_out == 32 * 32 >= 1018 and s.in_features == 1018
    assert "padded" in [d.code for d in analyze_structure(s).diagnostics]


def test_split_sizes_are_symbolic_when_the_width_is():
    s = einstruct.load("structure b = btt(d = 1024)", symbolic=True, rank=1)
    assert str(s.size("a")) == "sqrt_lo(d)" and str(s.size("g")) == "sqrt_hi(d)"
    assert analyze_structure(s).taxonomy.nu == Fraction(1, 2)


def test_nominal_theta_is_reported_where_sizes_were_rounded():
    # 2048 splits 32 x 64: log_2048 32 = 5/11, but the structure is the theta-1/2 split
    t = analyze_structure(einstruct.load("structure b = btt(d = 2048)")).taxonomy
    assert (t.theta["alpha"], t.theta["gamma"], t.theta["phi"], t.theta["epsilon"]) == (Fraction(1, 2),) * 4
    assert (t.omega, t.psi, t.nu) == (0, 1, Fraction(1, 2))
    # round(4096^0.33) = 16 = 4096^(1/3) exactly: still reported as the 0.33 written
    spec = "structure s = theta(beta = 0.33, gamma = 0.67, delta = 0.5, epsilon = 0.5, rho = 0.33, d = 4096)"
    t = analyze_structure(einstruct.load(spec)).taxonomy
    assert t.theta_written["beta"] == Fraction(33, 100) and t.theta_written["rho"] == Fraction(33, 100)
    # nu by the paper's closed form from the nominal theta (oriented: alpha 0.33, delta 0)
    assert t.nu == 1 + Fraction(33, 100) - min(Fraction(33, 100), Fraction(1, 2))


def test_monarch_blocks_must_hold_at_least_as_many_features_as_there_are_blocks():
    with pytest.raises(ParameterError, match="use at most 32 blocks"):
        einstruct.load("structure m = monarch(blocks = 64, d = 1024)")
    with pytest.raises(ParameterError, match="positive whole number of blocks"):
        einstruct.load("structure m = monarch(blocks = 2.5, d = 1024)")
    s = einstruct.load("structure m = monarch(blocks = 4, d = 1024)")
    # 4 blocks of 256 x 256, twice: 2 * 4 * 256^2 parameters, 2 FLOPs per multiply-add
    assert s.params == 2 * 4 * 256**2
    assert analyze_structure(s).counts.flops == 2 * 2 * 4 * 256**2


def test_symbolic_exponents_that_cannot_be_ordered_stay_as_written():
    # theta of a, e is log(ceiling(d/blocks))/log(d): orient cannot compare them, and must not crash
    s = einstruct.load("structure m = monarch(blocks = 4, d = 1024)", symbolic=True)
    t = analyze_structure(s).taxonomy
    assert t.theta is not None and t.theta == t.theta_written
