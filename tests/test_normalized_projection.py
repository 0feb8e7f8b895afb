"""``from_dense`` on a normalized layer computes the matrix it projected.

Its revival noise (a way in for training where the projection left rank slices at
zero) used to be added after the factors' scale and gains were computed, so the
layer no longer computed the projected W. The reference is the dense W passed in.
"""

from __future__ import annotations

import pytest
import torch

import einstruct


def _zero_slices(layer, index: str) -> int:
    """How many values of ``index`` every factor holding it is zero at."""
    dead = None
    for name, axes in layer.factor_axes.items():
        if index not in axes:
            continue
        tensor = getattr(layer, name).detach()
        dim = axes.index(index)
        others = [d for d in range(tensor.dim()) if d != dim]
        zero = tensor.abs().amax(dim=others) == 0
        dead = zero if dead is None else dead & zero
    return int(dead.sum())


@pytest.mark.parametrize(
    ("spec", "scale", "gain"),
    [
        # rank 8 in 4 x 4 blocks: the projection leaves half of each rank axis at zero
        ("structure b = btt(d = 16, rank = 8)", 0.3, True),  # beyond reach without gains
        ("structure b = btt(d = 16, rank = 8)", 0.01, True),
        ("structure b = btt(d = 16, rank = 8)", 0.01, False),
        ("structure l = low_rank(d = 4, rank = 8)", 0.3, True),
        ("structure l = low_rank(d = 4, rank = 8)", 0.3, False),
        ("structure l = low_rank(d = 4, rank = 8)", 0.01, False),
    ],
)
def test_a_normalized_layer_computes_the_projected_matrix(spec, scale, gain):
    """With normalize=True (and gain, or a W the normalization reaches) from_dense's
    result computes W itself: forward and to_dense against the W passed in."""
    layer_class = einstruct.compile(spec)
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(layer_class.out_features, layer_class.in_features, generator=gen, dtype=torch.float64)
    W = W * scale
    for seed in range(4):  # the revival noise is random: several draws
        torch.manual_seed(seed)
        layer = layer_class(dtype=torch.float64, normalize=True, gain=gain)
        error = layer.from_dense(W)
        assert error < 1e-6, error
        torch.testing.assert_close(layer.to_dense(), W, rtol=1e-6, atol=1e-7)
        x = torch.randn(5, layer.in_features, dtype=torch.float64)
        torch.testing.assert_close(layer(x), x @ W.T, rtol=1e-6, atol=1e-7)
        # training still has a way into the rank components W does not use
        assert _zero_slices(layer, "r") == 0


def test_a_normalized_layer_beyond_reach_loses_no_more_than_the_cap():
    """Without gains, a W beyond the normalization's reach is scaled down by the cap
    only: the direction is still W's (cosine 1) and the noise costs nothing extra."""
    layer_class = einstruct.compile("structure b = btt(d = 16, rank = 8)")
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(16, 16, generator=gen, dtype=torch.float64) * 0.3
    torch.manual_seed(0)
    layer = layer_class(dtype=torch.float64, normalize=True)
    layer.from_dense(W)
    got = layer.to_dense().detach()
    cosine = float((got * W).sum() / (got.norm() * W.norm()))
    assert cosine > 1 - 1e-9, cosine
    # every factor within the normalization's reach (up to the 1e-3 init_std of noise
    # kept at the cap): normalizing changes W by less than 1e-6
    for name in layer.factor_axes:
        rms = float(getattr(layer, name).detach().pow(2).mean().sqrt())
        assert rms <= layer.init_std[name] * (1 + 1e-6), (name, rms)
    assert _zero_slices(layer, "r") == 0
