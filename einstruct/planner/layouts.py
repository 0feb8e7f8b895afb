"""Orientation search: the step layouts with the least weighted copying.

For every pairwise step ``result = left ⋆ right`` of the contraction order the
indices are classified into batch (in both operands and the result), M (left
and result), N (right and result) and K (both operands, summed), so the step is
``result[B, M, N] = left[B, M, K] @ right[B, K, N]``. FLOPs being fixed, the
layout then minimizes data movement: each factor is stored in exactly the
order its step needs, and each step may run with tokens as the matmul's rows
or its columns; every combination is tried (up to :data:`MAX_SEARCH` steps)
and the plan with the least :attr:`~einstruct.planner.plan_data.Plan.copy_cost`
kept. Every copy that remains is recorded, with each operand's gradient
orientation for the planned backward.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

from ..ir import Structure
from .order import BATCH, ContractionOrder
from .plan_data import Plan, PlannedStep
from .views import copy_weight, drop_batch, layout_einsum, view_operand

__all__ = ["MAX_SEARCH", "best_layouts", "plan_layouts"]

#: Steps up to which every orientation combination is tried (2**steps plans).
MAX_SEARCH = 8


def best_layouts(structure: Structure, order: ContractionOrder, batch: int) -> Plan:
    """The orientation of every step with the least copy cost (structured strategy, no estimate).

    Tries every orientation (up to :data:`MAX_SEARCH` steps; beyond, one pass of
    single flips from tokens-as-rows throughout); ties go to the fewest flipped
    steps, then the earliest in a fixed enumeration, so the result is
    deterministic.
    """
    n = len(order.steps)
    if n <= MAX_SEARCH:
        best: Plan | None = None
        for flips in sorted(itertools.product((False, True), repeat=n), key=sum):
            plan = plan_layouts(structure, order, batch, flips)
            if best is None or plan.copy_cost < best.copy_cost:
                best = plan
        assert best is not None
        return best
    chosen = [False] * n
    best = plan_layouts(structure, order, batch, tuple(chosen))
    for k in range(n):
        trial = plan_layouts(structure, order, batch, (*chosen[:k], True, *chosen[k + 1 :]))
        if trial.copy_cost < best.copy_cost:
            best, chosen[k] = trial, True
    return best


def _ordered(group: list[str], layout: tuple[str, ...]) -> list[str]:
    return sorted(group, key=layout.index)


def plan_layouts(structure: Structure, order: ContractionOrder, batch: int, flips: tuple[bool, ...]) -> Plan:
    """The plan for one choice of orientation per step (``True``: tokens as the matmul's columns)."""
    sizes = {i.name: int(i.size) for i in structure.indices}
    sizes[BATCH] = batch
    factor_names = {f.name for f in structure.factors}
    layouts: dict[str, tuple[str, ...]] = {structure.input.name: (BATCH, *structure.input.indices)}
    factor_layouts: dict[str, tuple[str, ...]] = {}
    steps = []
    for number, (step, flip) in enumerate(zip(order.steps, flips), start=1):
        (a, b), (ia, ib) = step.operands, step.operand_indices
        # the activation (holding tokens) goes left unless this step is flipped
        if BATCH in ib and BATCH not in ia:
            (a, b), (ia, ib) = (b, a), (ib, ia)
        if flip:
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
            views.append(view_operand(name, is_factor, layouts[name], [list(g) for g in groups], sizes))
        left, right = views
        result_layout = tuple(batch_ix + m + n)
        result = step.result
        layouts[result] = result_layout
        op = "bmm" if batch_ix else "mm"
        if not batch_ix:  # drop the empty batch group from the 2-D views
            left = drop_batch(left)
            right = drop_batch(right)
            # an mm gradient with tokens as columns is a slow, very wide product:
            # compute the activation's gradient with tokens as rows instead
            if BATCH in m:
                left = replace(left, grad_transposed=False)
            if BATCH in n:
                right = replace(right, grad_transposed=True)
        steps.append(
            PlannedStep(
                number=number,
                einsum=layout_einsum(left.layout, right.layout, result_layout),
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
                activation_left=BATCH in ia or BATCH not in ib,
            )
        )
    final = (BATCH, *structure.output.indices)
    last_layout = steps[-1].result_layout
    weight = copy_weight(last_layout, final, sizes)
    needs = weight > 0
    output_permute = tuple(last_layout.index(i) for i in final) if needs else None
    output_entries = math.prod(sizes[i] for i in final if i != BATCH) if needs else 0
    return Plan(
        structure=structure,
        batch=batch,
        order=order,
        factor_layouts={f.name: factor_layouts[f.name] for f in structure.factors},
        input_layout=(BATCH, *structure.input.indices),
        steps=tuple(steps),
        output_permute=output_permute,
        output_entries=output_entries,
        output_copy_weight=weight,
    )
