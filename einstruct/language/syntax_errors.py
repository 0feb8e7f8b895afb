"""Lark's parse errors turned into located, friendly syntax errors.

Each error points at the offending token with the line and a caret, says what
was found and what would fit there, and suggests the keyword a misspelt word
was probably meant to be (``wher`` -> ``where``, ``ｗｈｅｒｅ`` -> ``where``).

    >>> parse_text("structre s = btt(d = 16)\\n")
    Traceback (most recent call last):
    einstruct.errors.SpecSyntaxError: <string>:1:1: error: unexpected 'structre'
    ...
    hint: did you mean `structure`? expected 'structure', a line break
"""

from __future__ import annotations

import difflib
import re

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..errors import Span, SpecSyntaxError
from ..reading import shown_path
from .names import normalize_name

__all__ = ["KEYWORDS", "syntax_error", "keyword_suggestion"]

#: The language's keywords, which a misspelt word is compared with.
KEYWORDS = ("structure", "where", "route", "top")

# How terminals are named in "expected ..." messages.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "_NL": "a line break",
    "$END": "the end of the file",
}


def _describe_expected(expected: set[str], parser: Lark) -> str:
    words = []
    for name in sorted(expected):
        if name in _TERMINAL_WORDS:
            words.append(_TERMINAL_WORDS[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            words.append(name)
            continue
        words.append(f"'{pattern.value}'" if pattern.type == "str" else name.lower())
    words = sorted(set(words))
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


def keyword_suggestion(word: str) -> str | None:
    """The keyword ``word`` looks like (NFKC, case, a slip of the fingers), or ``None``."""
    norm = normalize_name(word)
    if norm in KEYWORDS and norm == word:
        return None
    if norm.lower() in KEYWORDS:
        return norm.lower()
    close = difflib.get_close_matches(norm.lower(), KEYWORDS, n=1, cutoff=0.6)
    return close[0] if close else None


def _leading_word(text: str, column: int) -> tuple[str, int] | None:
    """The one word before ``column`` on the line, and its column, when it is all there is."""
    match = re.fullmatch(r"(\s*)(\w+)\s*", text[: column - 1])
    return (match.group(2), len(match.group(1)) + 1) if match else None


#: What a structure's body holds, for the message about a structure without one.
_BODY = (
    "one einsum line such as `y[o] = x[i] * W[i, o]` and a `where` line with every index's size, "
    "e.g. `where i = o = d`; or declare it in one line, e.g. `structure {name} = monarch(d = 1024)`"
)


def _parser_stack(exc: UnexpectedToken) -> list:
    """What the parser had read when it stopped (its value stack: tokens and subtrees)."""
    state = getattr(getattr(exc, "interactive_parser", None), "parser_state", None)
    return list(getattr(state, "value_stack", None) or ())


def _missing_body(exc: UnexpectedToken, source: str) -> tuple[Token, str, str] | None:
    """The name of the structure the parser stopped in because it has no body, why, and
    what to write; ``None`` for any other mistake.

    The parser's stack then ends in the structure's header, ``structure NAME [(...)] :``
    and a line break, and the next line's ``structure`` was read as a tensor name (the
    next declaration) or the file ended; or it ends in ``structure NAME``, alone on its
    line, with another declaration or the end of the file after it.
    """
    stack = _parser_stack(exc)
    starts = [k for k, v in enumerate(stack) if isinstance(v, Token) and v.type == "STRUCTURE"]
    if not starts or starts[-1] + 1 >= len(stack) or getattr(stack[starts[-1] + 1], "type", "") != "NAME":
        return None
    name, rest = stack[starts[-1] + 1], stack[starts[-1] + 2 :]
    types = [getattr(v, "type", "parameters") for v in rest]
    under = "write its body under the header, indented: " + _BODY
    # the next declaration: `structure` at the start of a line (a body line is indented)
    if types and types[-1] == "NAME" and str(rest[-1]) == "structure" and getattr(rest[-1], "column", 0) == 1:
        types, why = types[:-1], "the next line starts another structure"
    elif exc.token.type == "$END":
        why = "the file ends after its header"
    else:
        why = ""
    if why and types in (["COLON", "_NL"], ["parameters", "COLON", "_NL"]):
        return name, why, under
    if not types and exc.token.type in ("_NL", "$END"):  # `structure a` alone on its line
        after = source[exc.token.end_pos :] if exc.token.type == "_NL" else ""
        if not after.strip() or re.match(r"structure\b", after):
            return (
                name,
                "its line ends after the name",
                "end the line with its parameters and a colon, `structure {name}(d = 1024):`, "
                "and write its body below, indented: " + _BODY,
            )
    return None


def _header_colon(exc: UnexpectedToken) -> Token | None:
    """The colon that ends the last structure header on the parser's stack, if any."""
    stack = _parser_stack(exc)
    colons = [v for v in stack if isinstance(v, Token) and v.type == "COLON" and v.line is not None]
    return colons[-1] if colons else None


def syntax_error(
    exc: UnexpectedInput, lines: list[str], file: str, source: str, parser: Lark
) -> SpecSyntaxError:
    """A located SpecSyntaxError for Lark's ``exc``: the spot, what was found, what would fit."""
    line = getattr(exc, "line", None) or len(lines) or 1
    column = getattr(exc, "column", None) or 1
    if isinstance(exc, UnexpectedEOF) or line > len(lines):
        line = max(1, len(lines))
        column = len(lines[line - 1]) + 1 if lines else 1
        return SpecSyntaxError(
            "the file ends in the middle of a declaration",
            Span.at(file, lines, line, column),
            f"expected {_describe_expected(set(getattr(exc, 'expected', ())), parser)}",
        )
    span = Span.at(file, lines, line, column)
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream
        char = source[pos] if pos is not None and pos < len(source) else "?"
        return SpecSyntaxError(
            f"unexpected character {char!r}",
            span,
            f"expected {_describe_expected(set(exc.allowed or ()), parser)}"
            if exc.allowed
            else "names are letters, digits and _; sizes use + - * / ^ ( )",
        )
    assert isinstance(exc, UnexpectedToken)
    token = exc.token
    missing = _missing_body(exc, source)
    if missing is not None:
        name, why, hint = missing
        # at the end of the file: where it ends (what the parser met), else at the name
        at_end = token.type == "$END"
        colon = _header_colon(exc) if at_end else None
        if colon is not None and colon.line is not None and colon.column is not None:
            where = Span.at(file, lines, colon.line, colon.column + 1, 1)
        else:
            where = Span.at(file, lines, name.line, name.column, len(str(name)))
        return SpecSyntaxError(
            f"structure '{shown_path(name)}' has no body: {why}"
            + (" (unexpected end of file)" if at_end else ""),
            where,
            hint.format(name=shown_path(name)),
        )
    shown = "end of line" if token.type == "_NL" else f"'{token.value}'"
    if token.type == "$END":
        shown = "end of file"
    span = Span.at(file, lines, line, column, max(1, len(str(token.value).strip()) or 1))
    expected = f"expected {_describe_expected(set(exc.expected), parser)}"
    # a misspelt keyword: the unexpected word itself, or the word that opened the line
    # (read as a tensor name, so the parser wanted '[' after it)
    if token.type == "NAME" and (keyword := keyword_suggestion(str(token.value))):
        return SpecSyntaxError(f"unexpected {shown}", span, f"did you mean `{keyword}`? {expected}")
    leading = _leading_word(lines[line - 1] if line <= len(lines) else "", column)
    if leading and "LSQB" in exc.expected and (keyword := keyword_suggestion(leading[0])):
        word, at = leading
        return SpecSyntaxError(
            f"'{word}' is not a keyword, and as a tensor name it needs '[' after it",
            Span.at(file, lines, line, at, len(word)),
            f"did you mean `{keyword}`?",
        )
    return SpecSyntaxError(f"unexpected {shown}", span, expected)
