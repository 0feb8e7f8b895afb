"""Mixed precision: generated layers under torch.autocast and in bfloat16, against float64 references.

The tolerances are the ones docs/training.md documents: under autocast to
bfloat16 (8 significant bits, so each rounding is within 2^-9 relative) the
output is within ``BF16_TOL`` of the float64 reference, relative to its
largest entry, and every gradient within ``BF16_TOL`` of the float64 gradient
in relative Frobenius norm.
"""

from __future__ import annotations

import pytest
import torch
from reference import dense_torch, routed_torch
from test_routed import SPEC

import einstruct
from einstruct.language.catalog import CATALOG
from einstruct.runtime import compile_structure

#: The documented bound for bfloat16 (autocast or a model in bfloat16), relative.
BF16_TOL = 2**-5

FORMS = sorted(CATALOG)
ARGS = {"rank": "rank = 2, ", "blocks": "blocks = 4, "}


def _plain(form: str, strategy: str, dtype=torch.float32):
    args = "".join(ARGS[p] for p in CATALOG[form].parameters)
    structure = einstruct.load(f"structure s = {form}({args}d_in = 48, d_out = 80)")
    layer = compile_structure(structure, strategy=strategy)(dtype=dtype)
    _randomize(layer)
    return layer


def _routed(sparse: bool, dtype=torch.float32):
    layer = compile_structure(einstruct.load(SPEC))(dtype=dtype, sparse_experts=sparse)
    _randomize(layer)
    return layer


def _randomize(layer) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)


def _reference(layer, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Output and gradients of ``sum(y * weights)`` in float64, from the layer's parameters."""
    params = {k: v.detach().double().requires_grad_() for k, v in layer.named_parameters()}
    x = x.detach().double().requires_grad_()
    if hasattr(layer, "router"):
        y = routed_torch(layer, params, x)
    else:
        factors = {k: params[k] for k in layer.factor_axes}
        y = x @ dense_torch(layer, factors).T + params["bias"]
    (y * _weights(y)).sum().backward()
    return y.detach(), {"x": x.grad, **{k: v.grad for k, v in params.items()}}


def _weights(y: torch.Tensor) -> torch.Tensor:
    return torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)


def _check(y, grads, y_ref, grads_ref) -> None:
    error = (y.double() - y_ref).abs().max() / y_ref.abs().max()
    assert error <= BF16_TOL, f"forward relative error {error:.2e}"
    for name, g in grads.items():
        rel = (g.double() - grads_ref[name]).norm() / grads_ref[name].norm()
        assert rel <= BF16_TOL, f"gradient of {name}: relative error {rel:.2e}"


def _run(layer, x, autocast: bool):
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    (y.double() * _weights(y)).sum().backward()
    grads = {"x": x.grad, **{k: v.grad for k, v in layer.named_parameters()}}
    return y, grads


@pytest.mark.parametrize("strategy", ["structured", "dense"])
@pytest.mark.parametrize("form", FORMS)
def test_autocast_forward_and_backward_match_float64(form, strategy):
    layer = _plain(form, strategy)
    x = torch.randn(9, 48)
    y, grads = _run(layer, x, autocast=True)
    assert y.dtype == torch.bfloat16  # as nn.Linear under autocast
    assert all(g.dtype == torch.float32 for g in grads.values())  # gradients in the leaves' dtype
    _check(y, grads, *_reference(layer, x))


@pytest.mark.parametrize("sparse", [True, False], ids=["top-k experts", "every expert, masked"])
def test_routed_autocast_forward_and_backward_match_float64(sparse):
    layer = _routed(sparse)
    # a fixed input: for about 1 in 80 random ones two router logits are so close that
    # bfloat16 picks another expert than the float64 reference (a different output, not
    # an error of the layer)
    x = torch.randn(11, layer.in_features, generator=torch.Generator().manual_seed(1))
    y, grads = _run(layer, x, autocast=True)
    assert y.dtype == torch.bfloat16
    _check(y, grads, *_reference(layer, x))


def _matmul_dtypes(fn) -> list[torch.dtype]:
    """The dtypes of every mm/bmm that ``fn`` runs (read by a dispatch mode, below autocast)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[torch.dtype] = []
    matmuls = {torch.ops.aten.mm.default, torch.ops.aten.bmm.default}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in matmuls:
                seen.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


@pytest.mark.parametrize("routed", [False, True], ids=["plain", "routed"])
def test_the_backward_runs_under_the_forwards_autocast_state(routed):
    """As torch.amp.custom_bwd: a forward under autocast has a bfloat16 backward wherever
    backward is called; a forward outside autocast has a float32 backward, even when
    backward is called inside an autocast region."""
    layer = _routed(True) if routed else _plain("btt", "structured")
    x = torch.randn(9, layer.in_features, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    dtypes = _matmul_dtypes(lambda: y.float().sum().backward())
    assert dtypes and set(dtypes) == {torch.bfloat16}
    # (the router's own backward, an nn.Linear's, follows the region it is called in)
    layer.requires_grad_(False)
    layer.get_parameter(next(iter(layer.factor_axes))).requires_grad_(True)
    y = layer(x.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dtypes = _matmul_dtypes(lambda: y.sum().backward())
    assert dtypes and set(dtypes) == {torch.float32}


def test_a_model_in_bfloat16_trains_end_to_end():
    """model.to(torch.bfloat16): bfloat16 outputs and gradients, within the bound of float64."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16))
    einstruct.replace_linear(model, "structure b = btt(d = 16, rank = 2)", select=["0"])
    model.append(_routed(True))
    model.to(torch.bfloat16)
    x = torch.randn(10, 16)
    y = model(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters())
    reference = [p.grad.double() for p in model.parameters()]
    model.double().zero_grad()
    y_ref = model(x.double())
    y_ref.square().sum().backward()
    assert (y.double() - y_ref).abs().max() <= BF16_TOL * y_ref.abs().max()
    for p, g in zip(model.parameters(), reference, strict=True):
        assert (g - p.grad).norm() <= BF16_TOL * p.grad.norm()
