"""replace_linear and param_groups on small models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import einstruct
from einstruct.errors import ParameterError


def _mlp(width: int = 64) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
    )


def test_replace_keeps_shape_and_trains():
    torch.manual_seed(0)
    model = _mlp()
    x, target = torch.randn(256, 8), torch.randn(256, 1)
    bias = model[2].bias.detach().clone()
    with pytest.warns(UserWarning, match="weights cannot be copied"):
        names = einstruct.replace_linear(model, "structure b = btt(rank = 2, d = 64)", select=["2"])
    assert names == ["2"]
    assert not isinstance(model[2], nn.Linear) and model[2].in_features == 64
    torch.testing.assert_close(model[2].bias.detach(), bias)  # the bias is carried over
    assert model(x).shape == (256, 1)
    groups = einstruct.param_groups(model, lr=1e-2)
    lrs = sorted({g["lr"] for g in groups})
    # BTT d=64 rank 2 (g=a=f=e=8, r=2): A sums a (fan_in 8) -> lr_mult 64/8/2 factors;
    # B sums g and r (fan_in 16) -> 64/16/2; everything else keeps lr (width 64 = the base width)
    assert lrs == pytest.approx([1e-2, 1e-2 * 2, 1e-2 * 4])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = torch.optim.Adam(groups)
    first = None
    for _ in range(60):
        loss = nn.functional.mse_loss(model(x), target)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_replace_binds_d_in_and_d_out_and_pads():
    model = nn.Sequential(nn.Linear(100, 300))
    with pytest.warns(UserWarning):
        einstruct.replace_linear(model, "structure m = monarch(d_in = 1, d_out = 1)")
    layer = model[0]
    assert (layer.in_features, layer.out_features) == (100, 300)
    x = torch.randn(5, 100)
    torch.testing.assert_close(model(x), x @ layer.to_dense().T + layer.bias)


def test_replace_selects_by_glob_and_refuses_mismatched_width():
    model = _mlp()
    with pytest.warns(UserWarning):
        names = einstruct.replace_linear(
            model, "structure l = low_rank(rank = 4, d_in = 1, d_out = 1)", select="[02]"
        )
    assert names == ["0", "2"]
    with pytest.raises(ParameterError, match="maps 64 -> 1 features"):
        einstruct.replace_linear(_mlp(), "structure b = btt(d = 64)", select=["4"])
