"""Exact evaluation of size expressions, with the resource guards.

Rational arithmetic runs on ``int``/``Fraction`` without sympy; an irrational
intermediate (``1000^(1/2)``) or a symbolic parameter switches to sympy for
the whole expression. Either way every value is checked against the digit
limit (:mod:`einstruct.limits`) as it is computed, and a power is refused from
its logarithm before it is computed, so no expression can hang or exhaust
memory; a value that is not real is refused at its node.

    >>> e = BinOp("^", Name("d"), BinOp("/", Num(1), Num(2)))
    >>> evaluate(e, {"d": 1024})
    32
    >>> evaluate(e, {"d": 1000})  # irrational: sympy takes over
    10*sqrt(10)
"""

from __future__ import annotations

import keyword
import math
import operator
from collections.abc import Callable, Mapping
from fractions import Fraction
from functools import lru_cache
from typing import Any

from .errors import SizeError, Span, UnknownNameError
from .expressions import (
    SPLIT_FUNCTIONS,
    Call,
    Expr,
    Name,
    Neg,
    Num,
    Value,
    exact,
    is_exact,
    names_in,
    to_text,
    value_text,
)
from .limits import ENVIRONMENT, current
from .splits import split

__all__ = ["evaluate", "check_magnitude", "sympy_round", "sympy_split"]

_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


@lru_cache(maxsize=1)
def sympy_round() -> Any:
    """The sympy function ``Round(x) = floor(x + 1/2)`` (built on first use)."""
    import sympy

    class Round(sympy.Function):
        """Round half up to the nearest integer, exactly."""

        @classmethod
        def eval(cls, arg: Any) -> Any:  # noqa: D102 - sympy protocol
            if arg.is_number:
                return sympy.floor(arg + sympy.Rational(1, 2))
            return None

    return Round


def _split_part(value: Fraction, part: int) -> int:
    """Part ``part`` of the split of ``value`` rounded up to a whole width (at least 1)."""
    return split(max(1, math.ceil(value)))[part]


@lru_cache(maxsize=2)
def sympy_split(name: str) -> Any:
    """The sympy function ``sqrt_lo`` or ``sqrt_hi`` (built on first use; unevaluated when symbolic)."""
    import sympy

    part = SPLIT_FUNCTIONS[name]

    def eval_(cls: Any, arg: Any) -> Any:
        if arg.is_number and arg.is_real:
            return sympy.Integer(_split_part(Fraction(str(sympy.ceiling(arg))), part))
        return None

    return type(
        name, (sympy.Function,), {"eval": classmethod(eval_), "is_integer": True, "is_positive": True}
    )


def _sympy_function(name: str) -> Callable[..., Any]:
    import sympy

    if name in SPLIT_FUNCTIONS:
        return sympy_split(name)
    return {
        "round": sympy_round(),
        "floor": sympy.floor,
        "ceil": sympy.ceiling,
        "sqrt": sympy.sqrt,
        "min": sympy.Min,
        "max": sympy.Max,
    }[name]


#: Functions the language knows, by name, with their arity.
class _Inexact(Exception):
    """The exact rational path cannot represent this value (irrational, complex, infinite)."""


def evaluate(expr: Expr, env: Mapping[str, Value]) -> Value:
    """Evaluate exactly; names are looked up in ``env``.

    With rational inputs the result is an ``int`` or ``Fraction`` computed without
    sympy; an irrational intermediate (``1000^(1/2)``) or a symbolic parameter
    switches to sympy for the whole expression.

    Raises:
        UnknownNameError: a name that ``env`` does not hold, pointing at it.
    """
    for name in names_in(expr):
        if name.id not in env:
            known = sorted(env)
            declare = (
                f"declare it in the header, e.g. `structure s({', '.join([*known, f'{name.id} = 4'])}):`"
                if name.id.isidentifier() and not keyword.iskeyword(name.id) and not name.id.startswith("_")
                else "use one of them"
            )
            raise UnknownNameError(
                f"unknown parameter '{name.id}'",
                name.span,
                f"sizes may use the structure's parameters ({', '.join(known) or 'none'}); {declare}",
            )
    if all(is_exact(env[n.id]) for n in names_in(expr)):
        try:
            return exact(_exact_eval(expr, env))
        except _Inexact:
            pass
    return exact(_sympy_eval(expr, env))


def _root(value: int, q: int) -> int:
    """The exact q-th root of a non-negative integer; raises _Inexact otherwise."""
    guess = round(value ** (1.0 / q)) if value < 2**1000 else int(math.exp(math.log(value) / q))
    for candidate in range(max(0, guess - 2), guess + 3):
        if candidate**q == value:
            return candidate
    raise _Inexact


def _limit_bits() -> int:
    """Binary digits an exact value may have (``max_digits`` decimal digits)."""
    return current().max_digits * 10 // 3 + 1


def _too_large(text: str, span: Span | None, small: bool = False) -> SizeError:
    limit = current().max_digits
    what = "too close to 0" if small else "too large"
    return SizeError(
        f"{text} is {what} for a size (more than {limit} digits)",
        span,
        f"sizes are far smaller: check the expression; if you need it, raise {ENVIRONMENT['max_digits']}",
    )


def _fits(value: Fraction) -> bool:
    bits = _limit_bits()
    return value.numerator.bit_length() <= bits and value.denominator.bit_length() <= bits


def check_magnitude(value: Value, text: str, span: Span | None) -> None:
    """Refuse an exact value with more digits than the limit (``text`` names it in the error)."""
    if is_exact(value) and not _fits(Fraction(value)):
        raise _too_large(text, span, small=abs(Fraction(value)) < 1)


def _checked(value: Fraction, expr: Expr) -> Fraction:
    """``value``, if its numerator and denominator fit the digit limit."""
    if not _fits(value):
        raise _too_large(to_text(expr), expr.span, small=abs(value) < 1)
    return value


def _power_fits(base_bits: float, exponent: float, expr: Expr, small: bool = False) -> None:
    """Refuse, before computing it, a power whose result would break the digit limit
    (``small``: the result is near 0, a base above 1 to a negative power or the reverse)."""
    if abs(exponent) * base_bits > _limit_bits():
        raise _too_large(to_text(expr), expr.span, small)


def _log2(n: int) -> float:
    """log2 |n| (0 for 0 and 1): the bits a power's estimate counts per factor of ``n``
    (not ``bit_length``, which counts 2 as 2 bits and refused 2^200 / 2^190)."""
    return math.log2(abs(n)) if n else 0.0


def _power(base: Fraction, exponent: Fraction, expr: Expr) -> Fraction:
    bits = max(_log2(base.numerator), _log2(base.denominator))
    _power_fits(bits, float(exponent), expr, small=(abs(base) < 1) != (exponent < 0))
    if exponent.denominator == 1:
        if base == 0 and exponent < 0:
            raise _Inexact
        return base ** int(exponent)
    if base < 0:
        raise _Inexact
    p, q = exponent.numerator, exponent.denominator
    if abs(p) > 64 or q > 64:
        raise _Inexact
    root = Fraction(_root(base.numerator, q), _root(base.denominator, q))
    if root == 0 and p < 0:
        raise _Inexact
    return root**p


def _exact_eval(expr: Expr, env: Mapping[str, Value]) -> Fraction:
    if isinstance(expr, Num):
        return expr.value
    if isinstance(expr, Name):
        return _checked(Fraction(env[expr.id]), expr)
    if isinstance(expr, Neg):
        return -_exact_eval(expr.operand, env)
    if isinstance(expr, Call):
        args = [_exact_eval(a, env) for a in expr.args]
        if expr.func == "round":
            return Fraction(math.floor(args[0] + Fraction(1, 2)))
        if expr.func == "floor":
            return Fraction(math.floor(args[0]))
        if expr.func == "ceil":
            return Fraction(math.ceil(args[0]))
        if expr.func == "sqrt":
            return _power(args[0], Fraction(1, 2), expr)
        if expr.func in SPLIT_FUNCTIONS:
            if args[0] <= 0:
                raise SizeError(
                    f"{expr.func}() splits a width, which must be positive; got {value_text(args[0])}",
                    expr.span,
                    "give the width to split, e.g. sqrt_lo(d)",
                )
            return Fraction(_split_part(args[0], SPLIT_FUNCTIONS[expr.func]))
        return min(args) if expr.func == "min" else max(args)
    left, right = _exact_eval(expr.left, env), _exact_eval(expr.right, env)
    if expr.op == "/" and right == 0:
        raise _Inexact
    if expr.op == "^":
        return _checked(_power(left, right, expr), expr)
    return _checked(_ARITHMETIC[expr.op](left, right), expr)


def _to_sympy(value: Value) -> Any:
    import sympy

    if isinstance(value, Fraction):
        return sympy.Rational(value.numerator, value.denominator)
    if isinstance(value, int):
        return sympy.Integer(value)
    return value


def _sympy_eval(expr: Expr, env: Mapping[str, Value]) -> Any:
    import sympy

    if isinstance(expr, Num):
        return sympy.Rational(expr.value.numerator, expr.value.denominator)
    if isinstance(expr, Name):
        return _to_sympy(env[expr.id])
    if isinstance(expr, Neg):
        return _real(-_sympy_eval(expr.operand, env), expr)
    if isinstance(expr, Call):
        return _real(_sympy_function(expr.func)(*(_sympy_eval(a, env) for a in expr.args)), expr)
    left, right = _sympy_eval(expr.left, env), _sympy_eval(expr.right, env)
    if expr.op != "^":
        return _real(_ARITHMETIC[expr.op](left, right), expr)
    if left.is_number and right.is_number and left != 0:
        magnitude = abs(float(sympy.log(abs(left), 2)))  # bits of the base, or of its inverse
        _power_fits(magnitude, float(abs(right)), expr)
    return _real(left**right, expr)


def _real(value: Any, expr: Expr) -> Any:
    """``value``, unless it is a number that is infinite (a division by zero) or not real
    (a negative base to a fractional power)."""
    if getattr(value, "is_number", False) and value.is_finite is False:
        raise SizeError(
            f"{to_text(expr)} divides by zero",
            expr.span,
            "check the divisors: every size must be a positive integer",
        )
    if getattr(value, "is_number", False) and value.is_extended_real is False:
        raise SizeError(
            f"{to_text(expr)} is not a real number",
            expr.span,
            "sizes are positive reals: a negative number has no real square root, and "
            "(-8)^(1/3) is complex here (the principal root); write 8^(1/3) or -2",
        )
    if getattr(value, "is_number", False) and value.is_finite and value.is_extended_real:
        if abs(value) > 10 ** current().max_digits:
            raise _too_large(to_text(expr), expr.span)
    return value
