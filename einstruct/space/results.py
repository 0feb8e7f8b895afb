"""The search's data: the query, one result per candidate, the report.

``SearchReport.to_dict()`` is exactly ``einstruct search --json``::

    {"query": {...}, "results": [{"name", "source", "theta", "params", "flops",
     "train_flops", "omega", "psi", "nu", "rank_bound", "peak_intermediate",
     "pareto", ...}]}
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Any

from ..errors import ParameterError
from ..ir import Structure
from ..numbers import json_number
from .grid import DEFAULT_GRID
from .pareto import OBJECTIVES, RANKINGS

__all__ = ["SearchQuery", "SearchResult", "SearchReport"]


def _fraction(value: Any, what: str) -> Fraction | None:
    if value is None:
        return None
    try:
        result = Fraction(str(value).strip()) if not isinstance(value, Fraction) else value
    except (ValueError, ZeroDivisionError):
        raise ParameterError(
            f"{what} must be a number, got '{value}'", hint="e.g. 0.05, 1/20 or 1e6"
        ) from None
    if result < 0:
        raise ParameterError(f"{what} must not be negative, got {value}", hint="give 0 or more")
    return result


@dataclass(frozen=True)
class SearchQuery:
    """What to search: the widths, the constraints, the grid, how to rank and how many to keep.

    Numbers may be given as ints, floats, Fractions or text (``"1/20"``); they are
    kept as exact fractions. ``grid`` is the denominator n of the step 1/n.
    """

    d_in: int
    d_out: int
    max_flops: Fraction | None = None
    flops_ratio: Fraction | None = None
    max_params: Fraction | None = None
    min_psi: Fraction | None = None
    max_omega: Fraction | None = None
    factors: int = 2
    grid: int | None = None
    top: int | None = 10
    rank: str = "guidance"
    include_dominated: bool = False

    def __post_init__(self) -> None:
        for name in ("max_flops", "flops_ratio", "max_params", "min_psi", "max_omega"):
            object.__setattr__(self, name, _fraction(getattr(self, name), name.replace("_", "-")))
        for name in ("d_in", "d_out"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                shown = f"{value}" if isinstance(value, int) else f"{type(value).__name__} {value!r:.40}"
                raise ParameterError(
                    f"{name.replace('_', '-')} must be an integer of at least 2, got {shown}",
                    hint="give the layer's widths, e.g. --d-in 4096 --d-out 4096",
                )
        if self.max_flops is not None and self.flops_ratio is not None:
            raise ParameterError(
                "give --max-flops or --flops-ratio, not both",
                hint="--flops-ratio R keeps candidates with at most R x the FLOPs of a dense layer",
            )
        if self.factors not in DEFAULT_GRID:
            raise ParameterError(
                f"factors must be 2 or 3, got {self.factors}",
                hint="2: the paper's two-factor space; 3: adds three-factor chains",
            )
        if self.grid is None:
            object.__setattr__(self, "grid", DEFAULT_GRID[self.factors])
        if not isinstance(self.grid, int) or self.grid < 1:
            raise ParameterError(
                f"the grid step must be 1/n for an integer n >= 1, got n = {self.grid}",
                hint="e.g. --grid 1/12 (grid=12 in Python)",
            )
        if self.top is not None and self.top < 1:
            raise ParameterError(f"top must be at least 1, got {self.top}", hint="e.g. --top 10")
        if self.rank not in RANKINGS:
            raise ParameterError(
                f"unknown ranking '{self.rank}'", hint=f"choose one of {', '.join(RANKINGS)}"
            )

    @property
    def step(self) -> Fraction:
        """The grid step 1/n."""
        assert self.grid is not None
        return Fraction(1, self.grid)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = json_number(value) if isinstance(value, Fraction) else value
        out["grid"] = f"1/{self.grid}"
        out["objectives"] = dict(OBJECTIVES)
        out["ranking"] = RANKINGS[self.rank]
        return out


@dataclass(frozen=True)
class SearchResult:
    """One analyzed candidate: its structure and source, the analyzer's numbers, its place.

    ``theta`` is the analyzer's (oriented) theta for two-factor structures and
    the exponent of each chain class for three-factor chains; ``grid_theta`` is
    the grid point the candidate realizes. ``exact`` says both widths were
    factorized exactly (no padding). ``ms``, ``dense_ms``, ``speedup_vs_dense``
    and ``measured_efficiency`` are filled in by measuring.
    """

    name: str
    structure: Structure
    source: str
    theta: dict[str, Any]
    grid_theta: dict[str, Fraction]
    params: int
    flops: Any
    train_flops: Any
    peak_intermediate: Any
    rank_bound: int
    omega: Any
    psi: Any
    nu: Any
    exact: bool
    flops_dense: int
    pareto: bool = False
    ms: float | None = None
    dense_ms: float | None = None
    speedup_vs_dense: float | None = None
    measured_efficiency: float | None = None

    @property
    def flops_ratio(self) -> Fraction:
        return Fraction(self.flops) / self.flops_dense

    def to_dict(self) -> dict[str, Any]:
        """The JSON of one result (``--json``)."""
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "theta": {k: json_number(v) for k, v in self.theta.items()},
            "einsum": self.structure.einsum(),
            "params": json_number(self.params),
            "flops": json_number(self.flops),
            "flops_ratio": json_number(self.flops_ratio),
            "train_flops": json_number(self.train_flops),
            "omega": json_number(self.omega),
            "psi": json_number(self.psi),
            "nu": json_number(self.nu),
            "rank_bound": json_number(self.rank_bound),
            "peak_intermediate": json_number(self.peak_intermediate),
            "exact": self.exact,
            "pareto": self.pareto,
        }
        if self.ms is not None:
            out["ms"] = self.ms
            out["dense_ms"] = self.dense_ms
            out["speedup_vs_dense"] = self.speedup_vs_dense
            out["measured_efficiency"] = self.measured_efficiency
        return out


@dataclass(frozen=True)
class SearchReport:
    """The outcome of a search.

    Attributes:
        query: what was asked.
        candidates: every feasible candidate, ranked (front members flagged ``pareto``).
        stats: how many grid ``points``, ``realized`` structures, ``distinct`` ones
            analyzed, ``feasible`` ones (meeting the constraints), and ``front``.
        measured: how the results were timed (device, batch, repeats), if they were.
    """

    query: SearchQuery
    candidates: tuple[SearchResult, ...]
    stats: dict[str, int]
    measured: dict[str, Any] | None = field(default=None)

    @property
    def results(self) -> tuple[SearchResult, ...]:
        """What the search returns: the Pareto front (every feasible candidate with
        ``include_dominated``), ranked, the first ``top``."""
        chosen = [r for r in self.candidates if r.pareto or self.query.include_dominated]
        return tuple(chosen[: self.query.top] if self.query.top is not None else chosen)

    def to_dict(self) -> dict[str, Any]:
        """Exactly ``einstruct search --json``."""
        query = self.query.to_dict() | {"counts": dict(self.stats)}
        if self.measured is not None:
            query["measured"] = dict(self.measured)
        return {"query": query, "results": [r.to_dict() for r in self.results]}

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[SearchResult]:
        return iter(self.results)

    def __getitem__(self, k: int) -> SearchResult:
        return self.results[k]
