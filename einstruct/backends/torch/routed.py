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

    >>> route_context(make_plan(load("examples/btt_moe.ein")))["slicing"]
    '((2, None, None), (2, None, None))'
"""

from __future__ import annotations

from typing import Any

from ...planner.plan_data import Plan
from ..common import comment_text, quoted, tuple_code, value_code
from .steps import factor_locals, intermediate_names, operand_code, output_code, output_grad_code, step_code

__all__ = ["route_context"]


def _slicing(plan: Plan) -> str:
    """Per factor, as source: (the routed index's axis or None, the permute from the
    full layout to the one-expert plan's or None, the permute back or None)."""
    route = plan.structure.route
    expert = plan.expert_plan
    assert route is not None and expert is not None
    rows = []
    for f in plan.structure.factors:
        full, mine = plan.factor_layouts[f.name], expert.factor_layouts[f.name]
        axis = str(full.index(route.index)) if route.index in full else "None"
        there, back = "None", "None"
        if full != mine:
            there = tuple_code(str(full.index(i)) for i in mine)
            back = tuple_code(str(mine.index(i)) for i in full)
        rows.append(f"({axis}, {there}, {back})")
    return tuple_code(rows)


def route_context(plan: Plan) -> dict[str, Any]:
    """Names, sizes and lines of a routed plan's sparse path (the masked one is the plan's steps)."""
    route = plan.structure.route
    expert = plan.expert_plan
    assert route is not None and expert is not None
    locals_ = factor_locals(plan)
    # the expert's gradients: its input (the gated rows) when the input or the gates
    # need one (the runtime's needs[0]), each factor slice when that factor does
    forward, backward, operands = step_code(expert)
    inner = intermediate_names(expert)
    names = ", ".join(f"{n} = {f.name}" for n, f in zip(locals_, plan.structure.factors, strict=True))
    return {
        "index": comment_text(route.index),
        "index_code": value_code(quoted(route.index), 4, len("    routed_index = ")),
        "experts": int(plan.structure.size(route.index)),
        "top_k": int(route.top_k),
        "expert_doc": f"One expert ('{comment_text(route.index)}' cut to one entry; {comment_text(names)}) "
        f"on the rows routed to it:\n    the output (rows, {int(plan.structure.d_out)}) and the "
        "intermediates its backward needs.",
        "backward_doc": "One expert's planned backward: the gradients of its rows and factor slices\n"
        "    (None where ``needs``, one flag per argument, says no).",
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
        "slicing": _slicing(plan),
    }
