"""Checks on the parse tree before anything recursive touches it.

Size expressions are evaluated, printed and searched by recursive functions,
so a pathological expression (ten thousand nested minus signs, a sum of
twenty thousand terms, a 5000-digit number) must be refused first. This pass
walks the Lark tree with an explicit stack and raises a located error for an
expression nested deeper than ``max_depth``, larger than ``max_nodes``, or a
number longer than ``max_digits`` (see :mod:`einstruct.limits`).

    >>> check_tree(_parser("value").parse("-" * 500 + "1"), "--set d", ["-" * 500 + "1"])
    Traceback (most recent call last):
    einstruct.errors.SpecSyntaxError: --set d:1:100: error: this expression nests more than 100 ...
"""

from __future__ import annotations

import re

from lark import Token, Tree

from ..errors import Span, SpecSyntaxError
from ..limits import ENVIRONMENT, current

__all__ = ["EXPRESSION_RULES", "check_nesting", "check_tokens", "check_tree"]

#: Rules that build expression nodes (each one level of nesting).
EXPRESSION_RULES = frozenset({"add", "sub", "mul", "div", "pow", "neg", "call"})
#: Rules whose children are whole expressions (each one is measured on its own).
_EXPRESSION_HOLDERS = frozenset({"size_assignment", "parameter", "argument", "route", "value"})


def _where(node: Tree | Token, file: str, lines: list[str]) -> Span:
    if isinstance(node, Token):
        return Span.at(file, lines, node.line, node.column, len(node))
    meta = node.meta
    if getattr(meta, "empty", True):
        return Span.at(file, lines, 1, 1)
    return Span.at(file, lines, meta.line, meta.column)


def _check_name_characters(token: Token, file: str, lines: list[str]) -> None:
    """Refuse, at the character, a name token holding one no Python identifier may (the
    grammar takes every non-ASCII character into a name, so that combining marks count)."""
    text = str(token)
    for k, char in enumerate(text):
        # a \w character (the ² of i²) is left to the name check, which suggests a name
        if not _WORD.match(char) and not ("_" + text[: k + 1]).isidentifier():
            raise SpecSyntaxError(
                f"unexpected character '{char}' (U+{ord(char):04X}) in a name",
                Span.at(file, lines, token.line or 1, (token.column or 1) + k, 1),
                "names are Python identifiers (letters of any script, their marks, digits "
                "and _); remove the character or write an ASCII operator",
            )


_WORD = re.compile(r"\w")
#: what the grammar's lexer makes a token of, roughly: a word, or one other non-space character
_TOKEN = re.compile(r"#[^\n]*|\w+|[^\w\s]")  # a comment is one token, as the lexer makes it


def check_tokens(text: str, file: str, lines: list[str]) -> None:
    """Refuse, before parsing, a text of more words and symbols than ``max_tokens``: the
    parser's time and memory grow with them (a 4 MB spec of one structure with a
    million assignments took 265 s and 2.7 GB), and no layer needs that many."""
    limit = current().max_tokens
    if len(text) <= limit:  # fewer characters than the limit: fewer tokens too
        return
    for count, match in enumerate(_TOKEN.finditer(text), start=1):
        if count > limit:
            line = text.count("\n", 0, match.start()) + 1
            column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
            raise SpecSyntaxError(
                f"this spec has more than {limit:,} words and symbols; parsing it would take "
                "minutes and gigabytes",
                Span.at(file, lines, line, column, 1),
                f"split it into several files; if you need it whole, raise {ENVIRONMENT['max_tokens']}",
            )


def check_nesting(text: str, file: str, lines: list[str]) -> None:
    """Refuse, before parsing, brackets nested deeper than ``max_depth``: a pair of
    parentheses makes no tree node, so :func:`check_tree` cannot count them, and
    the parser's time and memory grow with them (a million took 40 s and 280 MB).

    >>> check_nesting("(" * 3 + "d" + ")" * 3, "f", ["(((d)))"])
    """
    limit = current().max_depth
    depth, line, column = 0, 1, 0
    comment = False
    for ch in text:
        column += 1
        if ch == "\n":
            line, column, comment = line + 1, 0, False
        elif comment:
            continue
        elif ch == "#":
            comment = True
        elif ch in "([":
            depth += 1
            if depth > limit:
                raise SpecSyntaxError(
                    f"brackets nest more than {limit} deep here",
                    Span.at(file, lines, line, column),
                    f"write it more simply (sizes need a few operations); the limit is "
                    f"{ENVIRONMENT['max_depth']}",
                )
        elif ch in ")]":
            depth = max(0, depth - 1)


def check_tree(tree: Tree, file: str, lines: list[str]) -> None:
    """Raise SpecSyntaxError at the first expression or number that breaks a limit."""
    limits = current()
    stack: list[tuple[Tree | Token, int, Tree | None]] = [(tree, 0, None)]
    sizes: dict[int, int] = {}
    while stack:
        node, depth, root = stack.pop()
        if isinstance(node, Token):
            if node.type == "NAME":
                _check_name_characters(node, file, lines)
            if node.type == "NUMBER" and len(node.replace(".", "")) > limits.max_digits:
                raise SpecSyntaxError(
                    f"this number has {len(node.replace('.', ''))} digits; the limit is {limits.max_digits}",
                    _where(node, file, lines),
                    f"sizes are far smaller; if you need it, raise {ENVIRONMENT['max_digits']}",
                )
            if root is not None:
                sizes[id(root)] = sizes.get(id(root), 0) + 1
            continue
        if node.data in EXPRESSION_RULES:
            depth += 1
            if depth > limits.max_depth:
                raise SpecSyntaxError(
                    f"this expression nests more than {limits.max_depth} operations deep",
                    _where(node, file, lines),
                    f"write it more simply (sizes need a few operations); the limit is "
                    f"{ENVIRONMENT['max_depth']}",
                )
        if root is not None:
            count = sizes[id(root)] = sizes.get(id(root), 0) + 1
            if count > limits.max_nodes:
                raise SpecSyntaxError(
                    f"this expression has more than {limits.max_nodes} terms and operations",
                    _where(root, file, lines),
                    f"write it more simply; the limit is {ENVIRONMENT['max_nodes']}",
                )
        holder = node.data in _EXPRESSION_HOLDERS
        for child in node.children:
            if child is None:
                continue
            child_root = child if holder and isinstance(child, Tree) else root
            stack.append((child, depth if not holder else 0, child_root))
