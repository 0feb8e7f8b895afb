"""The analyzer against independent references: opt_einsum, numerical rank, closed forms."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import opt_einsum
import pytest
from conftest import EXAMPLES
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import structure_specs, thetas

import einstruct
from einstruct.analysis import analyze_structure

CLASSES = ("alpha", "beta", "gamma", "delta", "epsilon", "phi", "rho")


def _operands(structure):
    ops = [structure.input, *structure.factors]
    return ops, structure.output


def _opt_einsum_flops(structure, batch: int) -> int:
    """FLOPs along opt_einsum's own path listing, 2 x every index each step touches."""
    ops, out = _operands(structure)
    names = ["__n", *(i.name for i in structure.indices)]
    sym = {n: opt_einsum.get_symbol(k) for k, n in enumerate(names)}
    sizes = {sym[i.name]: i.size for i in structure.indices} | {sym["__n"]: batch}
    subs = [("__n", *ops[0].indices)] + [t.indices for t in ops[1:]]
    eq = (
        ",".join("".join(sym[i] for i in s) for s in subs)
        + "->"
        + "".join(sym[i] for i in ("__n", *out.indices))
    )
    shapes = [tuple(sizes[sym[i]] for i in s) for s in subs]
    n_ops = len(shapes)
    optimize = "optimal" if n_ops <= 4 else "dp"
    _, info = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=optimize)
    total = 0
    for _, removed, einsum_str, _, _ in info.contraction_list:
        inputs = einsum_str.split("->")[0].split(",")
        letters = set("".join(inputs))
        step = 2 * math.prod(sizes[c] for c in letters)
        total += step
        if removed:  # opt_einsum's own count agrees when the step sums an index
            assert opt_einsum.helpers.flop_count(letters, True, 2, sizes) == step
    return total


@given(spec=structure_specs(), batch=st.sampled_from([1, 3, 256]))
def test_params_and_flops_against_references(spec, batch):
    source, sizes = spec
    structure = einstruct.load(source)
    a = analyze_structure(structure, batch=batch)
    assert a.params == sum(math.prod(sizes[i] for i in f.indices) for f in structure.factors)
    assert Fraction(a.counts.flops) == Fraction(_opt_einsum_flops(structure, batch), batch)
    assert a.counts.train_flops == 3 * a.counts.flops
    assert a.flops_dense == 2 * a.d_in * a.d_out


def _dense(structure, rng) -> np.ndarray:
    factors = [rng.standard_normal([structure.size(i) for i in f.indices]) for f in structure.factors]
    d_in = math.prod(structure.size(i) for i in structure.input.indices)
    eye = np.eye(d_in).reshape(d_in, *(structure.size(i) for i in structure.input.indices))
    names = ["__n", *(i.name for i in structure.indices)]
    sym = {n: opt_einsum.get_symbol(k) for k, n in enumerate(names)}
    subs = [("__n", *structure.input.indices)] + [f.indices for f in structure.factors]
    eq = ",".join("".join(sym[i] for i in s) for s in subs)
    eq += "->" + "".join(sym[i] for i in ("__n", *structure.output.indices))
    return opt_einsum.contract(eq, eye, *factors).reshape(d_in, -1)


@given(spec=structure_specs(max_size=4), seed=st.integers(0, 2**16))
def test_rank_bound_against_numerical_rank(spec, seed):
    structure = einstruct.load(spec[0])
    a = analyze_structure(structure)
    rank = np.linalg.matrix_rank(_dense(structure, np.random.default_rng(seed)))
    assert a.rank_bound >= rank
    if a.taxonomy.theta is not None:  # two factors, every index in the 7 classes
        assert a.rank_bound == rank
    assert a.full_rank == (a.rank_bound >= min(a.d_in, a.d_out))


def _closed_forms(t):
    """The paper's closed forms (docs/taxonomy.md §2-3), oriented first."""
    if min(t["alpha"], t["epsilon"]) < min(t["beta"], t["delta"]):
        t = dict(t, alpha=t["beta"], beta=t["alpha"], delta=t["epsilon"], epsilon=t["delta"])
    a, b, _, d, e, _, r = (t[c] for c in CLASSES)
    return (
        min(a + d, b + e) - min(a, e),
        min(1, 2 + r - a - e, 2 + r - b - d),
        1 + r - min(a, e),
    )


@given(theta=thetas(max_denominator=4))
def test_general_definitions_match_closed_forms(theta):
    args = ", ".join(f"{c} = {v.numerator}/{v.denominator}" for c, v in theta.items())
    structure = einstruct.load(f"structure t = theta({args}, d = 2^24)")
    t = analyze_structure(structure).taxonomy
    assert (t.omega, t.psi, t.nu) == _closed_forms(theta)


@pytest.mark.parametrize(
    "point",
    [
        "2/5, 3/5, 0, 39/100, 2/5, 21/100, 0",
        "79/100, 9/100, 12/100, 37/100, 8/100, 55/100, 13/100",
        "80/100, 15/100, 5/100, 3/100, 2/100, 95/100, 74/100",
    ],
)
def test_fine_thetas_match_closed_forms_where_two_balanced_steps_beat_one_slightly_larger(point):
    # a path search at one large d minimizes the total and took one step at e + 1/100 over
    # two at e: nu 61/100 where the closed form (and the cheapest order as d grows) gives 3/5
    theta = dict(zip(CLASSES, (Fraction(v) for v in point.split(", ")), strict=True))
    args = ", ".join(f"{c} = {v.numerator}/{v.denominator}" for c, v in theta.items())
    t = analyze_structure(einstruct.load(f"structure t = theta({args}, d = 2^40)")).taxonomy
    assert (t.omega, t.psi, t.nu) == _closed_forms(theta)


@given(theta=thetas(max_denominator=100))
def test_general_definitions_match_closed_forms_at_fine_thetas(theta):
    assume(all(v == 0 or 40 * v >= 1 for v in theta.values()))  # no class rounds to size 1 at 2^40
    args = ", ".join(f"{c} = {v.numerator}/{v.denominator}" for c, v in theta.items())
    t = analyze_structure(einstruct.load(f"structure t = theta({args}, d = 2^40)")).taxonomy
    assert (t.omega, t.psi, t.nu) == _closed_forms(theta)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("dense(d = 4096)", (0, 1, 1)),
        ("low_rank(rank = 16, d = 4096)", (0, Fraction(1, 3), Fraction(1, 3))),
        ("low_rank(rank = 64, d = 4096)", (0, Fraction(1, 2), Fraction(1, 2))),
        ("kronecker(d = 4096)", (Fraction(1, 2), 1, Fraction(1, 2))),
        ("tensor_train(rank = 16, d = 4096)", (Fraction(1, 2), 1, Fraction(1, 2) + Fraction(1, 3))),
        ("monarch(d = 4096)", (0, 1, Fraction(1, 2))),
        ("btt(rank = 1, d = 4096)", (0, 1, Fraction(1, 2))),
        ("btt(rank = 16, d = 4096)", (0, 1, Fraction(1, 2) + Fraction(1, 3))),
    ],
)
def test_catalog_taxonomy(spec, expected):
    t = analyze_structure(einstruct.load(f"structure s = {spec}")).taxonomy
    assert (t.omega, t.psi, t.nu) == expected


def test_theta_is_exact():
    a = einstruct.analyze(
        "structure t = theta(alpha = 1/3, beta = 2/3, delta = 1/3, epsilon = 2/3, d = 4096)"
    )
    d = {i["name"]: i for i in a.to_dict()["indices"]}
    assert [i.size for i in a.structure.indices] == [16, 256, 16, 256]
    assert a.taxonomy.theta["alpha"] == Fraction(1, 3)
    assert d["alpha"]["theta"] == 1 / 3


POLYNOMIAL = """structure s(m, n, k):
    y[o] = x[i] * U[i, r] * V[r, o]
    where i = (m+n+k+1)^8, o = (m-n+3*k)^8, r = (m+k+2)^8
"""


def test_symbolic_sizes_that_are_powers_of_sums_are_analyzed_in_seconds_and_exactly(tmp_path, capsys):
    # sympy's simplify expanded them term by term: minutes for one report
    import time

    import sympy

    from einstruct.cli import main

    started = time.perf_counter()
    a = einstruct.analyze(POLYNOMIAL, symbolic=True)
    m, n, k = (sympy.Symbol(c, positive=True) for c in "mnk")
    i, o, r = (m + n + k + 1) ** 8, (m - n + 3 * k) ** 8, (m + k + 2) ** 8
    assert sympy.expand(a.params - (i * r + r * o)) == 0
    assert sympy.expand(a.counts.flops - 2 * (i * r + r * o)) == 0
    for values in ({m: 1, n: 1, k: 1}, {m: 3, n: 1, k: 2}):
        concrete = analyze_structure(einstruct.load(POLYNOMIAL, **{str(s): v for s, v in values.items()}))
        assert sympy.sympify(a.rank_bound).subs(values) == concrete.rank_bound
    (tmp_path / "s.ein").write_text(POLYNOMIAL)
    assert main(["analyze", str(tmp_path / "s.ein"), "--symbolic"]) == 0  # the report's ratios
    assert "(k + m + 2)**8" in capsys.readouterr().out
    assert time.perf_counter() - started < 60


def test_symbolic_substituted_equals_concrete():
    import sympy

    sym = analyze_structure(einstruct.load("examples/btt.ein", symbolic=True))
    assert str(sym.params) == "2*d**(3/2)*rank"
    for d, rank in [(1024, 1), (4096, 4), (256, 2)]:
        conc = analyze_structure(einstruct.load("examples/btt.ein", d=d, rank=rank))
        env = {sympy.Symbol("d", positive=True): d, sympy.Symbol("rank", positive=True): rank}
        for got, want in [
            (sym.params, conc.params),
            (sym.counts.flops, conc.counts.flops),
            (sym.counts.train_flops, conc.counts.train_flops),
            (sym.rank_bound, conc.rank_bound),
        ]:
            assert sympy.sympify(got).subs(env) == want
    # exponents that do not depend on the free parameters come out as numbers
    fixed_rank = analyze_structure(einstruct.load("examples/btt.ein", symbolic=True, rank=1))
    assert (fixed_rank.taxonomy.omega, fixed_rank.taxonomy.psi, fixed_rank.taxonomy.nu) == (
        0,
        1,
        Fraction(1, 2),
    )


def test_mup_worked_example():
    # docs/taxonomy.md §4: (1024 / 32) / 2 factors = 16 for both factors
    a = analyze_structure(einstruct.load("examples/btt.ein"))
    for f in a.factors:
        assert (f.fans.fan_in, f.fans.fan_out, f.fans.lr_mult) == (32, 32, 16)
        assert f.fans.init_std == pytest.approx(1 / math.sqrt(32), rel=1e-15)
    sgd = analyze_structure(einstruct.load("examples/btt.ein"), optimizer="sgd")
    assert [f.fans.lr_mult for f in sgd.factors] == [0.5, 0.5]  # (32 / 32) / (1024 / 1024) / 2
    low = analyze_structure(einstruct.load("structure l = low_rank(rank = 16, d = 256)"))
    u, v = low.factors
    assert (u.fans.fan_in, u.fans.fan_out, u.fans.lr_mult) == (256, 16, 0.5)
    assert (v.fans.fan_in, v.fans.fan_out, v.fans.lr_mult) == (16, 256, 8)


def test_diagnostics():
    codes = lambda spec: [d.code for d in analyze_structure(einstruct.load(spec)).diagnostics]  # noqa: E731
    assert codes("structure k = kronecker(d = 1024)") == ["parameter_sharing"]
    assert codes("structure b = btt(rank = 64, d = 1024)") == ["degenerate", "costlier_than_dense"]
    assert "rank_deficient" in codes("structure l = low_rank(rank = 8, d = 1024)")
    assert codes("structure t = theta(beta=1/2, gamma=1/2, delta=1/2, phi=1/2, d=1000)") == [
        "redundant",
        "padded",
    ]
    assert codes("structure b = btt(d = 1024)") == []


def test_json_has_every_key():
    d = einstruct.analyze("examples/btt.ein").to_dict()
    for key in (
        "name d_in d_out params einsum indices factors flops train_flops flops_dense peak_intermediate "
        "rank_bound full_rank theta omega psi nu diagnostics path"
    ).split():
        assert key in d, key
    assert set(d["theta"]) == set(CLASSES)
    assert {"fan_in", "fan_out", "init_std", "lr_mult", "shape", "params", "name"} <= set(d["factors"][0])
    assert (d["omega"], d["psi"], d["nu"]) == (0, 1, 0.5)


def test_analyze_imports_no_torch_and_no_matplotlib():
    code = (
        "import sys; from einstruct.cli import main; "
        "main(['analyze', 'examples/btt.ein', '--json']); "
        "sys.exit(1 if {'torch', 'matplotlib'} & set(sys.modules) else 0)"
    )
    from conftest import ROOT

    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_memory_traffic_of_a_dense_layer_is_read_x_w_write_y():
    a = analyze_structure(einstruct.load("structure s = dense(d_in = 96, d_out = 40)"))
    assert a.traffic == 4 * (96 + 40 + Fraction(96 * 40, 2048))
    assert a.to_dict()["traffic_bytes"] == pytest.approx(float(a.traffic))


def test_memory_traffic_of_btt_by_hand():
    # d = 1024, rank 1, 2048 tokens: step 1 reads x (1024/token) and A (32^3 / 2048), writes t1 (1024);
    # step 2 reads t1 and B, writes y (1024); the output permute reads and writes 1024 more each
    a = analyze_structure(einstruct.load("structure b = btt(d = 1024, rank = 1)"))
    per_token = 1024 + 16 + 1024 + 1024 + 16 + 1024 + 2 * 1024
    assert a.traffic == 4 * per_token


def test_memory_traffic_counts_padding_the_input_to_its_axes():
    # 1000 features on a 32 x 32 input: the padding copy reads 1000 and writes 1024 per token
    source = (
        "structure p(d_in = 1024):\n    y[f, e] = x[g, a] * A[g, a, f] * B[f, e]\n"
        "    where g = 32, a = ceil(d_in / 32), f = 32, e = 32\n"
    )
    padded = analyze_structure(einstruct.load(source, d_in=1000))
    exact = analyze_structure(einstruct.load(source))
    assert padded.structure.d_in == exact.structure.d_in == 1024  # the same steps
    assert padded.structure.in_features == 1000
    assert padded.traffic - exact.traffic == 4 * (1000 + 1024)


@pytest.mark.parametrize("d, rank", [(1024, 32), (64, 128), (256, 256)])
def test_symbolic_rank_bound_substitutes_to_the_concrete_one(d, rank):
    import sympy

    source = "structure l(d, rank):\n    y[o] = x[i] * U[i, r] * V[r, o]\n    where i = o = d, r = rank\n"
    symbolic = analyze_structure(einstruct.load(source, symbolic=True)).rank_bound
    concrete = analyze_structure(einstruct.load(source, d=d, rank=rank)).rank_bound
    assert concrete == min(d, rank)  # the rank of a product of d x rank and rank x d factors
    expr = sympy.sympify(symbolic)
    assert int(expr.subs({s: {"d": d, "rank": rank}[str(s)] for s in expr.free_symbols})) == concrete


def test_degenerate_suggests_the_useful_rank_also_when_written_mirrored():
    # BTT with its factors listed B then A: the oriented alpha/epsilon are the blocks of 32
    source = (
        "structure m(d = 1024, rank = 64):\n"
        "    y[f, e] = x[g, a] * B[f, g, r, e] * A[g, a, f, r]\n"
        "    where g = a = f = e = d^(1/2), r = rank\n"
    )
    messages = {d.code: d.message for d in analyze_structure(einstruct.load(source)).diagnostics}
    assert "a rank of 32 would do" in messages["degenerate"]


def test_adam_lr_mult_is_against_the_layers_own_width_when_padded():
    a = analyze_structure(einstruct.load(EXAMPLES / "theta.ein", "wide"))
    assert a.structure.d_in > a.d_in == 768  # padded axes
    for f in a.factors:
        assert f.fans.lr_mult == pytest.approx(768 / f.fans.fan_in / 2)


def test_btt_moe_reports_router_and_active_flops():
    a = analyze_structure(einstruct.load(EXAMPLES / "btt_moe.ein"))
    g = a_ = f = e = 32  # d = 1024
    experts, k = 8, 2
    # every expert computed (the paper's compute-then-mask): both steps over all E rank slices
    assert a.counts.flops == 2 * g * a_ * f * experts + 2 * f * g * experts * e
    route = a.to_dict()["route"]
    assert route["experts"] == experts and route["top_k"] == k
    assert route["router_params"] == 1024 * experts
    assert route["active_flops"] == 2 * g * a_ * f * k + 2 * f * g * k * e + 2 * 1024 * experts


@pytest.mark.parametrize("batch", [1, 4096])
def test_compute_intensity_divides_the_flops_and_bytes_of_one_plan(batch):
    # the FLOPs came from the order at --batch (x U V: 4.2M per vector), the bytes from the
    # 2048-token plan (U V first): 256 and 160 FLOP/B for one layer, neither its own
    spec = "structure costly(k = 1024):\n    y[o] = x[i] * U[i, r] * V[r, o]\n    where i = o = 1024, r = k\n"
    a = analyze_structure(einstruct.load(spec), batch=batch)
    i = o = r = 1024
    x_u_v = 2 * (i * r + r * o)  # per vector, any batch
    w_first = Fraction(2 * i * r * o, 2048) + 2 * i * o  # U V once per 2048 tokens, then x W
    assert a.intensity * a.traffic == min(x_u_v, w_first)
    assert a.to_dict()["intensity"] == pytest.approx(float(a.intensity))
