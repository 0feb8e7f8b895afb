"""Names in a spec: what a parameter, tensor or index may be called.

Names end up in generated Python, so they must be identifiers that are not
keywords and do not start with ``__``.

    >>> check_name(Ident("for"), "index")
    Traceback (most recent call last):
    einstruct.errors.InvalidNameError: error: index name 'for' is a Python keyword
    hint: names become Python names in generated code; rename it, e.g. 'for_'
"""

from __future__ import annotations

import keyword

from ..errors import InvalidNameError
from .spec import Ident

__all__ = ["check_name"]


def check_name(ident: Ident, what: str) -> None:
    """Names end up in generated Python: identifiers, no keywords, no dunders."""
    name = ident.name
    if not name.isidentifier():
        raise InvalidNameError(
            f"{what} name '{name}' is not a valid identifier", ident.span, "use letters, digits and _"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise InvalidNameError(
            f"{what} name '{name}' is a Python keyword",
            ident.span,
            f"names become Python names in generated code; rename it, e.g. '{name}_'",
        )
    if name.startswith("__"):
        raise InvalidNameError(
            f"{what} name '{name}' starts with '__'",
            ident.span,
            "names starting with __ are reserved in generated code; rename it",
        )
