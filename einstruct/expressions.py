"""Size expressions: the integer arithmetic of ``where`` clauses and parameters.

A size expression is a small immutable tree (:class:`Num`, :class:`Name`,
:class:`BinOp`, :class:`Neg`, :class:`Call`) that keeps the span of every node,
prints back as structure-language text, and evaluates exactly with sympy::

    >>> e = BinOp("^", Name("d"), BinOp("/", Num(1), Num(2)))
    >>> to_text(e)
    'd^(1/2)'
    >>> evaluate(e, {"d": sympy.Integer(1024)})
    32
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import sympy

from .errors import Span, UnknownNameError

__all__ = [
    "Expr",
    "Num",
    "Name",
    "BinOp",
    "Neg",
    "Call",
    "FUNCTIONS",
    "ROUNDING_FUNCTIONS",
    "Round",
    "evaluate",
    "to_text",
    "names_in",
    "has_rounding",
    "sympy_to_text",
]


class Round(sympy.Function):
    """Round half up to the nearest integer, exactly: ``Round(x) = floor(x + 1/2)``."""

    @classmethod
    def eval(cls, arg):  # noqa: D102 - sympy protocol
        if arg.is_number:
            return sympy.floor(arg + sympy.Rational(1, 2))
        return None


#: Functions the language knows, by name, with their arity.
FUNCTIONS: dict[str, tuple[int, Callable[..., sympy.Expr]]] = {
    "round": (1, Round),
    "floor": (1, sympy.floor),
    "ceil": (1, sympy.ceiling),
    "sqrt": (1, sympy.sqrt),
    "min": (2, sympy.Min),
    "max": (2, sympy.Max),
}

#: Functions whose result is an integer by construction (they opt in to padding).
ROUNDING_FUNCTIONS = frozenset({"round", "floor", "ceil"})


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


def evaluate(expr: Expr, env: Mapping[str, sympy.Expr]) -> sympy.Expr:
    """Evaluate exactly with sympy; names are looked up in ``env``.

    Raises:
        UnknownNameError: a name that ``env`` does not hold, pointing at it.
    """
    if isinstance(expr, Num):
        return sympy.Rational(expr.value.numerator, expr.value.denominator)
    if isinstance(expr, Name):
        if expr.id not in env:
            known = ", ".join(sorted(env)) or "none"
            raise UnknownNameError(
                f"unknown parameter '{expr.id}'",
                expr.span,
                f"sizes may use the structure's parameters ({known}); "
                "declare it in the header, e.g. `structure s(d = 1024, "
                f"{expr.id} = 4):`",
            )
        return env[expr.id]
    if isinstance(expr, Neg):
        return -evaluate(expr.operand, env)
    if isinstance(expr, Call):
        _, fn = FUNCTIONS[expr.func]
        return fn(*(evaluate(a, env) for a in expr.args))
    left, right = evaluate(expr.left, env), evaluate(expr.right, env)
    if expr.op == "+":
        return left + right
    if expr.op == "-":
        return left - right
    if expr.op == "*":
        return left * right
    if expr.op == "/":
        return left / right
    return left**right


def sympy_to_text(value: sympy.Expr) -> str:
    """Print a sympy value or expression in structure-language syntax."""
    text = sympy.sstr(value)
    for old, new in (("**", "^"), ("ceiling(", "ceil("), ("Round(", "round(")):
        text = text.replace(old, new)
    return text
