"""The vocabulary of the two-factor space: the seven index classes, once.

An index of a two-factor structure ``y = x * A * B`` is classified by which of
the four tensors hold it (the papers' alpha..rho). Everything that speaks of
classes (the IR's ``index_class``, the ``theta(...)`` shorthand, the search
grid and its sources, the fused kernels' chains and letters) reads them here.

    >>> HOLDERS["gamma"]
    ('x', 'A', 'B')
    >>> class_of(frozenset({"A", "B"}))
    'rho'
"""

from __future__ import annotations

__all__ = ["CLASS_NAMES", "WRITTEN_AXES", "HOLDERS", "LETTERS", "class_of"]

#: The seven classes, in the papers' order.
CLASS_NAMES = ("alpha", "beta", "gamma", "delta", "epsilon", "phi", "rho")

#: The classes each tensor holds, in the order the papers write its axes (the
#: layout of the ``theta(...)`` shorthand and of the search's sources).
WRITTEN_AXES: dict[str, tuple[str, ...]] = {
    "x": ("gamma", "alpha", "beta"),
    "A": ("gamma", "alpha", "phi", "delta", "rho"),
    "B": ("phi", "gamma", "beta", "rho", "epsilon"),
    "y": ("phi", "delta", "epsilon"),
}

#: Which tensors hold each class: x (input), A (first factor), B (second), y (output).
HOLDERS: dict[str, tuple[str, ...]] = {
    c: tuple(t for t in ("x", "A", "B", "y") if c in WRITTEN_AXES[t]) for c in CLASS_NAMES
}

#: Each class's one-letter index name (``a`` for alpha ... ``r`` for rho).
LETTERS: dict[str, str] = {
    "alpha": "a",
    "beta": "b",
    "gamma": "g",
    "delta": "d",
    "epsilon": "e",
    "phi": "f",
    "rho": "r",
}

_BY_HOLDERS = {frozenset(h): c for c, h in HOLDERS.items()}


def class_of(holders: frozenset[str]) -> str | None:
    """The class of an index held by ``holders`` (names among x, A, B, y), or None
    when no class has exactly those (an index of x and y only, say)."""
    return _BY_HOLDERS.get(frozenset(holders))
