"""Compiled layers equal their dense matrices (float64), for random structures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference import dense_from_factors, dense_torch
from strategies import structure_sources
from torch.utils.flop_counter import FlopCounterMode

import einstruct
from einstruct.analysis import analyze_structure
from einstruct.language.catalog import CATALOG
from einstruct.runtime import compile_structure


def _layer(source: str, batch: int = 2048, seed: int = 0, **kwargs):
    structure = einstruct.load(source)
    layer = compile_structure(structure, batch=batch)(dtype=torch.float64, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return structure, layer


STRATEGY = st.sampled_from(["structured", "dense"])


@given(
    source=structure_sources(),
    batch=st.sampled_from([1, 5, 2048]),
    lead=st.sampled_from([(), (3,), (2, 3)]),
    strategy=STRATEGY,
)
def test_forward_equals_dense(source, batch, lead, strategy):
    _, layer = _layer(source, batch, strategy=strategy)
    x = torch.randn(*lead, layer.in_features, dtype=torch.float64)
    W = layer.to_dense()
    assert W.shape == (layer.out_features, layer.in_features)
    torch.testing.assert_close(layer(x), x @ W.T + layer.bias)
    np.testing.assert_allclose(W.detach().numpy(), dense_from_factors(layer), rtol=1e-10, atol=1e-10)


@given(source=structure_sources(), strategy=STRATEGY, save=st.booleans())
def test_gradients_equal_dense_reference(source, strategy, save):
    _, layer = _layer(source, strategy=strategy, save_intermediate=save)
    x = torch.randn(4, layer.in_features, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, layer.out_features, dtype=torch.float64)
    (layer(x) * g).sum().backward()
    factors = {n: getattr(layer, n).detach().clone().requires_grad_() for n in layer.factor_axes}
    xr = x.detach().clone().requires_grad_()
    (((xr @ dense_torch(layer, factors).T) + layer.bias.detach()) * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    for name, ref in factors.items():
        torch.testing.assert_close(getattr(layer, name).grad, ref.grad)


@given(source=structure_sources(max_size=3, max_indices=4), strategy=STRATEGY, save=st.booleans())
def test_gradcheck(source, strategy, save):
    _, layer = _layer(source, strategy=strategy, save_intermediate=save)
    x = torch.randn(2, layer.in_features, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())

    def f(x, *ps):
        with torch.no_grad():
            for p, v in zip(params, ps):
                p.copy_(v)
        return torch.func.functional_call(
            layer, {n: v for (n, _), v in zip(layer.named_parameters(), ps)}, (x,)
        )

    inputs = (x, *(p.detach().clone().requires_grad_() for p in params))
    assert torch.autograd.gradcheck(f, inputs)


@given(source=structure_sources(), batch=st.sampled_from([1, 7, 64]))
def test_flops_match_torch_counter(source, batch):
    structure, layer = _layer(source, batch, strategy="structured")
    analysis = analyze_structure(structure, batch=batch)
    assert sum(p.numel() for n, p in layer.named_parameters() if n != "bias") == analysis.params
    x = torch.randn(batch, layer.in_features, dtype=torch.float64, requires_grad=True)
    with FlopCounterMode(display=False) as fwd:
        layer(x)
    assert fwd.get_total_flops() == analysis.counts.flops * batch
    with FlopCounterMode(display=False) as both:
        layer(x).sum().backward()
    assert both.get_total_flops() == analysis.counts.train_flops * batch


@pytest.mark.parametrize("path", sorted(p.name for p in (__import__("conftest").EXAMPLES.glob("*.ein"))))
def test_init_std_matches_mup(path):
    from conftest import EXAMPLES

    for structure in einstruct.load_all(EXAMPLES / path):
        if structure.route is not None:
            continue
        analysis = analyze_structure(structure)
        layer = compile_structure(structure)()
        for f in analysis.factors:
            w = getattr(layer, f.name).detach().double()
            n = w.numel()
            expected = float(f.fans.init_std)
            # the sample std of n normals is within ~4 standard errors (1/sqrt(2n)) of sigma
            assert abs(w.std().item() - expected) <= 4 * expected / (2 * n) ** 0.5 + 1e-12, f.name


def test_zero_init_last_and_normalize():
    _, layer = _layer("structure b = btt(rank = 2, d = 64)")
    fresh = compile_structure(einstruct.load("structure b = btt(rank = 2, d = 64)"))(zero_init_last=True)
    # the last factor applied (B, as written), whatever order the planner evaluates in
    assert torch.count_nonzero(fresh.B) == 0 and torch.count_nonzero(fresh.A) > 0
    # normalize divides each factor by max(1, rms / init_std): big factors shrink to the init scale
    norm = compile_structure(einstruct.load("structure b = btt(rank = 2, d = 64)"))(
        normalize=True, dtype=torch.float64
    )
    with torch.no_grad():
        for name in norm.factor_axes:
            getattr(norm, name).mul_(10.0)
    W = norm.to_dense()
    factors = {}
    for name in norm.factor_axes:
        w = getattr(norm, name).detach()
        rms = w.pow(2).mean().sqrt()
        factors[name] = w / max(1.0, (rms / norm.init_std[name]).item())
    torch.testing.assert_close(W, dense_torch(norm, factors))


FORMS = [(form, "") for form in sorted(CATALOG)] + [
    (form, variant) for form in sorted(CATALOG) for variant in sorted(CATALOG[form].variants)
]


@pytest.mark.parametrize("form, variant", FORMS, ids=lambda v: v or None)
@pytest.mark.parametrize("widths", ["d = 16", "d_in = 12, d_out = 20"])
def test_every_catalog_form_equals_its_dense_matrix(form, variant, widths):
    """A form (or variant) added to the catalog is compiled and checked here without further work."""
    extra = {"rank": "rank = 2, ", "blocks": "blocks = 2, " if variant else "blocks = 4, "}
    chosen = CATALOG[form].variants[variant] if variant else CATALOG[form]
    args = "".join(extra[p] for p in chosen.parameters)
    _, layer = _layer(f"structure s = {form}({args}{widths})", batch=7)
    x = torch.randn(7, layer.in_features, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    W = torch.tensor(dense_from_factors(layer))
    torch.testing.assert_close(y, x @ W.T + layer.bias)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    torch.testing.assert_close(g, 2 * (x @ W.T + layer.bias) @ W)
