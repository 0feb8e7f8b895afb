"""Steps that broadcast a factor over the tokens (a bmm on strided views, no copy).

The planner runs an activation-times-factor step as a ``bmm`` with the factor
expanded when that removes copies and its per-token matrices are not tiny
(Kronecker's two steps). The compiled layer must still be its dense matrix,
forward and backward, with and without saved operands.
"""

import pytest
import torch
from reference import dense_torch

import einstruct
from einstruct.planner.layouts import BROADCAST_MIN
from einstruct.planner.plan import make_plan
from einstruct.runtime import compile_structure


@pytest.mark.parametrize("d", [1024, 2048])
def test_kronecker_runs_both_steps_broadcast_with_no_copy(d):
    plan = make_plan(einstruct.load(f"structure k = kronecker(d = {d})"), 2048)
    assert [(st.op, st.broadcast) for st in plan.steps] == [("bmm", True), ("bmm", True)]
    assert plan.copies == 0


def test_tiny_or_lopsided_blocks_are_not_broadcast():
    small = make_plan(einstruct.load(f"structure k = kronecker(d = {(BROADCAST_MIN // 2) ** 2})"), 2048)
    assert not any(st.broadcast for st in small.steps)
    # Tensor-Train: the factor's gradient summed per token (K x N) outgrows the activation (M x K)
    tt = make_plan(einstruct.load("structure t = tensor_train(d = 1024, rank = 8)"), 2048, "structured")
    assert not any(st.broadcast for st in tt.steps)


@pytest.mark.parametrize(
    "spec, save", [("kronecker(d = 256)", True), ("kronecker(d_in = 256, d_out = 1024)", False)]
)
def test_a_broadcast_layer_is_its_dense_matrix_forward_and_backward(spec, save):
    structure = einstruct.load(f"structure k = {spec}")
    assert any(st.broadcast for st in make_plan(structure, 8).steps)
    layer = compile_structure(structure, batch=8)(dtype=torch.float64, save_intermediate=save)
    x = torch.randn(8, layer.in_features, dtype=torch.float64, requires_grad=True)
    g = torch.randn(8, layer.out_features, dtype=torch.float64)
    (layer(x) * g).sum().backward()
    factors = {n: getattr(layer, n).detach().clone().requires_grad_() for n in layer.factor_axes}
    xr = x.detach().clone().requires_grad_()
    y_ref = xr @ dense_torch(layer, factors).T + layer.bias.detach()
    (y_ref * g).sum().backward()
    torch.testing.assert_close(layer(x), y_ref)
    torch.testing.assert_close(x.grad, xr.grad)
    for name, ref in factors.items():
        torch.testing.assert_close(getattr(layer, name).grad, ref.grad)
