"""Exact counts along the contraction order: FLOPs, training FLOPs, peak intermediate.

Conventions (those of opt_einsum's cost and torch's FLOP counter): one pairwise
step costs 2 x the product of the sizes of every index it touches (the
multiply-adds of one batched matmul, doubled). Per-vector numbers are the costs
for a batch of N vectors divided by N; steps that combine factors only run once
per batch, so their cost is shared by the N vectors.

Training: the backward of a step ``r = a ⋆ b`` computes ``grad a = grad r ⋆ b`` and
``grad b = grad r ⋆ a``, each as costly as the step, so
``train_flops = 3 x flops`` along the same order (gradients w.r.t. the input and
every factor).

Symbolic sizes: the order is chosen at a concrete stand-in (every free parameter
= 4096, see :func:`concrete_stand_in`), and the costs are summed symbolically
along it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from ..errors import SizeError
from ..ir import Size, Structure
from ..limits import current
from ..numbers import simplified
from ..planner.order import BATCH, ContractionOrder, contraction_order
from ..planner.routed import routed_order

__all__ = ["STAND_IN", "PathStep", "Counts", "count", "concrete_stand_in"]

#: The value free parameters take when an order must be chosen for symbolic sizes.
STAND_IN = 4096


@dataclass(frozen=True)
class PathStep:
    """One step of the path, for the report."""

    operands: tuple[str, ...]
    result: str
    indices: tuple[str, ...]
    summed: tuple[str, ...]
    flops: Any  # per vector


@dataclass(frozen=True)
class Counts:
    """FLOPs and sizes per input vector along one order."""

    batch: int
    flops: Any
    train_flops: Any
    peak_intermediate: Any
    path: tuple[PathStep, ...]
    order: ContractionOrder


def concrete_stand_in(structure: Structure, value: int = STAND_IN, values: dict | None = None) -> Structure:
    """The structure with every free parameter set to ``value`` (sizes rounded to >= 1).

    ``values`` maps parameter names to other stand-in values. Without them, a
    size that would pass the size limit at ``value`` (``2^k`` at k = 4096) makes
    the stand-in smaller (256, 16, 4, 2) until every size fits: the stand-in only
    picks the contraction order.

    Raises:
        SizeError: no stand-in keeps every size within the limit (``k^k^k``).
    """
    if not structure.is_symbolic:
        return structure
    route = structure.route
    routed_k = route.top_k if route is not None and not isinstance(route.top_k, int) else None
    free = sorted(
        {sym for i in structure.indices if not isinstance(i.size, int) for sym in i.size.free_symbols}
        | (set(routed_k.free_symbols) if routed_k is not None else set()),
        key=str,
    )
    trials = [value] if values else [value, 256, 16, 4, 2]
    for k, scale in enumerate(trials):
        symbols = {sym: (values or {}).get(str(sym), scale) for sym in free}
        sizes = _sizes_at(structure, symbols, raise_if_too_large=k == len(trials) - 1)
        if sizes is not None:
            indices = tuple(replace(i, size=sizes.get(i.name, i.size)) for i in structure.indices)
            stand_in = replace(structure, indices=indices)
            if route is not None and routed_k is not None:  # a symbolic top k: 1 .. the experts
                experts = int(stand_in.size(route.index))
                k = max(1, min(experts, int(routed_k.subs(symbols))))
                stand_in = replace(stand_in, route=replace(route, top_k=k))
            return stand_in
    raise AssertionError("unreachable: the last trial raises")


def _sizes_at(
    structure: Structure, symbols: dict[Any, int], raise_if_too_large: bool
) -> dict[str, int] | None:
    """Every symbolic size at ``symbols``, or ``None`` if one passes the size limit."""
    import sympy

    floats = {sym: sympy.Float(v) for sym, v in symbols.items()}
    limit = current().max_size
    sizes = {}
    for index in structure.indices:
        if isinstance(index.size, int):
            continue
        # estimate first, in floating point (arbitrary exponent range, instant), so a
        # tower such as k^k^k is refused instead of computed exactly
        try:
            estimate = sympy.sympify(index.size).subs(floats).evalf(15)
            too_large = not estimate.is_finite or abs(estimate) > limit
        except (OverflowError, ValueError):  # past even mpmath's exponent range
            too_large = True
        if too_large:
            if not raise_if_too_large:
                return None
            stand_ins = ", ".join(f"{sym} = {v}" for sym, v in symbols.items())
            raise SizeError(
                f"even with the stand-in values {stand_ins}, the size of '{index.name}' = "
                f"{index.expr_text} is larger than the limit {limit:,}",
                index.expr.span if index.expr is not None else index.span,
                "symbolic analysis picks the contraction order at stand-in values: give the "
                "parameters values (--set), or write a size that grows less steeply",
            )
        exact = sympy.floor(sympy.sympify(index.size).subs(symbols) + sympy.Rational(1, 2))
        sizes[index.name] = max(1, int(exact))
    return sizes


def _prod(values: Iterable[Size]) -> Size:
    values = list(values)
    if all(isinstance(v, int) for v in values):
        return math.prod(values)
    import sympy

    return sympy.Mul(*values)


def _per_vector(total: Size, batch: int) -> Size:
    if isinstance(total, int):
        return total // batch if total % batch == 0 else Fraction(total, batch)

    return simplified(total / batch)


def count(structure: Structure, batch: int = 1, order: ContractionOrder | None = None) -> Counts:
    """Counts per input vector for a batch of ``batch`` vectors, along ``order`` (a
    compiled plan's) or the FLOP-minimal order at that batch (for a routed structure, the
    cheapest that can gate its tokens, as the planner runs it)."""
    if order is None:
        stand_in = concrete_stand_in(structure)
        order = routed_order(stand_in, batch) if structure.route else contraction_order(stand_in, batch)
    size = lambda i: batch if i == BATCH else structure.size(i)  # noqa: E731
    path, total, peak = [], 0, 0
    for k, step in enumerate(order.steps):
        touched = list(dict.fromkeys(i for idx in step.operand_indices for i in idx))
        cost = 2 * _prod(size(i) for i in touched)
        total = total + cost
        if k < len(order.steps) - 1:
            entries = _prod(size(i) for i in step.indices)
            peak = entries if peak == 0 else _max(peak, entries)
        path.append(PathStep(step.operands, step.result, step.indices, step.summed, _per_vector(cost, batch)))
    flops = _per_vector(total, batch)
    train = _per_vector(3 * total, batch)
    return Counts(batch, flops, train, _per_vector(peak, batch), tuple(path), order)


def _max(a: Size, b: Size) -> Size:
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    import sympy

    return sympy.Max(a, b)
