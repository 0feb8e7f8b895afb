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
from .views import LOCAL_PENALTY, copy_weight, drop_batch, layout_einsum, token_name, view_operand

__all__ = ["MAX_SEARCH", "BROADCAST_MIN", "best_layouts", "plan_layouts"]

#: Steps up to which every orientation combination is tried (2**steps plans).
MAX_SEARCH = 8
#: Smallest per-token matrix dimension of a step run as a broadcast ``bmm`` (smaller
#: matrices leave a batched product far below a plain matmul's speed).
BROADCAST_MIN = 16


def best_layouts(
    structure: Structure,
    order: ContractionOrder,
    batch: int,
    stored: dict[str, tuple[str, ...]] | None = None,
) -> Plan:
    """The orientation of every step with the least copy cost (structured strategy, no estimate).

    Tries every orientation (up to :data:`MAX_SEARCH` steps; beyond, one pass of
    single flips from tokens-as-rows throughout); ties go to the fewest flipped
    steps, then the earliest in a fixed enumeration, so the result is
    deterministic. ``stored``: each factor's memory order, fixed (views or copies of it
    per call, see :func:`plan_layouts`).
    """
    n = len(order.steps)
    if n <= MAX_SEARCH:
        found: tuple[Plan, tuple[bool, ...]] | None = None
        for flips in sorted(itertools.product((False, True), repeat=n), key=sum):
            plan = plan_layouts(structure, order, batch, flips, stored=stored)
            if found is None or plan.copy_cost < found[0].copy_cost:
                found = plan, flips
        assert found is not None
        best, chosen = found[0], list(found[1])
    else:
        chosen = [False] * n
        best = plan_layouts(structure, order, batch, tuple(chosen), stored=stored)
        for k in range(n):
            trial = plan_layouts(
                structure, order, batch, (*chosen[:k], True, *chosen[k + 1 :]), stored=stored
            )
            if trial.copy_cost < best.copy_cost:
                best, chosen[k] = trial, True
    return _with_broadcasts(structure, order, batch, best, chosen, stored)


def _with_broadcasts(
    structure: Structure,
    order: ContractionOrder,
    batch: int,
    best: Plan,
    flips: list[bool],
    stored: dict[str, tuple[str, ...]] | None = None,
) -> Plan:
    """One pass over the steps: broadcast a factor over the tokens where that saves copying."""
    if structure.route is not None:  # the gate indexes the planned results: kept as they are
        return best
    wide = [False] * len(flips)
    for k in range(len(flips)):
        if not _can_broadcast(best, k):
            continue
        # the factor right of the tokens' matrices, or left (the result's axes then come
        # factor-first, which may spare the next step a copy); ties keep it right
        for flip in (False, True):
            trial_flips = (*flips[:k], flip, *flips[k + 1 :])
            wider = (*wide[:k], True, *wide[k + 1 :])
            trial = plan_layouts(structure, order, batch, trial_flips, wider, stored)
            if trial.steps[k].broadcast and trial.copy_cost < best.copy_cost:
                best, flips[k], wide[k] = trial, flip, True
    return best


def _can_broadcast(plan: Plan, k: int) -> bool:
    """Whether step ``k`` (an ``mm`` of the tokens' lineage with one factor) may run as a
    broadcast ``bmm``: every per-token matrix dimension at least :data:`BROADCAST_MIN`, and
    the factor's gradient, summed over per-token products (tokens x K x N entries), at most
    :data:`LOCAL_PENALTY` times the activation whose copy (a local transpose, weighted
    that much) the broadcast saves (tokens x M x K)."""
    step = plan.steps[k]
    if step.op != "mm" or step.left.is_factor == step.right.is_factor or BATCH not in (*step.m, *step.n):
        return False
    sizes = {i.name: int(i.size) for i in plan.structure.indices}
    token = step.m if BATCH in step.m else step.n
    other = step.n if BATCH in step.m else step.m
    rows = math.prod(sizes[i] for i in token if i != BATCH)
    cols = math.prod(sizes[i] for i in other)
    inner = math.prod(sizes[i] for i in step.k)
    return min(rows, cols, inner) >= BROADCAST_MIN and cols <= LOCAL_PENALTY * rows


def _ordered(group: list[str], layout: tuple[str, ...]) -> list[str]:
    return sorted(group, key=layout.index)


def plan_layouts(
    structure: Structure,
    order: ContractionOrder,
    batch: int,
    flips: tuple[bool, ...],
    broadcast: tuple[bool, ...] = (),
    stored: dict[str, tuple[str, ...]] | None = None,
) -> Plan:
    """The plan for one choice of orientation per step (``True``: tokens as the matmul's columns).

    ``broadcast[k]``: run step k, an activation times a factor with no shared
    batch axis, as a ``bmm`` over the tokens with the factor expanded (ignored
    where the step is not of that kind). ``stored``: each factor's memory order,
    fixed (a step then views it, or copies it once per call: no tokens); by
    default each factor is stored as its step needs it.
    """
    sizes = {i.name: int(i.size) for i in structure.indices}
    sizes[BATCH] = batch
    factor_names = {f.name for f in structure.factors}
    token = token_name(sizes)
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
        wide = number <= len(broadcast) and broadcast[number - 1] and not batch_ix
        # the factor right (tokens x factor), or left when flipped (factor x tokens)
        wide = wide and ((BATCH in ia and b in factor_names) or (BATCH in ib and a in factor_names))
        if wide:  # tokens become the batch axis, the factor the same matrix for each
            batch_ix = [BATCH]
        m = [i for i in ia if i not in ib and i in result_set and i not in batch_ix]
        n = [i for i in ib if i not in ia and i in result_set and i not in batch_ix]
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
        for name, groups in (
            (a, ([] if wide and a in factor_names else batch_ix, m, k)),
            (b, ([] if wide and b in factor_names else batch_ix, k, n)),
        ):
            is_factor = name in factor_names
            if is_factor and stored is not None:  # fixed: viewed, or copied per call
                factor_layouts[name] = layouts[name] = stored[name]
            elif is_factor:  # stored in exactly the order its step needs: no permute
                factor_layouts[name] = tuple(i for g in groups for i in g)
                if wide and name == a:
                    # broadcast left, stored as it would be right ([K, M], viewed transposed
                    # for free): the stored layout, and so a saved state dict, does not
                    # depend on the side the planner picks
                    factor_layouts[name] = (*k, *m)
                layouts[name] = factor_layouts[name]
            views.append(view_operand(name, is_factor, layouts[name], [list(g) for g in groups], sizes))
        left, right = views
        if wide:  # the factor is a 2-D matrix, expanded over the tokens when the step runs
            if right.is_factor:
                right = drop_batch(right)
            else:
                left = drop_batch(left)
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
                einsum=layout_einsum(left.layout, right.layout, result_layout, token=token),
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
                broadcast=wide,
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
