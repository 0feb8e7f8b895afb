"""The search report for people: what was searched, how many candidates, the ranked table.

Deterministic (no timings unless the results were measured), and it fits a
100-column terminal: numbers are never cut, long names fold.
"""

from __future__ import annotations

from typing import Any

from ..numbers import count_text, exponent_text, float_text
from .pareto import RANKINGS
from .results import SearchReport, SearchResult

__all__ = ["summary_lines", "table_rows", "render_search"]

_HEADER = ["#", "name", "params", "FLOPs", "of dense", "rank", "peak", "omega", "psi", "nu"]
_MEASURED = ["ms", "vs dense"]


def _constraints(report: SearchReport) -> str:
    q = report.query
    parts = []
    if q.flops_ratio is not None:
        parts.append(f"FLOPs <= {float_text(q.flops_ratio)} x dense")
    if q.max_flops is not None:
        parts.append(f"FLOPs <= {count_text(q.max_flops)}")
    if q.max_params is not None:
        parts.append(f"params <= {count_text(q.max_params)}")
    if q.min_psi is not None:
        parts.append(f"psi >= {exponent_text(q.min_psi)}")
    if q.max_omega is not None:
        parts.append(f"omega <= {exponent_text(q.max_omega)}")
    return ", ".join(parts) or "no constraints"


def summary_lines(report: SearchReport) -> list[str]:
    """What was searched and what came out, in words."""
    q, s = report.query, report.stats
    space = "two factors" if q.factors == 2 else "two factors and three-factor chains"
    shown = "the Pareto front" if not q.include_dominated else "every feasible candidate"
    lines = [
        f"search d_in = {q.d_in}, d_out = {q.d_out}: {_constraints(report)}",
        f"{s['points']:,} grid points (step 1/{q.grid}, {space}): {s['distinct']:,} distinct structures,",
        f"{s['feasible']:,} meet the constraints, {s['front']:,} on the Pareto front",
        f"showing {shown}, ranked by {q.rank}:",
        f"  {RANKINGS[q.rank]}",
    ]
    if report.measured is not None:
        m = report.measured
        lines += [
            f"measured forward + backward on {m['device']}, batch {m['batch']}, float32: medians of "
            f"{m['repeats']} interleaved rounds",
            f"with a dense layer of the same shape ({float_text(m['dense_ms'], 3)} ms)",
        ]
    return lines


def _row(k: int, r: SearchResult, measured: bool) -> list[str]:
    row = [
        str(k),
        r.name + ("" if r.exact else " (padded)"),
        count_text(r.params),
        count_text(r.flops),
        float_text(r.flops_ratio, 3),
        count_text(r.rank_bound),
        count_text(r.peak_intermediate),
        exponent_text(r.omega),
        exponent_text(r.psi),
        exponent_text(r.nu),
    ]
    if measured:
        row += [
            "-" if r.ms is None else float_text(r.ms, 3),
            "-" if r.speedup_vs_dense is None else f"{float_text(r.speedup_vs_dense, 3)}x",
        ]
    return row


def table_rows(report: SearchReport) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows, one per result in rank order."""
    measured = report.measured is not None
    header = _HEADER + (_MEASURED if measured else [])
    return header, [_row(k, r, measured) for k, r in enumerate(report.results, start=1)]


def render_search(report: SearchReport, console: Any) -> None:
    """The report on a rich console."""
    from rich import box
    from rich.table import Table

    for line in summary_lines(report):
        console.print(line, highlight=False)
    header, rows = table_rows(report)
    if not rows:
        console.print("no candidate meets the constraints; loosen them (e.g. a larger --flops-ratio)")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for col in header:
        if col == "name":
            table.add_column(col, justify="left", overflow="fold")
        else:
            table.add_column(col, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    dominated = [r.name for r in report.results if not r.pareto]
    if dominated:
        console.print(f"not on the Pareto front: {', '.join(dominated)}", highlight=False)
