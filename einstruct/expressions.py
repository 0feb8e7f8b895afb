"""Size expressions: the immutable trees of ``where`` clauses and parameters, and their text.

A size expression is a small immutable tree (:class:`Num`, :class:`Name`,
:class:`BinOp`, :class:`Neg`, :class:`Call`) that keeps the span of every node
and prints back as structure-language text; :mod:`einstruct.evaluation`
computes its value exactly::

    >>> e = BinOp("^", Name("d"), BinOp("/", Num(1), Num(2)))
    >>> to_text(e)
    'd^(1/2)'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .errors import Span

#: The binary operators other than ``^`` (whose exact form needs care).

__all__ = [
    "span_of",
    "Expr",
    "Num",
    "Name",
    "BinOp",
    "Neg",
    "Call",
    "FUNCTIONS",
    "ROUNDING_FUNCTIONS",
    "Value",
    "exact",
    "is_exact",
    "to_text",
    "value_text",
    "names_in",
    "has_rounding",
    "sympy_to_text",
    "SPLIT_FUNCTIONS",
]

#: A value: ``int`` or ``Fraction`` when exact and rational (the fast path, no
#: sympy), otherwise a sympy expression (irrational, or symbolic parameters).
Value = Any


#: Functions the language knows, by name, with their arity.
FUNCTIONS: dict[str, int] = {
    "round": 1, "floor": 1, "ceil": 1, "sqrt": 1, "min": 2, "max": 2, "sqrt_lo": 1, "sqrt_hi": 1,
}  # fmt: skip

#: ``sqrt_lo(w)``, ``sqrt_hi(w)``: the two parts of a width, exact where a balanced split
#: exists (see :mod:`einstruct.splits`); their product covers w. Part 0 or 1 of the split.
SPLIT_FUNCTIONS = {"sqrt_lo": 0, "sqrt_hi": 1}

#: Functions whose result is an integer by construction (they opt in to padding).
ROUNDING_FUNCTIONS = frozenset({"round", "floor", "ceil", "sqrt_lo", "sqrt_hi"})


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
    """An exact decimal (what the parser reads back to the same value); a fraction
    with no finite decimal form prints as ``(p/q)``."""
    if value.denominator == 1:
        return str(value.numerator)
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
        if digits > 30:
            return f"({value.numerator}/{value.denominator})"
    scaled = value.numerator * 10**digits // value.denominator
    sign, scaled = ("-", -scaled) if scaled < 0 else ("", scaled)
    whole, frac = divmod(scaled, 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d}"


def span_of(expr: Expr) -> Span | None:
    """Where ``expr`` is written: its own span, else its first name's (for a value made
    by evaluation)."""
    if expr.span is not None:
        return expr.span
    names = names_in(expr)
    return names[0].span if names else None


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
