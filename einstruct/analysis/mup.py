"""Structured muP (BACKGROUND §4): per-factor fans, init scale and learning rates.

Along the evaluation order, each factor acts as a batch of dense matrices: its
``fan_in`` is the product of the indices it sums away at its step, its
``fan_out`` the product of the indices it brings in; indices it shares with the
running activation and keeps (gamma, phi) are batch axes and count for neither.

    >>> fans = factor_fans(load("examples/btt.ein"), ("A", "B"))
    >>> fans["A"].fan_in, fans["A"].fan_out, fans["A"].init_std, fans["A"].lr_mult
    (32, 32, 0.1767766952966369, 32)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..ir import Size, Structure

__all__ = ["OPTIMIZERS", "FactorFans", "factor_fans"]

#: Learning-rate rules by optimizer: lr_mult from (d_in, fan_in, fan_out).
OPTIMIZERS = {
    "adam": lambda d_in, fan_in, fan_out: d_in / fan_in,
    "sgd": lambda d_in, fan_in, fan_out: fan_out / fan_in,
}


@dataclass(frozen=True)
class FactorFans:
    """muP numbers of one factor at its step."""

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


def factor_fans(
    structure: Structure, sequence: Sequence[str], optimizer: str = "adam"
) -> dict[str, FactorFans]:
    """Fans, init std and lr multiplier of each factor, applied in ``sequence``.

    Args:
        structure: the structure.
        sequence: factor names in the order they meet the input
            (``contraction_order(...).factor_sequence``).
        optimizer: ``adam`` (lr ~ 1/fan_in) or ``sgd`` (lr ~ fan_out/fan_in).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{optimizer}'; choose one of {', '.join(OPTIMIZERS)}")
    live = set(structure.input.indices)
    out: dict[str, FactorFans] = {}
    for step, name in enumerate(sequence):
        factor = structure.tensor(name)
        later = set(structure.output.indices)
        for other in sequence[step + 1 :]:
            later |= set(structure.tensor(other).indices)
        consumed = [i for i in factor.indices if i in live and i not in later]
        brought = [i for i in factor.indices if i not in live]
        fan_in = _prod([structure.size(i) for i in consumed])
        fan_out = _prod([structure.size(i) for i in brought])
        if isinstance(fan_in, int) and isinstance(fan_out, int):
            std: Any = math.sqrt(min(fan_in, fan_out)) / fan_in
        else:
            import sympy

            std = sympy.sqrt(sympy.Min(fan_in, fan_out)) / fan_in
        # against a dense layer of the layer's own width (padding is not a feature)
        lr = OPTIMIZERS[optimizer](structure.in_features, fan_in, fan_out)
        if not isinstance(lr, int | float):
            import sympy

            lr = sympy.simplify(lr)
        elif isinstance(lr, float) and lr.is_integer():
            lr = int(lr)
        out[name] = FactorFans(name, step, fan_in, fan_out, std, lr)
        live = (live | set(factor.indices)) - set(consumed)
    return out
