"""replace_linear without ceremony: catalog names with keyword arguments, readable class names,
a warning when a conversion saves nothing; param_groups width-scales every adapter like nn.Linear."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from transformers.pytorch_utils import Conv1D

import einstruct
from einstruct.errors import NoSavingsWarning


def _pair(width: int) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, width))


def test_conv1d_gets_the_width_scaling_of_a_linear_of_its_shape():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 256), Conv1D(512, 256), torch.nn.Linear(512, 256))
    rates = {id(p): g["lr"] for g in einstruct.param_groups(model, lr=1.0) for p in g["params"]}
    assert rates[id(model[1].weight)] == 64 / 256  # 256 -> 512, base width 64: by hand
    assert rates[id(model[2].weight)] == 64 / 256  # 512 -> 256: its narrower side (the papers' rule)
    assert rates[id(model[0].weight)] == 1.0  # an input layer (16 < 64)
    assert rates[id(model[1].bias)] == 1.0
    base = torch.nn.Sequential(torch.nn.Linear(16, 64), Conv1D(128, 64), torch.nn.Linear(128, 64))
    rates = {id(p): g["lr"] for g in einstruct.param_groups(model, lr=1.0, base=base) for p in g["params"]}
    assert rates[id(model[1].weight)] == 64 / 256 and rates[id(model[0].weight)] == 1.0


@pytest.mark.parametrize("short", ["btt", "btt(rank = 4)", " btt ( rank = 4 ) "])
def test_a_catalog_name_with_keywords_converts_like_the_full_spec(short):
    full, quick = _pair(64), _pair(64)
    einstruct.replace_linear(full, "structure b = btt(rank = 4)", strategy="structured")
    einstruct.replace_linear(quick, short, strategy="structured", **({"rank": 4} if short == "btt" else {}))
    assert type(quick[0]).__name__ == "Btt" and type(full[0]).__name__ == "B"
    for a, b in zip(full.parameters(), quick.parameters(), strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)


FORM_KEYWORDS = [
    ("low_rank", {"rank": 3}, "low_rank(rank = 3)"),  # rank has no default: it used to be "needs 'rank'"
    ("tensor_train", {"rank": 2}, "tensor_train(rank = 2)"),
    ("block_diagonal", {"blocks": 4}, "block_diagonal(blocks = 4)"),
    ("monarch", {"blocks": 4}, "monarch(blocks = 4)"),  # the blocks variant: "no parameter 'blocks'"
    ("low_rank", {"rank": "2^2"}, "low_rank(rank = 4)"),
]


@pytest.mark.parametrize("name, keywords, call", FORM_KEYWORDS, ids=[c for _, _, c in FORM_KEYWORDS])
def test_every_form_takes_its_arguments_as_keywords(name, keywords, call):
    """docs/converting.md: a catalog form's name with its arguments is a spec, for every form."""
    full, quick = _pair(64), _pair(64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoSavingsWarning)
        einstruct.replace_linear(full, f"structure s = {call}", strategy="structured")
        einstruct.replace_linear(quick, name, strategy="structured", **keywords)
    for a, b in zip(full.parameters(), quick.parameters(), strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)


def test_an_unknown_bare_name_is_still_a_spec_error():
    with pytest.raises(einstruct.EinstructError):
        einstruct.replace_linear(_pair(64), "bttt", rank=4)


def test_a_conversion_that_saves_no_flops_warns_why_and_what_to_change():
    with pytest.warns(
        NoSavingsWarning, match=r"131,072 -> 131,072.*dense strategy.*lower the rank"
    ) as caught:
        einstruct.replace_linear(_pair(256)[:1], "btt", rank=4)
    assert caught[0].filename == __file__  # points at the caller
    dense_flops = 2 * 256 * 256  # per token, by hand
    assert f"{dense_flops:,}" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        einstruct.replace_linear(
            _pair(1024)[:1], "btt", rank=1, strategy="structured", init="random"
        )  # saves


def test_callables_and_classes_of_the_wrong_kind_are_named():
    model = _pair(64)
    with pytest.raises(einstruct.EinstructError, match=r"select must take 2 arguments \(name, module\)"):
        einstruct.replace_linear(model, "btt", select=lambda name: True)
    with pytest.raises(einstruct.EinstructError, match=r"fixed must take 2 arguments"):
        einstruct.param_groups(model, lr=1e-3, fixed=lambda name: True)
    for bad in (3, lambda groups, lr: [groups, lr]):
        with pytest.raises(einstruct.EinstructError, match="optimizer_class must build a torch.optim"):
            einstruct.optimizer(model, lr=1e-3, optimizer_class=bad)
    assert isinstance(einstruct.optimizer(model, lr=1e-3, optimizer_class=torch.optim.SGD), torch.optim.SGD)
    factory = functools.partial(torch.optim.AdamW, foreach=False)  # a factory, as users pass
    assert isinstance(einstruct.optimizer(model, lr=1e-3, optimizer_class=factory), torch.optim.AdamW)
    report = einstruct.replace_linear(model, "btt", select=lambda name, module: name == "0")
    assert report.names == ["0"]
