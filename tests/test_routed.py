"""BTT-MoE (routed) layers against an independent numpy reference (docs/compiling.md, "Routed layers")."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference import routed_reference, routed_torch

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


@pytest.mark.parametrize("sparse", [True, False], ids=["top-k experts", "every expert, masked"])
@pytest.mark.parametrize("seed, spec", [(0, SPEC), (1, SPEC), (2, PADDED)])
def test_routed_forward_and_aux_loss_match_reference(seed, spec, sparse):
    layer = _layer(seed, sparse, spec)
    assert spec is SPEC or int(np.prod([layer.index_sizes[i] for i in layer.input_axes])) > layer.in_features
    x = np.random.default_rng(seed).standard_normal((7, layer.in_features))
    y = layer(torch.from_numpy(x))
    y_ref, aux_ref = routed_reference(layer, x)
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
    y_ref, aux_ref = routed_reference(layer, x)
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
        y_ref, _ = routed_reference(layer, x)
        np.testing.assert_allclose(layer(torch.from_numpy(x)).detach().numpy(), y_ref, rtol=1e-10)


@pytest.mark.parametrize("batch", [1, 4096])
def test_routed_counts_follow_an_order_that_can_gate_its_tokens_at_any_batch(batch):
    # with 64 experts, contracting A with B first is cheapest per vector at a large batch,
    # but sums the routed index before the gate: a routed layer runs x * A, then B
    path = Path(einstruct.__file__).parent.parent / "examples" / "btt_moe.ein"
    analysis = einstruct.analyze(path, experts=64, batch=batch)
    g = a = f = e = 32
    r = 64
    reference = 2 * g * a * f * r + 2 * g * f * r * e  # x[g,a] A[g,a,f,r], then t[g,f,r] B[f,g,r,e]
    assert analysis.counts.flops == reference
    assert analysis.counts.train_flops == 3 * reference
    assert [st.operands for st in analysis.counts.path][0] == ("x", "A")
    from einstruct.planner.plan import make_plan

    plan = make_plan(einstruct.load(path, experts=64), batch)
    assert sum(st.flops for st in plan.order.steps) == reference * batch  # `plan` printed 4096 per token


#: Three factors, one shared by every expert (C), and an expert slice stored in another
#: axis order than the full factor (B), so the sparse path permutes slices and gradients.
SHARED = """structure moe3(k = 2):
    y[f, e] = x[g, a] * A[r, g, a, f] * B[f, g, r, e] * C[e]
    where g = 4, a = 4, f = 4, e = 4, r = 3
    route r top k
"""


def _gradients(layer, x: torch.Tensor):
    """Gradients of a fixed weighting of the output: the layer's, and autograd's through
    the float64 einsum reference of the same parameters."""
    weights = torch.linspace(-1, 1, len(x) * layer.out_features, dtype=torch.float64)
    weights = weights.reshape(len(x), -1)
    x = x.clone().requires_grad_()
    layer.zero_grad()
    (layer(x) * weights).sum().backward()
    got = {"x": x.grad, **{k: v.grad for k, v in layer.named_parameters()}}
    params = {k: v.detach().clone().requires_grad_() for k, v in layer.named_parameters()}
    x_ref = x.detach().clone().requires_grad_()
    (routed_torch(layer, params, x_ref) * weights).sum().backward()
    return got, {"x": x_ref.grad, **{k: v.grad for k, v in params.items()}}


@pytest.mark.parametrize("save", [True, False], ids=["saved", "recomputed"])
@pytest.mark.parametrize("sparse", [True, False], ids=["top-k experts", "every expert, masked"])
@pytest.mark.parametrize("spec", [SPEC, PADDED, SHARED], ids=["btt", "padded", "shared factor"])
def test_routed_gradients_match_the_einsum_reference(spec, sparse, save):
    layer = compile_structure(einstruct.load(spec))(
        dtype=torch.float64, sparse_experts=sparse, save_intermediate=save
    )
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(9, layer.in_features, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(layer(x).detach().numpy(), routed_reference(layer, x.numpy())[0], rtol=1e-10)
    got, expected = _gradients(layer, x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_the_shared_structure_permutes_expert_slices():
    """An expert's slice of a factor is permuted to the one-expert plan's layout (and back
    for its gradient); a factor without the routed index is shared: no slice, gradients summed."""
    cls = einstruct.compile(SHARED)
    slicing = dict(zip(cls.factor_axes, cls.expert_slicing))
    shared = [f for f, axes in cls.factor_axes.items() if cls.routed_index not in axes]
    assert shared and all(slicing[f] == (None, None, None) for f in shared)
    permuted = [(axis, there, back) for axis, there, back in slicing.values() if there is not None]
    assert permuted
    for axis, there, back in permuted:
        assert axis is not None and [there[i] for i in back] == list(range(len(there)))


def test_experts_without_tokens_and_empty_batches():
    layer = _layer(4)
    with torch.no_grad():  # expert 0 scores lowest on every positive input
        layer.router.weight[0] = -10.0
        layer.router.weight[1:] = torch.rand(layer.experts - 1, layer.in_features)
    x = torch.rand(6, layer.in_features, dtype=torch.float64)
    got, expected = _gradients(layer, x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)
    assert torch.count_nonzero(got["A"].narrow(layer.factor_axes["A"].index("r"), 0, 1)) == 0
    empty = torch.zeros(0, layer.in_features, dtype=torch.float64, requires_grad=True)
    y = layer(empty)
    assert y.shape == (0, layer.out_features)
    y.sum().backward()
    assert empty.grad.shape == empty.shape


def _pair(spec: str, seed: int = 0):
    """The same routed layer (float64, random parameters) with each expert dispatch."""
    cls = compile_structure(einstruct.load(spec))
    counts, static = (
        cls(dtype=torch.float64, expert_dispatch="counts"),
        cls(dtype=torch.float64, expert_dispatch="static"),
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in counts.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    static.load_state_dict(counts.state_dict())
    return counts, static


@pytest.mark.parametrize("spec", [SPEC, PADDED, SHARED], ids=["btt", "padded", "shared factor"])
def test_the_static_dispatch_equals_the_counted_one(spec):
    """expert_dispatch="static" (no host read of the experts' loads) gives the counted
    path's outputs and gradients, for empty, tiny and uneven batches."""
    counts, static = _pair(spec)
    with torch.no_grad():  # skew the router: some experts get many tokens, some none
        counts.router.weight[0] += 3.0
        static.router.weight.copy_(counts.router.weight)
    for n in (0, 1, 2, 13):
        x = torch.randn(n, counts.in_features, dtype=torch.float64)
        outputs, grads = [], []
        for layer in (counts, static):
            xs = x.clone().requires_grad_()
            y = layer(xs)
            weights = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
            grads.append(torch.autograd.grad((y * weights).sum(), [xs, *layer.parameters()]))
            outputs.append(y)
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-12, atol=1e-12)
        for name, a, b in zip(["x", *dict(counts.named_parameters())], *grads):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, msg=f"{name} at {n} tokens")


def test_the_static_dispatch_compiles_into_one_graph():
    """No host synchronization: torch.compile(fullgraph=True) takes the static dispatch's
    forward and backward whole (the counted path reads the loads: a graph break), with the
    counted path's numbers; the router may change after compiling."""
    counts, static = _pair(SPEC, seed=1)
    x = torch.randn(11, counts.in_features, dtype=torch.float64)
    assert torch._dynamo.explain(static)(x).graph_break_count == 0
    compiled = torch.compile(static, fullgraph=True, backend="aot_eager")
    for step in range(2):
        if step:  # another routing, the same compiled graph
            with torch.no_grad():
                for layer in (counts, static):
                    layer.router.weight.mul_(-2.0)
        xs = x.clone().requires_grad_()
        y = compiled(xs)
        (g,) = torch.autograd.grad(y.square().sum(), xs)
        x_ref = x.clone().requires_grad_()
        y_ref = counts(x_ref)
        (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x_ref)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


def test_a_wrong_expert_dispatch_is_refused():
    with pytest.raises(ValueError, match="expert_dispatch must be 'auto', 'counts' or 'static'"):
        compile_structure(einstruct.load(SPEC))(expert_dispatch="sorted")
    layer = compile_structure(einstruct.load(SPEC))()
    assert layer.expert_dispatch == "auto" and layer._dispatch(torch.zeros(1)) == "counts"


def test_the_aux_loss_of_a_large_half_precision_batch_stays_finite():
    """The statistics are summed over the tokens: in float16 a z-loss summed over tens of
    thousands of tokens (or their count) passed 65504 and gave inf, then NaN."""
    torch.manual_seed(0)
    layer = einstruct.compile(SPEC)()
    with torch.no_grad():
        layer.router.weight.normal_()
    reference = copy.deepcopy(layer)
    x = torch.randn(70_000, layer.in_features).half()
    layer.half()(x)
    reference(x.float())
    assert layer.aux_loss.dtype == torch.float16
    torch.testing.assert_close(layer.aux_loss.float(), reference.aux_loss, rtol=2e-3, atol=0)
