"""The parsed spec: what a ``.ein`` file says, before any size is evaluated.

The parser produces a :class:`SpecFile` of declarations. An explicit
``structure name(...):`` block becomes a :class:`StructureDecl`; a one-line
``structure name = form(args)`` becomes a :class:`ShorthandDecl`, which the
catalog expands into a :class:`StructureDecl` once its argument values are known.
Every node keeps the :class:`~einstruct.errors.Span` it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Span
from ..expressions import Expr

__all__ = [
    "Ident",
    "TensorRef",
    "Equation",
    "SizeDecl",
    "RouteDecl",
    "ParamDecl",
    "StructureDecl",
    "ShorthandDecl",
    "Declaration",
    "SpecFile",
]


@dataclass(frozen=True)
class Ident:
    """A name as written, with its place."""

    name: str
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TensorRef:
    """``name[i, j, ...]`` in the einsum line."""

    name: Ident
    indices: tuple[Ident, ...]
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Equation:
    """``output = input * factor * ...``."""

    output: TensorRef
    operands: tuple[TensorRef, ...]
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SizeDecl:
    """``where a = b = expr``: the names on the left all get the size ``expr``."""

    names: tuple[Ident, ...]
    expr: Expr
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RouteDecl:
    """``route r top k``: rank index ``r`` is routed per token, ``k`` experts kept."""

    index: Ident
    top_k: Expr
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ParamDecl:
    """A header parameter, ``d = 1024``; ``default`` is ``None`` when left symbolic."""

    name: Ident
    default: Expr | None


@dataclass(frozen=True)
class StructureDecl:
    """An explicit structure block (also what every shorthand expands to)."""

    name: Ident
    params: tuple[ParamDecl, ...]
    equation: Equation
    sizes: tuple[SizeDecl, ...]
    route: RouteDecl | None
    span: Span | None = field(default=None, compare=False)
    origin: str = "explicit"


@dataclass(frozen=True)
class ShorthandDecl:
    """``structure name = form(key = value, ...)`` for a catalog form or ``theta``."""

    name: Ident
    form: Ident
    args: tuple[tuple[Ident, Expr], ...]
    span: Span | None = field(default=None, compare=False)


Declaration = StructureDecl | ShorthandDecl


@dataclass(frozen=True)
class SpecFile:
    """A parsed ``.ein`` file: its name, its text and its declarations in order."""

    file: str
    text: str
    declarations: tuple[Declaration, ...]

    def names(self) -> list[str]:
        """The structure names the file declares, in order."""
        return [d.name.name for d in self.declarations]
