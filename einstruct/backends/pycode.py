"""Python source lines for a plan's steps: ``torch.mm``/``torch.bmm`` on planned views.

Every decision is in the plan; this module only spells it out. Names the lines
use: ``x`` (the input), ``l<k>``/``r<k>`` (step k's matmul operands), ``t<k>``
(its result; the last is ``y``), ``g<k>`` and ``g_<name>`` (gradients),
``wl<k>``/``wr<k>``/``w<k>`` and ``eye<k>`` (materializing W).

    >>> forward, backward, operands = step_code(make_plan(load("examples/btt.ein")))
    >>> forward[1]
    'l1 = A.reshape(32, 32, 32)'
"""

from __future__ import annotations

from collections.abc import Sequence

from ..planner.model import Plan
from ..planner.order import BATCH
from ..planner.views import OperandView
from .common import tuple_code

__all__ = ["step_code", "dense_code", "output_code", "output_grad_code", "with_gate", "sizes_of"]


def sizes_of(plan: Plan) -> dict[str, int]:
    """Every index's size in ``plan``'s structure, as ints."""
    return {i.name: int(i.size) for i in plan.structure.indices}


def _shape(shape: Sequence[int]) -> str:
    return tuple_code(str(v) for v in shape) if shape else "(())"


def _operand(view: OperandView, var: str) -> str:
    code = var
    if view.permute is not None:
        code += f".permute{tuple_code(str(p) for p in view.permute)}"
    code += f".reshape{tuple_code(str(s) for s in view.shape)}"
    if view.transposed:
        code += ".transpose(-1, -2)"
    return code


def _var(plan: Plan, name: str) -> str:
    return "x" if name == plan.structure.input.name else name


def _call(op: str) -> str:
    return "torch.bmm" if op == "bmm" else "torch.mm"


def step_code(plan: Plan) -> tuple[list[str], list[str], list[str]]:
    """Source lines of the planned forward and backward, and the saved operand names.

    Forward step k: ``l<k>``/``r<k>`` are the matmul operands (views where the
    planner found strides that work), ``t<k>`` the result. Backward step k, in
    reverse: the result's gradient as ``(batch, M, N)``, then
    ``grad left = grad @ right^T`` and ``grad right = left^T @ grad``, each
    mapped back to its source's layout (computed as the transposed product when
    that keeps the source's innermost axis innermost).
    """
    sizes = sizes_of(plan)
    forward: list[str] = []
    backward: list[str] = []
    operands: list[str] = []
    needs = {plan.structure.input.name: "ctx.needs_input_grad[0]"}
    for k, f in enumerate(plan.structure.factors, start=1):
        needs[f.name] = f"ctx.needs_input_grad[{k}]"
    for st in plan.steps:
        n = st.number
        forward.append(f"# step {n}: {st.einsum}  ({st.op}, {st.flops // plan.batch} FLOPs/token)")
        forward.append(f"l{n} = {_operand(st.left, _var(plan, st.left.name))}")
        forward.append(f"r{n} = {_operand(st.right, _var(plan, st.right.name))}")
        forward.append(f"{st.result} = {_call(st.op)}(l{n}, r{n}).view{_shape(st.result_shape)}")
        operands += [f"l{n}", f"r{n}"]
    for st in reversed(plan.steps):
        n = st.number
        call = _call(st.op)
        rows = st.left.matmul_shape[:-1]
        cols = st.right.matmul_shape[-1:]
        backward.append(f"# step {n} backward: {st.einsum}")
        backward.append(f"g{n} = g_{st.result}.reshape{_shape((*rows, *cols))}")
        for side, view in (("l", st.left), ("r", st.right)):
            other = f"r{n}" if side == "l" else f"l{n}"
            # grad left = g @ right^T, grad right = left^T @ g; the transposed
            # product (right @ g^T)^T lands the gradient in its source's order
            if side == "l":
                product = f"{call}({other}, g{n}.mT)" if view.grad_transposed else f"{call}(g{n}, {other}.mT)"
            else:
                product = f"{call}(g{n}.mT, {other})" if view.grad_transposed else f"{call}({other}.mT, g{n})"
            target = f"g_{_var(plan, view.name)}"
            code = f"{target} = {_grad_back(product, view, sizes)}"
            guard = needs.get(view.name)
            if guard is None:
                backward.append(code)
            else:
                backward.append(f"{target} = None")
                backward.append(f"if {guard}:")
                backward.append(f"    {code}")
    return forward, backward, operands


def _grad_back(product: str, view: OperandView, sizes: dict[str, int]) -> str:
    """Map the gradient of a matmul operand back onto its source's layout.

    ``product`` is the gradient of the matmul operand, transposed when
    ``view.grad_transposed``; the operand itself is the view transposed when
    ``view.transposed``.
    """
    code = product
    if view.grad_transposed != view.transposed:  # two transposes cancel
        code += ".mT"
    order_shape = tuple(-1 if i == BATCH else sizes[i] for i in view.order)
    code += f".reshape{_shape(order_shape)}"
    if view.inverse_permute is not None:
        code += f".permute{tuple_code(str(p) for p in view.inverse_permute)}"
    return code


def dense_code(plan: Plan, fallback: str) -> list[str]:
    """Lines that materialize W from the factors: the planned pairwise steps, no einsum.

    Without a planned materialization (too many indices for one einsum), W is
    the planned forward applied to the identity: ``fallback`` names the
    autograd function that runs it.
    """
    dense = plan.dense
    s = plan.structure
    ref = s.factors[0].name
    if dense is None:
        factors = ", ".join(f.name for f in s.factors)
        return [
            f"eye = torch.eye({int(s.d_in)}, device={ref}.device, dtype={ref}.dtype)",
            f"return {fallback}.apply(eye, {factors}, False).T",
        ]
    lines = [
        f"eye{k} = torch.eye({size}, device={ref}.device, dtype={ref}.dtype)"
        for k, size in enumerate(dense.eyes, start=1)
    ]
    for st in dense.steps:
        lines.append(f"# {st.einsum}")
        lines.append(f"wl{st.number} = {_operand(st.left, st.left.name)}")
        lines.append(f"wr{st.number} = {_operand(st.right, st.right.name)}")
        lines.append(
            f"{st.result} = {_call(st.op)}(wl{st.number}, wr{st.number}).view{_shape(st.result_shape)}"
        )
    last = dense.steps[-1].result if dense.steps else dense.operands[0][0]
    permute = f".permute{tuple_code(str(p) for p in dense.final_permute)}" if dense.final_permute else ""
    lines.append(f"return {last}{permute}.reshape({int(s.d_out)}, {int(s.d_in)})")
    return lines


def output_code(plan: Plan) -> str:
    """The last result as ``(tokens, d_out)``."""
    permute = f".permute{tuple_code(str(p) for p in plan.output_permute)}" if plan.output_permute else ""
    return f"y{permute}.reshape(-1, {int(plan.structure.d_out)})"


def output_grad_code(plan: Plan) -> str:
    """The output gradient ``(tokens, d_out)`` as a view in the last result's layout."""
    sizes = sizes_of(plan)
    final = (BATCH, *plan.structure.output.indices)
    code = f"g_out.reshape{_shape(tuple(-1 if i == BATCH else sizes[i] for i in final))}"
    if plan.output_permute is not None:
        inverse = tuple(plan.output_permute.index(k) for k in range(len(plan.output_permute)))
        code += f".permute{tuple_code(str(p) for p in inverse)}"
    return code


def with_gate(plan: Plan, lines: list[str]) -> list[str]:
    """Forward lines with the BTT-MoE gate inserted after the gated step: its result
    times ``gate[token, expert]`` along the routed index."""
    assert plan.gate_step is not None and plan.structure.route is not None
    step = plan.steps[plan.gate_step - 1]
    route = plan.structure.route.index
    layout = step.result_layout
    gate = "gate.mT" if layout.index(route) < layout.index(BATCH) else "gate"
    shape = tuple(-1 if i == BATCH else int(plan.structure.size(i)) if i == route else 1 for i in layout)
    line = f"{step.result} = {step.result} * {gate}.reshape{_shape(shape)}  # route {route}: gate the experts"
    at = next(k for k, text in enumerate(lines) if text.startswith(f"{step.result} = ")) + 1
    return [*lines[:at], line, *lines[at:]]
