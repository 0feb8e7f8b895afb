"""The planner's entry point: order, then step layouts, then the strategy.

1. :mod:`.order` picks the FLOP-minimal contraction order (the single source of
   how a structure is evaluated; routed structures keep an order with an
   intermediate to gate, :mod:`.routed`).
2. :mod:`.layouts` runs each pairwise step as one ``mm``/``bmm`` and searches the
   steps' orientations for the least weighted copying (the rules for views and
   copies are in :mod:`.views`); factors are stored in the order their step needs.
3. :mod:`.cost` estimates the planned steps against materializing W from the
   factors (:mod:`.dense`) and one dense matmul; ``auto`` takes the faster.

The plan is plain frozen data (:mod:`.plan_data`, no torch); :mod:`.format` prints it.

    >>> plan = make_plan(load("examples/btt.ein"), batch=2048)
    >>> [s.op for s in plan.steps]
    ['bmm', 'bmm']
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..errors import CompileError
from ..ir import Structure
from ..limits import checked_batch
from .cost import estimate
from .dense import dense_weight
from .layouts import best_layouts
from .order import BATCH, ContractionOrder, contraction_order
from .plan_data import Plan
from .routed import plan_routed, routed_order

__all__ = ["STRATEGIES", "DEFAULT_BATCH", "TIE_FACTORS", "make_plan", "least_copying"]

#: The strategies :func:`make_plan` accepts.
STRATEGIES = ("auto", "structured", "dense")
#: The token count plans are made for unless told otherwise (what compiled modules assume).
DEFAULT_BATCH = 2048
#: Factors up to which FLOP-tied orders are compared by their copying (one layout search
#: per factor).
TIE_FACTORS = 4


def least_copying(structure: Structure, batch: int) -> Plan:
    """The layouts (:func:`best_layouts`) of the FLOP-minimal order, or of an order tied
    with it (the same FLOPs and largest intermediate, so the analyzer's counts hold)
    that copies less: each input-first chain (the input with one factor, then the rest
    in written order) is tried, up to :data:`TIE_FACTORS` factors.

    FLOP ties are common (a Tensor-Train's two cores cost the same either way round)
    and their layouts are not: Tensor-Train at d = 2048 (rank 8) copies its whole
    intermediate when the input meets the first core first, and nothing when it meets
    the second first (a broadcast step then reads the intermediate as it lies).
    Ties keep opt_einsum's order.
    """
    order = contraction_order(structure, batch)
    best = first = best_layouts(structure, order, batch)
    if not 2 <= len(structure.factors) <= TIE_FACTORS:
        return best
    for factor in structure.factors:
        chain = contraction_order(structure, batch, first=factor.name)
        if _counts(chain, structure) != _counts(order, structure) or chain.steps == order.steps:
            continue  # only a true tie: what the analyzer counts stays what the layer does
        # the factors stay stored as the FLOP-minimal order stores them: a state dict
        # keeps its meaning whichever order runs (a factor may be copied per call)
        plan = best_layouts(structure, chain, batch, stored=first.factor_layouts)
        if plan.copy_cost < best.copy_cost:
            chosen = replace(chain, optimizer=f"{order.optimizer}; of its FLOP ties, the least copying")
            best = replace(plan, order=chosen)
    return best


def _counts(order: ContractionOrder, structure: Structure) -> tuple[int, int]:
    """An order's FLOPs and its largest intermediate (entries, tokens included)."""
    sizes = {i.name: int(i.size) for i in structure.indices}
    entries = [
        math.prod(order.batch if i == BATCH else sizes[i] for i in s.indices) for s in order.steps[:-1]
    ]
    return sum(step.flops for step in order.steps), max(entries, default=0)


def make_plan(structure: Structure, batch: int = DEFAULT_BATCH, strategy: str = "auto") -> Plan:
    """Plan the forward of ``structure`` for ``batch`` tokens.

    ``strategy`` is ``auto`` (the cost model picks the faster of ``structured``
    and ``dense``), ``structured`` or ``dense`` (forced). The steps' orientations
    come from :func:`~einstruct.planner.layouts.best_layouts`.

    Raises:
        CompileError: for structures the compiler cannot run (symbolic sizes), an
            unknown strategy, or a strategy the structure cannot use.
    """
    batch = checked_batch(batch)
    if strategy not in STRATEGIES:
        raise CompileError(f"unknown strategy '{strategy}'", hint=f"use one of: {', '.join(STRATEGIES)}")
    if structure.is_symbolic:
        unset = [p.name for p in structure.parameters if p.is_symbolic]
        example = " ".join(f"--set {n}=1024" for n in unset[:2])
        raise CompileError(
            f"structure '{structure.name}' has symbolic sizes; give every parameter a value to compile it"
            + (f" (unset: {', '.join(unset)})" if unset else ""),
            structure.span,
            f"use --set NAME=VALUE{f' (e.g. {example})' if unset else ''}, or keyword arguments in "
            "einstruct.compile; einstruct.replace_linear binds d, or d_in and d_out, to each layer",
        )
    if structure.route is not None:
        order = routed_order(structure, batch)
        return plan_routed(best_layouts(structure, order, batch), strategy)
    plan = least_copying(structure, batch)
    dense = dense_weight(structure, plan.factor_layouts)
    cost = estimate(plan, dense)
    if strategy == "auto":
        chosen = "dense" if cost.dense_ms < cost.structured_ms else "structured"
    else:
        chosen = strategy
    return replace(plan, strategy=chosen, dense=dense, estimate=cost, forced=strategy != "auto")
