"""The structure language: text in, the IR out (parse -> resolve).

- :mod:`.spec`: the parsed spec, what a ``.ein`` file says before any size is evaluated;
- :mod:`.parser`: the Lark grammar (``grammar/einstruct.lark``) and located syntax errors;
- :mod:`.catalog`: the catalog forms (``btt(...)``, ``monarch(...)``) and ``theta(...)``;
- :mod:`.resolve`: a declaration plus parameter values -> a checked :class:`~einstruct.ir.Structure`;
- :mod:`.load`: the front door, a path or text -> structures.

    >>> load("structure m = monarch(d = 64)").d_in
    64
"""

from __future__ import annotations

from .load import declaration_sources, load, load_all, read_spec
from .parser import parse_file, parse_text, parse_value
from .resolve import Override, resolve

__all__ = [
    "Override",
    "declaration_sources",
    "load",
    "load_all",
    "parse_file",
    "parse_text",
    "parse_value",
    "read_spec",
    "resolve",
]
