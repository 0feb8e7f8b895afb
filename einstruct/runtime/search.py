"""``einstruct.search``: search the structure space from Python, optionally measuring.

    >>> report = einstruct.search(4096, flops_ratio=0.05)             # static, no torch
    >>> best = report[0]; best.name, best.params, best.flops
    ('btt_a128_g32_e64_f64_r2', 786432, 1572864)
    >>> print(best.source)                                            # .ein text
    >>> timed = einstruct.search(1024, flops_ratio=0.1, measure=True, batch=128)
    >>> timed[0].ms, timed[0].speedup_vs_dense

The static part (:mod:`einstruct.space`) imports no torch; ``measure=True``
compiles the results and times them (:mod:`.measure`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ..space.emit import emit as emit_files
from ..space.results import SearchQuery, SearchReport
from ..space.run import Progress, run_search
from .measure import measure_report

__all__ = ["search"]


def search(
    d_in: int,
    d_out: int | None = None,
    *,
    max_flops: Any = None,
    flops_ratio: Any = None,
    max_params: Any = None,
    min_psi: Any = None,
    max_omega: Any = None,
    factors: int = 2,
    grid: int | None = None,
    top: int | None = 10,
    rank: str = "guidance",
    include_dominated: bool = False,
    measure: bool = False,
    device: str = "cpu",
    batch: int = 256,
    repeats: int = 7,
    jobs: int | None = None,
    progress: Progress | None = None,
    emit: str | Path | None = None,
    force: bool = False,
) -> SearchReport:
    """Search structured layers of shape ``d_in -> d_out`` (``d_out`` defaults to ``d_in``).

    Args:
        max_flops, flops_ratio: a FLOP budget per vector, absolute or as a fraction
            of a dense layer's (give at most one).
        max_params, min_psi, max_omega: further constraints.
        factors: 2 (the paper's space) or 3 (also three-factor chains).
        grid: the grid denominator n (step 1/n); default 12, or 4 with ``factors=3``.
        top: how many results to return (``None``: all).
        rank: ``guidance``, ``flops``, ``params`` or ``measured`` (needs ``measure``).
        include_dominated: return every feasible candidate, not only the Pareto front.
        measure: compile the results and time them against dense on ``device``.
        batch, repeats: tokens per timed call and interleaved rounds.
        jobs: worker processes for the analysis (default: the CPUs not already busy).
        progress: ``progress(done, total)`` as candidates are analyzed.
        emit, force: write one ``.ein`` per result into this directory.

    Returns:
        A :class:`~einstruct.space.results.SearchReport`; iterate it (or index it) for
        the results, ``.to_dict()`` for the JSON of ``einstruct search --json``.
    """
    query = SearchQuery(
        d_in,
        d_in if d_out is None else d_out,
        max_flops=max_flops,
        flops_ratio=flops_ratio,
        max_params=max_params,
        min_psi=min_psi,
        max_omega=max_omega,
        factors=factors,
        grid=grid,
        top=top,
        rank=rank,
        include_dominated=include_dominated,
    )
    if rank == "measured" and not measure:
        raise ParameterError("ranking by measured time needs measuring", hint="pass measure=True (--measure)")
    static = replace(query, rank="guidance") if rank == "measured" else query
    report = replace(run_search(static, progress, jobs), query=query)
    if measure:
        report = measure_report(report, device, batch, repeats)
    if emit is not None:
        emit_files(report, emit, force)
    return report
