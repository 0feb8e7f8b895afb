"""replace_linear on small models: adapters, per-layer widths, all or nothing, tied weights,
selection, options and the report. (Hugging Face models: tests/test_transformers.py.)

The reference for a converted layer is the original layer's own output: a
weight the structure represents exactly must give the same function after
projection (float64).
"""

from __future__ import annotations

import json

import pytest
import torch
from models import Block, Conv1D
from reference import dense_from_factors
from torch import nn

import einstruct
from einstruct.errors import EinstructError, ParameterError
from einstruct.runtime import compile_structure


def _mlp(width: int = 64) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
    )


def _representable(spec: str, module: nn.Module, seed: int) -> None:
    """Give ``module`` (Linear or Conv1D) a weight the structure represents exactly."""
    torch.manual_seed(seed)
    d_in, d_out = (
        (module.nx, module.nf) if isinstance(module, Conv1D) else (module.in_features, module.out_features)
    )
    source = einstruct.compile(spec, d_in=d_in, d_out=d_out)(dtype=torch.float64)
    w = torch.from_numpy(dense_from_factors(source))
    with torch.no_grad():
        module.weight.copy_(w.T if isinstance(module, Conv1D) else w)
        module.bias.normal_()


def _same_model(a: nn.Module, b_state: dict, b_types: dict) -> None:
    assert {n: type(m) for n, m in a.named_modules()} == b_types
    for k, v in a.state_dict().items():
        assert torch.equal(v, b_state[k]), k


def test_an_exactly_representable_weight_keeps_the_function():
    spec = "structure b = btt(rank = 2)"
    torch.manual_seed(0)
    model = Block().double()
    for k, name in enumerate(("up", "down", "mix")):
        _representable(spec, getattr(model, name), k)
    ids = torch.randint(0, 11, (3, 5))
    before = model(ids)
    report = einstruct.replace_linear(model, spec)
    assert report.names == ["up", "down", "mix"]
    assert [layer.replaces for layer in report.layers] == ["conv1d", "linear", "linear"]
    assert [(layer.in_features, layer.out_features) for layer in report.layers] == [
        (16, 64),
        (64, 16),
        (16, 16),
    ]
    assert all(layer.error < 1e-12 and layer.projection == "exact" for layer in report.layers)
    torch.testing.assert_close(model(ids), before, rtol=1e-10, atol=1e-10)
    assert [s.name for s in report.skipped] == ["head"] and "tied to embed.weight" in report.skipped[0].reason
    assert model.head.weight is model.embed.weight


def test_all_or_nothing_when_a_layer_fails_midway():
    model = Block()
    model.mix = nn.Linear(16, 12)  # 8 blocks divide 16 and 64 (up, down), not 12
    state = {k: v.clone() for k, v in model.state_dict().items()}
    types = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(EinstructError, match=r"layer 'mix' \(16 -> 12\)"):
        einstruct.replace_linear(model, "structure k = block_diagonal(blocks = 8)")
    _same_model(model, state, types)
    with pytest.raises(
        ParameterError, match=r"layer 'up' \(16 -> 64\): a rectangular layer, but the spec has one width d"
    ):
        einstruct.replace_linear(model, "structure b = btt(d = 16)")
    _same_model(model, state, types)


def test_a_failure_during_projection_leaves_the_model_untouched(monkeypatch):
    model = Block()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    types = {n: type(m) for n, m in model.named_modules()}
    # the third layer (mix, 16 -> 16) fails to project, after up and down were built
    cls = compile_structure(einstruct.load("structure l = low_rank(rank = 2)", d_in=16, d_out=16))

    def failing(self, weight, bias=None, max_iter=100):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(cls, "from_dense", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        einstruct.replace_linear(model, "structure l = low_rank(rank = 2)")
    _same_model(model, state, types)


def test_per_layer_widths_from_one_spec_and_explicit_free_widths():
    model = Block()
    spec = (
        "structure l(d_in, d_out, rank = 3):\n"
        "    y[o] = x[i] * U[i, r] * V[r, o]\n"
        "    where i = d_in, o = d_out, r = rank\n"
    )
    report = einstruct.replace_linear(model, spec, init="random")
    assert [(m.in_features, m.out_features) for m in (model.up, model.down, model.mix)] == [
        (16, 64),
        (64, 16),
        (16, 16),
    ]
    assert all(layer.error is None for layer in report.layers)
    fixed = _mlp(64)
    einstruct.replace_linear(
        fixed, "structure s:\n    y[o] = x[i] * W[i, o]\n    where i = o = 64\n", select="2"
    )
    with pytest.raises(ParameterError, match="declares no width parameter"):
        einstruct.replace_linear(_mlp(64), "structure s:\n    y[o] = x[i] * W[i, o]\n    where i = o = 64\n")
    with pytest.raises(ParameterError, match="do not pass d_in"):
        einstruct.replace_linear(_mlp(64), "structure b = btt()", d_in=64)


def test_tied_weights_are_skipped_unless_asked():
    model = Block()
    report = einstruct.replace_linear(model, "structure b = btt()", select=["head", "mix"])
    assert report.names == ["mix"] and [s.name for s in report.skipped] == ["head"]
    with pytest.raises(ParameterError, match=r"no layer to replace \(skipped head: its weight is tied"):
        einstruct.replace_linear(Block(), "structure b = btt()", select=["head"])
    untied = Block()
    embed = untied.embed.weight.detach().clone()
    report = einstruct.replace_linear(untied, "structure b = btt()", select=["head"], skip_tied=False)
    assert report.names == ["head"] and not report.skipped
    assert torch.equal(untied.embed.weight, embed)  # the embedding keeps its weight


def test_select_and_exclude_are_checked():
    model = Block()
    with pytest.raises(ParameterError, match="select names 'mixx'.*") as info:
        einstruct.replace_linear(model, "structure b = btt()", select=["mixx"])
    assert "did you mean mix" in info.value.hint
    with pytest.raises(ParameterError, match="select pattern 'blocks.*' matches no layer"):
        einstruct.replace_linear(model, "structure b = btt()", select="blocks.*")
    with pytest.raises(ParameterError, match=r"exclude pattern 'nope\*' matches no module"):
        einstruct.replace_linear(model, "structure b = btt()", exclude="nope*")
    with pytest.raises(ParameterError, match="select names 'embed', a Embedding: not a linear layer"):
        einstruct.replace_linear(model, "structure b = btt()", select=["embed"])
    with pytest.raises(ParameterError, match="select must be layer names, a glob or a callable"):
        einstruct.replace_linear(model, "structure b = btt()", select=3)
    with pytest.raises(ParameterError, match="select must be .* got int 1"):
        einstruct.replace_linear(model, "structure b = btt()", select=["mix", 1])
    with pytest.raises(ParameterError, match="needs a torch.nn.Module"):
        einstruct.replace_linear("model", "structure b = btt()")
    with pytest.raises(ParameterError, match="the model itself is a linear layer"):
        einstruct.replace_linear(nn.Linear(4, 4), "structure b = btt()")
    report = einstruct.replace_linear(
        model, "structure b = btt()", exclude=["up"], select=lambda n, m: n != "down"
    )
    assert report.names == ["mix"]


def test_options_pass_through_and_conflicts_are_refused():
    model = Block()
    einstruct.replace_linear(
        model, "structure b = btt()", select=["mix"], normalize=True, gain=True, strategy="structured"
    )
    assert model.mix.normalize and model.mix.gain is not None and model.mix.strategy == "structured"
    zero = Block()
    einstruct.replace_linear(zero, "structure b = btt()", select=["mix"], init="random", zero_init_last=True)
    assert torch.count_nonzero(zero.mix.to_dense()) == 0
    for kwargs, message in [
        ({"zero_init_last": True}, "would throw the projected weights away"),
        ({"gain": True}, "gain=True needs normalize=True"),
        ({"init": "svd"}, "init must be 'project' or 'random'"),
        ({"normalize": 1}, "normalize must be True or False"),
        ({"strategy": "fast"}, "strategy must be None, 'structured' or 'dense'"),
    ]:
        with pytest.raises(ParameterError, match=message):
            einstruct.replace_linear(Block(), "structure b = btt()", **kwargs)
    routed = (
        "structure m(d, experts = 4):\n"
        "    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]\n"
        "    where g = a = f = e = d^(1/2), r = experts\n"
        "    route r top 2\n"
    )
    with pytest.raises(ParameterError, match=r"layer 'mix' \(16 -> 16\): a routed") as info:
        einstruct.replace_linear(Block(), routed, select=["mix"])
    assert info.value.hint == "pass init='random'"
    moe = Block()
    einstruct.replace_linear(moe, routed, select=["mix"], init="random")
    assert moe.mix.experts == 4


def test_shared_modules_stay_shared_and_attention_out_proj_is_skipped():
    shared = nn.Linear(16, 16)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared), "attn": nn.MultiheadAttention(16, 2)})
    report = einstruct.replace_linear(model, "structure b = btt()")
    assert report.names == ["a"] and model["a"] is model["b"][0]
    assert (
        report.skipped[0].name == "attn.out_proj" and "reads its out_proj weight" in report.skipped[0].reason
    )
    model["attn"](torch.randn(3, 16), torch.randn(3, 16), torch.randn(3, 16))  # still works


@pytest.mark.parametrize("weight, bias", [(False, True), (True, False), (False, False)])
def test_frozen_layers_and_training_mode_are_kept(weight, bias):
    # the bias keeps its own flag: a frozen weight with a trainable bias (BitFit) used to
    # freeze the bias too, and a frozen bias beside a trainable weight started training
    model = _mlp().eval()
    model[2].weight.requires_grad_(weight)
    model[2].bias.requires_grad_(bias)
    einstruct.replace_linear(model, "structure b = btt()", select=["2"])
    flags = {name: p.requires_grad for name, p in model[2].named_parameters()}
    assert not model[2].training
    assert flags == {**{name: weight for name in flags}, "bias": bias}


def test_the_report_and_summary():
    model = Block()
    report = einstruct.replace_linear(model, "structure l = low_rank(rank = 4)", strategy="structured")
    data = json.loads(report.to_json())
    assert data == einstruct.summary(model).to_dict()
    totals = data["totals"]
    assert totals["model_params_after"] == sum(p.numel() for p in model.parameters())
    assert totals["model_params_before"] == sum(p.numel() for p in Block().parameters())
    up = data["layers"][0]
    assert (up["params_before"], up["params_after"]) == (16 * 64 + 64, 4 * (16 + 64) + 64)
    assert (up["flops_before"], up["flops_after"]) == (2 * 16 * 64, 2 * 4 * (16 + 64))
    assert up["strategy"] in ("structured", "dense") and 0 < up["error"] < 1
    text = str(report)
    assert "up (conv1d)" in text and "skipped head: its weight is tied to embed.weight" in text
    dense = einstruct.replace_linear(_mlp(), "structure b = btt(rank = 4)", select=["2"], strategy="dense")
    assert dense.layers[0].flops_after == 2 * 64 * 64 and "run the dense strategy" in str(dense)
    with pytest.raises(ParameterError, match="summary needs a torch.nn.Module"):
        einstruct.summary([])


def test_replace_keeps_shape_and_trains_with_param_groups():
    torch.manual_seed(0)
    model = _mlp()
    x, target = torch.randn(256, 8), torch.randn(256, 1)
    bias = model[2].bias.detach().clone()
    report = einstruct.replace_linear(model, "structure b = btt(rank = 2)", select=["2"], init="random")
    assert report.names == ["2"]
    torch.testing.assert_close(model[2].bias.detach(), bias)  # the bias is carried over
    groups = einstruct.param_groups(model, lr=1e-2)
    # BTT d=64 rank 2 (g=a=f=e=8, r=2): A sums a (fan_in 8) -> lr_mult 64/8/2 factors;
    # B sums g and r (fan_in 16) -> 64/16/2; everything else keeps lr (width 64 = the base width)
    assert sorted({g["lr"] for g in groups}) == pytest.approx([1e-2, 1e-2 * 2, 1e-2 * 4])
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


def test_registered_adapters_extend_replace_linear():
    class Scaled(nn.Module):  # y = x @ w.T * 2: W is 2 w
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 8, dtype=torch.float64))

        def forward(self, x):
            return x @ self.w.T * 2

    model = nn.Sequential(Scaled())
    x = torch.randn(4, 8, dtype=torch.float64)
    before = model(x)
    einstruct.register_adapter(
        "scaled", lambda m: isinstance(m, Scaled), lambda m: (2 * m.w, None), lambda m: m.w
    )
    try:
        report = einstruct.replace_linear(model, "structure d = dense()")
    finally:
        from einstruct.runtime.adapters import ADAPTERS

        ADAPTERS.pop("scaled")
    assert report.layers[0].replaces == "scaled"
    torch.testing.assert_close(model(x), before)
    with pytest.raises(ParameterError, match="must be callable"):
        einstruct.register_adapter("bad", 3, lambda m: m)


def test_selecting_only_a_layer_already_converted_says_so():
    # "found no layer to replace; the replaceable layers are 1" without a word about layer 0
    from einstruct.errors import ParameterError

    model = _mlp()
    einstruct.replace_linear(model, "structure b = btt()", select=["2"])
    with pytest.raises(ParameterError, match=r"skipped 2: already an einstruct layer"):
        einstruct.replace_linear(model, "structure b = btt()", select=["2"])


def test_a_one_line_spec_longer_than_a_file_name_is_read_as_text():
    # it was first tried as a path, and a name past the system's 255 bytes raised OSError
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    spec = "structure l = low_rank(rank = 2)" + " " * 300 + "# a long comment"
    report = einstruct.replace_linear(model, spec, strategy="structured")
    assert report.names == ["0"]
