"""The planner: how each contraction step of a structure runs as one matmul.

Built on :func:`einstruct.order.contraction_order` (the single source of the
evaluation order). For every pairwise step ``result = left ⋆ right`` the planner
classifies the indices into

- batch: in both operands and the result (a ``bmm`` batch axis),
- M: in the left operand and the result, N: in the right operand and the result,
- K: in both operands, summed away,

so the step is ``result[B, M, N] = left[B, M, K] @ right[B, K, N]``. It fixes
each factor's stored axis order to what its step needs (so the hot path never
permutes a weight), orders each group of an activation's axes by their current
memory order (so most views need no copy), and records every permute that does
need a copy. The plan is plain frozen data; :func:`format_plan` prints it.

    >>> plan = make_plan(load("examples/btt.ein"), batch=2048)
    >>> [s.op for s in plan.steps]
    ['bmm', 'bmm']
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import CompileError
from .ir import Structure
from .order import BATCH, ContractionOrder, contraction_order

__all__ = ["OperandView", "PlannedStep", "Plan", "make_plan", "format_plan"]


@dataclass(frozen=True)
class OperandView:
    """How one operand of a step is viewed as a 2-D or 3-D matmul operand.

    Attributes:
        name: ``x``, ``t<k>`` or a factor name.
        is_factor: whether it is a stored factor (its layout is the stored layout).
        layout: the operand's axis order in memory before the step.
        order: the axis order the matmul needs (groups batch, then rows, then columns).
        permute: positions to permute ``layout`` into ``order``; ``None`` if identity.
        shape: the matmul view's shape; ``-1`` stands for the token dimension.
        transposed: the view is taken as ``(cols, rows)`` and transposed without a copy.
    """

    name: str
    is_factor: bool
    layout: tuple[str, ...]
    order: tuple[str, ...]
    permute: tuple[int, ...] | None
    shape: tuple[int, ...]
    transposed: bool = False

    @property
    def copies(self) -> bool:
        """Whether viewing this operand needs a copy (a permute that is not a transpose)."""
        return self.permute is not None


@dataclass(frozen=True)
class PlannedStep:
    """One step: ``result[B, M, N] = left[B, M, K] @ right[B, K, N]``."""

    number: int
    einsum: str
    op: str  # "bmm" or "mm"
    left: OperandView
    right: OperandView
    batch: tuple[str, ...]
    m: tuple[str, ...]
    n: tuple[str, ...]
    k: tuple[str, ...]
    result: str
    result_layout: tuple[str, ...]
    result_shape: tuple[int, ...]
    flops: int


@dataclass(frozen=True)
class Plan:
    """How a structure's forward runs, step by step.

    Attributes:
        structure: the planned structure.
        batch: the token count the order was chosen for.
        order: the contraction order.
        factor_layouts: stored axis order of every factor.
        input_layout: axes of the input after its flat features are reshaped.
        steps: the planned steps.
        output_permute: permutation of the last result into ``(tokens, *output)``;
            ``None`` if it is already in that order.
    """

    structure: Structure
    batch: int
    order: ContractionOrder
    factor_layouts: dict[str, tuple[str, ...]]
    input_layout: tuple[str, ...]
    steps: tuple[PlannedStep, ...]
    output_permute: tuple[int, ...] | None

    @property
    def flops(self) -> int:
        """FLOPs of the planned forward for the whole batch."""
        return sum(s.flops for s in self.steps)

    @property
    def copies(self) -> int:
        """How many permutes with a copy the forward does."""
        n = sum(s.left.copies + s.right.copies for s in self.steps)
        return n + (self.output_permute is not None)


def _ordered(group: list[str], layout: tuple[str, ...]) -> list[str]:
    return sorted(group, key=layout.index)


def _view(name, is_factor, layout, groups, sizes) -> OperandView:
    """View ``layout`` as the concatenation of ``groups`` (each a list of indices)."""
    order = tuple(i for g in groups for i in g)
    shape = tuple(-1 if BATCH in g else math.prod(sizes[i] for i in g) for g in groups)
    transposed = False
    permute = None if order == layout else tuple(layout.index(i) for i in order)
    if permute is not None and len(groups) >= 2:
        # a swap of the last two groups is a free transpose of the matmul view
        *lead, rows, cols = groups
        swapped = tuple(i for g in (*lead, cols, rows) for i in g)
        if swapped == layout:
            transposed, permute = True, None
            shape = (*shape[:-2], shape[-1], shape[-2])
    return OperandView(name, is_factor, layout, order, permute, shape, transposed)


def make_plan(structure: Structure, batch: int = 2048) -> Plan:
    """Plan the forward of ``structure`` for ``batch`` tokens.

    Raises:
        CompileError: for structures the compiler cannot run yet (symbolic sizes).
    """
    if structure.is_symbolic:
        raise CompileError(
            f"structure '{structure.name}' has symbolic sizes; give every parameter a value to compile it",
            structure.span,
            "use --set NAME=VALUE, or keyword arguments in einstruct.compile",
        )
    order = contraction_order(structure, batch)
    sizes = {i.name: int(i.size) for i in structure.indices}
    sizes[BATCH] = batch
    factor_names = {f.name for f in structure.factors}
    layouts: dict[str, tuple[str, ...]] = {structure.input.name: (BATCH, *structure.input.indices)}
    factor_layouts: dict[str, tuple[str, ...]] = {}
    steps = []
    for number, step in enumerate(order.steps, start=1):
        (a, b), (ia, ib) = step.operands, step.operand_indices
        # the activation (holding tokens) goes left, so tokens are matmul rows
        if BATCH in ib and BATCH not in ia:
            (a, b), (ia, ib) = (b, a), (ib, ia)
        result_set = set(step.indices)
        batch_ix = [i for i in ia if i in ib and i in result_set]
        m = [i for i in ia if i not in ib and i in result_set]
        n = [i for i in ib if i not in ia and i in result_set]
        k = [i for i in ia if i in ib and i not in result_set]
        # stored tensors keep their memory order; new factors follow the activation
        lay_a, lay_b = layouts.get(a), layouts.get(b)
        shared_ref = lay_a or lay_b
        if shared_ref is not None:
            batch_ix, k = _ordered(batch_ix, shared_ref), _ordered(k, shared_ref)
        if lay_a is not None:
            m = _ordered(m, lay_a)
        if lay_b is not None:
            n = _ordered(n, lay_b)
        views = []
        for name, groups in ((a, (batch_ix, m, k)), (b, (batch_ix, k, n))):
            is_factor = name in factor_names
            if is_factor:  # stored in exactly the order its step needs: no permute
                factor_layouts[name] = tuple(i for g in groups for i in g)
                layouts[name] = factor_layouts[name]
            views.append(_view(name, is_factor, layouts[name], [list(g) for g in groups], sizes))
        left, right = views
        result_layout = tuple(batch_ix + m + n)
        last = number == len(order.steps)
        result = "y" if last else f"t{number}"
        layouts[result] = result_layout
        op = "bmm" if batch_ix else "mm"
        if not batch_ix:  # drop the empty batch group from the 2-D views
            left = _drop_batch(left)
            right = _drop_batch(right)
        steps.append(
            PlannedStep(
                number=number,
                einsum=_einsum_text(structure, left.layout, right.layout, result_layout),
                op=op,
                left=left,
                right=right,
                batch=tuple(batch_ix),
                m=tuple(m),
                n=tuple(n),
                k=tuple(k),
                result=result,
                result_layout=result_layout,
                result_shape=tuple(-1 if i == BATCH else sizes[i] for i in result_layout),
                flops=step.flops,
            )
        )
    final = (BATCH, *structure.output.indices)
    last_layout = steps[-1].result_layout
    output_permute = None if last_layout == final else tuple(last_layout.index(i) for i in final)
    return Plan(
        structure=structure,
        batch=batch,
        order=order,
        factor_layouts={f.name: factor_layouts[f.name] for f in structure.factors},
        input_layout=(BATCH, *structure.input.indices),
        steps=tuple(steps),
        output_permute=output_permute,
    )


def _drop_batch(view: OperandView) -> OperandView:
    return OperandView(
        view.name, view.is_factor, view.layout, view.order, view.permute, view.shape[1:], view.transposed
    )


def _einsum_text(structure: Structure, *layouts: tuple[str, ...]) -> str:
    """A readable einsum with index names: ``[n, g, a] [g, a, f, r] -> [g, n, f, r]``."""
    name = lambda i: "n" if i == BATCH else i  # noqa: E731
    *ins, out = (",".join(name(i) for i in lay) for lay in layouts)
    return f"{' * '.join(f'[{s}]' for s in ins)} -> [{out}]"


def format_plan(plan: Plan) -> str:
    """The plan as readable text (what ``einstruct plan`` prints)."""
    s = plan.structure
    lines = [
        f"plan for {s.name} at batch {plan.batch} tokens (n = tokens)",
        f"  einsum {s.einsum()}, order by opt_einsum '{plan.order.optimizer}'",
        f"  input x viewed as [{', '.join('n' if i == BATCH else i for i in plan.input_layout)}]",
    ]
    for f in s.factors:
        lay = plan.factor_layouts[f.name]
        shape = " x ".join(str(s.size(i)) for i in lay)
        lines.append(f"  factor {f.name} stored as [{', '.join(lay)}] ({shape})")
    for st in plan.steps:
        lines.append(f"  step {st.number}: {st.result} = {st.left.name} @ {st.right.name}   {st.einsum}")
        dims = f"batch {_dims(st.batch, s)}, M {_dims(st.m, s)}, N {_dims(st.n, s)}, K {_dims(st.k, s)}"
        lines.append(f"    {st.op}: {dims}; {st.flops / plan.batch:g} FLOPs per token")
        for v in (st.left, st.right):
            if v.copies:
                lines.append(f"    copy: {v.name} permuted {list(v.layout)} -> {list(v.order)}")
            elif v.transposed:
                lines.append(f"    {v.name}: transposed view, no copy")
    if plan.output_permute is not None:
        lines.append("  copy: output permuted to [n, " + ", ".join(s.output.indices) + "]")
    lines.append(f"  total {plan.flops / plan.batch:g} FLOPs per token, {plan.copies} copies")
    return "\n".join(lines)


def _dims(group: tuple[str, ...], s: Structure) -> str:
    if not group:
        return "1"
    return "*".join("n" if i == BATCH else f"{i}={s.size(i)}" for i in group)
