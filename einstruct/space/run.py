"""The static search: enumerate, realize, deduplicate, analyze, filter, Pareto, rank.

Every number comes from the analyzer's own functions
(:func:`~einstruct.analysis.counts.count`, :func:`~einstruct.analysis.taxonomy.taxonomy`,
:func:`~einstruct.analysis.rank.rank_bound`, ``Structure.params``); the muP fans
and diagnostics of a full analysis are skipped, they do not enter the search.
The dense layer of the same shape is realized and counted like any candidate
and is the reference of ``--flops-ratio``.

Analysis runs in worker processes when there is a lot of it (``jobs``; forked,
so they share the candidates without pickling them). Every result returned is
checked to load back from its source to an equal structure. A grid of more
points than ``EINSTRUCT_MAX_GRID_POINTS`` is refused before anything is
computed (:func:`check_grid`); ``stage(what, done, total)`` follows every step
of a long search (realizing, analyzing, the Pareto front).

    >>> report = run_search(SearchQuery(4096, 4096, min_psi=1, max_omega=0, rank="flops"))
    >>> report.results[0].name
    'monarch_a64_g64_e64_f64'
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from ..analysis.counts import count
from ..analysis.rank import rank_bound
from ..analysis.taxonomy import taxonomy
from ..capacity import checked_workers
from ..classes import CLASS_NAMES
from ..errors import ParameterError
from ..ir import Structure
from ..language.load import load
from ..limits import ENVIRONMENT
from ..limits import current as current_limits
from .grid import CHAIN_CLASSES, Point, chain_points, point_count, two_factor_points
from .pareto import front, objectives, rank_key
from .realize import Realized, Widths, realize
from .results import SearchQuery, SearchReport, SearchResult

__all__ = [
    "Progress",
    "Stage",
    "STAGES",
    "check_grid",
    "Limits",
    "run_search",
    "realize_all",
    "analyze_candidate",
    "dense_reference",
    "default_jobs",
    "grid_size",
    "check_source",
]

#: ``progress(done, total)``, called as candidates are analyzed.
Progress = Callable[[int, int], None]

#: ``stage(what, done, total)``, called through every step of the search; ``what`` is one of
#: :data:`STAGES`.
Stage = Callable[[str, int, int], None]

#: The steps of a search, as :data:`Stage` names them.
STAGES = ("realizing grid points", "analyzing candidates", "finding the Pareto front")

#: How many grid points or front candidates between two calls of ``stage``.
_EVERY = 1000

#: Below this many candidates the analysis runs in this process.
PARALLEL_FROM = 2000
_CHUNK = 250

Numbers = tuple[Any, ...]


def check_grid(query: SearchQuery) -> int:
    """The number of points the query's grid holds, if it is within ``EINSTRUCT_MAX_GRID_POINTS``;
    a larger grid is a :class:`ParameterError` that says how to narrow the search or raise the
    limit, raised before anything is computed."""
    assert query.grid is not None
    n, limit, variable = query.grid, current_limits().max_grid_points, ENVIRONMENT["max_grid_points"]
    points = point_count(n, query.factors, most=limit)
    if points <= limit:
        return points
    exact = (n + 1) ** 2 <= 10**6  # counting every point takes (n + 1)^2 steps: at most a second
    shown = f"{point_count(n, query.factors):,}" if exact else f"more than {limit:,}"
    chains = " with three-factor chains" if query.factors == 3 else ""
    coarsest = 0  # the finest grid within the limit (the counts grow with n)
    while coarsest + 1 < n and point_count(coarsest + 1, query.factors, most=limit) <= limit:
        coarsest += 1
    ways = [f"a coarser --grid (1/{coarsest} has {point_count(coarsest, query.factors):,} points)"]
    ways = ways[:1] if coarsest else []
    if query.factors == 3 and point_count(n, 2, most=limit) <= limit:
        ways.append("--factors 2")
    raise_it = f"{variable}={point_count(n, query.factors)}" if exact else f"{variable} above the count"
    raise ParameterError(
        f"a search grid of step 1/{n} has {shown} points{chains}, over the limit of {limit:,} "
        f"that keeps a search within a few minutes ({variable})",
        hint=("use " + " or ".join(ways) + "; or " if ways else "") + f"raise the limit: {raise_it}",
    )


def grid_size(query: SearchQuery) -> int:
    """How many raw grid points the query spans (before pruning; :func:`check_grid` counts the
    points the search enumerates)."""
    n = query.grid or 1
    split = (n + 1) * (n + 2) // 2
    size = split * split * (n + 1)
    if query.factors == 3:
        size += split * split * (n + 1) ** 2
    return size


@dataclass(frozen=True)
class Limits:
    """The query's constraints as the analysis checks them, with the dense layer's FLOPs."""

    max_flops: Any = None
    max_params: Any = None
    min_psi: Any = None
    max_omega: Any = None

    @classmethod
    def of(cls, query: SearchQuery, flops_dense: int) -> Limits:
        ratio = None if query.flops_ratio is None else query.flops_ratio * flops_dense
        return cls(
            query.max_flops if ratio is None else ratio, query.max_params, query.min_psi, query.max_omega
        )

    def budget(self, params: int, flops: Any) -> bool:
        """FLOPs and params within bounds."""
        return (self.max_flops is None or flops <= self.max_flops) and (
            self.max_params is None or params <= self.max_params
        )

    def shape(self, omega: Any, psi: Any) -> bool:
        """psi and omega within bounds."""
        if self.min_psi is not None and (psi is None or psi < self.min_psi):
            return False
        return self.max_omega is None or (omega is not None and omega <= self.max_omega)


def analyze_candidate(structure: Structure, limits: Limits | None = None) -> Numbers | None:
    """The analyzer's numbers for one structure, as a picklable tuple; ``None`` as soon as
    one of the constraints fails (the rest of the analysis is then skipped)."""
    params = structure.params
    counts = count(structure)
    if limits is not None and not limits.budget(params, counts.flops):
        return None
    tax = taxonomy(structure)
    if limits is not None and not limits.shape(tax.omega, tax.psi):
        return None
    if tax.theta is not None:  # two factors: the analyzer's oriented 7-class theta
        theta = dict(tax.theta)
    else:  # one factor or a chain: every index is named after its class
        names = CHAIN_CLASSES if len(structure.factors) == 3 else CLASS_NAMES
        theta = {c: tax.exponents.get(c, Fraction(0)) for c in names}
    return (
        params,
        counts.flops,
        counts.train_flops,
        counts.peak_intermediate,
        rank_bound(structure),
        tax.omega,
        tax.psi,
        tax.nu,
        theta,
    )


# what forked workers analyze: inherited from the parent, never pickled
_WORK: dict[str, Any] = {"structures": [], "limits": None}


def _analyze_range(bounds: tuple[int, int]) -> list[Numbers | None]:
    limits = _WORK["limits"]
    return [analyze_candidate(s, limits) for s in _WORK["structures"][bounds[0] : bounds[1]]]


def default_jobs() -> int:
    """Worker processes by default: the CPUs this process may use that are not already busy
    (by the 1-minute load average); on a shared machine under load, workers only add overhead."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(cpus, cpus - busy + 1))


def _analyze_all(
    structures: list[Structure], limits: Limits, jobs: int | None, progress: Progress | None
) -> list[Numbers | None]:
    total = len(structures)
    jobs = default_jobs() if jobs is None else jobs
    chunks = [(k, min(k + _CHUNK, total)) for k in range(0, total, _CHUNK)]
    _WORK.update(structures=structures, limits=limits)
    results: list[Numbers | None] = []
    try:
        if jobs <= 1 or total < PARALLEL_FROM or "fork" not in multiprocessing.get_all_start_methods():
            parts: Iterator[list[Numbers | None]] = map(_analyze_range, chunks)
            for (_, stop), part in zip(chunks, parts):
                results += part
                if progress is not None:
                    progress(stop, total)
            return results
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            for (_, stop), part in zip(chunks, pool.map(_analyze_range, chunks)):
                results += part
                if progress is not None:
                    progress(stop, total)
        return results
    finally:
        _WORK.update(structures=[], limits=None)


def dense_reference(widths: Widths) -> Numbers:
    """The analyzer's numbers for a dense layer of the same shape (the realized dense point)."""
    dense = Point("two", tuple((c, Fraction(v)) for c, v in zip(CLASS_NAMES, (1, 0, 0, 1, 0, 0, 0))))
    realized = realize(dense, widths, 1)
    assert realized is not None and len(realized.structure.factors) == 1
    numbers = analyze_candidate(realized.structure)
    assert numbers is not None
    return numbers


#: Families whose name promises full rank (the papers' Monarch and BTT).
FULL_RANK_FAMILIES = ("monarch_", "btt_")


def _honest_name(name: str, rank: Any, structure: Structure) -> str:
    """``name``, or the generic two-factor name where a full-rank family's candidate has a
    rank bound below its width (a block layout that is not a Monarch matrix)."""
    full = min(int(structure.in_features), int(structure.out_features))
    for family in FULL_RANK_FAMILIES:
        if name.startswith(family) and isinstance(rank, int) and rank < full:
            return "two_" + name[len(family) :]
    return name


def _result(r: Realized, numbers: Numbers, flops_dense: int) -> SearchResult:
    params, flops, train, peak, rank, omega, psi, nu, theta = numbers
    name = _honest_name(r.name, rank, r.structure)
    structure = replace(r.structure, name=name) if name != r.name else r.structure
    source = structure.to_source()
    return SearchResult(
        name=name,
        structure=replace(structure, source=source),
        source=source,
        theta=theta,
        grid_theta=r.point.classes(),
        params=params,
        flops=flops,
        train_flops=train,
        peak_intermediate=peak,
        rank_bound=rank,
        omega=omega,
        psi=psi,
        nu=nu,
        exact=r.exact,
        flops_dense=flops_dense,
    )


def _preference(r: Realized) -> tuple[Any, ...]:
    """Which of two grid points realizing the same structure to keep: the one nearest its
    sizes, then (for the dense twins) the one with the larger leading classes."""
    return (r.deviation, r.name, tuple(-v for _, v in r.point.theta))


def realize_all(query: SearchQuery, stage: Stage | None = None) -> tuple[int, int, list[Realized]]:
    """Every distinct structure of the query's grid: (grid points, realized points, distinct)."""
    n = query.grid or 1
    widths = Widths(query.d_in, query.d_out)
    points = two_factor_points(n) + (chain_points(n) if query.factors == 3 else [])
    best: dict[tuple[Any, ...], Realized] = {}
    realized = 0
    for k, point in enumerate(points):
        if stage is not None and k % _EVERY == 0:
            stage(STAGES[0], k, len(points))
        r = realize(point, widths, n)
        if r is None:
            continue
        realized += 1
        kept = best.get(r.key)
        if kept is None or _preference(r) < _preference(kept):
            best[r.key] = r
    return len(points), realized, list(best.values())


def run_search(
    query: SearchQuery, progress: Progress | None = None, jobs: int | None = None, stage: Stage | None = None
) -> SearchReport:
    """Search the structure space for ``query`` (see the module docstring).

    ``progress(done, total)`` is called as candidates are analyzed, ``stage(what,
    done, total)`` through every step (see :data:`STAGES`); ``jobs`` is the number
    of worker processes (default: the CPUs available; one for small searches).
    A grid of more points than ``EINSTRUCT_MAX_GRID_POINTS`` is refused first.
    """
    if jobs is not None:
        checked_workers(jobs, "jobs")
    check_grid(query)
    n_points, n_realized, unique = realize_all(query, stage)
    flops_dense = dense_reference(Widths(query.d_in, query.d_out))[1]

    def analyzed(done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)
        if stage is not None:
            stage(STAGES[1], done, total)

    structures = [r.structure for r in unique]
    numbers = _analyze_all(structures, Limits.of(query, flops_dense), jobs, analyzed)
    feasible = [_result(r, m, flops_dense) for r, m in zip(unique, numbers) if m is not None]
    compared = None if stage is None else (lambda done, total: stage(STAGES[2], done, total))
    on_front = {id(r) for r in front(feasible, objectives, compared, _EVERY)}
    ranked = sorted((replace(r, pareto=id(r) in on_front) for r in feasible), key=rank_key(query.rank))
    stats = {
        "points": n_points,
        "realized": n_realized,
        "distinct": len(unique),
        "feasible": len(feasible),
        "front": len(on_front),
    }
    report = SearchReport(query, tuple(ranked), stats)
    for result in report.results:
        check_source(result)
    return report


def check_source(result: SearchResult) -> None:
    """The result's source loads back to an equal structure (a bug in einstruct otherwise)."""
    loaded = load(result.source)
    if loaded != result.structure:
        raise AssertionError(f"the source of {result.name} does not load back to its structure")
