"""Routed structures (BTT-MoE): a gated step and the plan of one expert.

W depends on the token, so a routed plan is always structured. The per-token
gate multiplies the first intermediate that holds both the tokens and the
routed index; each expert runs the same steps with that index cut to one entry
on the tokens routed to it.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import CompileError
from ..ir import Structure
from .layouts import best_layouts
from .order import BATCH, ContractionOrder, contraction_order
from .plan_data import Plan

__all__ = ["routed_order", "plan_routed"]


def _gateable(order: ContractionOrder, index: str) -> bool:
    """Whether some intermediate (not the output) holds both the tokens and ``index``."""
    return any(BATCH in st.indices and index in st.indices for st in order.steps[:-1])


def routed_order(structure: Structure, batch: int) -> ContractionOrder:
    """The cheapest order that still has an intermediate to gate.

    BTT-MoE gates an intermediate that holds the tokens and the routed index;
    the cheapest order may contract the factors first instead: then take the
    cheapest for one token, or else the input with a routed factor first.
    """
    route = structure.route
    assert route is not None
    order = contraction_order(structure, batch)
    if _gateable(order, route.index):
        return order
    one = contraction_order(structure, 1)
    if _gateable(one, route.index):
        return contraction_order(structure, batch, like=one)  # costed at the batch it runs
    routed = next(f.name for f in structure.factors if route.index in f.indices)
    return contraction_order(structure, batch, first=routed)


def plan_routed(plan: Plan, strategy: str) -> Plan:
    """A routed plan: always structured (W depends on the token), gated after one step."""
    s = plan.structure
    route = s.route
    assert route is not None
    if strategy == "dense":
        raise CompileError(
            f"structure '{s.name}' routes '{route.index}': its matrix depends on the token, "
            "so it cannot be materialized as one dense W",
            route.span,
            "use the structured strategy",
        )
    one = replace(
        s,
        indices=tuple(replace(i, size=1) if i.name == route.index else i for i in s.indices),
        route=None,
    )
    tokens = max(1, plan.batch * int(route.top_k) // int(s.size(route.index)))
    expert = best_layouts(one, contraction_order(one, tokens), tokens)
    for st in plan.steps[:-1]:
        if BATCH in st.result_layout and route.index in st.result_layout:
            return replace(plan, strategy="structured", gate_step=st.number, expert_plan=expert)
    raise CompileError(
        f"the contraction order of '{s.name}' sums the routed index '{route.index}' before it meets "
        "the input, so no intermediate can be gated per token",
        route.span,
        "route the rank axis between the factor that reads the input and the next one",
    )
