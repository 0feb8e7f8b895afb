"""einstruct: a static analyzer and compiler for structured linear layers.

A structured linear layer is written as an einsum in a small language::

    structure btt(d = 1024, rank = 1):
        y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]
        where g = a = f = e = d^(1/2), r = rank

Public API:
    load(spec, structure=None, **params) -> Structure   resolve one structure
    load_all(spec, overrides=None) -> list[Structure]   resolve every structure
    EinstructError                                      the one error root
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import EinstructError
from .ir import Structure
from .load import load, load_all

__all__ = ["__version__", "EinstructError", "Structure", "load", "load_all"]
