"""The structure space: enumerate, realize, analyze and rank candidate layers (static search).

- :mod:`.grid`: theta points on a rational grid (two factors; three-factor chains);
- :mod:`.realize`: a point -> integer sizes (an exact factorization of the widths when
  one is near, else rounding with padding) -> a structure and its ``.ein`` source;
- :mod:`.pareto`: the Pareto front and the rankings;
- :mod:`.results`: the query, the results and the report;
- :mod:`.run`: the search itself (the analyzer's numbers, optionally in parallel);
- :mod:`.table`: the results for people (the terminal table);
- :mod:`.emit`: the results as ``.ein`` files (``--emit``) and the overwrite rule.

Importing the package is cheap (the CLI's parser reads the rankings and the grid
from it while ``einstruct analyze`` starts): the names below load on first use.
Nothing here imports torch; measuring candidates lives in :mod:`einstruct.runtime.measure`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["SearchQuery", "SearchReport", "SearchResult", "run_search"]


_HOMES = {
    "SearchQuery": ".results",
    "SearchReport": ".results",
    "SearchResult": ".results",
    "run_search": ".run",
}


def __getattr__(name: str) -> Any:
    """The package's names on first use, so that ``import einstruct.space`` stays light."""
    if name in _HOMES:
        return getattr(import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
