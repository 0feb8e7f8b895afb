"""Parameter values: header defaults, overrides (``--set``, keyword arguments), symbols.

Parameters take their defaults in header order (a default may use earlier
parameters), then the overrides; with ``symbolic=True`` every parameter not
overridden becomes a positive sympy Symbol, and so does one declared without a
default.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from fractions import Fraction
from typing import Any

from ..errors import InvalidNameError, ParameterError, Span
from ..expressions import Expr, evaluate, exact, is_exact
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
            raise InvalidNameError(f"parameter '{name}' is declared twice", p.name.span)
        if name in overrides:
            value = overrides[name]
            if isinstance(value, str):
                value = parse_value(value, f"--set {name}")
            if isinstance(value, float):
                value = Fraction(value).limit_denominator(10**9)
            if isinstance(value, bool) or not (is_exact(value) or hasattr(value, "free_symbols")):
                value = evaluate(value, values)
            value = exact(value)
            if not is_finite(value) or (not is_exact(value) and value.is_real is False):
                raise ParameterError(f"parameter {name} = {value} is not a finite number", p.name.span)
            values[name] = value
        elif (symbolic and name not in fixed) or (p.default is None and name not in (defaulted or {})):
            values[name] = _symbol(name)
        elif p.default is None:
            values[name] = (defaulted or {})[name]
        else:
            value = evaluate(p.default, values)
            if not is_finite(value):
                raise ParameterError(f"parameter {name} has no finite value", _span_of(p.default))
            values[name] = value
    return values


def _span_of(expr: Expr) -> Span | None:
    return expr.span
