"""Size expressions: the integer arithmetic of ``where`` clauses and parameters.

A size expression is a small immutable tree (:class:`Num`, :class:`Name`,
:class:`BinOp`, :class:`Neg`, :class:`Call`) that keeps the span of every node,
prints back as structure-language text, and evaluates exactly with sympy::

    >>> e = BinOp("^", Name("d"), BinOp("/", Num(1), Num(2)))
    >>> to_text(e)
    'd^(1/2)'
    >>> evaluate(e, {"d": 1024})
    32
    >>> evaluate(e, {"d": 1000})  # irrational: sympy takes over
    10*sqrt(10)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

from .errors import Span, UnknownNameError
from .splits import split

#: The binary operators other than ``^`` (whose exact form needs care).
_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}

__all__ = [
    "Expr",
    "Num",
    "Name",
    "BinOp",
    "Neg",
    "Call",
    "FUNCTIONS",
    "ROUNDING_FUNCTIONS",
    "Value",
    "evaluate",
    "exact",
    "is_exact",
    "to_text",
    "value_text",
    "names_in",
    "has_rounding",
    "sympy_to_text",
    "sympy_round",
    "sympy_split",
    "SPLIT_FUNCTIONS",
]

#: A value: ``int`` or ``Fraction`` when exact and rational (the fast path, no
#: sympy), otherwise a sympy expression (irrational, or symbolic parameters).
Value = Any


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


#: ``sqrt_lo(w)``, ``sqrt_hi(w)``: the two parts of a width, exact where a balanced split
#: exists (see :mod:`einstruct.splits`); their product covers w. Part 0 or 1 of the split.
SPLIT_FUNCTIONS = {"sqrt_lo": 0, "sqrt_hi": 1}


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
FUNCTIONS: dict[str, int] = {
    "round": 1, "floor": 1, "ceil": 1, "sqrt": 1, "min": 2, "max": 2, "sqrt_lo": 1, "sqrt_hi": 1,
}  # fmt: skip

#: Functions whose result is an integer by construction (they opt in to padding).
ROUNDING_FUNCTIONS = frozenset({"round", "floor", "ceil", "sqrt_lo", "sqrt_hi"})


class _Inexact(Exception):
    """The exact rational path cannot represent this value (irrational, complex, infinite)."""


@dataclass(frozen=True)
class Num:
    """A number literal: an integer or a decimal, kept exact."""

    value: Fraction
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Name:
    """A parameter name inside an expression."""

    id: str
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class BinOp:
    """``left op right`` with op one of ``+ - * / ^``."""

    op: str
    left: Expr
    right: Expr
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Neg:
    """Unary minus."""

    operand: Expr
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Call:
    """``func(args...)`` for a function in :data:`FUNCTIONS`."""

    func: str
    args: tuple[Expr, ...]
    span: Span | None = field(default=None, compare=False)


Expr = Num | Name | BinOp | Neg | Call

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "^": 4}


def to_text(expr: Expr) -> str:
    """Print an expression as structure-language text, with minimal parentheses."""
    return _text(expr, 0)


def _text(expr: Expr, outer: int) -> str:
    if isinstance(expr, Num):
        return _number_text(expr.value)
    if isinstance(expr, Name):
        return expr.id
    if isinstance(expr, Neg):
        s = "-" + _text(expr.operand, 3)
        return f"({s})" if outer >= 2 else s
    if isinstance(expr, Call):
        return f"{expr.func}({', '.join(_text(a, 0) for a in expr.args)})"
    prec = _PRECEDENCE[expr.op]
    if expr.op == "^":  # right associative: parenthesize a power on the left
        s = f"{_text(expr.left, prec + 1)}^{_text(expr.right, prec)}"
    elif isinstance(expr.left, Num) and isinstance(expr.right, Num):  # 1/2, tight
        s = f"{_text(expr.left, prec)}{expr.op}{_text(expr.right, prec + 1)}"
    else:  # left associative: parenthesize an equal-precedence right operand
        s = f"{_text(expr.left, prec)} {expr.op} {_text(expr.right, prec + 1)}"
    return f"({s})" if prec < outer else s


def _number_text(value: Fraction) -> str:
    """An exact decimal (what the parser reads back to the same value)."""
    if value.denominator == 1:
        return str(value.numerator)
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
        if digits > 30:
            raise ValueError(f"{value} has no finite decimal form")
    scaled = value.numerator * 10**digits // value.denominator
    sign, scaled = ("-", -scaled) if scaled < 0 else ("", scaled)
    whole, frac = divmod(scaled, 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d}"


def names_in(expr: Expr) -> list[Name]:
    """Every :class:`Name` node of ``expr``, in source order."""
    if isinstance(expr, Name):
        return [expr]
    if isinstance(expr, BinOp):
        return names_in(expr.left) + names_in(expr.right)
    if isinstance(expr, Neg):
        return names_in(expr.operand)
    if isinstance(expr, Call):
        return [n for a in expr.args for n in names_in(a)]
    return []


def has_rounding(expr: Expr) -> bool:
    """Whether the author wrapped any part of ``expr`` in round/floor/ceil."""
    if isinstance(expr, Call):
        return expr.func in ROUNDING_FUNCTIONS or any(has_rounding(a) for a in expr.args)
    if isinstance(expr, BinOp):
        return has_rounding(expr.left) or has_rounding(expr.right)
    if isinstance(expr, Neg):
        return has_rounding(expr.operand)
    return False


def is_exact(value: Value) -> bool:
    """Whether ``value`` is an exact rational of the fast path (int or Fraction)."""
    return isinstance(value, int | Fraction) and not isinstance(value, bool)


def exact(value: Value) -> Value:
    """Normalize: integral Fractions and sympy rationals become int/Fraction."""
    if isinstance(value, Fraction):
        return int(value) if value.denominator == 1 else value
    if is_exact(value):
        return value
    if getattr(value, "is_Rational", False):
        return exact(Fraction(int(value.p), int(value.q)))
    return value


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
            known = ", ".join(sorted(env)) or "none"
            raise UnknownNameError(
                f"unknown parameter '{name.id}'",
                name.span,
                f"sizes may use the structure's parameters ({known}); "
                f"declare it in the header, e.g. `structure s(d = 1024, {name.id} = 4):`",
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


def _power(base: Fraction, exponent: Fraction) -> Fraction:
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
        return Fraction(env[expr.id])
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
            return _power(args[0], Fraction(1, 2))
        if expr.func in SPLIT_FUNCTIONS:
            return Fraction(_split_part(args[0], SPLIT_FUNCTIONS[expr.func]))
        return min(args) if expr.func == "min" else max(args)
    left, right = _exact_eval(expr.left, env), _exact_eval(expr.right, env)
    if expr.op == "/" and right == 0:
        raise _Inexact
    return _power(left, right) if expr.op == "^" else _ARITHMETIC[expr.op](left, right)


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
        return -_sympy_eval(expr.operand, env)
    if isinstance(expr, Call):
        return _sympy_function(expr.func)(*(_sympy_eval(a, env) for a in expr.args))
    left, right = _sympy_eval(expr.left, env), _sympy_eval(expr.right, env)
    return left**right if expr.op == "^" else _ARITHMETIC[expr.op](left, right)


def value_text(value: Value) -> str:
    """A value in structure-language syntax (``4096``, ``1/2``, ``d``, ``2^(1/2)``)."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Fraction):
        return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)
    return sympy_to_text(value)


def sympy_to_text(value: Any) -> str:
    """Print a sympy value or expression in structure-language syntax."""
    import sympy

    text = sympy.sstr(value)
    for old, new in (("**", "^"), ("ceiling(", "ceil("), ("Round(", "round(")):
        text = text.replace(old, new)
    return text
