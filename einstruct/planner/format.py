"""The plan for people and scripts: ``einstruct plan``'s text and its ``--json`` data.

Numbers print exactly or positionally (never in scientific notation).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from ..ir import Structure
from ..numbers import json_number, plain_number
from .order import BATCH
from .plan_data import Plan
from .views import LOCAL_PENALTY, OperandView, axes_text, token_name

__all__ = ["format_plan", "plan_to_dict"]


def _ms(value: float) -> str:
    """An estimate in milliseconds as the plan prints it (sizes only raised limits admit
    give times past the float range).

    >>> _ms(37.44921), _ms(3.2e40), _ms(float("inf"))
    ('37.45 ms', '3.2e+40 ms', 'beyond the float range')
    """
    if not math.isfinite(value):
        return "beyond the float range"
    return f"{value:.2f} ms" if value < 1e9 else f"{value:.3g} ms"


def _finite(value: float) -> float | None:
    """``value`` for JSON, which has no infinity: None past the float range."""
    return value if math.isfinite(value) else None


def _per_token(plan: Plan, value: int) -> Fraction:
    return Fraction(value, plan.batch)


def _shape_text(shape: tuple[int, ...], batch: int) -> str:
    return "(" + ", ".join(str(batch if v == -1 else v) for v in shape) + ")"


def _copy_text(weight: int) -> str:
    if weight == 1:
        return "fast: keeps long contiguous runs"
    if weight == LOCAL_PENALTY:
        return "local transpose of small blocks"
    return "slow: moves the innermost axis"


def format_plan(plan: Plan) -> str:
    """The plan as readable text (what ``einstruct plan`` prints)."""
    s = plan.structure
    n = token_name(i.name for i in s.indices)
    lines = [
        f"plan for {s.name} at batch {plan.batch} tokens ({n} = tokens)",
        f"  einsum {s.einsum()}, order by opt_einsum '{plan.order.optimizer}'",
        f"  input x ({s.in_features} features) viewed as [{axes_text(plan.input_layout, n)}]",
    ]
    if int(s.d_in) != int(s.in_features):
        lines.append(f"    padded with zeros from {s.in_features} to {s.d_in} features")
    for f in s.factors:
        lay = plan.factor_layouts[f.name]
        shape = " x ".join(str(s.size(i)) for i in lay)
        lines.append(f"  factor {f.name} stored as [{', '.join(lay)}] ({shape})")
    for st in plan.steps:
        side = "" if st.activation_left or st.broadcast else "  (tokens as columns)"
        factor = st.left.name if st.left.is_factor else st.right.name
        side += f"  ({factor} broadcast over the tokens)" if st.broadcast else ""
        names = f"{st.result} = {st.left.name} @ {st.right.name}"
        lines.append(f"  step {st.number}: {names}   {st.einsum}{side}")
        dims = ", ".join(f"{what} {_dims(group, s, n)}" for what, group in zip("MNK", (st.m, st.n, st.k)))
        dims = f"batch {_dims(st.batch, s, n)}, {dims}"
        lines.append(f"    {st.op}: {dims}; {plain_number(_per_token(plan, st.flops))} FLOPs per token")
        lhs, rhs = st.left.matmul_shape, st.right.matmul_shape
        shapes = f"{_shape_text(lhs, plan.batch)} @ {_shape_text(rhs, plan.batch)}"
        out = _shape_text((*(lhs if len(lhs) >= len(rhs) else rhs)[:-2], lhs[-2], rhs[-1]), plan.batch)
        lines.append(f"    {st.op} shapes {shapes} -> {out}; result [{axes_text(st.result_layout, n)}]")
        for v in (st.left, st.right):
            stored, read = axes_text(v.layout, n), axes_text(v.order, n)
            if v.copies:
                lines.append(
                    f"    copy: {v.name} permuted [{stored}] -> [{read}] ({_copy_text(v.copy_weight)})"
                )
            elif v.permute is not None or v.transposed:
                lines.append(f"    {v.name}: strided view [{stored}] as [{read}], no copy")
    if plan.output_permute is not None:
        how = _copy_text(plan.output_copy_weight)
        lines.append(f"  copy: output permuted to [{', '.join([n, *s.output.indices])}] ({how})")
    if int(s.d_out) != int(s.out_features):
        lines.append(f"  output truncated from {s.d_out} to {s.out_features} features")
    route, expert = s.route, plan.expert_plan
    if plan.gate_step is not None and route is not None and expert is not None:
        lines.append(
            f"  route {route.index} top {route.top_k} of {s.size(route.index)}: step {plan.gate_step}'s "
            f"result is multiplied by the per-token gate; by default each expert runs the same steps "
            f"with {route.index} cut to one entry on its tokens "
            f"({plain_number(_per_token(expert, expert.flops))} FLOPs per routed token)"
        )
    if plan.dense is not None:
        eyes = f" with identities of size {', '.join(map(str, plan.dense.eyes))}" if plan.dense.eyes else ""
        lines.append(f"  dense alternative: W = einsum('{plan.dense.equation}'){eyes}, then one dense matmul")
    e = plan.estimate
    if e is not None:
        how = "forced by the user" if plan.forced else "chosen by the cost model"
        lines.append(
            f"  strategy: {plan.strategy} ({how}; estimated forward+backward: "
            f"structured {_ms(e.structured_ms)}, dense {_ms(e.dense_ms)})"
        )
    lines.append(
        f"  total {plain_number(_per_token(plan, plan.flops))} FLOPs per token, {plan.copies} "
        f"cop{'y' if plan.copies == 1 else 'ies'} "
        f"({plain_number(_per_token(plan, plan.copy_cost))} weighted entries per token)"
    )
    return "\n".join(lines)


def _dims(group: tuple[str, ...], s: Structure, token: str) -> str:
    if not group:
        return "1"
    return "*".join(token if i == BATCH else f"{i}={s.size(i)}" for i in group)


def _view_dict(view: OperandView, batch: int, token: str) -> dict[str, Any]:
    return {
        "name": view.name,
        "is_factor": view.is_factor,
        "layout": _axes_list(view.layout, token),
        "order": _axes_list(view.order, token),
        "permute": None if view.permute is None else list(view.permute),
        "shape": [batch if v == -1 else v for v in view.matmul_shape],
        "transposed": view.transposed,
        "copy": view.copy,
        "copy_weight": view.copy_weight,
        "grad_transposed": view.grad_transposed,
    }


def _axes_list(layout: tuple[str, ...], token: str) -> list[str]:
    return [token if i == BATCH else i for i in layout]


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data (``einstruct plan --json``).

    Axes are index names, ``token_axis`` (``n``, primed while an index is called
    that) for the tokens; shapes are at ``batch`` tokens; per-token numbers are
    exact (a float where a step's cost is shared by the batch).
    """
    s = plan.structure
    n = token_name(i.name for i in s.indices)
    e = plan.estimate
    route = None
    if plan.gate_step is not None and s.route is not None and plan.expert_plan is not None:
        expert = plan.expert_plan
        route = {
            "index": s.route.index,
            "top_k": int(s.route.top_k),
            "experts": int(s.size(s.route.index)),
            "gate_step": plan.gate_step,
            "expert_flops_per_token": json_number(_per_token(expert, expert.flops)),
        }
    return {
        "structure": s.name,
        "einsum": s.einsum(),
        "batch": plan.batch,
        "token_axis": n,
        "order_optimizer": plan.order.optimizer,
        "strategy": plan.strategy,
        "forced": plan.forced,
        "estimate_ms": None
        if e is None
        else {"structured": _finite(e.structured_ms), "dense": _finite(e.dense_ms)},
        "in_features": int(s.in_features),
        "out_features": int(s.out_features),
        "padded_in_features": int(s.d_in),
        "padded_out_features": int(s.d_out),
        "input_layout": _axes_list(plan.input_layout, n),
        "factors": [
            {
                "name": f.name,
                "layout": list(plan.factor_layouts[f.name]),
                "shape": [int(s.size(i)) for i in plan.factor_layouts[f.name]],
            }
            for f in s.factors
        ],
        "steps": [
            {
                "number": st.number,
                "result": st.result,
                "op": st.op,
                "einsum": st.einsum,
                "batch": _axes_list(st.batch, n),
                "m": _axes_list(st.m, n),
                "n": _axes_list(st.n, n),
                "k": list(st.k),
                "left": _view_dict(st.left, plan.batch, n),
                "right": _view_dict(st.right, plan.batch, n),
                "result_layout": _axes_list(st.result_layout, n),
                "tokens_as_rows": st.activation_left,
                "broadcast": st.broadcast,
                "flops_per_token": json_number(_per_token(plan, st.flops)),
            }
            for st in plan.steps
        ],
        "output_permute": None if plan.output_permute is None else list(plan.output_permute),
        "output_copy_weight": plan.output_copy_weight,
        "flops_per_token": json_number(_per_token(plan, plan.flops)),
        "copies": plan.copies,
        "copy_cost_per_token": json_number(_per_token(plan, plan.copy_cost)),
        "traffic_bytes_per_token": json_number(plan.traffic()),
        "dense": None
        if plan.dense is None
        else {"equation": plan.dense.equation, "eyes": list(plan.dense.eyes), "flops": plan.dense.flops},
        "route": route,
    }
