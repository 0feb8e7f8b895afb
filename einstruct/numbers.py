"""Exact numbers for people and for JSON: never scientific notation, never float-rounded counts.

Counts (params, FLOPs, bytes) are ``int``, ``Fraction`` (per-vector costs of
steps shared by a batch) or sympy expressions (symbolic sizes). People read
them positionally, grouped by thousands; rates and scales (init std, ratios)
get a few significant digits, still positional::

    >>> count_text(33554432), count_text(Fraction(131072, 3)), float_text(1.234e-05)
    ('33,554,432', '131072/3', '0.00001234')
    >>> plain_number(Fraction(33554432)), plain_number(Fraction(1, 3))
    ('33554432', '0.333333')
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

__all__ = ["is_symbolic", "json_number", "exponent_text", "float_text", "count_text", "plain_number"]


def is_symbolic(value: Any) -> bool:
    """Whether ``value`` is a sympy expression with free parameters."""
    return hasattr(value, "free_symbols") and bool(value.free_symbols)


def json_number(value: Any) -> Any:
    """A JSON-ready number: ints stay ints, exact rationals become floats,
    symbolic expressions become strings (and so do rationals past the float range,
    which JSON's numbers cannot carry: ``"p/q"`` as ``str`` writes it).

    >>> json_number(Fraction(3, 4)), json_number(Fraction(2**1100, 3)).endswith("/3")
    (0.75, True)
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Fraction) and value.denominator == 1:
        return int(value)
    if is_symbolic(value):
        return str(value)
    if getattr(value, "is_Integer", False):
        return int(value)
    try:
        return float(value)
    except OverflowError:  # sizes only raised limits admit
        return str(value)


def float_text(value: float | Fraction, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits, positional, trailing zeros dropped.

    Values of ``10**digits`` and more are rounded to an integer and grouped
    (``1,234,568``): the digits before the point are all significant to a reader.
    """
    number = Decimal(value.numerator) / Decimal(value.denominator) if isinstance(value, Fraction) else None
    if number is None:
        number = Decimal(repr(float(value)))
    if not number.is_finite():
        return str(float(value))
    if number == 0:
        return "0"
    if abs(number) >= 10**digits:
        return f"{int(number.to_integral_value()):,}"
    quantum = Decimal(1).scaleb(number.adjusted() - digits + 1)
    text = format(number.quantize(quantum), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def count_text(value: Any) -> str:
    """A count as people read it: ``1,234`` for integers, ``a/b`` for exact
    fractions, a positional float, or the expression for symbolic values."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Fraction) and value.denominator == 1:
        return f"{value.numerator:,}"
    if isinstance(value, float):
        return float_text(value)
    if getattr(value, "is_Integer", False):
        return f"{int(value):,}"
    return str(value)


def plain_number(value: Any, digits: int = 6) -> str:
    """A number without grouping: integers exactly, others to ``digits`` significant digits
    (what ``format(value, 'g')`` prints for small values, without its exponent)."""
    if isinstance(value, int) or (isinstance(value, Fraction) and value.denominator == 1):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return float_text(value, digits).replace(",", "")


def exponent_text(value: Any) -> str:
    """An exponent as people read it: ``1/2``, ``0``, ``0.5017`` or an expression."""
    if value is None:
        return "-"
    if isinstance(value, Fraction | int):
        return str(value)
    if isinstance(value, float):
        return float_text(value)
    if is_symbolic(value):
        return str(value)
    if getattr(value, "is_Rational", False):
        return str(value)
    return float_text(float(value))


#: sympy operations past which ``simplified`` takes the cheap normal form
SIMPLIFY_OPS = 80

#: roundings nested deeper than this send ``simplified`` to the cheap normal form
SIMPLIFY_ROUNDING_DEPTH = 2

#: the rounding functions a size can hold (sympy's, and the language's own)
_ROUNDINGS = frozenset({"floor", "ceiling", "Round", "sqrt_lo", "sqrt_hi"})


def _rounding_depth(expr: Any, memo: dict[Any, int] | None = None) -> int:
    """How deeply roundings nest in ``expr``: ``floor(1 + floor(d/2)/2)`` is 2.

    >>> import sympy; d = sympy.Symbol("d", positive=True)
    >>> _rounding_depth(sympy.floor(1 + sympy.floor(d / 2) / 2))
    2
    """
    memo = {} if memo is None else memo
    if expr in memo:
        return memo[expr]
    inner = max((_rounding_depth(a, memo) for a in expr.args), default=0)
    depth = inner + (type(expr).__name__ in _ROUNDINGS)
    memo[expr] = depth
    return depth


def _heavy(expr: Any) -> bool:
    """Whether sympy's simplify may take minutes on ``expr``: it expands powers of sums
    (``(m + n + k + 1)^8`` times another took minutes and gigabytes), and its time
    grows exponentially with nested roundings (``floor(1 + floor(1 + ...)/2)`` eight
    deep took 42 s, ten deep never finished)."""
    import sympy

    if sympy.count_ops(expr) > SIMPLIFY_OPS:
        return True
    if _rounding_depth(expr) > SIMPLIFY_ROUNDING_DEPTH:
        return True
    return any(
        isinstance(p.base, sympy.Add) and p.exp.is_Number and abs(p.exp) > 2 for p in expr.atoms(sympy.Pow)
    )


def simplified(value: Any) -> Any:
    """``value`` through sympy's simplify where that is quick, else a cheap normal form
    (one denominator, common factors out): symbolic sizes are for reading, and a size
    such as ``(m + n + k + 1)^8`` would be expanded term by term.

    >>> import sympy; d = sympy.Symbol("d", positive=True)
    >>> simplified(2 * d**2 / (4 * d))
    d/2
    """
    import sympy

    expr = sympy.sympify(value)
    if _heavy(expr):
        return sympy.factor_terms(sympy.together(expr))
    return sympy.simplify(expr)


def is_zero(value: Any) -> bool:
    """Whether the symbolic ``value`` is 0 (by simplify where that is quick, else by
    expanding: exact for the polynomials that make simplify slow)."""
    import sympy

    expr = sympy.sympify(value)
    return bool((sympy.expand(expr) if _heavy(expr) else sympy.simplify(expr)) == 0)
