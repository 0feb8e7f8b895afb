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

from dataclasses import replace

from ..errors import CompileError
from ..ir import Structure
from ..limits import checked_batch
from .cost import estimate
from .dense import dense_weight
from .layouts import best_layouts
from .order import contraction_order
from .plan_data import Plan
from .routed import plan_routed, routed_order

__all__ = ["STRATEGIES", "DEFAULT_BATCH", "make_plan"]

#: The strategies :func:`make_plan` accepts.
STRATEGIES = ("auto", "structured", "dense")
#: The token count plans are made for unless told otherwise (what compiled modules assume).
DEFAULT_BATCH = 2048


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
    plan = best_layouts(structure, contraction_order(structure, batch), batch)
    dense = dense_weight(structure, plan.factor_layouts)
    cost = estimate(plan, dense)
    if strategy == "auto":
        chosen = "dense" if cost.dense_ms < cost.structured_ms else "structured"
    else:
        chosen = strategy
    return replace(plan, strategy=chosen, dense=dense, estimate=cost, forced=strategy != "auto")
