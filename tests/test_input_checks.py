"""The generated forward refuses a wrong input before computing anything, and says what it expected."""

from __future__ import annotations

import pytest
import torch
from test_routed import SPEC
from torch.utils._python_dispatch import TorchDispatchMode

import einstruct
from einstruct.runtime import compile_structure

PLAIN = "structure s = btt(rank = 2, d_in = 12, d_out = 20)"
LAYERS = [
    pytest.param(PLAIN, "structured", id="structured"),
    pytest.param(PLAIN, "dense", id="dense"),
    pytest.param(SPEC, "auto", id="routed"),
]


class _CountOps(TorchDispatchMode):
    """Counts the tensor operations run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _refused(layer, x, error, match):
    with _CountOps() as counter, pytest.raises(error, match=match):
        layer(x)
    assert counter.ops == [], f"computed before refusing: {counter.ops}"


@pytest.mark.parametrize("spec, strategy", LAYERS)
def test_a_wrong_width_names_in_features(spec, strategy):
    layer = compile_structure(einstruct.load(spec), strategy=strategy)()
    n = layer.in_features
    expected = rf"expects inputs whose last dimension is in_features = {n}, got shape"
    _refused(layer, torch.randn(3, n + 1), ValueError, expected + rf" \(3, {n + 1}\)")
    _refused(layer, torch.randn(2, 3, n - 1), ValueError, expected)
    _refused(layer, torch.tensor(1.0), ValueError, expected + r" \(\)")
    with _CountOps() as counter:
        assert layer(torch.randn(2, 3, n)).shape == (2, 3, layer.out_features)  # any leading shape
    assert counter.ops  # the counter sees a forward's operations


@pytest.mark.parametrize("spec, strategy", LAYERS)
def test_an_input_that_is_no_tensor_is_refused_as_nn_linear_refuses_it(spec, strategy):
    import numpy as np

    layer = compile_structure(einstruct.load(spec), strategy=strategy)()
    rows = [[0.5] * layer.in_features]
    with pytest.raises(TypeError, match="takes a torch.Tensor input, got list"):  # an AttributeError before
        layer(rows)
    with pytest.raises(TypeError, match="got ndarray; convert it with torch.as_tensor"):
        layer(np.asarray(rows, dtype=np.float32))
    with pytest.raises(TypeError):  # nn.Linear refuses it too
        torch.nn.Linear(layer.in_features, 2)(rows)


@pytest.mark.parametrize("lr, weight_decay", [("1e-3", 0.0), (1e-3, None), (float("nan"), 0.0), (-1.0, 0.0)])
def test_a_layers_param_groups_check_their_numbers(lr, weight_decay):
    layer = compile_structure(einstruct.load(PLAIN))()
    with pytest.raises((TypeError, ValueError), match=r"param_groups: (lr|weight_decay) must be"):
        layer.param_groups(lr, weight_decay)


@pytest.mark.parametrize("spec, strategy", LAYERS)
def test_a_dtype_other_than_the_factors_is_refused_outside_autocast(spec, strategy):
    layer = compile_structure(einstruct.load(spec), strategy=strategy)()
    x = torch.randn(3, layer.in_features)
    message = r"holds its factors in torch.float32, got an input in torch.float64; .*torch.autocast"
    _refused(layer, x.double(), TypeError, message)
    _refused(layer, x.long(), TypeError, r"got an input in torch.int64")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x.bfloat16()).dtype == torch.bfloat16  # autocast decides the dtypes
    layer.to(torch.bfloat16)
    _refused(layer, x, TypeError, r"holds its factors in torch.bfloat16, got an input in torch.float32")
    assert layer(x.bfloat16()).dtype == torch.bfloat16
