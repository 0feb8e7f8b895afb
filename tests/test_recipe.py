"""The papers' training recipe on generated layers: normalization, gains, BTT-MoE scale, muP groups."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from reference import dense_torch
from test_mup import papers_cores, papers_numbers
from torch import nn

import einstruct
from einstruct.errors import ParameterError


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_normalize_with_zero_init_last_trains_with_finite_gradients(dtype):
    """The papers' GPT recipe: the all-zero last factor must get a finite, nonzero gradient."""
    torch.manual_seed(0)
    Layer = einstruct.compile("structure b = btt(rank = 2, d = 64)")
    model = nn.Sequential(Layer(normalize=True, zero_init_last=True, gain=True), nn.GELU(), nn.Linear(64, 1))
    model.to(dtype)
    opt = torch.optim.Adam(einstruct.param_groups(model, lr=1e-2))
    x, target = torch.randn(128, 64, dtype=dtype), torch.randn(128, 1, dtype=dtype)
    for step in range(4):
        loss = nn.functional.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert torch.isfinite(p.grad).all(), (step, name)
        if step == 0:
            assert model[0].B.grad.abs().sum() > 0  # the zero factor learns
        opt.step()
        assert torch.isfinite(loss)


def test_gains_scale_the_normalized_factors():
    Layer = einstruct.compile("structure b = btt(rank = 2, d = 16)")
    with pytest.raises(ValueError, match="gain=True needs normalize=True"):
        Layer(gain=True)
    layer = Layer(normalize=True, gain=True, dtype=torch.float64)
    assert layer.gain.tolist() == [1.0, 1.0] and layer.lr_multipliers()["gain"] == 1.0
    with torch.no_grad():
        layer.A.mul_(5.0)  # rms 5 x init: normalized back to the init scale
        layer.gain.copy_(torch.tensor([2.0, 0.5], dtype=torch.float64))
    factors = {}
    for k, name in enumerate(layer.factor_axes):
        w = getattr(layer, name).detach()
        rms = math.sqrt(w.pow(2).mean().item() + 1e-8)
        factors[name] = [2.0, 0.5][k] * w / max(1.0, rms / layer.init_std[name])
    torch.testing.assert_close(layer.to_dense(), dense_torch(layer, factors))
    groups = layer.param_groups(1e-3, weight_decay=0.1)
    gain_group = next(g for g in groups if g["params"][0] is layer.gain)
    assert (gain_group["lr"], gain_group["weight_decay"]) == (1e-3, 0.0)


@pytest.mark.parametrize("normalize", [False, True])
def test_a_fresh_btt_moe_layer_has_the_rank_one_output_scale(normalize):
    """Each expert maps unit-rms input to unit rms (spectral init, fan_in = fan_out); the zero
    router gives the top 2 of 8 experts gate 1/2 each, so the output rms is sqrt(2 / 4)."""
    torch.manual_seed(0)
    layer = einstruct.compile("examples/btt_moe.ein")(bias=False, normalize=normalize)
    with torch.no_grad():
        y = layer(torch.randn(512, 1024))
    assert y.pow(2).mean().sqrt().item() == pytest.approx(math.sqrt(2) / 2, rel=0.05)


def _model(width: int, spec: str) -> nn.Module:
    model = nn.Sequential()
    model.add_module("embed", nn.Embedding(100, 8))
    model.add_module("inp", nn.Linear(8, width))
    model.add_module("up", nn.Linear(width, 4 * width))
    model.add_module("down", nn.Linear(4 * width, width))
    model.add_module("norm", nn.LayerNorm(width))
    model.add_module("head", nn.Linear(width, 1))
    einstruct.replace_linear(model, spec, select=["up"], init="random")
    return model


def _lr_of(groups: list[dict]) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


def test_param_groups_are_width_muP_around_structured_muP():
    width, base, lr, wd = 256, 64, 1e-2, 0.1
    model = _model(width, "structure b = btt(rank = 2, d_in = 1, d_out = 1)")
    got = _lr_of(einstruct.param_groups(model, lr, wd, base_width=base))
    assert len(got) == len(list(model.parameters()))  # each parameter exactly once
    up = model.up
    # the structured layer: the papers' structure multiplier times the dense layer's base / d_in
    _, adam, _ = papers_numbers(papers_cores("btt", width, 4 * width, rank=2), width, 4 * width)
    assert got[id(up.A)] == pytest.approx((lr * adam[0] * base / width, wd))
    assert got[id(up.B)] == pytest.approx((lr * adam[1] * base / width, wd))
    assert got[id(up.bias)] == (lr, 0.0)
    # 4d -> d: the model's width d, as the papers' base-model rule (not its fan-in 4d)
    assert got[id(model.down.weight)] == pytest.approx((lr * base / width, wd))
    assert got[id(model.head.weight)] == pytest.approx((lr * base / width, wd))
    # input layer (8 features, fan-in fixed by the data) and embedding keep lr
    assert got[id(model.inp.weight)] == (lr, wd) and got[id(model.embed.weight)] == (lr, wd)
    for p in (model.inp.bias, model.down.bias, model.norm.weight, model.norm.bias, model.head.bias):
        assert got[id(p)] == (lr, 0.0)
    # `fixed` names input layers explicitly; base_width=None turns width scaling off
    fixed = _lr_of(einstruct.param_groups(model, lr, wd, base_width=base, fixed=["head"]))
    assert fixed[id(model.head.weight)] == (lr, wd)
    off = _lr_of(einstruct.param_groups(model, lr, wd, base_width=None))
    assert off[id(model.down.weight)] == (lr, wd) and off[id(up.A)] == pytest.approx((lr * adam[0], wd))
    with pytest.raises(ParameterError, match="base_width must be a positive integer"):
        einstruct.param_groups(model, lr, base_width=0)


def test_the_default_rule_is_the_papers_base_model_rule_on_an_mlp():
    """Without base=, every parameter gets the rate the papers' rule (base=, the same model at
    the base width) gives it: d -> 4d, 4d -> d, the read-out and the input layer alike."""
    spec = "structure b = btt(rank = 2, d_in = 1, d_out = 1)"
    for width in (64, 144, 256):
        model, base = _model(width, spec), _model(64, spec)
        by_default = _lr_of(einstruct.param_groups(model, 1e-2, 0.1))
        papers = _lr_of(einstruct.param_groups(model, 1e-2, 0.1, base=base))
        assert by_default == pytest.approx(papers)


def test_the_router_scales_with_the_width_like_a_dense_layer():
    model = nn.Sequential(nn.Linear(1024, 1024))
    einstruct.replace_linear(model, "examples/btt_moe.ein", init="random")
    got = _lr_of(einstruct.param_groups(model, 1.0))
    assert got[id(model[0].router.weight)] == (64 / 1024, 0.0)
    assert got[id(model[0].A)][0] == pytest.approx(16 * 64 / 1024)
    # 128 experts: the router is 1024 -> 128, its fan-in still the width (not its narrower side)
    many = nn.Sequential(nn.Linear(1024, 1024))
    spec = Path("examples/btt_moe.ein").read_text().replace("experts = 8", "experts = 128")
    einstruct.replace_linear(many, spec, init="random")
    assert _lr_of(einstruct.param_groups(many, 1.0))[id(many[0].router.weight)] == (64 / 1024, 0.0)


def _butterfly(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Monarch as the papers (and Dao et al.'s Fly) compute it: block-diagonal w1 (k, q, p),
    the k x q intermediate read as r x l, block-diagonal w2 (l, s, r), output l x s."""
    n = x.shape[0]
    k, q, p = w1.shape
    blocks2, s, r = w2.shape
    out1 = torch.bmm(x.reshape(n, k, p).transpose(0, 1), w1.transpose(1, 2))  # (k, n, q)
    out1 = out1.transpose(0, 1).reshape(n, r, blocks2).transpose(1, 2).transpose(0, 1)  # (l, n, r)
    out2 = torch.bmm(out1, w2.transpose(1, 2))  # (l, n, s)
    return out2.permute(1, 0, 2).reshape(n, blocks2 * s)


@pytest.mark.parametrize("d_in, d_out", [(64, 64), (48, 192), (192, 48)])
def test_monarch_with_blocks_is_the_papers_monarch(d_in, d_out):
    b = 4
    layer = einstruct.compile(f"structure m = monarch(blocks = {b}, d_in = {d_in}, d_out = {d_out})")(
        bias=False, dtype=torch.float64
    )
    torch.nn.init.normal_(layer.A)
    torch.nn.init.normal_(layer.B)
    sizes = layer.index_sizes
    in_blk, out_blk = d_in // b, d_out // b
    mid = min(in_blk, out_blk)
    assert (sizes["g"], sizes["a"], sizes["f"], sizes["e"], sizes["r"] * b) == (b, in_blk, b, out_blk, mid)
    # w1[k, q, p] with q = (r, f); w2[l, s, r'] with r' = (g, r)
    A = layer.A.permute(*(layer.factor_axes["A"].index(i) for i in "grfa")).reshape(b, mid, in_blk)
    B = layer.B.permute(*(layer.factor_axes["B"].index(i) for i in "fegr")).reshape(b, out_blk, mid)
    x = torch.randn(5, d_in, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _butterfly(x, A.detach(), B.detach()))


def test_param_groups_with_a_base_model_is_the_papers_rule():
    """cola_parameterize: a matrix's multiplier is its fan-in in the base model over its fan-in."""
    width, base_width, lr = 256, 64, 1e-2
    model = _model(width, "structure b = btt(rank = 2, d_in = 1, d_out = 1)")
    base = _model(base_width, "structure b = btt(rank = 2, d_in = 1, d_out = 1)")
    got = _lr_of(einstruct.param_groups(model, lr, base=base))
    _, adam, _ = papers_numbers(papers_cores("btt", width, 4 * width, rank=2), width, 4 * width)
    assert got[id(model.up.A)][0] == pytest.approx(lr * adam[0] * base_width / width)
    assert got[id(model.down.weight)][0] == pytest.approx(lr * (4 * base_width) / (4 * width))
    assert got[id(model.head.weight)][0] == pytest.approx(lr * base_width / width)
    assert got[id(model.inp.weight)][0] == lr  # 8 inputs in both models
    with pytest.raises(ParameterError, match="layer 'extra' has no counterpart in the base model"):
        model.add_module("extra", nn.Linear(width, width))
        einstruct.param_groups(model, lr, base=base)


@pytest.mark.parametrize("head_first", [True, False], ids=["head registered first", "embedding first"])
def test_a_tied_embedding_keeps_lr_whatever_the_module_order(head_first):
    """The weight an embedding shares with a head gets the embedding's lr (a tied head's
    width scaling would shrink it 4x here); it used to depend on which module came first."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if head_first:
                self.head = nn.Linear(256, 1000, bias=False)
                self.embed = nn.Embedding(1000, 256)
            else:
                self.embed = nn.Embedding(1000, 256)
                self.head = nn.Linear(256, 1000, bias=False)
            self.head.weight = self.embed.weight

    net = Net()
    groups = einstruct.param_groups(net, lr=1e-3, weight_decay=0.1)
    assert [len(g["params"]) for g in groups] == [1]
    assert groups[0]["params"][0] is net.embed.weight and groups[0]["lr"] == 1e-3
