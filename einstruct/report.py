"""Render analyses for people: a rich terminal report, or markdown."""

from __future__ import annotations

from typing import Any

from .analysis import Analysis

__all__ = ["render_terminal"]


def _fmt(value: Any) -> str:
    return str(value)


def render_terminal(analysis: Analysis, console) -> None:
    """Print one analysis to a rich console."""
    from rich.table import Table

    s = analysis.structure
    console.print(f"[bold]{s.name}[/bold]  ({s.origin})   einsum [cyan]{analysis.einsum}[/cyan]")
    width = f"d_in = {_fmt(analysis.d_in)}, d_out = {_fmt(analysis.d_out)}"
    if s.is_padded:
        width += f"  (axes {_fmt(s.d_in)} x {_fmt(s.d_out)}: padded)"
    console.print(width)
    table = Table(title="indices", title_justify="left")
    for col in ("index", "size", "as written", "class"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for i in analysis.indices:
        table.add_row(i.name, _fmt(i.size), i.expr, i.index_class)
    console.print(table)
    table = Table(title="factors", title_justify="left")
    for col in ("factor", "axes", "shape", "params"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for f in analysis.factors:
        table.add_row(f.name, ", ".join(f.indices), " x ".join(map(_fmt, f.shape)), _fmt(f.params))
    table.add_row("total", "", "", _fmt(analysis.params), style="bold")
    console.print(table)
    if s.route is not None:
        console.print(f"route: {s.route.index} top {_fmt(s.route.top_k)} (BTT-MoE)")
