"""Structured muP (docs/taxonomy.md §4): per-factor fans, init scale and learning rates.

The conventions are the papers' (their code, compared on the same weights):

- **Order.** Factors are applied in the order they are written, the first one
  meeting the input; a factor that shares no index with the running activation
  waits until one does (``y = x * A[r, o] * B[i, r]`` applies B, then A). The
  planner may evaluate in another order for speed; init and learning rates do
  not change with it.
- **Fans.** At its step a factor acts as a batch of dense matrices: ``fan_in``
  is the product of the indices it sums away, ``fan_out`` of the indices it
  brings in; indices it shares with the activation and keeps (gamma, phi) are
  batch axes and count for neither.
- **Init.** ``std = sqrt(min(fan_in, fan_out)) / fan_in`` (spectral scaling).
- **Learning rates**, against a dense layer of the same shape, divided by the
  number of factors (the papers' tuned base learning rates assume it):
  Adam ``d_in / fan_in / n``; SGD ``(fan_out / fan_in) / (d_out / d_in) / n``,
  with ``d_in``, ``d_out`` the layer's declared widths (padding is no feature).
- **Routed (BTT-MoE).** The top-k gates of a token sum to one, so per token
  the routed index acts as one expert: it counts as size 1 in every fan.

    >>> fans = factor_fans(load("examples/btt.ein"))
    >>> fans["A"].fan_in, fans["A"].fan_out, fans["A"].init_std, fans["A"].lr_mult
    (32, 32, 0.1767766952966369, 16)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..ir import Size, Structure, Tensor
from ..numbers import simplified

__all__ = ["OPTIMIZERS", "FactorFans", "application_order", "factor_fans"]

#: Learning-rate rules by optimizer, before dividing by the number of factors:
#: lr_mult from (d_in, d_out, fan_in, fan_out), against a dense layer of shape d_in x d_out.
OPTIMIZERS: dict[str, Callable[[Size, Size, Size, Size], Any]] = {
    "adam": lambda d_in, d_out, fan_in, fan_out: _ratio(d_in, fan_in),
    "sgd": lambda d_in, d_out, fan_in, fan_out: _ratio(fan_out * d_in, fan_in * d_out),
}


def _init_std(fan_in: int, fan_out: int) -> float:
    """sqrt(min(fan_in, fan_out)) / fan_in, also for fans past the float range (sizes
    only raised limits admit), through logarithms.

    >>> _init_std(64, 16), math.isclose(_init_std(2**1100, 2**1100), 2.0**-550)
    (0.0625, True)
    """
    try:
        return math.sqrt(min(fan_in, fan_out)) / fan_in
    except OverflowError:
        return math.exp(0.5 * math.log(min(fan_in, fan_out)) - math.log(fan_in))


def _ratio(num: Size, den: Size) -> Any:
    """``num / den``, exact for integers (a float quotient of sizes past 2^53 is rounded)."""
    if isinstance(num, int) and isinstance(den, int):
        return Fraction(num, den)
    return num / den


@dataclass(frozen=True)
class FactorFans:
    """muP numbers of one factor at its step (``step`` counts from 0 in application order)."""

    name: str
    step: int
    fan_in: Size
    fan_out: Size
    init_std: Any  # float, or a sympy expression when sizes are symbolic
    lr_mult: Any


def _prod(values: list[Size]) -> Size:
    if all(isinstance(v, int) for v in values):
        return math.prod(values)
    import sympy

    return sympy.Mul(*values)


def application_order(structure: Structure) -> tuple[str, ...]:
    """Factor names in the order they meet the input: as written, a factor that
    shares no index with the running activation waiting until one does."""
    live = set(structure.input.indices)
    pending = list(structure.factors)
    order: list[Tensor] = []
    while pending:
        factor = next((f for f in pending if live & set(f.indices)), pending[0])
        pending.remove(factor)
        later = set(structure.output.indices).union(*(f.indices for f in pending))
        live = (live | set(factor.indices)) - {i for i in factor.indices if i in live and i not in later}
        order.append(factor)
    return tuple(f.name for f in order)


def _number(value: Any) -> Any:
    """An exact-looking number: integral quotients as int, others as float, sympy
    expressions simplified."""
    if isinstance(value, Fraction):
        if value.denominator == 1:
            return int(value)
        try:
            return float(value)
        except OverflowError:  # past the float range (sizes only raised limits admit): exact
            return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, int):
        return value

    return simplified(value)


def factor_fans(structure: Structure, optimizer: str = "adam") -> dict[str, FactorFans]:
    """Fans, init std and lr multiplier of each factor, in application order.

    Args:
        structure: the structure.
        optimizer: ``adam`` (lr ~ 1/fan_in) or ``sgd`` (lr ~ fan_out/fan_in).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{optimizer}'; choose one of {', '.join(OPTIMIZERS)}")
    routed = structure.route.index if structure.route is not None else None
    size = lambda index: 1 if index == routed else structure.size(index)  # noqa: E731
    sequence = application_order(structure)
    n = len(sequence)
    live = set(structure.input.indices)
    out: dict[str, FactorFans] = {}
    for step, name in enumerate(sequence):
        factor = structure.tensor(name)
        later = set(structure.output.indices)
        for other in sequence[step + 1 :]:
            later |= set(structure.tensor(other).indices)
        consumed = [i for i in factor.indices if i in live and i not in later]
        brought = [i for i in factor.indices if i not in live]
        fan_in = _prod([size(i) for i in consumed])
        fan_out = _prod([size(i) for i in brought])
        if isinstance(fan_in, int) and isinstance(fan_out, int):
            std: Any = _init_std(fan_in, fan_out)
        else:
            import sympy

            std = sympy.sqrt(sympy.Min(fan_in, fan_out)) / fan_in
        rule = OPTIMIZERS[optimizer](structure.in_features, structure.out_features, fan_in, fan_out)
        lr = _number(rule / n)
        out[name] = FactorFans(name, step, fan_in, fan_out, std, lr)
        live = (live | set(factor.indices)) - set(consumed)
    return out
