"""Contraction orders tied in FLOPs, told apart by their copying.

opt_einsum returns one FLOP-minimal order; a Tensor-Train's two cores cost the
same either way round, and the way opt_einsum picks copies the whole
intermediate (64 KB per token at d = 2048) while the other copies nothing. The
planner takes the tie that copies less, keeps the factors stored as the
FLOP-minimal order stores them (a state dict keeps its meaning), and counts
exactly what the analyzer counts. Checked against opt_einsum's own order and
cost, the dense matrices and torch's FLOP counter.
"""

import pytest
import torch
from reference import assert_dense_forward_and_backward
from torch.utils.flop_counter import FlopCounterMode

import einstruct
from einstruct.analysis.analyze import analyze_structure
from einstruct.planner.layouts import best_layouts
from einstruct.planner.order import contraction_order
from einstruct.planner.plan import make_plan
from einstruct.runtime import compile_structure

TT = "structure t = tensor_train(d = {d}, rank = 8)"


@pytest.mark.parametrize("d", [1024, 2048, 4096])
def test_tensor_train_takes_the_tie_that_copies_no_activation(d):
    structure = einstruct.load(TT.format(d=d))
    flop_minimal = best_layouts(structure, contraction_order(structure, 2048), 2048)
    plan = make_plan(structure, 2048, "structured")
    assert plan.order.steps[0].operands == ("x", "B")  # opt_einsum's order meets A first
    assert sum(s.flops for s in plan.order.steps) == sum(s.flops for s in flop_minimal.order.steps)
    copied = [v for st in plan.steps for v in (st.left, st.right) if v.copy and not v.is_factor]
    assert copied == [] and plan.output_permute is None
    assert any(v.copy for st in flop_minimal.steps for v in (st.left, st.right) if not v.is_factor)
    assert plan.factor_layouts == flop_minimal.factor_layouts


@pytest.mark.parametrize("save", [True, False])
def test_the_tied_order_is_the_dense_matrix_and_counts_what_the_analyzer_counts(save):
    structure = einstruct.load(TT.format(d=256))
    assert make_plan(structure, 8, "structured").order.steps[0].operands == ("x", "B")
    layer = compile_structure(structure, batch=8, strategy="structured")(
        dtype=torch.float64, save_intermediate=save
    )
    assert_dense_forward_and_backward(layer)
    if save:  # (recomputing the intermediate costs one forward more, by design)
        x = torch.randn(8, layer.in_features, dtype=torch.float64, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            layer(x).sum().backward()
        assert counter.get_total_flops() == analyze_structure(structure, batch=8).counts.train_flops * 8
