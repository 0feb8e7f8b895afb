"""The routed (BTT-MoE) part of the torch backend's render context.

A routed layer has two paths. The *sparse* one, an autograd Function with a
planned backward, sorts the (token, expert) slots by expert; each expert
gathers its block of input rows, scales each by its gate and runs the
one-expert plan on them. It saves the input, the gates, the slot order and the
experts' intermediates, and rebuilds the matmul operands from those in the
backward. Its shapes depend on the router, so under tracing, compiling and
torch.func the layer takes the *masked* path instead (every expert computed,
then gated: the plan's own steps). This module spells out the sparse path's
lines; every name in them is generated (``x``, ``f<k>``, ``t<k>``, ``g_p<k>``...).

    >>> context = route_context(make_plan(load("examples/btt_moe.ein")), "_BttMoeExperts")
    >>> context["expert_slices"]
    ['f1.narrow(2, e, 1)', 'f2.narrow(2, e, 1)']
"""

from __future__ import annotations

from typing import Any

from ...planner.plan_data import Plan
from ..common import tuple_code
from .steps import factor_locals, intermediate_names, operand_code, output_code, output_grad_code, step_code

__all__ = ["route_context"]

#: Leading arguments of the sparse Function before the factors: x, weights, chosen.
LEADING = 3


def _slices(plan: Plan) -> tuple[list[str], list[str]]:
    """Per factor: the code of expert ``e``'s slice (in the expert plan's layout), and
    the statement adding that slice's gradient ``g_p<k>`` into the full gradient ``g_f<k>``."""
    route = plan.structure.route
    expert = plan.expert_plan
    assert route is not None and expert is not None
    slices, grads = [], []
    for k, (f, local) in enumerate(zip(plan.structure.factors, factor_locals(plan), strict=True), start=1):
        full, mine = plan.factor_layouts[f.name], expert.factor_layouts[f.name]
        code = local
        target = f"g_{local}"
        if route.index in full:
            code += f".narrow({full.index(route.index)}, e, 1)"
            target += f".narrow({full.index(route.index)}, e, 1)"
        back = f"g_p{k}"
        if full != mine:
            code += f".permute{tuple_code(str(full.index(i)) for i in mine)}"
            back += f".permute{tuple_code(str(mine.index(i)) for i in full)}"
        slices.append(code)
        # an expert's own slice is written once; a factor every expert shares sums their gradients
        verb = "copy_" if route.index in full else "add_"
        grads.append(f"if g_p{k} is not None:")
        grads.append(f"    {target}.{verb}({back})")
    return slices, grads


def route_context(plan: Plan, function_name: str) -> dict[str, Any]:
    """Names, sizes and lines of a routed plan's two paths (the masked one is the plan's steps)."""
    route = plan.structure.route
    expert = plan.expert_plan
    assert route is not None and expert is not None
    locals_ = factor_locals(plan)
    # the expert's gradients: its input (the gated rows) when the input or the gates
    # need one, each factor slice when that factor does
    guards = {"x": "needs[0]", **{name: f"needs[{k}]" for k, name in enumerate(locals_, start=1)}}
    forward, backward, operands = step_code(expert, guards)
    inner = intermediate_names(expert)
    slices, grad_lines = _slices(plan)
    needs = ["ctx.needs_input_grad[0] or ctx.needs_input_grad[1]"]
    needs += [f"ctx.needs_input_grad[{k + LEADING - 1}]" for k in range(1, len(locals_) + 1)]
    return {
        "index": route.index,
        "experts": int(plan.structure.size(route.index)),
        "top_k": int(route.top_k),
        "function_name": function_name,
        "expert_lines": forward,
        "expert_output": output_code(expert),
        "intermediates": tuple_code(inner),
        "intermediate_count": len(inner),
        "operand_args": ", ".join(["x", *inner, *locals_]),
        "operand_lines": operand_code(expert),
        "operands": tuple_code(operands),
        "operands_unpack": ", ".join(operands) + ("," if len(operands) == 1 else ""),
        "output_grad": output_grad_code(expert),
        "backward_lines": backward,
        "factor_grads": ", ".join(f"g_{n}" for n in locals_),
        "part_grads": ", ".join(f"g_p{k}" for k in range(1, len(locals_) + 1)),
        "grad_init": [
            f"g_{n} = torch.zeros_like({n}) if ctx.needs_input_grad[{k + LEADING - 1}] else None"
            for k, n in enumerate(locals_, start=1)
        ],
        "grad_lines": grad_lines,
        "expert_slices": slices,
        "needs": needs,
    }
