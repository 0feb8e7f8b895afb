"""BTT-MoE (routed) layers against an independent numpy reference (BACKGROUND §5)."""

from __future__ import annotations

import numpy as np
import opt_einsum
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import einstruct
from einstruct.errors import CompileError
from einstruct.runtime import compile_structure

SPEC = """structure moe(d = 16, experts = 4, k = 2):
    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]
    where g = a = f = e = d^(1/2), r = experts
    route r top k
"""

#: Rounded sizes: the axes hold 25 features for a width of 20 (padded input, truncated output).
PADDED = """structure moe(d = 20, experts = 3, k = 2):
    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]
    where g = a = f = e = ceil(d^(1/2)), r = experts
    route r top k
"""


def _layer(seed: int = 0, sparse: bool = True, spec: str = SPEC):
    layer = compile_structure(einstruct.load(spec))(dtype=torch.float64, sparse_experts=sparse)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return layer


def _reference(layer, x: np.ndarray):
    """Output and aux loss computed with numpy and one opt_einsum call."""
    experts, k = layer.experts, layer.top_k
    logits = x @ layer.router.weight.detach().numpy().T
    chosen = np.argsort(-logits, axis=1)[:, :k]
    top = np.take_along_axis(logits, chosen, axis=1)
    weights = np.exp(top - top.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    gate = np.zeros_like(logits)
    np.put_along_axis(gate, chosen, weights, axis=1)
    sizes = dict(layer.index_sizes)
    width = int(np.prod([sizes[i] for i in layer.input_axes]))
    xs = np.pad(x, ((0, 0), (0, width - x.shape[1]))).reshape(len(x), *(sizes[i] for i in layer.input_axes))
    letters = {name: opt_einsum.get_symbol(j) for j, name in enumerate(["__n", *sizes])}
    subs = [("__n", *layer.input_axes), ("__n", "r")]
    ops = [xs, gate]
    for name, axes in layer.factor_axes.items():
        subs.append(axes)
        ops.append(getattr(layer, name).detach().numpy())
    eq = ",".join("".join(letters[i] for i in s) for s in subs)
    eq += "->" + "".join(letters[i] for i in ("__n", *layer.output_axes))
    y = opt_einsum.contract(eq, *ops).reshape(len(x), -1)[:, : layer.out_features]
    y = y + layer.bias.detach().numpy()
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    slots = np.zeros_like(logits)
    np.put_along_axis(slots, chosen, 1.0, axis=1)
    balance = experts * np.sum(probs.mean(axis=0) * slots.mean(axis=0) / k)
    log_z = np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)) + logits.max(axis=1)
    return y, balance + 0.1 * np.mean(log_z**2)


@pytest.mark.parametrize("sparse", [True, False], ids=["top-k experts", "every expert, masked"])
@pytest.mark.parametrize("seed, spec", [(0, SPEC), (1, SPEC), (2, PADDED)])
def test_routed_forward_and_aux_loss_match_reference(seed, spec, sparse):
    layer = _layer(seed, sparse, spec)
    assert spec is SPEC or int(np.prod([layer.index_sizes[i] for i in layer.input_axes])) > layer.in_features
    x = np.random.default_rng(seed).standard_normal((7, layer.in_features))
    y = layer(torch.from_numpy(x))
    y_ref, aux_ref = _reference(layer, x)
    np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-10, atol=1e-10)
    assert layer.aux_loss.item() == pytest.approx(aux_ref, rel=1e-10)


@pytest.mark.parametrize("sparse", [True, False], ids=["top-k experts", "every expert, masked"])
def test_routed_gradients_pass_gradcheck(sparse):
    layer = _layer(3, sparse)
    x = torch.randn(3, layer.in_features, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    assert torch.autograd.gradcheck(f, (x, *params))


def test_routed_layer_starts_with_a_zero_router_and_has_no_dense_matrix():
    layer = compile_structure(einstruct.load(SPEC))()
    assert torch.count_nonzero(layer.router.weight) == 0
    assert "router.weight" in layer.lr_multipliers()
    with pytest.raises(RuntimeError, match="no single dense matrix"):
        layer.to_dense()
    with pytest.raises(ValueError, match="structured only"):
        compile_structure(einstruct.load(SPEC))(strategy="dense")
    with pytest.raises(CompileError, match="depends on the token"):
        compile_structure(einstruct.load(SPEC), strategy="dense")


@given(
    sizes=st.tuples(*(st.integers(1, 4) for _ in range(4))),
    experts=st.integers(1, 5),
    data=st.data(),
)
def test_random_routed_btts_match_reference(sizes, experts, data):
    g, a, f, e = sizes
    k = data.draw(st.integers(1, experts), label="k")
    spec = (
        f"structure moe(k = {k}):\n"
        "    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]\n"
        f"    where g = {g}, a = {a}, f = {f}, e = {e}, r = {experts}\n"
        "    route r top k\n"
    )
    sparse = data.draw(st.booleans(), label="sparse")
    layer = _layer(data.draw(st.integers(0, 2**16), label="seed"), sparse, spec)
    x = np.random.default_rng(0).standard_normal((5, layer.in_features))
    y_ref, aux_ref = _reference(layer, x)
    np.testing.assert_allclose(layer(torch.from_numpy(x)).detach().numpy(), y_ref, rtol=1e-9, atol=1e-9)
    assert layer.aux_loss.item() == pytest.approx(aux_ref, rel=1e-9)


def test_routed_structure_whose_cheapest_order_sums_the_expert_axis_first():
    # all-1 blocks: contracting A with B first is cheapest at any batch; routing needs x * A first
    spec = "structure moe:\n    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]\n"
    spec += "    where g = a = f = e = 1, r = 3\n    route r top 2\n"
    structure = einstruct.load(spec)
    from einstruct.planner.order import contraction_order

    assert contraction_order(structure, 1).steps[0].operands == ("A", "B")
    for sparse in (True, False):
        layer = _layer(5, sparse, spec)
        x = np.random.default_rng(1).standard_normal((4, 1))
        y_ref, _ = _reference(layer, x)
        np.testing.assert_allclose(layer(torch.from_numpy(x)).detach().numpy(), y_ref, rtol=1e-10)
