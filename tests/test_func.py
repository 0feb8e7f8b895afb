"""torch.func on generated layers: functional_call, grad, jacrev, vmap, against float64 references.

The plain layers' autograd Function has the ``setup_context`` form with
``generate_vmap_rule``; routed layers take their masked path (shapes that do
not depend on the router) under a transform. References: the dense matrix
(einsum of the factors) and the routed einsum of ``tests/reference.py``.
"""

from __future__ import annotations

import pytest
import torch
from reference import dense_torch, routed_torch
from test_routed import SPEC
from torch.func import functional_call, grad, jacrev, stack_module_state, vmap

import einstruct
from einstruct.runtime import compile_structure

PLAIN = "structure s = btt(rank = 2, d_in = 12, d_out = 20)"  # rounded sizes: the layer pads


def _layer(routed: bool, strategy: str = "structured", **kwargs):
    if routed:
        return compile_structure(einstruct.load(SPEC))(dtype=torch.float64, **kwargs)
    return compile_structure(einstruct.load(PLAIN), strategy=strategy)(dtype=torch.float64, **kwargs)


def _params(layer, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in layer.named_parameters()}


def _reference(layer, params: dict, x: torch.Tensor) -> torch.Tensor:
    if hasattr(layer, "router"):
        return routed_torch(layer, params, x)
    factors = {k: params[k] for k in layer.factor_axes}
    return x @ dense_torch(layer, factors).T + params["bias"]


LAYERS = [
    pytest.param(False, "structured", id="plain structured"),
    pytest.param(False, "dense", id="plain dense"),
    pytest.param(True, "structured", id="routed"),
]


@pytest.mark.parametrize("routed, strategy", LAYERS)
@pytest.mark.parametrize("save", [True, False], ids=["saved", "recomputed"])
def test_functional_call_uses_the_given_parameters(routed, strategy, save):
    layer = _layer(routed, strategy, save_intermediate=save)
    params = _params(layer, 1)
    x = torch.randn(6, layer.in_features, dtype=torch.float64, requires_grad=True)
    y = functional_call(layer, params, (x,))
    torch.testing.assert_close(y, _reference(layer, params, x))
    assert not torch.allclose(y, layer(x))  # not the module's own parameters
    (g,) = torch.autograd.grad(y.square().sum(), x)
    (g_ref,) = torch.autograd.grad(_reference(layer, params, x).square().sum(), x)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("routed, strategy", LAYERS)
def test_grad_of_a_loss_over_the_parameters(routed, strategy):
    layer = _layer(routed, strategy)
    params = _params(layer, 2)
    x = torch.randn(5, layer.in_features, dtype=torch.float64)
    grads = grad(lambda p: functional_call(layer, p, (x,)).sin().sum())(params)
    expected = grad(lambda p: _reference(layer, p, x).sin().sum())(params)
    assert grads.keys() == expected.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected[name], msg=name)


@pytest.mark.parametrize("routed, strategy", LAYERS)
def test_jacrev_of_the_output(routed, strategy):
    layer = _layer(routed, strategy)
    params = _params(layer, 3)
    x = torch.randn(3, layer.in_features, dtype=torch.float64)
    jac = jacrev(lambda x, p: functional_call(layer, p, (x,)), argnums=(0, 1))(x, params)
    expected = jacrev(lambda x, p: _reference(layer, p, x), argnums=(0, 1))(x, params)
    torch.testing.assert_close(jac[0], expected[0])
    for name in params:
        torch.testing.assert_close(jac[1][name], expected[1][name], msg=name)


@pytest.mark.parametrize("routed, strategy", LAYERS)
def test_vmap_over_inputs_and_per_sample_gradients(routed, strategy):
    layer = _layer(routed, strategy)
    params = _params(layer, 4)
    xs = torch.randn(4, 3, layer.in_features, dtype=torch.float64)
    ys = vmap(lambda x: functional_call(layer, params, (x,)))(xs)
    torch.testing.assert_close(ys, torch.stack([_reference(layer, params, x) for x in xs]))
    per_sample = vmap(grad(lambda p, x: functional_call(layer, p, (x,)).square().sum()), in_dims=(None, 0))
    grads = per_sample(params, xs)
    for i, x in enumerate(xs):
        expected = grad(lambda p, x=x: _reference(layer, p, x).square().sum())(params)
        for name in params:
            torch.testing.assert_close(grads[name][i], expected[name], msg=name)


@pytest.mark.parametrize("routed", [False, True], ids=["plain", "routed"])
def test_vmap_over_an_ensemble_of_layers(routed):
    """The model-ensembling recipe: parameters stacked over models, one vmapped call."""
    layers = [_layer(routed) for _ in range(3)]
    for seed, layer in enumerate(layers):
        with torch.no_grad():
            for name, p in layer.named_parameters():
                p.copy_(_params(layer, 10 + seed)[name])
    params, buffers = stack_module_state(layers)
    x = torch.randn(5, layers[0].in_features, dtype=torch.float64)
    ys = vmap(lambda p, b: functional_call(layers[0], (p, b), (x,)), in_dims=(0, 0))(params, buffers)
    expected = [_reference(layer, dict(layer.named_parameters()), x) for layer in layers]
    torch.testing.assert_close(ys, torch.stack(expected))


def _penalty_gradients(layer, params: dict, x: torch.Tensor, forward) -> dict:
    """Gradients, over the input and every parameter, of a gradient penalty: the
    squared norm of the gradient (input's and parameters', as in gradient-norm
    regularization; WGAN-GP takes the input's alone) of a weighted output sum. The
    backward of a backward; zero for what the penalty does not use."""
    x = x.clone().requires_grad_()
    weights = torch.linspace(-1, 1, len(x) * layer.out_features, dtype=torch.float64)
    y = forward(x) * weights.reshape(len(x), -1)
    wrt = [x, *params.values()]
    first = torch.autograd.grad(y.sum(), wrt, create_graph=True, allow_unused=True, materialize_grads=True)
    penalty = sum(g.square().sum() for g in first)
    grads = torch.autograd.grad(penalty, wrt, allow_unused=True, materialize_grads=True)
    return dict(zip(["x", *params], grads))


@pytest.mark.parametrize("routed, strategy", LAYERS)
@pytest.mark.parametrize("save", [True, False], ids=["saved", "recomputed"])
def test_a_gradient_penalty_differentiates_the_backward(routed, strategy, save):
    """create_graph=True: the backward is differentiated again and reaches the factors
    (the saved operands have no graph: the steps run again)."""
    layer = _layer(routed, strategy, save_intermediate=save)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(_params(layer, 5)[name])
    params = dict(layer.named_parameters())
    x = torch.randn(7, layer.in_features, dtype=torch.float64)
    got = _penalty_gradients(layer, params, x, layer)
    own = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    expected = _penalty_gradients(layer, own, x, lambda x: _reference(layer, own, x))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)
    assert any(got[k].abs().max() > 0 for k in layer.factor_axes)


@pytest.mark.parametrize("routed, strategy", LAYERS)
def test_jacrev_of_grad_over_the_parameters(routed, strategy):
    """A Hessian through torch.func (grad inside jacrev) with the default saved operands."""
    layer = _layer(routed, strategy)
    params = _params(layer, 6)
    x = torch.randn(4, layer.in_features, dtype=torch.float64)
    factors = list(layer.factor_axes)

    def loss(p, forward):
        return forward(p).sin().sum()

    def hessian(forward):
        return jacrev(grad(lambda p: loss(p, forward)))(params)

    got = hessian(lambda p: functional_call(layer, p, (x,)))
    expected = hessian(lambda p: _reference(layer, p, x))
    for a in factors:
        for b in factors:
            torch.testing.assert_close(got[a][b], expected[a][b], msg=f"{a}, {b}")
