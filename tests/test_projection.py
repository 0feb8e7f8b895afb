"""``from_dense``: the projection of a dense matrix onto a structure, against independent optima.

References are numpy, written from the definitions, never einstruct's code:
the truncated SVD's tail energy for low rank (Eckart-Young), the SVD of Van
Loan's rearrangement for Kronecker and Tensor-Train, per-block SVDs for BTT and
Monarch, the blocks themselves for block-diagonal. The layer's matrix is read
with ``reference.dense_from_factors`` (one einsum of its parameters), all in
float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_hostile
import torch
from conftest import EXAMPLES
from hypothesis import given
from reference import dense_from_factors, dense_torch
from strategies import structure_specs

import einstruct
from einstruct.backends.torch.projection import projection_kind
from einstruct.runtime import compile_structure

TOL = 1e-10


def _layer(spec: str, **kwargs):
    structure = einstruct.load(spec)
    options = {"dtype": torch.float64, **kwargs}
    return compile_structure(structure)(**options), structure


def _svd_truncate(m: np.ndarray, r: int) -> np.ndarray:
    u, s, vh = np.linalg.svd(m, full_matrices=False)
    return (u[..., :, :r] * s[..., None, :r]) @ vh[..., :r, :]


def _check(layer, w: np.ndarray, best: np.ndarray) -> None:
    """from_dense reaches the reference optimum: the same error, and the same matrix."""
    got_error = layer.from_dense(torch.from_numpy(w))
    want_error = np.linalg.norm(w - best) / np.linalg.norm(w)
    assert abs(got_error - want_error) < TOL
    np.testing.assert_allclose(dense_from_factors(layer), best, atol=TOL * np.abs(w).max() * 10, rtol=0)


@pytest.mark.parametrize("shape", [(48, 40), (40, 48), (64, 64)])
@pytest.mark.parametrize("rank", [1, 5])
def test_low_rank_is_the_truncated_svd(shape, rank):
    d_out, d_in = shape
    layer, _ = _layer(f"structure l = low_rank(rank = {rank}, d_in = {d_in}, d_out = {d_out})")
    w = np.random.default_rng(rank).standard_normal(shape)
    s = np.linalg.svd(w, compute_uv=False)
    tail = np.sqrt((s[rank:] ** 2).sum()) / np.linalg.norm(w)  # Eckart-Young: the tail energy
    assert abs(layer.from_dense(torch.from_numpy(w)) - tail) < TOL
    _check(layer, w, _svd_truncate(w, rank))


def _rearranged_best(w: np.ndarray, sizes: dict, rank: int) -> np.ndarray:
    """Van Loan-Pitsianis: W[(o1, o2), (i1, i2)] = sum_r A[i1, o1, r] B[i2, o2, r] is a rank-r
    matrix over rows (o1, i1) and columns (o2, i2); truncate its SVD and put it back."""
    o1, o2, i1, i2 = sizes["o1"], sizes["o2"], sizes["i1"], sizes["i2"]
    r = w.reshape(o1, o2, i1, i2).transpose(0, 2, 1, 3).reshape(o1 * i1, o2 * i2)
    best = _svd_truncate(r, rank).reshape(o1, i1, o2, i2).transpose(0, 2, 1, 3)
    return best.reshape(o1 * o2, i1 * i2)


@pytest.mark.parametrize("shape", [(36, 64), (64, 64), (96, 48)])
def test_kronecker_is_the_nearest_kronecker_product(shape):
    d_out, d_in = shape
    layer, _ = _layer(f"structure k = kronecker(d_in = {d_in}, d_out = {d_out})")
    w = np.random.default_rng(0).standard_normal(shape)
    _check(layer, w, _rearranged_best(w, layer.index_sizes, 1))


@pytest.mark.parametrize("rank", [1, 3])
def test_tensor_train_is_the_rank_r_rearrangement(rank):
    layer, _ = _layer(f"structure t = tensor_train(rank = {rank}, d_in = 48, d_out = 64)")
    w = np.random.default_rng(rank).standard_normal((64, 48))
    _check(layer, w, _rearranged_best(w, layer.index_sizes, rank))


def _btt_best(w: np.ndarray, sizes: dict, rank: int, d_in: int, d_out: int) -> np.ndarray:
    """BTT/Monarch: W[(f, e), (g, a)] = sum_r A[g, a, f, r] B[f, g, r, e]: block (f, g) is an
    e x a matrix of rank r; truncate each block's SVD. Padded axes hold zeros."""
    g, a, f, e = sizes["g"], sizes["a"], sizes["f"], sizes["e"]
    padded = np.zeros((f * e, g * a))
    padded[:d_out, :d_in] = w
    blocks = padded.reshape(f, e, g, a).transpose(0, 2, 1, 3)  # (f, g, e, a)
    best = np.empty_like(blocks)
    for i in range(f):
        for j in range(g):
            best[i, j] = _svd_truncate(blocks[i, j], rank)
    return best.transpose(0, 2, 1, 3).reshape(f * e, g * a)[:d_out, :d_in]


@pytest.mark.parametrize(
    "spec, rank",
    [
        ("btt(rank = 2, d_in = 64, d_out = 64)", 2),
        ("btt(rank = 2, d_in = 48, d_out = 192)", 2),
        ("btt(rank = 3, d_in = 70, d_out = 50)", 3),
        ("monarch(d_in = 64, d_out = 96)", 1),
        ("btt(rank = 2, d_in = 97, d_out = 61)", 2),  # primes: padded axes
    ],
)
def test_btt_and_monarch_are_blockwise_svds(spec, rank):
    layer, s = _layer(f"structure b = {spec}")
    d_in, d_out = layer.in_features, layer.out_features
    w = np.random.default_rng(1).standard_normal((d_out, d_in))
    _check(layer, w, _btt_best(w, layer.index_sizes, rank, d_in, d_out))


def test_monarch_with_blocks_is_blockwise_too():
    layer, _ = _layer("structure m = monarch(blocks = 4, d_in = 64, d_out = 64)")
    sizes = layer.index_sizes
    w = np.random.default_rng(2).standard_normal((64, 64))
    _check(layer, w, _btt_best(w, sizes, sizes["r"], 64, 64))


def test_block_diagonal_keeps_the_blocks_and_dense_is_exact():
    layer, _ = _layer("structure k = block_diagonal(blocks = 4, d = 64)")
    w = np.random.default_rng(3).standard_normal((64, 64))
    best = np.zeros_like(w)
    for k in range(4):
        best[16 * k : 16 * k + 16, 16 * k : 16 * k + 16] = w[16 * k : 16 * k + 16, 16 * k : 16 * k + 16]
    _check(layer, w, best)
    dense, _ = _layer("structure d = dense(d_in = 30, d_out = 20)")
    w = np.random.default_rng(4).standard_normal((20, 30))
    assert dense.from_dense(torch.from_numpy(w)) < TOL
    np.testing.assert_allclose(dense_from_factors(dense), w, atol=TOL)


def test_copies_along_an_input_output_index_are_averaged():
    # W = I_k (x) V: the best V is the mean of W's diagonal blocks
    layer, _ = _layer("structure c:\n    y[k, o] = x[k, i] * V[i, o]\n    where k = 3, i = 4, o = 5\n")
    w = np.random.default_rng(5).standard_normal((15, 12))
    blocks = [w[5 * k : 5 * k + 5, 4 * k : 4 * k + 4] for k in range(3)]
    best = np.kron(np.eye(3), np.mean(blocks, axis=0))
    _check(layer, w, best)


@pytest.mark.parametrize(
    "spec, rank",
    [("kronecker(d_in = 97, d_out = 50)", 1), ("tensor_train(rank = 2, d_in = 97, d_out = 50)", 2)],
)
def test_scattered_padding_is_refined_on_ws_own_entries(spec, rank):
    """97 -> 50 pads to 10 x 10 -> 5 x 10: Van Loan's rearrangement scatters the padded
    zeros over rows and columns, so its SVD fits them too. The closed form is refined
    on W's own entries: a W the structure represents comes back (the closed form alone
    missed it by 0.14 for Kronecker), and a random W gets no worse than that closed
    form (numpy on the zero-padded W, truncated), here strictly better."""
    layer, structure = _layer(f"structure s = {spec}")
    assert projection_kind(structure) == layer.projection == "refined"
    source, _ = _layer(f"structure s = {spec}")
    assert layer.from_dense(torch.from_numpy(dense_from_factors(source))) < 1e-8
    w = np.random.default_rng(rank).standard_normal((50, 97))
    padded = np.zeros((50, 100))
    padded[:, :97] = w
    closed = _rearranged_best(padded, layer.index_sizes, rank)[:, :97]
    closed_error = np.linalg.norm(w - closed) / np.linalg.norm(w)
    got = layer.from_dense(torch.from_numpy(w))
    assert got == pytest.approx(np.linalg.norm(w - dense_from_factors(layer)) / np.linalg.norm(w), abs=1e-12)
    assert got < closed_error - 1e-4


@pytest.mark.parametrize(
    "spec",
    [
        "btt(d_in = 97, d_out = 50)",
        "monarch(d_in = 97, d_out = 50)",
        "low_rank(rank = 3, d_in = 97, d_out = 50)",
    ],
)
def test_padding_of_whole_rows_or_columns_keeps_the_closed_form_exact(spec):
    """Blocks and single axes pad whole rows or columns of the factored matrix: truncating
    them leaves the optimum, so these stay "exact" (checked in the recovery test above)."""
    layer, structure = _layer(f"structure s = {spec}")
    assert projection_kind(structure) == "exact"
    source, _ = _layer(f"structure s = {spec}")
    assert layer.from_dense(torch.from_numpy(dense_from_factors(source))) < 1e-12


@given(spec=structure_specs(max_factors=2, max_size=3, max_indices=5))
def test_every_closed_form_recovers_a_representable_matrix_and_is_stationary(spec):
    """Random one- and two-factor structures: a W the structure can represent comes back
    exactly, and for a random W the result is a stationary point of ||W - W(factors)||."""
    structure = einstruct.load(spec[0])
    if projection_kind(structure) != "exact":
        return
    source = compile_structure(structure)(dtype=torch.float64)
    target = torch.from_numpy(dense_from_factors(source))
    layer = compile_structure(structure)(dtype=torch.float64)
    assert layer.from_dense(target) < 1e-9
    w = torch.randn(layer.out_features, layer.in_features, dtype=torch.float64)
    layer.from_dense(w)
    factors = {n: getattr(layer, n).detach().clone().requires_grad_() for n in layer.factor_axes}
    loss = (w - dense_torch(layer, factors)).pow(2).sum()
    grads = torch.autograd.grad(loss, list(factors.values()))
    scale = w.norm() * max(f.norm() for f in factors.values()) + 1
    assert all(float(g.norm()) < 1e-8 * float(scale.detach()) for g in grads)


def test_the_iterative_fit_reaches_a_representable_target():
    spec = (EXAMPLES / "three_factor.ein").read_text()
    structure = einstruct.load(spec)
    assert projection_kind(structure) == "iterative"
    torch.manual_seed(0)
    small = einstruct.load(spec, d=64, rank=2)
    source = compile_structure(small)(dtype=torch.float64)
    target = torch.from_numpy(dense_from_factors(source))
    layer = compile_structure(small)(dtype=torch.float64)
    error = layer.from_dense(target)
    assert error < 1e-8
    assert (
        abs(error - np.linalg.norm(dense_from_factors(layer) - target.numpy()) / target.norm().item()) < TOL
    )


def test_coupled_indices_are_fitted_iteratively():
    # 'k' is held by the input, the output and only A: no closed form
    spec = (
        "structure c:\n    y[k, o] = x[k, i] * A[k, i, r] * B[r, o]\n    where k = 3, i = 4, r = 2, o = 5\n"
    )
    structure = einstruct.load(spec)
    assert projection_kind(structure) == "iterative"
    torch.manual_seed(1)
    target = torch.from_numpy(dense_from_factors(compile_structure(structure)(dtype=torch.float64)))
    assert compile_structure(structure)(dtype=torch.float64).from_dense(target) < 1e-8


def test_normalized_layers_compute_the_projection():
    w = torch.from_numpy(np.random.default_rng(6).standard_normal((64, 64)))
    plain, _ = _layer("structure b = btt(rank = 2, d = 64)")
    best = plain.from_dense(w)
    with_gain, _ = _layer("structure b = btt(rank = 2, d = 64)", normalize=True, gain=True)
    assert abs(with_gain.from_dense(w) - best) < TOL  # gains absorb the normalization
    torch.testing.assert_close(with_gain.to_dense(), plain.to_dense())
    small = w * 1e-3  # within the normalized factors' reach: no gain needed
    capped, _ = _layer("structure b = btt(rank = 2, d = 64)", normalize=True)
    assert abs(capped.from_dense(small) - best) < 1e-8
    big = capped.from_dense(w * 100)  # beyond it: scaled down, and the error says so
    np.testing.assert_allclose(
        big, np.linalg.norm(w * 100 - capped.to_dense().detach()) / np.linalg.norm(w * 100)
    )
    assert big > best + 0.1
    for name in capped.factor_axes:  # stored like a rescaled init, never above it
        factor = getattr(capped, name).detach()
        assert float(factor.pow(2).mean().sqrt()) <= capped.init_std[name] * 1.0001


def test_from_dense_copies_the_bias_checks_its_input_and_keeps_dtype():
    layer = einstruct.compile("structure l = low_rank(rank = 2, d_in = 8, d_out = 6)")(dtype=torch.bfloat16)
    w, b = torch.randn(6, 8), torch.randn(6)
    error = layer.from_dense(w, b)
    assert 0 < error < 1
    torch.testing.assert_close(layer.bias, b.to(torch.bfloat16))
    assert all(p.dtype == torch.bfloat16 for p in layer.parameters())
    with pytest.raises(ValueError, match=r"shape \(6, 8\)"):
        layer.from_dense(torch.randn(8, 6))
    with pytest.raises(TypeError, match="needs a tensor W"):
        layer.from_dense([[1.0]])
    with pytest.raises(ValueError, match="NaN or infinite"):
        layer.from_dense(torch.full((6, 8), float("nan")))
    no_bias = einstruct.compile("structure l = low_rank(rank = 2, d_in = 8, d_out = 6)")(bias=False)
    with pytest.raises(ValueError, match="bias=False"):
        no_bias.from_dense(w, b)


@pytest.mark.parametrize(
    ("weight", "extras", "error", "message"),
    [
        (torch.ones(6, 8, dtype=torch.int64), {}, TypeError, "real floating-point W, got dtype torch.int64"),
        (torch.randn(6, 8, dtype=torch.complex64), {}, TypeError, "real floating-point W"),
        (torch.randn(6, 8), {"bias": torch.randn(3)}, ValueError, r"bias must have shape \(6,\), got \(3,\)"),
        (torch.randn(6, 8), {"bias": [0.0] * 6}, TypeError, "bias must be a real floating-point tensor"),
        (torch.randn(6, 8), {"bias": torch.full((6,), float("inf"))}, ValueError, "bias has NaN"),
        (torch.randn(6, 8), {"max_iter": 0}, ValueError, "max_iter must be a positive integer"),
        (torch.randn(6, 8), {"max_iter": "10"}, ValueError, "max_iter must be a positive integer"),
        (torch.randn(6, 8), {"max_iter": True}, ValueError, "max_iter must be a positive integer"),
    ],
)
def test_from_dense_refuses_bad_arguments_even_when_it_would_not_use_them(weight, extras, error, message):
    """An exact projection never reads max_iter; a wrong one is still an error, before any factor changes."""
    layer = einstruct.compile("structure l = low_rank(rank = 2, d_in = 8, d_out = 6)")()
    before = [p.detach().clone() for p in layer.parameters()]
    with pytest.raises(error, match=message):
        layer.from_dense(weight, **extras)
    assert all(torch.equal(a, p) for a, p in zip(before, layer.parameters()))


def test_a_routed_layer_refuses():
    layer = einstruct.compile(EXAMPLES / "btt_moe.ein", d=64)()
    with pytest.raises(RuntimeError, match="no single dense matrix"):
        layer.from_dense(torch.randn(64, 64))


@given(spec=test_hostile.hostile_specs())
def test_hostile_names_project_exactly(spec):
    """Names drawn from the generator's own locals, builtins and look-alikes: from_dense's
    generated lines use only generated names, so a representable W comes back exactly."""
    try:
        structure = einstruct.load(spec[0])
        layer_cls = compile_structure(structure)
    except einstruct.EinstructError:
        return
    if projection_kind(structure) != "exact":
        return
    target = torch.from_numpy(dense_from_factors(layer_cls(dtype=torch.float64)))
    assert layer_cls(dtype=torch.float64).from_dense(target) < 1e-9


#: the catalog's forms at width 36, each projected in closed form
AT_36 = [
    "structure l = low_rank(d = 36, rank = 4)",
    "structure b = btt(d = 36, rank = 2)",
    "structure t = tensor_train(d = 36, rank = 2)",
    "structure k = kronecker(d = 36)",
    "structure m = monarch(d = 36)",
]


@pytest.mark.parametrize("spec", AT_36[:4])
def test_a_huge_finite_w_projects_as_its_scaled_copy_or_is_refused_changing_nothing(spec):
    # float32 squares of entries past 1e19 overflowed: the error came back NaN, and at
    # 1e38 the factors were left non-finite
    torch.manual_seed(0)
    w = torch.randn(36, 36)
    layer, reference = einstruct.compile(spec)(), einstruct.compile(spec)()
    expected = reference.from_dense(w)
    assert layer.from_dense(w * 1e30) == pytest.approx(expected, rel=1e-4)
    assert all(bool(torch.isfinite(p).all()) for p in layer.parameters())
    before = [p.detach().clone() for p in layer.parameters()]
    with pytest.raises(ValueError, match="too large to project|NaN or infinite"):
        layer.from_dense(torch.full((36, 36), 1e38))
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))


@pytest.mark.parametrize("spec", AT_36)
def test_a_zero_w_projects_exactly_to_factors_training_can_leave(spec):
    # every factor came back zero: a saddle no gradient leaves (adaLN-Zero, LoRA-B style
    # zero layers converted with init="project" never trained)
    torch.manual_seed(0)
    layer = einstruct.compile(spec)()
    assert layer.from_dense(torch.zeros(36, 36)) == 0.0
    assert torch.equal(layer.to_dense(), torch.zeros(36, 36))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, target = torch.randn(64, 36), torch.randn(64, 36)
    for _ in range(2):
        optimizer.zero_grad()
        (layer(x) - target).pow(2).mean().backward()
        optimizer.step()
    assert float(layer.to_dense().abs().max()) > 1e-4


def test_a_rank_deficient_w_leaves_no_rank_component_out_of_trainings_reach():
    # rank 48 on a 64 -> 32 layer: the SVD fills 32 components, the other 16 came back
    # zero in U and V, with zero gradients for good
    torch.manual_seed(0)
    spec = "structure l = low_rank(d_in = 64, d_out = 32, rank = 48)"
    layer = einstruct.compile(spec, strategy="structured")()
    w = torch.randn(32, 64)
    assert layer.from_dense(w) < 1e-5  # exact: the SVD optimum is W itself
    (layer(torch.randn(16, 64)) - torch.randn(16, 32)).pow(2).sum().backward()
    u, v = layer.U, layer.V  # U holds [i, r], V [r, o] in some stored order
    r_in_u = layer.factor_axes["U"].index("r")
    r_in_v = layer.factor_axes["V"].index("r")
    reached = u.grad.abs().amax(dim=1 - r_in_u) + v.grad.abs().amax(dim=1 - r_in_v)
    assert bool((reached > 0).all()), f"{int((reached == 0).sum())} rank components get no gradient"
