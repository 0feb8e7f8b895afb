"""Render analyses for people: a rich terminal report, markdown, and compare tables."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from ..numbers import count_text, exponent_text, float_text
from .result import Analysis
from .sharding import sharding_text, shardings

__all__ = [
    "MEANINGS",
    "COMPARE_COLUMNS",
    "render_terminal",
    "phrase_lines",
    "render_markdown",
    "compare_rows",
    "sort_analyses",
    "render_compare",
    "render_compare_markdown",
]

#: One line of meaning per taxonomy number (docs/taxonomy.md §2-3).
MEANINGS = {
    "omega": "parameter sharing: FLOPs/params ~ d^omega; 0 = every parameter used once per vector (best)",
    "psi": "rank: rank ~ d^psi; 1 = full rank (scaled better than low rank)",
    "nu": "compute intensity: FLOPs ~ d^(1+nu); dense is 1 (matters little when omega = 0, psi = 1)",
}


_fmt = count_text


def _ratio(a: Analysis, num: Any, den: Any) -> str:
    r = a.ratio(num, den)
    return float_text(r) if isinstance(r, float) else str(r)


def _factor_rows(a: Analysis) -> list[list[str]]:
    rows = []
    for f in a.factors:
        fan = f.fans
        rows.append(
            [
                f.name,
                ", ".join(f.indices),
                " x ".join(map(_fmt, f.shape)),
                _fmt(f.params),
                _fmt(fan.fan_in),
                _fmt(fan.fan_out),
                _fmt(fan.init_std),
                _fmt(fan.lr_mult),
            ]
        )
    return rows


FACTOR_HEADER = ["factor", "axes", "shape", "params", "fan_in", "fan_out", "init_std", "lr_mult"]
INDEX_HEADER = ["index", "size", "as written", "class", "theta"]


def _totals(a: Analysis) -> list[tuple[str, str]]:
    c = a.counts
    dense_params = a.d_in * a.d_out
    return [
        ("params", f"{_fmt(a.params)}  ({_ratio(a, a.params, dense_params)} of dense)"),
        (
            f"FLOPs / vector (batch {c.batch})",
            f"{_fmt(c.flops)}  ({_ratio(a, c.flops, a.flops_dense)} of dense)",
        ),
        ("train FLOPs / vector", _fmt(c.train_flops)),
        ("dense FLOPs / vector", _fmt(a.flops_dense)),
        ("peak intermediate / vector", _fmt(c.peak_intermediate)),
        *_traffic(a),
        ("rank bound", f"{_fmt(a.rank_bound)}" + ("  (full rank)" if a.full_rank else "")),
    ]


def _traffic(a: Analysis) -> list[tuple[str, str]]:
    if a.traffic is None:
        return []
    mine = float_text(a.intensity, 3)
    dense = float_text(a.flops_dense / a.traffic_dense, 3)
    return [
        (
            "memory traffic / vector",
            f"{round(a.traffic):,} B, {mine} FLOP/B  (dense {round(a.traffic_dense):,} B, {dense})",
        )
    ]


def _column(table: Any, header: str, numeric: bool, symbolic: bool = False, widest: int = 0) -> None:
    """Numbers are never wrapped or cut; names, text and symbolic expressions (which
    can be long) fold onto more lines instead of being cut. ``widest``: the longest
    cell, the least width a numeric column gets (so a narrow terminal wraps the line
    rather than the table cutting a number: print it with ``crop=False``)."""
    if numeric and not symbolic:
        table.add_column(header, justify="right", no_wrap=True, min_width=max(len(header), widest))
    else:
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")


def phrase_lines(head: str, text: str, width: int) -> list[str]:
    """``head + text`` in lines of at most ``width`` columns, broken only between the phrases of
    ``text`` (split at ``"; "``); later lines indented under the text. A phrase longer than a
    line gets a line of its own.

    >>> phrase_lines("nu = 1  ", "intensity: FLOPs ~ d^(1+nu); dense is 1", 30)
    ['nu = 1  intensity: FLOPs ~ d^(1+nu);', '        dense is 1']
    """
    phrases = text.split("; ")
    pad = " " * len(head)
    lines = [head + phrases[0]]
    for phrase in phrases[1:]:
        if len(lines[-1]) + 2 + len(phrase) <= width:
            lines[-1] += "; " + phrase
        else:
            lines[-1] += ";"
            lines.append(pad + phrase)
    return lines


def render_terminal(a: Analysis, console: Any) -> None:
    """Print one analysis to a rich console."""
    from rich.table import Table

    s = a.structure
    console.print(f"[bold]{s.name}[/bold]  ({s.origin})   einsum [cyan]{a.einsum}[/cyan]")
    width = f"d_in = {_fmt(a.d_in)}, d_out = {_fmt(a.d_out)}"
    if s.is_padded and not s.is_symbolic:
        width += f"  (axes {_fmt(s.d_in)} x {_fmt(s.d_out)}: padded)"
    console.print(width)

    table = Table(title="indices", title_justify="left")
    for col in INDEX_HEADER:
        _column(table, col, numeric=col == "size", symbolic=s.is_symbolic)
    for i in a.indices:
        table.add_row(i.name, _fmt(i.size), i.expr, i.index_class, exponent_text(i.exponent))
    console.print(table)

    table = Table(title=f"factors (muP for {a.optimizer})", title_justify="left")
    for col in FACTOR_HEADER:
        _column(table, col, numeric=col not in ("factor", "axes", "shape"), symbolic=s.is_symbolic)
    for row in _factor_rows(a):
        table.add_row(*row)
    console.print(table)

    table = Table(title="totals", title_justify="left", show_header=False)
    _column(table, "what", numeric=False)
    _column(table, "value", numeric=True, symbolic=s.is_symbolic)
    for k, v in _totals(a):
        table.add_row(k, v)
    console.print(table)

    t = a.taxonomy
    if t.theta is not None:
        console.print("theta (oriented): " + ", ".join(f"{k} {exponent_text(v)}" for k, v in t.theta.items()))
    for key in ("omega", "psi", "nu"):
        head = f"{key:5} = {exponent_text(getattr(t, key)):6}  "
        lines = phrase_lines(head, MEANINGS[key], console.width)
        console.print(f"[bold]{key:5}[/bold]{lines[0][5:]}", *lines[1:], sep="\n", markup=True)
    console.print(*phrase_lines("path: ", "; ".join(a.path_text), console.width), sep="\n", markup=False)
    for sharding in shardings(s):
        text = sharding_text(sharding, _fmt)
        head, _, rest = text.partition(": ")
        console.print(*phrase_lines(f"{head}: ", rest, console.width), sep="\n", markup=False)
    r = a.routing
    if s.route is not None and r is not None:
        console.print(
            f"route: {s.route.index} top {_fmt(r['top_k'])} of {_fmt(r['experts'])} experts (BTT-MoE): "
            f"router {_fmt(r['router_params'])} params, {_fmt(r['router_flops'])} FLOPs/vector; "
            f"active FLOPs/vector with the router {_fmt(r['active_flops'])} "
            f"(computing every expert and masking: {_fmt(a.counts.flops)})"
        )
    for d in a.diagnostics:
        console.print(f"[yellow]{d.code}[/yellow]: {d.message}")
    if not a.diagnostics:
        console.print("[green]no diagnostics[/green]")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(a: Analysis) -> str:
    """The report as markdown, for papers and READMEs."""
    t = a.taxonomy
    parts = [
        f"### `{a.name}`: `{a.einsum}`, d_in = {_fmt(a.d_in)}, d_out = {_fmt(a.d_out)}",
        "",
        _md_table(
            INDEX_HEADER,
            [
                [i.name, _fmt(i.size), f"`{i.expr}`", i.index_class, exponent_text(i.exponent)]
                for i in a.indices
            ],
        ),
        "",
        _md_table(FACTOR_HEADER, _factor_rows(a)),
        "",
        _md_table(["total", "value"], [list(r) for r in _totals(a)]),
        "",
        f"omega = {exponent_text(t.omega)}, psi = {exponent_text(t.psi)}, nu = {exponent_text(t.nu)}",
    ]
    for d in a.diagnostics:
        parts.append(f"- **{d.code}**: {d.message}")
    return "\n".join(parts) + "\n"


#: Columns of ``einstruct compare``: header -> value getter.
COMPARE_COLUMNS = {
    "name": lambda a: a.name,
    "d_in": lambda a: a.d_in,
    "d_out": lambda a: a.d_out,
    "params": lambda a: a.params,
    "flops": lambda a: a.counts.flops,
    "flops_ratio": lambda a: a.ratio(a.counts.flops, a.flops_dense),
    "rank_bound": lambda a: a.rank_bound,
    "omega": lambda a: a.taxonomy.omega,
    "psi": lambda a: a.taxonomy.psi,
    "nu": lambda a: a.taxonomy.nu,
    "diagnostics": lambda a: ",".join(d.code for d in a.diagnostics) or "-",
}
#: Compare columns that hold text rather than numbers.
_TEXT_COLUMNS = ("name", "diagnostics")


def sort_analyses(analyses: list[Analysis], sort: str) -> list[Analysis]:
    """``analyses`` sorted by compare column ``sort``: numbers numerically, then text."""
    get = COMPARE_COLUMNS[sort]

    def key(a: Analysis) -> tuple[int, float | Fraction, str]:
        v = get(a)
        try:
            return (0, float(v), "")
        except OverflowError:  # past the float range (sizes only raised limits admit): exactly
            return (0, v if isinstance(v, int | Fraction) else Fraction(str(v)), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(v))

    return sorted(analyses, key=key)


def compare_rows(analyses: list[Analysis], sort: str) -> list[list[str]]:
    """One row of text per analysis, sorted by column ``sort`` (numbers numerically)."""
    rows = []
    for a in sort_analyses(analyses, sort):
        rows.append(
            [
                exponent_text(v) if k in ("omega", "psi", "nu") else _fmt(v) if not isinstance(v, str) else v
                for k, v in ((k, g(a)) for k, g in COMPARE_COLUMNS.items())
            ]
        )
    return rows


def render_compare_markdown(analyses: list[Analysis], sort: str) -> str:
    """The compare table as markdown, every column."""
    return _md_table(list(COMPARE_COLUMNS), compare_rows(analyses, sort)) + "\n"


def _least_width(console: Any, table: Any) -> int:
    """The width the compare table needs with every number whole and every name on one
    line (a narrower terminal then wraps its lines; the table never cuts a number)."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update(width=10_000), table).maximum


def render_compare(analyses: list[Analysis], sort: str, console: Any) -> None:
    """The compare table on a rich console; diagnostics are listed under it.

    The table keeps every number whole and folds long names, so it fits a
    100-column terminal; the diagnostics (words, not numbers) follow as lines.
    """
    from rich import box
    from rich.table import Table

    header = [c for c in COMPARE_COLUMNS if c != "diagnostics"]
    table = Table(
        title=f"sorted by {sort}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    symbolic = any(a.structure.is_symbolic for a in analyses)
    rows = compare_rows(analyses, sort)
    for k, col in enumerate(header):
        widest = max((len(str(row[k])) for row in rows), default=0)
        _column(table, col, numeric=col not in _TEXT_COLUMNS, symbolic=symbolic, widest=widest)
    for row in rows:
        table.add_row(*row[: len(header)])
    width = console.width  # rich draws no wider than the console: widen it for the table
    console.width = max(width, _least_width(console, table))
    try:
        console.print(table, crop=False)
    finally:
        console.width = width
    flagged = [(row[0], row[-1]) for row in rows if row[-1] != "-"]
    if flagged:
        console.print("diagnostics:")
        for name, codes in flagged:
            console.print(f"  {name}: {codes.replace(',', ', ')}", highlight=False)
