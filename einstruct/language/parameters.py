"""Parameter values: header defaults, overrides (``--set``, keyword arguments), symbols.

Parameters take their defaults in header order (a default may use earlier
parameters), then the overrides; with ``symbolic=True`` every parameter not
overridden becomes a positive sympy Symbol, and so does one declared without a
default.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from fractions import Fraction
from typing import Any

from ..errors import InvalidNameError, ParameterError
from ..evaluation import check_magnitude, evaluate
from ..expressions import (
    BinOp,
    Call,
    Expr,
    Name,
    Neg,
    Num,
    exact,
    is_exact,
    names_in,
    span_of,
)
from .names import check_name
from .parser import parse_value
from .spec import Declaration, ParamDecl

__all__ = ["Override", "parameter_values", "is_finite", "is_symbolic"]

#: What an override may be: a number, a fraction, text like "1/2", or a parsed expression.
Override = Any  # int | Fraction | str | Expr | sympy expression


def _symbol(name: str) -> Any:
    import sympy

    return sympy.Symbol(name, positive=True)


def is_symbolic(value: Any) -> bool:
    """Whether ``value`` depends on a parameter left symbolic."""
    return not is_exact(value) and bool(value.free_symbols)


def is_finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (or an expression that may be one)."""
    if is_exact(value):
        return True
    import sympy

    return not value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo) and value.is_finite is not False


def parameter_values(
    decl: Declaration,
    params: tuple[ParamDecl, ...],
    overrides: dict[str, Override],
    symbolic: bool,
    defaulted: Mapping[str, Any] | None = None,
    fixed: AbstractSet[str] = frozenset(),
) -> dict[str, Any]:
    """Every parameter's value, in header order: an override, else the default, else a symbol.

    Raises:
        ParameterError: an override no parameter takes, a value of the wrong type,
            NaN or infinite, or a default that uses a parameter declared after it.
    """
    known = [p.name.name for p in params]
    for name in overrides:
        if name not in known:
            raise ParameterError(
                f"structure '{decl.name.name}' has no parameter '{name}'",
                decl.name.span,
                f"its parameters are {', '.join(known) or 'none'}",
            )
    values: dict[str, Any] = {}
    for p in params:
        name = p.name.name
        check_name(p.name, "parameter")
        if name in values:
            raise InvalidNameError(
                f"parameter '{name}' is declared twice",
                p.name.span,
                f"keep one '{name}' in the header of '{decl.name.name}'",
            )
        if name in overrides:
            values[name] = _override(name, overrides[name], values, p, known)
        elif (symbolic and name not in fixed) or (p.default is None and name not in (defaulted or {})):
            values[name] = _symbol(name)
        elif p.default is None:
            values[name] = (defaulted or {})[name]
        else:
            _check_order(name, p.default, known)
            value = evaluate(p.default, values)
            if not is_finite(value):
                raise ParameterError(
                    f"parameter {name} has no finite value",
                    span_of(p.default),
                    "check the default for a division by zero",
                )
            values[name] = value
    return values


def _check_order(name: str, default: Expr, known: list[str]) -> None:
    """A default may use the parameters declared before it, not itself or later ones."""
    for ref in names_in(default):
        if ref.id == name:
            raise ParameterError(
                f"the default of parameter '{name}' uses '{name}' itself",
                ref.span,
                f"give {name} a value that does not depend on {name}",
            )
        if ref.id in known and known.index(ref.id) > known.index(name):
            raise ParameterError(
                f"the default of parameter '{name}' uses '{ref.id}', which is declared after it",
                ref.span,
                f"declare {ref.id} before {name} in the header",
            )


def _override(name: str, value: Any, values: dict[str, Any], p: ParamDecl, known: list[str]) -> Any:
    """An override's exact value: ints (numpy's too), Fractions, finite floats, text or an
    expression; anything else is a ParameterError."""
    if isinstance(value, str):
        value = parse_value(value, f"--set {name}")
    if isinstance(value, Num | Name | BinOp | Neg | Call):
        _check_references(name, value, values, known)
        value = evaluate(value, values)
    elif isinstance(value, bool) or not (isinstance(value, numbers.Number) or hasattr(value, "free_symbols")):
        raise ParameterError(
            f"parameter {name} must be a number or an expression, got {type(value).__name__} {value!r:.60}",
            p.name.span,
            f"give an int, a Fraction or text such as '2^12', e.g. {name}=4096",
        )
    elif isinstance(value, numbers.Integral):
        value = int(value)
    elif isinstance(value, numbers.Rational):
        value = Fraction(int(value.numerator), int(value.denominator))
    elif isinstance(value, numbers.Real) and math.isfinite(value):
        value = Fraction(float(value)).limit_denominator(10**9)
    elif isinstance(value, numbers.Number):
        raise ParameterError(
            f"parameter {name} = {value!r} is not a finite real number",
            p.name.span,
            f"give a finite value, e.g. {name}=4096",
        )
    value = exact(value)
    if not is_finite(value) or (not is_exact(value) and value.is_real is False):
        raise ParameterError(
            f"parameter {name} = {value} is not a finite real number",
            p.name.span,
            f"give a finite value, e.g. {name}=4096",
        )
    check_magnitude(value, f"parameter {name}", p.name.span)
    return value


def _check_references(name: str, value: Expr, values: dict[str, Any], known: list[str]) -> None:
    """An override may use the parameters declared before its own, as a default may."""
    for ref in names_in(value):
        if ref.id in values:
            continue
        if ref.id == name:
            why = f"'{name}' itself"
        elif ref.id in known:
            why = f"'{ref.id}', which is declared after {name}"
        else:
            why = f"'{ref.id}', which is not a parameter"
        raise ParameterError(
            f"the value given for {name} uses {why}",
            ref.span,
            f"a value may use the parameters declared before {name}: {', '.join(values) or 'none'}",
        )
