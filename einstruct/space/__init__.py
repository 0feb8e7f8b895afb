"""The structure space: enumerate, realize, analyze and rank candidate layers (static search).

- :mod:`.grid`: theta points on a rational grid (two factors; three-factor chains);
- :mod:`.realize`: a point -> integer sizes (an exact factorization of the widths when
  one is near, else rounding with padding) -> a structure and its ``.ein`` source;
- :mod:`.pareto`: the Pareto front and the rankings;
- :mod:`.model`: the query, the results and the report;
- :mod:`.run`: the search itself (the analyzer's numbers, optionally in parallel);
- :mod:`.report`: the results for people (the terminal table);
- :mod:`.emit`: the results as ``.ein`` files (``--emit``) and the overwrite rule.

Nothing here imports torch; measuring candidates lives in :mod:`einstruct.runtime.measure`.
"""

from __future__ import annotations

from .model import SearchQuery, SearchReport, SearchResult
from .run import run_search

__all__ = ["SearchQuery", "SearchReport", "SearchResult", "run_search"]
