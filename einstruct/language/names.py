"""Names in a spec: what a structure, parameter, tensor or index may be called.

Names are read as Python reads identifiers: NFKC-normalized (a fullwidth
``ｌ1`` is ``l1``), so two spellings Python would merge are one name here
too. A name must then be an identifier, not a keyword, and not start with
``_``: that prefix belongs to the code einstruct generates, so no user name
can ever meet a generated one.

    >>> normalize_name("ｌ1")
    'l1'
    >>> check_name(Ident("_A"), "factor")
    Traceback (most recent call last):
    einstruct.errors.InvalidNameError: error: factor name '_A' starts with '_'
    hint: names starting with _ are reserved for the code einstruct generates; rename it, e.g. 'A'
"""

from __future__ import annotations

import keyword
import unicodedata

from ..errors import InvalidNameError
from .spec import Ident

__all__ = ["normalize_name", "check_name", "suggest_name"]


def normalize_name(text: str) -> str:
    """``text`` as Python reads an identifier (Unicode NFKC)."""
    return unicodedata.normalize("NFKC", text)


def suggest_name(name: str) -> str:
    """A valid name close to ``name``, for hints: leading/trailing ``_`` dropped, made an identifier."""
    stem = name.strip("_") or "v"
    if stem[0].isdigit():
        stem = "v" + stem
    if not stem.isidentifier():
        stem = "v1"
    if keyword.iskeyword(stem) or keyword.issoftkeyword(stem):
        stem += "_"
    return stem


def _written(ident: Ident) -> str:
    """The name as it was spelled in the source (before NFKC)."""
    span = ident.span
    if span is None or not span.source_line:
        return ident.name
    return span.source_line[span.column - 1 : span.column - 1 + span.length]


def check_name(ident: Ident, what: str) -> None:
    """Raise InvalidNameError (at the name) unless it is a usable name.

    As in Python, the name as written must be an identifier, and its NFKC form
    (``ident.name``, normalized by the parser) is the name.
    """
    name = ident.name
    written = _written(ident)
    if not written.isidentifier() or not name.isidentifier():
        shown = written if written.strip() else name
        raise InvalidNameError(
            f"{what} name '{shown}' is not a valid identifier",
            ident.span,
            f"use letters, digits and _, not starting with a digit, e.g. '{suggest_name(name)}'",
        )
    read_as = f" (Python reads '{written}' as '{name}')" if written != name else ""
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise InvalidNameError(
            f"{what} name '{name}' is a Python keyword{read_as}",
            ident.span,
            f"names become Python names in generated code; rename it, e.g. '{name}_'",
        )
    if name.startswith("_"):
        raise InvalidNameError(
            f"{what} name '{name}' starts with '_'{read_as}",
            ident.span,
            f"names starting with _ are reserved for the code einstruct generates; "
            f"rename it, e.g. '{suggest_name(name)}'",
        )
