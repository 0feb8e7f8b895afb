"""Parse structure-language text into a :class:`~einstruct.spec.SpecFile`.

    >>> spec = parse_text("structure m = monarch(d = 16)\\n", "m.ein")
    >>> spec.names()
    ['m']

Syntax errors become :class:`~einstruct.errors.SpecSyntaxError` with the place,
the line, a caret and what was expected there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedInput

from ..errors import EinstructError, ParameterError, Span, SpecSyntaxError
from ..expressions import FUNCTIONS, BinOp, Call, Expr, Name, Neg, Num, span_of
from ..limits import ENVIRONMENT, current
from ..reading import read_bounded, shown_path
from ..resources import grammar_file
from .guards import check_nesting, check_tokens, check_tree
from .names import normalize_name
from .parser_cache import private_cache_file
from .spec import (
    Declaration,
    Equation,
    Ident,
    ParamDecl,
    RouteDecl,
    ShorthandDecl,
    SizeDecl,
    SpecFile,
    StructureDecl,
    TensorRef,
)
from .syntax_errors import syntax_error

__all__ = ["parse_text", "parse_bytes", "parse_file", "parse_value", "source_lines"]


@cache
def _parser(start: str) -> Lark:
    options = dict(parser="lalr", start=start, propagate_positions=True, maybe_placeholders=True)
    text = grammar_file().read_text(encoding="utf-8")
    cache_file = private_cache_file(f"lark-{start}.pickle")  # never the shared temp dir
    if cache_file is not None:
        try:
            return Lark(text, cache=cache_file, **options)
        except OSError:  # the cache cannot be written: build without it
            pass
    return Lark(text, **options)


def parse_file(path: str | Path) -> SpecFile:
    """Read and parse a ``.ein`` file (``-`` is not handled here: read it yourself)."""
    path = Path(path)
    limit = current().max_input_bytes
    data = read_bounded(
        path,
        limit,
        "spec file",
        ENVIRONMENT["max_input_bytes"],
        hint="check the file name (the command's input is a .ein file, or - for standard input)",
    )
    return parse_bytes(data, shown_path(path))  # a line break in the name cannot split a message


def parse_bytes(data: bytes, file: str) -> SpecFile:
    """Parse spec bytes (UTF-8); a byte that is not UTF-8 is a located error."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _encoding_error(data, exc.start, file) from None
    return parse_text(text, file)


def _encoding_error(data: bytes, start: int, file: str) -> EinstructError:
    """Where the first byte that is not UTF-8 stands, as a located error."""
    line_start = data.rfind(b"\n", 0, start) + 1
    line_end = data.find(b"\n", start)
    line = data.count(b"\n", 0, start) + 1
    column = len(data[line_start:start].decode("utf-8")) + 1
    text = data[line_start : line_end if line_end >= 0 else len(data)].decode("utf-8", errors="replace")
    return EinstructError(
        f"byte 0x{data[start]:02x} is not UTF-8 text",
        Span(file=file, line=line, column=column, source_line=text),
        "save the file as UTF-8",
    )


def parse_text(text: str, file: str = "<string>") -> SpecFile:
    """Parse spec text; ``file`` is the name used in error messages. A byte-order mark
    at the start (which some editors write) is skipped, as Python skips it."""
    text = text.removeprefix("\ufeff")
    lines = source_lines(text)
    source = text if text.endswith("\n") else text + "\n"
    _check_line_endings(text, file, lines)
    check_nesting(text, file, lines)
    check_tokens(text, file, lines)
    try:
        tree = _parser("start").parse(source)
    except UnexpectedInput as exc:
        raise syntax_error(exc, lines, file, source, _parser("start")) from None
    check_tree(tree, file, lines)
    declarations = _transformed(tree, file, lines)
    _check_unique_names(declarations)
    return SpecFile(file=file, text=text, declarations=tuple(declarations))


_LONE_CR = re.compile(r"\r(?!\n)")


def _check_line_endings(text: str, file: str, lines: list[str]) -> None:
    """Refuse a carriage return that no line feed follows (old Mac OS line endings, or a
    stray one): the grammar breaks lines at ``\\n`` only, so a comment ran on past it and
    swallowed the rest of the file ("declares no structure"), and elsewhere it was an
    "unexpected character" where the user sees a line break."""
    lone = _LONE_CR.search(text)
    if lone is None:
        return
    start = lone.start()
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    raise SpecSyntaxError(
        "unexpected character '\\r': a carriage return with no line feed after it is not a "
        "line break here (lines end in \\n or \\r\\n)",
        Span.at(file, lines, line, column),
        "save the file with Unix (\\n) or Windows (\\r\\n) line endings, or remove the stray \\r",
    )


def source_lines(text: str) -> list[str]:
    """The lines of ``text`` as the grammar counts them: split at ``\\n`` only.

    ``str.splitlines`` also splits at form feeds, ``\\x1c``-``\\x1e``, NEL and the
    Unicode line and paragraph separators, which the grammar does not treat as
    line breaks; splitting there would put carets under the wrong line.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def parse_value(text: str, where: str = "--set") -> Expr:
    """Parse a value given outside a file (``--set d=4096``): an expression."""
    check_nesting(text, where, source_lines(text))
    try:
        tree = _parser("value").parse(text)
    except UnexpectedInput:
        raise ParameterError(
            f"{where}: '{text}' is not a value",
            hint="give a number or an expression such as 4096, 1/2 or 2^10",
        ) from None
    lines = source_lines(text)
    check_tree(tree, where, lines)
    return _transformed(tree, where, lines).children[0]


def _transformed(tree: Any, file: str, lines: list[str]) -> Any:
    """``tree`` through the transformer, an error it raises unwrapped from lark's."""
    try:
        return _ToSpec(file, lines).transform(tree)
    except Exception as exc:  # lark wraps errors raised inside the transformer
        inner = getattr(exc, "orig_exc", exc)
        if isinstance(inner, EinstructError):
            raise inner from None
        raise


def _check_unique_names(declarations: list[Declaration]) -> None:
    seen: dict[str, Ident] = {}
    for decl in declarations:
        if decl.name.name in seen:
            first = seen[decl.name.name].span
            raise SpecSyntaxError(
                f"structure '{decl.name.name}' is declared twice"
                + (f" (first at line {first.line})" if first else ""),
                decl.name.span,
                "give each structure in a file its own name",
            )
        seen[decl.name.name] = decl.name


def _binop(op: str) -> Callable[..., BinOp]:
    """A transformer method that builds ``left op right``."""

    @v_args(meta=True)
    def build(self: _ToSpec, meta: Any, children: list[Expr]) -> BinOp:
        left, right = children
        return BinOp(op, left, right, self._meta(meta))

    return build


class _ToSpec(Transformer):
    """Turn the Lark tree into spec nodes, attaching a span to each."""

    def __init__(self, file: str, lines: list[str]):
        super().__init__()
        self._file = file
        self._lines = lines

    # -- spans -------------------------------------------------------------
    def _tok(self, token: Token) -> Span:
        return Span.at(self._file, self._lines, token.line or 1, token.column or 1, len(token))

    def _meta(self, meta: Any) -> Span:
        if getattr(meta, "empty", False):
            return Span.at(self._file, self._lines, 1, 1)
        length = meta.end_column - meta.column if meta.end_line == meta.line else 1
        return Span.at(self._file, self._lines, meta.line, meta.column, max(1, length))

    def _ident(self, token: Token) -> Ident:
        return Ident(normalize_name(str(token)), self._tok(token))

    # -- declarations --------------------------------------------------------
    def start(self, children: list[Declaration | None]) -> list[Declaration]:
        return [c for c in children if c is not None]

    @v_args(meta=True)
    def explicit(self, meta: Any, children: list[Any]) -> StructureDecl:
        name, params, *statements = children
        span = self._meta(meta)
        equations = [s for s in statements if isinstance(s, Equation)]
        sizes = tuple(d for s in statements if isinstance(s, tuple) for d in s)
        routes = [s for s in statements if isinstance(s, RouteDecl)]
        if not equations:
            raise SpecSyntaxError(
                f"structure '{name}' has no einsum line",
                self._ident(name).span,
                "add one, e.g. `y[o] = x[i] * W[i, o]`",
            )
        if len(equations) > 1:
            raise SpecSyntaxError(
                "a structure has exactly one einsum line; this is a second one",
                equations[1].span,
                "put each structure in its own `structure` block",
            )
        if len(routes) > 1:
            raise SpecSyntaxError(
                "a structure routes at most one index; this is a second `route` line",
                routes[1].span,
                "keep one `route r top k` line",
            )
        return StructureDecl(
            name=self._ident(name),
            params=params or (),
            equation=equations[0],
            sizes=sizes,
            route=routes[0] if routes else None,
            span=span,
        )

    @v_args(meta=True)
    def shorthand(self, meta: Any, children: list[Any]) -> ShorthandDecl:
        name, form, *args = children
        given = tuple(a for a in args if a is not None)
        return ShorthandDecl(self._ident(name), self._ident(form), given, self._meta(meta))

    def parameters(self, children: list[ParamDecl | None]) -> tuple[ParamDecl, ...]:
        return tuple(c for c in children if c is not None)

    def parameter(self, children: list[Any]) -> ParamDecl:
        name, default = children
        return ParamDecl(self._ident(name), default)

    def argument(self, children: list[Any]) -> tuple[Ident, Expr]:
        name, value = children
        return (self._ident(name), value)

    @v_args(meta=True)
    def equation(self, meta: Any, children: list[TensorRef]) -> Equation:
        output, *operands = children
        return Equation(output, tuple(operands), self._meta(meta))

    @v_args(meta=True)
    def tensor(self, meta: Any, children: list[Token]) -> TensorRef:
        name, *indices = children
        idents = tuple(self._ident(i) for i in indices if i is not None)
        return TensorRef(self._ident(name), idents, self._meta(meta))

    def where(self, children: list[SizeDecl]) -> tuple[SizeDecl, ...]:
        return tuple(children)

    @v_args(meta=True)
    def size_assignment(self, meta: Any, children: list[Expr]) -> SizeDecl:
        *targets, expr = children
        names = []
        for target in targets:
            if not isinstance(target, Name):
                raise SpecSyntaxError(
                    "only index names can stand left of '=' in a where clause",
                    span_of(target),
                    "write `where a = b = 4`, with the size expression last",
                )
            names.append(Ident(target.id, target.span))
        return SizeDecl(tuple(names), expr, self._meta(meta))

    @v_args(meta=True)
    def route(self, meta: Any, children: list[Any]) -> RouteDecl:
        index, top_k = children
        return RouteDecl(self._ident(index), top_k, self._meta(meta))

    # -- expressions -----------------------------------------------------------
    def number(self, children: list[Token]) -> Num:
        (token,) = children
        return Num(Fraction(str(token)), self._tok(token))

    def name(self, children: list[Token]) -> Name:
        (token,) = children
        return Name(normalize_name(str(token)), self._tok(token))

    @v_args(meta=True)
    def call(self, meta: Any, children: list[Any]) -> Call:
        token, *args = children
        func = normalize_name(str(token))
        span = self._meta(meta)
        if func not in FUNCTIONS:
            raise SpecSyntaxError(
                f"unknown function '{func}'",
                self._tok(token),
                f"sizes may use {', '.join(sorted(FUNCTIONS))}",
            )
        arity = FUNCTIONS[func]
        if len(args) != arity:
            raise SpecSyntaxError(
                f"{func}() takes {arity} argument{'s' if arity > 1 else ''}, got {len(args)}",
                span,
                f"write {func}({', '.join(['x', 'y'][:arity])})",
            )
        return Call(func, tuple(args), span)

    add = _binop("+")
    sub = _binop("-")
    mul = _binop("*")
    div = _binop("/")
    pow = _binop("^")

    @v_args(meta=True)
    def neg(self, meta: Any, children: list[Expr]) -> Neg:
        return Neg(children[0], self._meta(meta))
