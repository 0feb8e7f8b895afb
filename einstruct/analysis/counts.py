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

from ..ir import Size, Structure
from ..planner.order import BATCH, ContractionOrder, contraction_order

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

    ``values`` maps parameter names to other stand-in values.
    """
    if not structure.is_symbolic:
        return structure
    import sympy

    values = values or {}
    symbols = {
        sym: values.get(str(sym), value)
        for i in structure.indices
        if not isinstance(i.size, int)
        for sym in i.size.free_symbols
    }
    indices = []
    for index in structure.indices:
        size = index.size
        if not isinstance(size, int):
            size = max(1, int(sympy.floor(sympy.sympify(size).subs(symbols) + sympy.Rational(1, 2))))
        indices.append(replace(index, size=size))
    return replace(structure, indices=tuple(indices))


def _prod(values: Iterable[Size]) -> Size:
    values = list(values)
    if all(isinstance(v, int) for v in values):
        return math.prod(values)
    import sympy

    return sympy.Mul(*values)


def _per_vector(total: Size, batch: int) -> Size:
    if isinstance(total, int):
        return total // batch if total % batch == 0 else Fraction(total, batch)
    import sympy

    return sympy.simplify(total / batch)


def count(structure: Structure, batch: int = 1) -> Counts:
    """Counts per input vector for a batch of ``batch`` vectors."""
    order = contraction_order(concrete_stand_in(structure), batch)
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
