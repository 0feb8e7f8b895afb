"""Steps that broadcast a factor over the tokens (a bmm on strided views, no copy).

The planner runs an activation-times-factor step as a ``bmm`` with the factor
expanded, on either side of the tokens' matrices, when that removes copies and
its per-token matrices are not tiny (Kronecker's first step, its factor left).
The compiled layer must still be its dense matrix, forward and backward, with
and without saved operands.
"""

import pytest
import torch
from reference import assert_dense_forward_and_backward

import einstruct
from einstruct.planner.layouts import BROADCAST_MIN, best_layouts
from einstruct.planner.order import contraction_order
from einstruct.planner.plan import make_plan
from einstruct.runtime import compile_structure


@pytest.mark.parametrize("d", [1024, 2048])
def test_kronecker_broadcasts_its_first_factor_on_the_left_then_runs_one_mm(d):
    # A[o1, i1] @ x[n, i1, i2] lands as [n, o1, i2]: the second step is then one plain
    # matmul over the flattened tokens (its factor's gradient too), no copy anywhere
    plan = make_plan(einstruct.load(f"structure k = kronecker(d = {d})"), 2048)
    assert [(st.op, st.broadcast, st.activation_left) for st in plan.steps] == [
        ("bmm", True, False),
        ("mm", False, True),
    ]
    assert plan.steps[0].result_layout == ("__batch", "o1", "i2")
    assert plan.copies == 0
    # stored as a factor right of the tokens would be ([K, M], viewed transposed): a state
    # dict saved before the planner learned the left side loads with the same meaning
    assert plan.factor_layouts == {"A": ("i1", "o1"), "B": ("i2", "o2")}


def test_tiny_or_lopsided_blocks_are_not_broadcast():
    small = make_plan(einstruct.load(f"structure k = kronecker(d = {(BROADCAST_MIN // 2) ** 2})"), 2048)
    assert not any(st.broadcast for st in small.steps)
    # Tensor-Train with the input meeting the first core first (opt_einsum's order): the
    # factor's gradient summed per token (K x N) would outgrow the activation (M x K)
    structure = einstruct.load("structure t = tensor_train(d = 1024, rank = 8)")
    tt = best_layouts(structure, contraction_order(structure, 2048), 2048)
    assert not any(st.broadcast for st in tt.steps)


@pytest.mark.parametrize(
    "spec, save", [("kronecker(d = 256)", True), ("kronecker(d_in = 256, d_out = 1024)", False)]
)
def test_a_broadcast_layer_is_its_dense_matrix_forward_and_backward(spec, save):
    structure = einstruct.load(f"structure k = {spec}")
    assert any(st.broadcast for st in make_plan(structure, 8).steps)
    layer = compile_structure(structure, batch=8)(dtype=torch.float64, save_intermediate=save)
    assert_dense_forward_and_backward(layer)


#: written Kronecker orders whose plans broadcast a factor left of the tokens twice (swapped
#: output) and right of them three times (three factors)
RAW = {
    "left-twice": "structure s(d = 1024):\n    y[o2, o1] = x[i1, i2] * A[i1, o1] * B[i2, o2]\n"
    "    where i1 = o1 = i2 = o2 = 32",
    "right-thrice": "structure s(d = 4096):\n"
    "    y[o1, o2, o3] = x[i1, i2, i3] * A[i1, o1] * B[i2, o2] * C[i3, o3]\n"
    "    where i1 = o1 = i2 = o2 = i3 = o3 = 16",
}


@pytest.mark.parametrize("name, left", [("left-twice", [False, False]), ("right-thrice", [True, True, True])])
def test_broadcast_on_either_side_is_the_dense_matrix(name, left):
    structure = einstruct.load(RAW[name])
    plan = make_plan(structure, 8)
    assert [(st.broadcast, st.activation_left) for st in plan.steps] == [(True, a) for a in left]
    layer = compile_structure(structure, batch=8)(dtype=torch.float64)
    assert_dense_forward_and_backward(layer)
