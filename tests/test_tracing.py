"""torch.compile, torch.export and torch.jit on generated layers: the same numbers as eager.

Routed layers take their masked path when traced (shapes that do not depend on
the router), so a compiled, exported or jit-traced routed layer is right for
any routing, including routings it never saw while tracing. TorchScript
(``torch.jit.script``) is refused with a message naming the alternatives.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from reference import routed_torch
from test_routed import SPEC

import einstruct
from einstruct.runtime import compile_structure

PLAIN = "structure s = btt(rank = 2, d_in = 12, d_out = 20)"


def _layer(routed: bool, strategy: str = "structured", seed: int = 0):
    spec = SPEC if routed else PLAIN
    layer = compile_structure(einstruct.load(spec), strategy="auto" if routed else strategy)()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return layer


def _inputs(layer, count: int = 3, rows: int = 7) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(rows, layer.in_features, generator=gen) for _ in range(count)]


def _routings(layer, xs) -> set:
    """The distinct top-k choices the router makes on ``xs`` (to show the tests see several)."""
    return {tuple(c) for x in xs for c in (x @ layer.router.weight.T).topk(layer.top_k).indices.tolist()}


def _forward_backward(module, x):
    x = x.detach().requires_grad_()
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return y.detach(), x.grad


LAYERS = [
    pytest.param(False, "structured", id="plain structured"),
    pytest.param(False, "dense", id="plain dense"),
    pytest.param(True, None, id="routed"),
]


@pytest.mark.parametrize("routed, strategy", LAYERS)
def test_compile_fullgraph_matches_eager(routed, strategy):
    """Dynamo traces the whole forward and AOTAutograd the backward (aot_eager: no codegen)."""
    torch._dynamo.reset()
    layer = _layer(routed, strategy)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    xs = _inputs(layer)
    if routed:
        assert len(_routings(layer, xs)) > 3
    for x in xs:
        layer.zero_grad()
        y, g = _forward_backward(compiled, x)
        grads = [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        y_ref, g_ref = _forward_backward(layer, x)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(g, g_ref)
        for p, expected in zip(layer.parameters(), grads, strict=True):
            torch.testing.assert_close(p.grad, expected)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # inductor's own use of torch.jit
def test_inductor_compiles_a_routed_layer_with_the_same_numbers():
    torch._dynamo.reset()
    layer = _layer(True)
    compiled = torch.compile(layer, fullgraph=True)
    x = _inputs(layer, 1, 16)[0]
    y, g = _forward_backward(compiled, x)
    params = {k: v.detach().double().requires_grad_() for k, v in layer.named_parameters()}
    x64 = x.double().requires_grad_()
    y_ref = routed_torch(layer, params, x64)
    (y_ref * torch.linspace(-1, 1, y_ref.numel(), dtype=torch.float64).reshape(y_ref.shape)).sum().backward()
    torch.testing.assert_close(y.double(), y_ref.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g.double(), x64.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("routed, strategy", LAYERS)
def test_exported_program_matches_eager_for_any_batch(routed, strategy):
    layer = _layer(routed, strategy)
    x = _inputs(layer, 1)[0]
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(layer, (x,), dynamic_shapes=({0: batch},))
    xs = _inputs(layer, 3, rows=11)
    if routed:
        assert len(_routings(layer, xs)) > 3
    for x in xs:
        torch.testing.assert_close(program.module()(x), layer(x))
    if routed:
        assert layer.aux_loss is not None  # export leaves the attribute as the last eager forward set it


@pytest.mark.filterwarnings(
    "ignore:`torch.jit:DeprecationWarning"
)  # torch deprecates jit in favour of export
@pytest.mark.parametrize("routed, strategy", LAYERS)
def test_jit_trace_stays_right_when_the_router_changes(routed, strategy):
    layer = _layer(routed, strategy)
    x = _inputs(layer, 1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # nothing the trace would freeze
        traced = torch.jit.trace(layer, (x,))
    with torch.no_grad():
        for p in layer.parameters():  # the traced module shares these parameters
            p.mul_(-1.5)
    for x in _inputs(layer, 3):
        torch.testing.assert_close(traced(x), layer(x))


@pytest.mark.parametrize("routed", [False, True], ids=["plain", "routed"])
def test_torchscript_is_refused_with_the_alternatives(routed):
    layer = _layer(routed)
    for target in (layer, torch.nn.Sequential(torch.nn.Identity(), layer)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch deprecates TorchScript itself
            with pytest.raises(
                RuntimeError, match=r"TorchScript \(torch.jit.script\).*torch.compile, torch.export"
            ):
                torch.jit.script(target)
